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
        for _ in 0..40 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.reserve("racer", 100).await.unwrap()
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
            store.reserve("k", 3000).await.unwrap(),
            Reservation::Granted { .. }
        ));
        let prices: PriceTable = Arc::default();
        prices.store(Arc::new(
            store.prices().await.unwrap().into_iter().collect(),
        ));
        let hold = Some(QuotaHold {
            kind: QuotaKind::Tokens,
            reserved: 3000,
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
