//! The store commands of `relay-gateway`: `migrate`, `keys create|list|revoke`,
//! `channels add|list|test`, `usage`. They talk to the database directly (the same
//! [`relay_store::Store`] the gateway uses), so they work with or without a running
//! gateway; running gateways pick changes up through the store (NOTIFY or polling).
//! Every command takes `--json`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use relay_core::ChannelConfig;
use relay_store::model::UsageGroup;
use relay_store::{SharedStore, now_ms};
use serde_json::json;

use crate::admin::ops::{self, KeySpec};
use crate::tenancy::StoreOptions;
use crate::tenancy::start::open_store;

const ACTOR: &str = "cli";

/// Where the database is.
#[derive(Args, Debug, Clone)]
pub struct DbArgs {
    /// Postgres or SQLite URL (`postgres://...`, `sqlite://PATH`).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// The gateway's config file: without --database-url, its embedded SQLite file
    /// (`<config dir>/relay-data/<stem>.db`) is used.
    #[arg(short, long, env = "RELAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Store options of `serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeStoreArgs {
    /// Postgres URL (or `sqlite://PATH`); default: the embedded SQLite file
    /// `<config dir>/relay-data/<config stem>.db`.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Run from the config file alone, without a store (no virtual keys, quotas,
    /// usage rows or admin API); wins over --database-url / DATABASE_URL.
    #[arg(long)]
    pub no_store: bool,
    /// Admin API address.
    #[arg(long, env = "RELAY_ADMIN_LISTEN", default_value = "127.0.0.1:8081")]
    pub admin_listen: SocketAddr,
    /// Admin API token (16+ characters); without one the admin API is off.
    #[arg(long, env = "RELAY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

impl ServeStoreArgs {
    /// The store options for a config file.
    pub fn options(&self, config_path: PathBuf) -> StoreOptions {
        let mut o = StoreOptions::new(config_path);
        o.database_url = self.database_url.clone();
        o.admin = self.admin_token.clone().map(|t| (self.admin_listen, t));
        o
    }
}

/// `keys ...`
#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key; it is printed once.
    Create {
        /// Where the database is.
        #[command(flatten)]
        db: DbArgs,
        /// The key's name (its id in usage).
        #[arg(long)]
        name: String,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u32>,
        /// Tokens per minute.
        #[arg(long)]
        tpm: Option<u64>,
        /// Quota in tokens.
        #[arg(long, conflicts_with = "quota_usd")]
        quota_tokens: Option<i64>,
        /// Quota in USD (priced with the pricing table).
        #[arg(long)]
        quota_usd: Option<f64>,
        /// Expire after this many days.
        #[arg(long)]
        expires_in_days: Option<u32>,
        /// A preset the key may use (repeat; default: any).
        #[arg(long = "allow-preset")]
        allow_presets: Vec<String>,
        /// A bare model the key may use (repeat; default: any).
        #[arg(long = "allow-model")]
        allow_models: Vec<String>,
        /// Channel group.
        #[arg(long)]
        group: Option<String>,
    },
    /// List keys (never the keys themselves).
    List {
        /// Where the database is.
        #[command(flatten)]
        db: DbArgs,
    },
    /// Revoke a key.
    Revoke {
        /// Where the database is.
        #[command(flatten)]
        db: DbArgs,
        /// The key's name.
        id: String,
    },
}

/// `channels ...`
#[derive(Subcommand, Debug)]
pub enum ChannelsCommand {
    /// Add (or replace) a channel; the whole config is validated first.
    Add {
        /// Where the database is.
        #[command(flatten)]
        db: DbArgs,
        /// Channel id.
        #[arg(long)]
        id: String,
        /// Provider name from the catalog (`openai`, `anthropic`, `openai-compatible`...).
        #[arg(long)]
        provider: String,
        /// Base URL (default: the provider's).
        #[arg(long)]
        base_url: Option<String>,
        /// A model it serves (repeat).
        #[arg(long = "model")]
        models: Vec<String>,
        /// Read the credential from this environment variable of the gateway.
        #[arg(long)]
        api_key_env: Option<String>,
        /// The credential itself, stored encrypted (prefer RELAY_CHANNEL_API_KEY).
        #[arg(long, env = "RELAY_CHANNEL_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// A group (repeat).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Weight inside its priority tier.
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Priority tier (higher first).
        #[arg(long, default_value_t = 0)]
        priority: i32,
        /// Allow a loopback or private-network base URL.
        #[arg(long)]
        allow_private_network: bool,
    },
    /// List channels (credentials masked).
    List {
        /// Where the database is.
        #[command(flatten)]
        db: DbArgs,
    },
    /// Send one live request to a channel.
    Test {
        /// Where the database is.
        #[command(flatten)]
        db: DbArgs,
        /// Channel id.
        id: String,
        /// The model to ask for (default: its first).
        #[arg(long)]
        model: Option<String>,
    },
}

