//! Helpers for tests against real databases: a fresh SQLite file, or a fresh database
//! on the Postgres server named by `DATABASE_URL` (so tests can run in parallel).

use std::path::PathBuf;

use sqlx::Connection;

/// The Postgres server for tests, if `DATABASE_URL` names one.
pub fn postgres_base_url() -> Option<String> {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"))
}

/// Create a database `name` (dropped first if it exists) on the server of `base` and
/// return its URL.
pub async fn fresh_postgres(base: &str, name: &str) -> Result<String, sqlx::Error> {
    let mut conn = sqlx::postgres::PgConnection::connect(base).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    let _ = conn.close().await;
    let (head, tail) = base.split_once("://").unwrap_or(("postgres", base));
    let authority = tail.split('/').next().unwrap_or(tail);
    Ok(format!("{head}://{authority}/{name}"))
}

/// A fresh SQLite file path (in a new temporary directory).
pub fn fresh_sqlite(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "relay-store-test-{}-{name}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let _ = std::fs::create_dir_all(&dir);
    dir.join("relay.db")
}

/// Say loudly that Postgres tests are skipped.
pub fn skip_postgres(test: &str) {
    eprintln!(
        "\n!!!!!!!!\n!!! {test}: DATABASE_URL is not a postgres:// URL; the Postgres half is SKIPPED (scripts/test starts one).\n!!!!!!!!\n"
    );
}
