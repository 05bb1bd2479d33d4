//! Helpers for tests of every crate: databases on both backends.

use std::path::Path;

use anyhow::Context as _;
use diesel_async::{AsyncConnection as _, AsyncPgConnection, SimpleAsyncConnection as _};

use crate::db::DbConfig;

/// The two persistence backends every storage test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Environment variable with an admin URL of the PostgreSQL server for tests
/// (`scripts/postgres up` starts one and prints it).
pub const TEST_DATABASE_URL: &str = "KAPAL_TEST_DATABASE_URL";

/// A fresh, empty database for one test: SQLite files in `dir`, or a new PostgreSQL database
/// on the server named by `KAPAL_TEST_DATABASE_URL`.
pub async fn db_config(backend: Backend, dir: &Path) -> anyhow::Result<DbConfig> {
    match backend {
        Backend::Sqlite => Ok(DbConfig::DataDir(dir.to_path_buf())),
        Backend::Postgres => Ok(DbConfig::Postgres(fresh_postgres_database().await?)),
    }
}

/// Creates a new empty PostgreSQL database and returns its URL.
pub async fn fresh_postgres_database() -> anyhow::Result<String> {
    let admin = std::env::var(TEST_DATABASE_URL).with_context(|| {
        format!("{TEST_DATABASE_URL} is not set: run `scripts/postgres up` and export the URL it prints (scripts/test does this)")
    })?;
    let name = format!("kapal_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = AsyncPgConnection::establish(&admin)
        .await
        .with_context(|| format!("connecting to {TEST_DATABASE_URL}"))?;
    conn.batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .context("creating a test database")?;
    let (base, _) = admin
        .rsplit_once('/')
        .context("KAPAL_TEST_DATABASE_URL must end in /<database>")?;
    Ok(format!("{base}/{name}"))
}