/// `usage`
#[derive(Args, Debug)]
pub struct UsageArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Group by key, preset, channel or model.
    #[arg(long, default_value = "key")]
    by: String,
    /// How far back: `30m`, `24h`, `7d`.
    #[arg(long, default_value = "24h")]
    since: String,
    /// Only this key.
    #[arg(long)]
    key: Option<String>,
}

/// A store command.
#[derive(Debug)]
pub enum StoreCommand {
    /// `migrate`
    Migrate(DbArgs),
    /// `keys ...`
    Keys(KeysCommand),
    /// `channels ...`
    Channels(ChannelsCommand),
    /// `usage`
    Usage(UsageArgs),
}

/// Run a store command to completion.
pub fn run(cmd: StoreCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn open(db: &DbArgs) -> Result<SharedStore, String> {
    let config = match (&db.database_url, &db.config) {
        (None, None) => {
            return Err("name the database: --database-url (or DATABASE_URL), or --config FILE for its embedded SQLite file".into());
        }
        (_, Some(c)) => c.clone(),
        (Some(_), None) => PathBuf::from("relay.toml"),
    };
    let mut o = StoreOptions::new(config);
    o.database_url = db.database_url.clone();
    o.max_connections = 2;
    open_store(&o).await
}

fn print(json_out: bool, value: &serde_json::Value, table: impl FnOnce() -> String) {
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        print!("{}", table());
    }
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(headers.iter().map(|h| (*h).to_owned()).collect(), &mut out);
    for r in rows {
        line(r, &mut out);
    }
    out
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

async fn execute(cmd: StoreCommand) -> Result<(), String> {
    match cmd {
        StoreCommand::Migrate(db) => {
            let store = open(&db).await?;
            let v = store.config_version().await.map_err(|e| e.to_string())?;
            print(
                db.json,
                &json!({"migrated": true, "backend": format!("{:?}", store.backend()), "config_version": v}),
                || format!("migrations applied ({:?})\n", store.backend()),
            );
        }
        StoreCommand::Keys(KeysCommand::Create {
            db,
            name,
            rpm,
            tpm,
            quota_tokens,
            quota_usd,
            expires_in_days,
            allow_presets,
            allow_models,
            group,
        }) => {
            let store = open(&db).await?;
            let spec = KeySpec {
                name: Some(name),
                allowed_presets: Some(allow_presets),
                allowed_models: Some(allow_models),
                rpm,
                tpm,
                quota_tokens,
                quota_usd,
                expires_at: expires_in_days.map(|d| now_ms() + i64::from(d) * 86_400_000),
                group,
                revoked: None,
            };
            let created = ops::create_key(&store, &spec, ACTOR)
                .await
                .map_err(admin_text)?;
            print(db.json, &json!(created), || {
                format!(
                    "created key {:?}: {}\n(shown once: store it now)\n",
                    created.record.id, created.key
                )
            });
        }
        StoreCommand::Keys(KeysCommand::List { db }) => {
            let store = open(&db).await?;
            let keys = store.keys().await.map_err(|e| e.to_string())?;
            print(db.json, &json!({"keys": keys}), || {
                table(
                    &[
                        "NAME", "PREFIX", "OWNER", "RPM", "TPM", "QUOTA", "USED", "RESERVED",
                        "EXPIRES", "REVOKED",
                    ],
                    keys.iter()
                        .map(|k| {
                            vec![
                                k.id.clone(),
                                opt(k.prefix.clone()),
                                k.owner.as_str().to_owned(),
                                opt(k.rpm),
                                opt(k.tpm),
                                opt(k.quota.map(|q| format!("{} {}", q.limit, q.kind.as_str()))),
                                k.quota_used.to_string(),
                                k.quota_reserved.to_string(),
                                opt(k.expires_at),
                                k.revoked.to_string(),
                            ]
                        })
                        .collect(),
                )
            });
        }
        StoreCommand::Keys(KeysCommand::Revoke { db, id }) => {
            let store = open(&db).await?;
            if !store
                .revoke_key(&id, ACTOR)
                .await
                .map_err(|e| e.to_string())?
            {
                return Err(format!("no key named {id:?}"));
            }
            print(db.json, &json!({"revoked": id}), || {
                format!("revoked {id:?}\n")
            });
        }
        StoreCommand::Channels(ChannelsCommand::Add {
            db,
            id,
            provider,
            base_url,
            models,
            api_key_env,
            api_key,
            groups,
            weight,
            priority,
            allow_private_network,
        }) => {
            let store = open(&db).await?;
            let mut ch = ChannelConfig::new(id, provider);
            ch.base_url = base_url;
            ch.models = models;
            ch.api_key_env = api_key_env;
            ch.api_keys = api_key.into_iter().map(relay_core::Secret::new).collect();
            ch.groups = groups;
            ch.weight = weight;
            ch.priority = priority;
            ch.allow_private_network = allow_private_network;
            ops::check_channel_change(
                &store,
                &ch.id,
                Some(&ch),
                Default::default(),
                Default::default(),
            )
            .await
            .map_err(admin_text)?;
            store
                .put_channel(&ch, ACTOR)
                .await
                .map_err(|e| e.to_string())?;
            print(db.json, &ops::masked_channel(&ch), || {
                format!("channel {:?} saved\n", ch.id)
            });
        }
        StoreCommand::Channels(ChannelsCommand::List { db }) => {
            let store = open(&db).await?;
            let chans = store.channels().await.map_err(|e| e.to_string())?;
            let v = json!({"channels": chans.iter().map(|c| ops::masked_channel(&c.config)).collect::<Vec<_>>()});
            print(db.json, &v, || {
                table(
                    &["ID", "PROVIDER", "BASE URL", "MODELS", "ENABLED", "OWNER"],
                    chans
                        .iter()
                        .map(|c| {
                            vec![
                                c.config.id.clone(),
                                c.config.provider.clone(),
                                opt(c.config.base_url.clone()),
                                c.config.models.join(","),
                                c.config.enabled.to_string(),
                                c.owner.as_str().to_owned(),
                            ]
                        })
                        .collect(),
                )
            });
        }
        StoreCommand::Channels(ChannelsCommand::Test { db, id, model }) => {
            let store = open(&db).await?;
            let ch = store
                .channel(&id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no channel {id:?}"))?;
            if ch.config.provider == "mock" && ch.config.base_url.is_none() {
                return Err("the built-in mock runs inside the gateway; test it through the admin API (POST /admin/channels/{id}/test)".into());
            }
            let mut config = ch.config;
            config.enabled = true;
            let result = ops::test_channel(config, model).await.map_err(admin_text)?;
            let ok = result.ok;
            print(db.json, &json!(result), || {
                format!(
                    "{} {} in {} ms (model {})\n{}\n",
                    if result.ok { "ok" } else { "FAILED" },
                    result.status,
                    result.latency_ms,
                    result.model,
                    result.body
                )
            });
            if !ok {
                return Err(format!("channel {id:?} failed its test"));
            }
        }
        StoreCommand::Usage(UsageArgs { db, by, since, key }) => {
            let store = open(&db).await?;
            let group = UsageGroup::parse(&by)
                .ok_or_else(|| format!("--by {by:?}: use key, preset, channel or model"))?;
            let span = parse_span(&since)
                .ok_or_else(|| format!("--since {since:?}: use e.g. 30m, 24h, 7d"))?;
            let to = now_ms() + 1;
            let report = store
                .usage_report(group, to - span, to, key.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            print(db.json, &json!(report), || {
                let row = |l: &relay_store::model::UsageLine, name: String| {
                    vec![
                        name,
                        l.requests.to_string(),
                        l.errors.to_string(),
                        l.input_tokens.to_string(),
                        l.output_tokens.to_string(),
                        l.cached_tokens.to_string(),
                        format!("{:.6}", l.cost_micros as f64 / 1e6),
                    ]
                };
                let mut rows: Vec<Vec<String>> = report
                    .lines
                    .iter()
                    .map(|l| row(l, l.group.clone().unwrap_or_else(|| "-".into())))
                    .collect();
                rows.push(row(&report.total, "TOTAL".into()));
                table(
                    &[
                        &by.to_uppercase(),
                        "REQUESTS",
                        "ERRORS",
                        "INPUT",
                        "OUTPUT",
                        "CACHED",
                        "COST USD",
                    ],
                    rows,
                )
            });
        }
    }
    Ok(())
}

fn admin_text(e: crate::admin::AdminError) -> String {
    e.to_string()
}

fn parse_span(s: &str) -> Option<i64> {
    let (num, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: i64 = num.parse().ok()?;
    let ms = match unit {
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(ms)
}

#[cfg(test)]
mod tests {
    #[test]
    fn spans() {
        assert_eq!(super::parse_span("24h"), Some(86_400_000));
        assert_eq!(super::parse_span("30m"), Some(1_800_000));
        assert_eq!(super::parse_span("x"), None);
    }
}
