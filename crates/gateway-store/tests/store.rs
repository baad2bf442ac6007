//! The store against SQLite and (when `DATABASE_URL` names one) Postgres.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;

use relay_core::{ChannelConfig, Secret, UsageRecord};
use relay_store::model::UsageGroup;
use relay_store::testing::{fresh_postgres, fresh_sqlite, postgres_base_url, skip_postgres};
use relay_store::writer::PriceTable;
use relay_store::{
    KeyRecord, MasterKey, Owner, Price, Quota, QuotaHold, QuotaKind, Reservation, Seed,
    SharedStore, UsageWriter, WriterConfig,
};

async fn stores(test: &str) -> Vec<SharedStore> {
    let mut out = Vec::new();
    let path = fresh_sqlite(test);
    let s = relay_store::connect(path.to_str().unwrap(), 8)
        .await
        .unwrap();
    s.migrate().await.unwrap();
    out.push(s.with_master_key(MasterKey::from_bytes(&[1; 32])));
    match postgres_base_url() {
        Some(base) => {
            let url = fresh_postgres(&base, &format!("relay_store_{test}"))
                .await
                .unwrap();
            let s = relay_store::connect(&url, 16).await.unwrap();
            s.migrate().await.unwrap();
            out.push(s.with_master_key(MasterKey::from_bytes(&[1; 32])));
        }
        None => skip_postgres(test),
    }
    out
}

/// A second connection to the store's database, for assertions in raw SQL.
async fn raw(store: &SharedStore) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(store.url())
        .await
        .unwrap()
}

/// A writer on `store` with its spill file in a fresh directory (returned), its
/// settings adjusted by `tune`.
fn start_writer(
    store: &SharedStore,
    tune: impl FnOnce(&mut WriterConfig),
) -> (Arc<UsageWriter>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("relay-spill-{}", rand::random::<u32>()));
    let mut config = WriterConfig::new(dir.clone());
    tune(&mut config);
    let writer = UsageWriter::start(store.clone(), PriceTable::default(), config);
    (writer, dir)
}

/// One BIGINT from a query.
async fn scalar(sql: &sqlx::AnyPool, query: &str) -> i64 {
    let (v,): (i64,) = sqlx::query_as(query).fetch_one(sql).await.unwrap();
    v
}

fn quota_key(id: &str, limit: i64) -> KeyRecord {
    let mut k = KeyRecord::new(id, format!("{:064x}", rand::random::<u128>()), Owner::Admin);
    k.quota = Some(Quota {
        kind: QuotaKind::Tokens,
        limit,
    });
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quota_race_grants_exactly_what_fits() {
    for store in stores("quota_race").await {
        // Quota for 7 reservations of 100; 40 race for it.
        store
            .create_key(&quota_key("racer", 700), "test")
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..40 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.reserve("racer", 100, &format!("race-{i}"), "rep_a")
                    .await
                    .unwrap()
            }));
        }
        let mut granted = 0;
        for t in tasks {
            if matches!(t.await.unwrap(), Reservation::Granted { .. }) {
                granted += 1;
            }
        }
        assert_eq!(granted, 7, "{:?}", store.backend());
        let k = store.key("racer").await.unwrap().unwrap();
        assert_eq!((k.quota_used, k.quota_reserved), (0, 700));
        // One hold row per granted reservation, and only for those.
        let sql = raw(&store).await;
        assert_eq!(
            scalar(&sql, "SELECT CAST(COUNT(*) AS BIGINT) FROM quota_holds").await,
            7
        );
        assert_eq!(
            scalar(&sql, "SELECT CAST(SUM(amount) AS BIGINT) FROM quota_holds").await,
            700
        );
    }
}

fn record(id: &str, key: &str) -> UsageRecord {
    let mut r = UsageRecord::new(
        id.into(),
        "fast".into(),
        relay_core::DialectId::OPENAI_CHAT,
        relay_core::Operation::Chat,
    );
    r.key_id = Some(key.into());
    r.upstream_model = Some("m1".into());
    r.usage.input_tokens = 1000;
    r.usage.output_tokens = 500;
    r.usage.cached_input_tokens = 200;
    r
}

