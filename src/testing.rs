//! Helpers for tests of every crate: databases on both backends, and
//! [`on_both_backends!`](crate::on_both_backends) to run a test on each.

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

/// Runs each named `async fn(Backend) -> T` once on SQLite and once on PostgreSQL, as the tests
/// `<name>::sqlite` and `<name>::postgres`, each on its own multi-threaded runtime. A test
/// returns what the function returns: `()`, or a `Result` (such as `anyhow::Result<()>`) that
/// fails the test when it is an error.
///
/// ```ignore
/// kapal::on_both_backends!(checkout_is_idempotent, restart_loses_nothing);
/// // Tests that start many services may ask for a number of worker threads:
/// kapal::on_both_backends!(worker_threads = 4; customer_journey);
/// ```
#[macro_export]
macro_rules! on_both_backends {
    (@tests $threads:expr; $($name:ident),*) => {$(
        mod $name {
            #[test]
            fn sqlite() -> impl ::std::process::Termination {
                $crate::testing::runtime($threads)
                    .block_on(::std::boxed::Box::pin(super::$name($crate::testing::Backend::Sqlite)))
            }

            #[test]
            fn postgres() -> impl ::std::process::Termination {
                $crate::testing::runtime($threads)
                    .block_on(::std::boxed::Box::pin(super::$name($crate::testing::Backend::Postgres)))
            }
        }
    )*};
    (worker_threads = $threads:expr; $($name:ident),* $(,)?) => {
        $crate::on_both_backends!(@tests ::std::option::Option::Some($threads); $($name),*);
    };
    ($($name:ident),* $(,)?) => {
        $crate::on_both_backends!(@tests ::std::option::Option::None; $($name),*);
    };
}

/// The runtime of a test [`on_both_backends!`](crate::on_both_backends) generates:
/// multi-threaded with `worker_threads` workers (one per core when `None`), like
/// `#[tokio::test(flavor = "multi_thread")]`.
#[doc(hidden)]
pub fn runtime(worker_threads: Option<usize>) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads {
        builder.worker_threads(n);
    }
    builder
        .enable_all()
        .build()
        .expect("building a test runtime")
}