#[tokio::test]
async fn usage_is_idempotent_and_settles_quota_once() {
    for store in stores("usage_once").await {
        store
            .create_key(&quota_key("k", 10_000), "test")
            .await
            .unwrap();
        store
            .put_price(
                "m1",
                &Price {
                    input_per_mtok: 2.0,
                    output_per_mtok: 8.0,
                    cached_input_per_mtok: 0.5,
                },
                "test",
            )
            .await
            .unwrap();
        assert!(matches!(
            store.reserve("k", 3000, "req-1", "rep_a").await.unwrap(),
            Reservation::Granted { .. }
        ));
        let prices: PriceTable = Arc::default();
        prices.store(Arc::new(
            store.prices().await.unwrap().into_iter().collect(),
        ));
        let hold = Some(QuotaHold {
            kind: QuotaKind::Tokens,
            reserved: 3000,
            tracked: true,
        });
        let row = relay_store::writer::to_row(record("req-1", "k"), hold, &prices.load());
        // 800 × 2 + 200 × 0.5 + 500 × 8 = 5700 micro-USD.
        assert_eq!(row.cost_micros, 5700);
        assert_eq!(
            store
                .insert_usage(&[row.clone(), row.clone()])
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store
                .insert_usage(std::slice::from_ref(&row))
                .await
                .unwrap(),
            0
        );
        let k = store.key("k").await.unwrap().unwrap();
        assert_eq!((k.quota_used, k.quota_reserved), (1500, 0));
        assert_eq!(store.usage_count("req-1").await.unwrap(), 1);
        let report = store
            .usage_report(UsageGroup::Key, 0, i64::MAX, None)
            .await
            .unwrap();
        assert_eq!(report.total.requests, 1);
        assert_eq!(report.total.cost_micros, 5700);
        assert_eq!(report.lines[0].group.as_deref(), Some("k"));

        // Through the writer: 300 records, two of them twice.
        let dir = std::env::temp_dir().join(format!("relay-spill-{}", rand::random::<u32>()));
        let writer = UsageWriter::start(store.clone(), prices.clone(), WriterConfig::new(dir));
        for i in 0..300 {
            writer.enqueue(record(&format!("w-{i}"), "k"), None);
        }
        writer.enqueue(record("w-1", "k"), None);
        writer.enqueue(record("w-2", "k"), None);
        writer.flush().await;
        assert_eq!(store.usage_request_ids().await.unwrap().len(), 301);
        // Rows the database reports as new: the 300 distinct ids, not the repeats.
        assert_eq!(
            writer
                .metrics()
                .written
                .load(std::sync::atomic::Ordering::Relaxed),
            300
        );
        assert_eq!(
            writer
                .metrics()
                .dropped
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }
}

/// The writer's batches: rows from many threads, a client's model name with a NUL
/// character and one far too long (neither may fail a batch, on either backend), a
/// repeat of an id stored by an earlier batch (the binary `COPY` refuses it, the
/// idempotent insert skips it), and rows with a quota hold in the same pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_batches_survive_hostile_names_repeats_and_holds() {
    for store in stores("writer_batches").await {
        let b = format!("{:?}", store.backend());
        store
            .create_key(&quota_key("hk", 1_000_000), "test")
            .await
            .unwrap();
        let prices: relay_store::writer::PriceTable = Default::default();
        let dir = std::env::temp_dir().join(format!("relay-spill-{}", rand::random::<u32>()));
        let writer = UsageWriter::start(store.clone(), prices, WriterConfig::new(dir));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..250 {
                        writer.enqueue(record(&format!("t{t}-{i}"), "k"), None);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut nul = record("nul", "k");
        nul.requested_model = "bad\0name".into();
        writer.enqueue(nul, None);
        let mut long = record("long", "k");
        long.requested_model = "m".repeat(100_000);
        writer.enqueue(long, None);
        writer.flush().await;
        assert_eq!(store.usage_request_ids().await.unwrap().len(), 1002, "{b}");

        // A later pass repeats a stored id beside new rows and held rows.
        granted(&store, "hk", 100, "held-1", "rep").await;
        writer.enqueue(record("t0-0", "k"), None);
        writer.enqueue(record("fresh", "k"), None);
        writer.enqueue(
            record("held-1", "hk"),
            Some(QuotaHold {
                kind: QuotaKind::Tokens,
                reserved: 100,
                tracked: true,
            }),
        );
        writer.flush().await;
        let ids = store.usage_request_ids().await.unwrap();
        assert_eq!(ids.len(), 1004, "{b}");
        assert_eq!(ids.iter().filter(|id| *id == "t0-0").count(), 1, "{b}");
        let k = store.key("hk").await.unwrap().unwrap();
        assert_eq!((k.quota_used, k.quota_reserved), (1500, 0), "{b}");
        let m = writer.metrics();
        assert_eq!(
            m.written.load(std::sync::atomic::Ordering::Relaxed),
            1004,
            "{b}"
        );
        assert_eq!(
            m.dropped.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "{b}"
        );
        assert_eq!(
            m.spilled.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "{b}"
        );

        let sql = raw(&store).await;
        let (name,): (String,) =
            sqlx::query_as("SELECT requested_model FROM usage WHERE request_id = 'nul'")
                .fetch_one(&sql)
                .await
                .unwrap();
        assert_eq!(name, "bad?name", "{b}");
        let len = scalar(
            &sql,
            "SELECT CAST(LENGTH(requested_model) AS BIGINT) FROM usage WHERE request_id = 'long'",
        )
        .await;
        assert_eq!(len, relay_store::tuple::MODEL_NAME_MAX as i64, "{b}");
    }
}

/// A refusal of every row is the database's doing, not the rows': after a few refused
/// rows the search stops and the batch waits in the spill file, none set aside, until
/// the database takes it. And refused rows that cannot be set aside (the file cannot be
/// written) are counted as dropped while the rest of their batch is written: the writer
/// does not go back to spilling everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_of_every_row_waits_and_a_failed_set_aside_does_not_wedge() {
    use std::sync::atomic::Ordering::Relaxed;
    for store in stores("writer_refused_all").await {
        let b = format!("{:?}", store.backend());
        let sql = raw(&store).await;
        let (refuse_all, allow) = match store.backend() {
            relay_store::Backend::Sqlite => (
                "CREATE TRIGGER refuse BEFORE INSERT ON usage WHEN NEW.request_id LIKE 'bad%' \
                 OR (SELECT closed FROM gate) = 1 BEGIN SELECT RAISE(ABORT, 'closed'); END",
                "UPDATE gate SET closed = 0",
            ),
            relay_store::Backend::Postgres => (
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                 IF NEW.request_id LIKE 'bad%' OR (SELECT closed FROM gate) = 1 THEN \
                 RAISE EXCEPTION 'closed'; END IF; RETURN NEW; END $$; \
                 CREATE TRIGGER refuse BEFORE INSERT ON usage FOR EACH ROW EXECUTE FUNCTION refuse()",
                "UPDATE gate SET closed = 0",
            ),
        };
        sqlx::raw_sql("CREATE TABLE gate (closed BIGINT NOT NULL); INSERT INTO gate VALUES (1)")
            .execute(&sql)
            .await
            .unwrap();
        sqlx::raw_sql(refuse_all).execute(&sql).await.unwrap();
        let dir = std::env::temp_dir().join(format!("relay-spill-{}", rand::random::<u32>()));
        // The set-aside file cannot be written: a directory stands in its way.
        std::fs::create_dir_all(dir.join("usage-refused.jsonl")).unwrap();
        let mut config = WriterConfig::new(dir.clone());
        config.flush_interval = std::time::Duration::from_millis(10);
        config.probe_interval = std::time::Duration::from_millis(50);
        let writer = UsageWriter::start(store.clone(), PriceTable::default(), config);

        // Every row refused: spilled whole, nothing set aside or dropped.
        for i in 0..200 {
            writer.enqueue(record(&format!("all-{i}"), "k"), None);
        }
        writer.flush().await;
        let m = writer.metrics();
        assert_eq!(store.usage_request_ids().await.unwrap().len(), 0, "{b}");
        assert_eq!(m.spilled.load(Relaxed), 200, "{b}");
        assert_eq!(
            (m.refused.load(Relaxed), m.dropped.load(Relaxed)),
            (0, 0),
            "{b}"
        );

        // The database takes rows again (but the two bad ones): the spill is replayed;
        // the bad rows cannot be set aside and are counted as dropped; the rest of their
        // batch is written, and so is what comes after.
        sqlx::raw_sql(allow).execute(&sql).await.unwrap();
        for i in 0..100 {
            let id = if i == 10 || i == 60 {
                format!("bad-{i}")
            } else {
                format!("after-{i}")
            };
            writer.enqueue(record(&id, "k"), None);
        }
        for _ in 0..50 {
            writer.flush().await;
            if store.usage_request_ids().await.unwrap().len() == 298 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(store.usage_request_ids().await.unwrap().len(), 298, "{b}");
        assert_eq!(
            (m.refused.load(Relaxed), m.dropped.load(Relaxed)),
            (0, 2),
            "{b}"
        );
        for i in 0..50 {
            writer.enqueue(record(&format!("later-{i}"), "k"), None);
        }
        writer.flush().await;
        assert_eq!(store.usage_request_ids().await.unwrap().len(), 348, "{b}");
        assert!(writer.healthy(), "{b}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The database goes away in the middle of a search for refused rows (Postgres: a
/// trigger ends its own connection on one row): nothing is set aside, the batch takes
/// the outage path whole, and once the database is back the replay searches again, sets
/// the refused row aside once and writes every other row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_lost_mid_search_sets_nothing_aside_until_it_is_back() {
    use std::sync::atomic::Ordering::Relaxed;
    for store in stores("writer_refused_lost").await {
        let b = format!("{:?}", store.backend());
        if store.backend() != relay_store::Backend::Postgres {
            continue;
        }
        let sql = raw(&store).await;
        sqlx::raw_sql(
            "CREATE TABLE gate (kill BIGINT NOT NULL); INSERT INTO gate VALUES (1); \
             CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             IF NEW.request_id LIKE 'bad%' THEN RAISE EXCEPTION 'bad row'; END IF; \
             IF NEW.request_id LIKE 'kill%' AND (SELECT kill FROM gate) = 1 THEN \
             PERFORM pg_terminate_backend(pg_backend_pid()); END IF; RETURN NEW; END $$; \
             CREATE TRIGGER refuse BEFORE INSERT ON usage FOR EACH ROW EXECUTE FUNCTION refuse()",
        )
        .execute(&sql)
        .await
        .unwrap();
        let (writer, dir) = start_writer(&store, |config| {
            config.flush_interval = std::time::Duration::from_millis(10);
            config.probe_interval = std::time::Duration::from_millis(50);
        });
        // The refused row first (the whole batch is refused), the deadly one in the
        // second half (the search loses its connection there).
        writer.enqueue(record("bad-0", "k"), None);
        for i in 0..98 {
            writer.enqueue(record(&format!("row-{i}"), "k"), None);
        }
        writer.enqueue(record("kill-0", "k"), None);
        writer.flush().await;
        let m = writer.metrics();
        assert_eq!(m.refused.load(Relaxed), 0, "{b}");
        assert_eq!(m.spilled.load(Relaxed), 100, "{b}");
        assert!(!dir.join("usage-refused.jsonl").exists(), "{b}");

        sqlx::raw_sql("UPDATE gate SET kill = 0")
            .execute(&sql)
            .await
            .unwrap();
        for _ in 0..50 {
            writer.flush().await;
            if m.replayed.load(Relaxed) >= 100 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let mut ids = store.usage_request_ids().await.unwrap();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 99, "{b}");
        assert!(ids.iter().any(|id| id == "kill-0"), "{b}");
        assert_eq!(
            (m.refused.load(Relaxed), m.dropped.load(Relaxed)),
            (1, 0),
            "{b}"
        );
        let text = std::fs::read_to_string(dir.join("usage-refused.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 1, "{b}");
        assert!(writer.healthy(), "{b}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Rows a full shard refused go to the overflow thread's spill; a flush waits for them
/// (it used to return while they were still on their way, and the shutdown's flush with
/// it: a gateway stopping under overload could exit with rows in that queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_waits_for_the_rows_a_full_shard_refused() {
    use std::sync::atomic::Ordering::Relaxed;
    for store in stores("writer_overflow").await {
        let b = format!("{:?}", store.backend());
        let (writer, dir) = start_writer(&store, |config| {
            // Shards of a few hundred rows, and a writer that collects them rarely.
            config.queue = 2_048;
            config.flush_interval = std::time::Duration::from_secs(1);
        });
        // Four threads enqueue as fast as they can until a shard has refused rows.
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    let mut sent = 0;
                    while sent < 200_000 && writer.metrics().overflowed.load(Relaxed) == 0 {
                        for _ in 0..50 {
                            writer.enqueue(record(&format!("o{t}-{sent}"), "k"), None);
                            sent += 1;
                        }
                    }
                    sent
                })
            })
            .collect();
        let sent: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        writer.flush().await;
        let m = writer.metrics();
        assert!(m.overflowed.load(Relaxed) > 0, "{b}: no shard filled");
        assert_eq!(m.dropped.load(Relaxed), 0, "{b}");
        assert_eq!(store.usage_request_ids().await.unwrap().len(), sent, "{b}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A writer behind a database that takes its writes slowly (here: not at all while
/// another connection holds the usage table) keeps emptying the shards while its write
/// waits, sends what gathers past half its queue to the spill file as tuples, and loses
/// nothing: once the database moves again every row is there exactly once. (Before, the
/// shards filled behind the stuck write and rows were dropped.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_behind_a_slow_database_spills_and_loses_nothing() {
    use std::sync::atomic::Ordering::Relaxed;
    for store in stores("writer_behind").await {
        let b = format!("{:?}", store.backend());
        let (writer, dir) = start_writer(&store, |config| {
            config.queue = 2_000;
            config.flush_interval = std::time::Duration::from_millis(10);
            // The stuck write must stay in flight (not time out and take the outage path).
            config.write_timeout = std::time::Duration::from_secs(60);
        });

        // Another connection takes the usage table's write lock and keeps it.
        let sql = raw(&store).await;
        let mut blocker = sql.acquire().await.unwrap();
        match store.backend() {
            relay_store::Backend::Sqlite => {
                sqlx::raw_sql("BEGIN IMMEDIATE")
                    .execute(&mut *blocker)
                    .await
                    .unwrap();
            }
            relay_store::Backend::Postgres => {
                sqlx::raw_sql("BEGIN; LOCK TABLE usage IN SHARE ROW EXCLUSIVE MODE")
                    .execute(&mut *blocker)
                    .await
                    .unwrap();
            }
        }
        // The first pass goes out and waits on the lock.
        writer.enqueue(record("first", "k"), None);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;

        // 16,000 rows behind it from 4 threads, 100 at a time, at about the pace a busy
        // gateway settles them: eight times the writer's queue.
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for step in 0..40 {
                        for i in 0..100 {
                            writer.enqueue(record(&format!("behind-{t}-{step}-{i}"), "k"), None);
                        }
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let m = writer.metrics();
        let spilled = m.spilled.load(Relaxed);
        assert!(
            spilled >= 10_000,
            "{b}: only {spilled} rows spilled behind the stuck write"
        );
        assert_eq!(m.dropped.load(Relaxed), 0, "{b}");
        assert_eq!(m.overflowed.load(Relaxed), 0, "{b}: the shards filled up");
        assert!(
            writer.queue_depth() <= 2_000,
            "{b}: {} rows held in memory",
            writer.queue_depth()
        );
        assert_eq!(store.usage_request_ids().await.unwrap().len(), 0, "{b}");
        let spill_files = std::fs::read_dir(&dir).unwrap().count();
        assert!(spill_files > 0, "{b}: no spill file");

        // The database moves again: the stuck pass goes in, the spill is replayed.
        sqlx::raw_sql("ROLLBACK")
            .execute(&mut *blocker)
            .await
            .unwrap();
        drop(blocker);
        writer.flush().await;
        writer.flush().await;
        let mut ids = store.usage_request_ids().await.unwrap();
        let stored = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!((stored, ids.len()), (16_001, 16_001), "{b}");
        assert_eq!(m.dropped.load(Relaxed), 0, "{b}");
        assert_eq!(m.replayed.load(Relaxed), m.spilled.load(Relaxed), "{b}");
        assert_eq!(writer.queue_depth(), 0, "{b}");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "{b}: spill files left"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Rows the database refuses for good (here a trigger says no to some request ids) are
/// found, set aside in `usage-refused.jsonl` and counted, and every other row of their
/// batch is written: in a live pass of tuples, among rows with a quota hold, and in a
/// spill file being replayed. Before, one such row failed its whole batch on every
/// retry and replay, and the writer went on spilling everything after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_the_database_refuses_are_set_aside_and_the_rest_written() {
    use std::sync::atomic::Ordering::Relaxed;
    for store in stores("writer_refused").await {
        let b = format!("{:?}", store.backend());
        let sql = raw(&store).await;
        let trigger = match store.backend() {
            relay_store::Backend::Sqlite => {
                "CREATE TRIGGER refuse_bad BEFORE INSERT ON usage WHEN NEW.request_id LIKE 'bad%' \
                 BEGIN SELECT RAISE(ABORT, 'bad row'); END"
            }
            relay_store::Backend::Postgres => {
                "CREATE FUNCTION refuse_bad() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                 IF NEW.request_id LIKE 'bad%' THEN RAISE EXCEPTION 'bad row'; END IF; \
                 RETURN NEW; END $$; \
                 CREATE TRIGGER refuse_bad BEFORE INSERT ON usage FOR EACH ROW EXECUTE FUNCTION refuse_bad()"
            }
        };
        sqlx::raw_sql(trigger).execute(&sql).await.unwrap();
        store
            .create_key(&quota_key("hk", 1_000_000), "test")
            .await
            .unwrap();
        let (writer, dir) = start_writer(&store, |config| {
            config.queue = 2_000;
            config.flush_interval = std::time::Duration::from_millis(10);
            config.write_timeout = std::time::Duration::from_secs(60);
        });
        let hold = Some(QuotaHold {
            kind: QuotaKind::Tokens,
            reserved: 100,
            tracked: false,
        });

        // A live pass: 1,000 rows, three of them refused, and a refused held row beside
        // a good one.
        for i in 0..1_000 {
            let id = if [7, 500, 999].contains(&i) {
                format!("bad-live-{i}")
            } else {
                format!("live-{i}")
            };
            writer.enqueue(record(&id, "k"), None);
            if i % 100 == 99 {
                // Within this thread's shard (a quarter of the queue).
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        // The refused held row's reservation is released (its charge comes when the
        // set-aside file is replayed, as for any row whose hold is gone).
        granted(&store, "hk", 100, "bad-held", "rep").await;
        let tracked = Some(QuotaHold {
            kind: QuotaKind::Tokens,
            reserved: 100,
            tracked: true,
        });
        writer.enqueue(record("bad-held", "hk"), tracked);
        writer.enqueue(record("held", "hk"), hold);
        writer.flush().await;
        let m = writer.metrics();
        assert_eq!(store.usage_request_ids().await.unwrap().len(), 998, "{b}");
        assert_eq!(m.refused.load(Relaxed), 4, "{b}");
        assert_eq!(
            (m.spilled.load(Relaxed), m.dropped.load(Relaxed)),
            (0, 0),
            "{b}"
        );
        assert!(writer.healthy(), "{b}");
        assert_eq!(balance(&store, "hk").await, (1500, 0), "{b}");
        assert_eq!(
            store.release("bad-held").await.unwrap(),
            0,
            "{b}: the refused row's hold is still there"
        );

        // A replay: the table is locked, rows gather past half the queue and are
        // spilled as tuples, refused ones among them; then the lock goes.
        let mut blocker = sql.acquire().await.unwrap();
        let lock = match store.backend() {
            relay_store::Backend::Sqlite => "BEGIN IMMEDIATE",
            relay_store::Backend::Postgres => "BEGIN; LOCK TABLE usage IN SHARE ROW EXCLUSIVE MODE",
        };
        sqlx::raw_sql(lock).execute(&mut *blocker).await.unwrap();
        writer.enqueue(record("first", "k"), None);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        for step in 0..40 {
            for i in 0..100 {
                let id = if i == 50 && step % 10 == 0 {
                    format!("bad-spilled-{step}")
                } else {
                    format!("spilled-{step}-{i}")
                };
                writer.enqueue(record(&id, "k"), None);
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(m.spilled.load(Relaxed) >= 2_000, "{b}: nothing spilled");
        sqlx::raw_sql("ROLLBACK")
            .execute(&mut *blocker)
            .await
            .unwrap();
        drop(blocker);
        writer.flush().await;
        writer.flush().await;
        let ids = store.usage_request_ids().await.unwrap();
        assert_eq!(ids.len(), 998 + 1 + 3_996, "{b}");
        assert!(!ids.iter().any(|id| id.starts_with("bad")), "{b}");
        assert_eq!(m.refused.load(Relaxed), 8, "{b}");
        assert_eq!(m.dropped.load(Relaxed), 0, "{b}");
        assert_eq!(m.replayed.load(Relaxed), m.spilled.load(Relaxed), "{b}");
        assert!(writer.healthy(), "{b}");

        // Only the set-aside file is left, one line per refused row, each a row.
        let files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(files, ["usage-refused.jsonl"], "{b}");
        let text = std::fs::read_to_string(dir.join("usage-refused.jsonl")).unwrap();
        let mut refused: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<relay_store::UsageRow>(l)
                    .unwrap()
                    .request_id
            })
            .collect();
        refused.sort();
        assert_eq!(
            refused,
            [
                "bad-held",
                "bad-live-500",
                "bad-live-7",
                "bad-live-999",
                "bad-spilled-0",
                "bad-spilled-10",
                "bad-spilled-20",
                "bad-spilled-30"
            ],
            "{b}"
        );

        // The line drawn: a refused row is the row's doing; a missing table is not (its
        // rows wait in the spill file until it is back).
        let mut buf = Vec::new();
        let rec = record("bad-direct", "k");
        assert!(relay_store::tuple::RowRef::of_record(&rec, 0).encode(&mut buf));
        let e = store
            .insert_usage_tuples(std::slice::from_ref(&buf))
            .await
            .unwrap_err();
        assert!(e.refuses_rows(), "{b}: {e}");
        sqlx::raw_sql("ALTER TABLE usage RENAME TO usage_gone")
            .execute(&sql)
            .await
            .unwrap();
        let e = store.insert_usage_tuples(&[buf]).await.unwrap_err();
        assert!(!e.refuses_rows(), "{b}: {e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A usage `COPY` cut off mid-stream (the writer's deadline dropped it) must not leave
/// its connection to the next statement: with one connection in the pool, the
/// statements after it still get their own answers, and the next batch goes in.
#[tokio::test]
async fn a_copy_cut_off_mid_stream_does_not_poison_the_pool() {
    let Some(base) = postgres_base_url() else {
        skip_postgres("copy_cut_off");
        return;
    };
    let url = fresh_postgres(&base, "relay_store_copy_cut").await.unwrap();
    let store = relay_store::connect(&url, 1).await.unwrap();
    store.migrate().await.unwrap();
    store.create_key(&quota_key("k", 10), "test").await.unwrap();
    let mut big = Vec::new();
    let mut ids = 0;
    while big.len() < 4 << 20 {
        let r = record(&format!("cut-{ids}"), "k");
        assert!(relay_store::tuple::RowRef::of_record(&r, 0).encode(&mut big));
        ids += 1;
    }
    let mut cut = 0;
    // Deadlines from 20 µs up: the cut lands in every phase (the pool's checkout, the
    // `COPY` statement before the server's answer, the data, the end).
    for step in 0..40u64 {
        let copy = store.insert_usage_tuples(std::slice::from_ref(&big));
        if tokio::time::timeout(std::time::Duration::from_micros(20 + step * step * 4), copy)
            .await
            .is_err()
        {
            cut += 1;
        }
        // The pool's one connection answers these correctly afterwards, and a `COPY`
        // is all or nothing: a cut one left no row, a finished one all of them (a
        // repeat of a finished one went in the idempotent way, adding none).
        let stored = store.usage_request_ids().await.unwrap().len();
        assert!(stored == 0 || stored == ids, "{stored} of {ids} rows");
        let keys = store.keys().await.unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].id, "k");
    }
    assert!(cut > 0, "no COPY was cut off; the test proves nothing");
    let mut small = Vec::new();
    assert!(relay_store::tuple::RowRef::of_record(&record("after", "k"), 0).encode(&mut small));
    assert_eq!(store.insert_usage_tuples(&[small]).await.unwrap(), 1);
    assert_eq!(store.usage_count("after").await.unwrap(), 1);
}

#[tokio::test]
async fn seeding_respects_admin_rows_and_credentials_are_sealed() {
    for store in stores("seeding").await {
        let mut ch = ChannelConfig::new("c1", "openai");
        ch.api_keys = vec![Secret::new("sk-very-secret-value")];
        ch.models = vec!["m".into()];
        let seed = Seed {
            channels: vec![ch.clone(), ChannelConfig::new("c2", "openai")],
            presets: vec![],
            keys: vec![("cfg".into(), "ab".repeat(32))],
        };
        store.seed(&seed).await.unwrap();
        // The secret is not stored in clear.
        let raw: Vec<(String,)> = sqlx::query_as("SELECT config FROM channels")
            .fetch_all(&{
                sqlx::any::install_default_drivers();
                sqlx::AnyPool::connect(store.url()).await.unwrap()
            })
            .await
            .unwrap();
        assert!(raw.iter().all(|(c,)| !c.contains("sk-very-secret")));
        let got = store.channel("c1").await.unwrap().unwrap();
        assert_eq!(got.config.api_keys[0].expose(), "sk-very-secret-value");
        assert_eq!(got.owner, Owner::Config);
        // The admin takes c2 over; a reseed keeps the admin's version and drops c1.
        let mut admin = ChannelConfig::new("c2", "openai");
        admin.models = vec!["admin-model".into()];
        store.put_channel(&admin, "test").await.unwrap();
        let report = store
            .seed(&Seed {
                channels: vec![ChannelConfig::new("c2", "openai")],
                presets: vec![],
                keys: vec![],
            })
            .await
            .unwrap();
        assert_eq!(report.kept_admin, vec!["channel:c2".to_string()]);
        let all = store.channels().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].config.models, vec!["admin-model".to_string()]);
        assert!(store.keys().await.unwrap().is_empty());
        let v = store.config_version().await.unwrap();
        assert!(v > 1);
    }
}

#[tokio::test]
async fn concurrent_migrations_are_safe() {
    if let Some(base) = postgres_base_url() {
        let url = fresh_postgres(&base, "relay_store_migrate").await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let s = relay_store::connect(&url, 2).await.unwrap();
                s.migrate().await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    } else {
        skip_postgres("concurrent_migrations_are_safe");
    }
}

/// `(quota_used, quota_reserved)` of a key.
async fn balance(store: &SharedStore, key: &str) -> (i64, i64) {
    let k = store.key(key).await.unwrap().unwrap();
    (k.quota_used, k.quota_reserved)
}

async fn granted(store: &SharedStore, key: &str, amount: i64, request: &str, replica: &str) {
    assert!(
        matches!(
            store.reserve(key, amount, request, replica).await.unwrap(),
            Reservation::Granted { .. }
        ),
        "{request}"
    );
}

/// A tracked hold of `reserved` tokens on a usage row of 1000 + 500 tokens.
fn settled_row(id: &str, key: &str, reserved: i64) -> relay_store::UsageRow {
    let hold = Some(QuotaHold {
        kind: QuotaKind::Tokens,
        reserved,
        tracked: true,
    });
    relay_store::writer::to_row(record(id, key), hold, &Default::default())
}

#[tokio::test]
async fn holds_of_a_gone_replica_are_reconciled_once_and_a_late_settle_is_exact() {
    for store in stores("reconcile").await {
        let b = format!("{:?}", store.backend());
        let sql = raw(&store).await;
        store
            .create_key(&quota_key("k", 10_000), "test")
            .await
            .unwrap();
        // Replica A reserves, then stops heartbeating; replica B stays alive and
        // reserves after the staleness limit.
        store.heartbeat("rep_a", 1).await.unwrap();
        granted(&store, "k", 3000, "req-a", "rep_a").await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let stale_before = relay_store::now_ms();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        store.heartbeat("rep_b", 1).await.unwrap();
        granted(&store, "k", 2000, "req-b", "rep_b").await;
        assert_eq!(balance(&store, "k").await, (0, 5000), "{b}");

        // A's hold goes back, B's is untouched; A's replica row (nothing held) goes.
        let done = store.reconcile_holds(stale_before).await.unwrap();
        assert_eq!(
            done,
            relay_store::Reconciled {
                holds: 1,
                released: 3000,
                replicas_removed: 1
            },
            "{b}"
        );
        assert_eq!(balance(&store, "k").await, (0, 2000), "{b}");
        let (ledger_key, released, note): (String, i64, String) = sqlx::query_as(
            "SELECT key_id, released, note FROM quota_ledger WHERE note LIKE 'released: replica gone%'",
        )
        .fetch_one(&sql)
        .await
        .unwrap();
        assert_eq!((ledger_key.as_str(), released), ("k", 3000), "{b}");
        assert!(
            note.contains("req-a") && note.contains("rep_a"),
            "{b}: {note}"
        );
        let (holder,): (String,) = sqlx::query_as("SELECT request_id FROM quota_holds")
            .fetch_one(&sql)
            .await
            .unwrap();
        assert_eq!(holder, "req-b", "{b}");
        let (replica,): (String,) = sqlx::query_as("SELECT id FROM replicas")
            .fetch_one(&sql)
            .await
            .unwrap();
        assert_eq!(replica, "rep_b", "{b}");

        // Again: nothing more to do.
        assert_eq!(
            store.reconcile_holds(stale_before).await.unwrap(),
            relay_store::Reconciled::default(),
            "{b}"
        );
        assert_eq!(balance(&store, "k").await, (0, 2000), "{b}");

        // A's usage row arrives late (a spill replay): charged once, releases nothing,
        // and B's reservation stays whole.
        assert_eq!(
            store
                .insert_usage(&[settled_row("req-a", "k", 3000)])
                .await
                .unwrap(),
            1
        );
        assert_eq!(balance(&store, "k").await, (1500, 2000), "{b}");
        let (charged, released): (i64, i64) =
            sqlx::query_as("SELECT charged, released FROM quota_ledger WHERE request_id = 'req-a'")
                .fetch_one(&sql)
                .await
                .unwrap();
        assert_eq!((charged, released), (1500, 0), "{b}");
        // Replayed once more: no second charge.
        assert_eq!(
            store
                .insert_usage(&[settled_row("req-a", "k", 3000)])
                .await
                .unwrap(),
            0
        );
        assert_eq!(balance(&store, "k").await, (1500, 2000), "{b}");

        // B settles normally: its own 2000 comes off, nothing else.
        store
            .insert_usage(&[settled_row("req-b", "k", 2000)])
            .await
            .unwrap();
        assert_eq!(balance(&store, "k").await, (3000, 0), "{b}");
        assert_eq!(
            scalar(&sql, "SELECT CAST(COUNT(*) AS BIGINT) FROM quota_holds").await,
            0,
            "{b}"
        );

        // Release by request id takes exactly that hold, once.
        granted(&store, "k", 400, "req-c", "rep_b").await;
        granted(&store, "k", 600, "req-d", "rep_b").await;
        assert_eq!(store.release("req-c").await.unwrap(), 400, "{b}");
        assert_eq!(store.release("req-c").await.unwrap(), 0, "{b}");
        assert_eq!(balance(&store, "k").await, (3000, 600), "{b}");

        // A retired replica's row is gone; its holds are reconcilable once old enough.
        store.retire_replica("rep_b").await.unwrap();
        assert_eq!(
            scalar(&sql, "SELECT CAST(COUNT(*) AS BIGINT) FROM replicas").await,
            0,
            "{b}"
        );
        assert_eq!(
            store
                .reconcile_holds(relay_store::now_ms() + 1)
                .await
                .unwrap()
                .holds,
            1,
            "{b}"
        );
        assert_eq!(balance(&store, "k").await, (3000, 0), "{b}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reconcilers_release_each_hold_once() {
    for store in stores("reconcile_race").await {
        let b = format!("{:?}", store.backend());
        store
            .create_key(&quota_key("k", 100_000), "test")
            .await
            .unwrap();
        store.heartbeat("rep_live", 1).await.unwrap();
        // 60 holds of a replica that never heartbeat (no row at all), and 5 of a live one.
        for i in 0..60 {
            granted(&store, "k", 10 + i, &format!("gone-{i:02}"), "rep_gone").await;
        }
        let gone: i64 = (0..60).map(|i| 10 + i).sum();
        for i in 0..5 {
            granted(&store, "k", 1000, &format!("live-{i}"), "rep_live").await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let stale_before = relay_store::now_ms();
        store.heartbeat("rep_live", 1).await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.reconcile_holds(stale_before).await.unwrap()
            }));
        }
        let (mut holds, mut released) = (0, 0);
        for t in tasks {
            let done = t.await.unwrap();
            holds += done.holds;
            released += done.released;
        }
        assert_eq!((holds, released), (60, gone), "{b}");
        assert_eq!(balance(&store, "k").await, (0, 5000), "{b}");
        let sql = raw(&store).await;
        assert_eq!(
            scalar(
                &sql,
                "SELECT CAST(COUNT(*) AS BIGINT) FROM quota_ledger WHERE note LIKE 'released: replica gone%'"
            )
            .await,
            60,
            "{b}"
        );
        assert_eq!(
            scalar(
                &sql,
                "SELECT CAST(COUNT(*) AS BIGINT) FROM quota_holds WHERE replica = 'rep_live'"
            )
            .await,
            5,
            "{b}"
        );
    }
}

#[tokio::test]
async fn rows_spilled_by_an_older_gateway_settle_the_old_way() {
    for store in stores("legacy_hold").await {
        store
            .create_key(&quota_key("k", 10_000), "test")
            .await
            .unwrap();
        // A reservation made before quota holds existed: reserved, no hold row.
        let sql = raw(&store).await;
        sqlx::query("UPDATE api_keys SET quota_reserved = 3000 WHERE id = 'k'")
            .execute(&sql)
            .await
            .unwrap();
        // Its spill line has no `tracked` field.
        let mut row = serde_json::to_value(settled_row("old", "k", 3000)).unwrap();
        row["hold"].as_object_mut().unwrap().remove("tracked");
        let row: relay_store::UsageRow = serde_json::from_value(row).unwrap();
        assert!(!row.hold.unwrap().tracked);
        store.insert_usage(&[row]).await.unwrap();
        assert_eq!(balance(&store, "k").await, (1500, 0));
    }
}

#[tokio::test]
async fn a_database_deployed_with_the_first_migration_upgrades() {
    let mut dbs = vec![fresh_sqlite("upgrade").display().to_string()];
    match postgres_base_url() {
        Some(base) => dbs.push(fresh_postgres(&base, "relay_store_upgrade").await.unwrap()),
        None => skip_postgres("a_database_deployed_with_the_first_migration_upgrades"),
    }
    for url in dbs {
        let store = relay_store::connect(&url, 2).await.unwrap();
        // What an older gateway applied: 0001 alone, same description and checksum.
        let init = match store.backend() {
            relay_store::Backend::Postgres => include_str!("../migrations/postgres/0001_init.sql"),
            relay_store::Backend::Sqlite => include_str!("../migrations/sqlite/0001_init.sql"),
        };
        let old = sqlx::migrate::Migrator {
            migrations: std::borrow::Cow::Owned(vec![sqlx::migrate::Migration::new(
                1,
                "init".into(),
                sqlx::migrate::MigrationType::Simple,
                init.into(),
                false,
            )]),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        let sql = raw(&store).await;
        old.run(&sql).await.unwrap();
        store.migrate().await.unwrap();
        store
            .create_key(&quota_key("k", 100), "test")
            .await
            .unwrap();
        granted(&store, "k", 60, "req", "rep").await;
        assert_eq!(
            scalar(&sql, "SELECT CAST(COUNT(*) AS BIGINT) FROM quota_holds").await,
            1,
            "{url}"
        );
    }
}
