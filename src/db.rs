//! Persistence plumbing shared by the services: one body of diesel query code over two backends.
//!
//! Each service owns its tables. On the embedded default every service has its own SQLite file in
//! the data directory; on PostgreSQL every service has its own schema (`kapal_<service>`) in the
//! configured database. Migrations are embedded in each service crate (one folder per backend)
//! and run at start-up.
//!
//! Query code is written once and run on either backend with [`db!`](crate::db):
//!
//! ```text
//! let mut conn = db.get().await?;
//! let n: i64 = kapal::db!(&mut conn, |c| accounts::table.count().get_result(c).await)?;
//! ```
//!
//! Two ways to get a connection: [`Db::get`] for anything that writes, or reads in order to
//! write, and [`Db::read`] for a read on its own (an API read such as GetInstance or a listing).
//! On SQLite they are two pools of one file: a single writer (SQLite allows one writer at a time,
//! and one connection never meets `SQLITE_BUSY` inside a transaction) and a few read-only
//! connections that WAL mode lets read in parallel with it and each other, so a burst of reads
//! neither waits behind a write nor queues on one connection. A reader sees every transaction
//! committed before its query starts. On PostgreSQL both are the same pool. The writer's work
//! runs on tokio's blocking pool; a reader's runs where it is awaited ([`SqliteRuntime`]).
//!
//! Pooled connections are handed out without a test query (`RecyclingMethod::Fast`): a
//! `SELECT 1` before every query doubled the round trips of every read. A connection that broke
//! (PostgreSQL restarted) fails the one query that finds out, and the pool then replaces it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use diesel::SqliteConnection;
use diesel::connection::SimpleConnection as _;
use diesel_async::pooled_connection::bb8::{Pool, PooledConnection, RunError};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::sync_connection_wrapper::{SpawnBlocking, SyncConnectionWrapper};
use diesel_async::{
    AsyncConnection as _, AsyncMigrationHarness, AsyncPgConnection, SimpleAsyncConnection as _,
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness as _};
use futures::FutureExt as _;

/// The async SQLite connection: a synchronous diesel connection, run where its
/// [`SqliteRuntime`] says.
pub type SqliteConn = SyncConnectionWrapper<SqliteConnection, SqliteRuntime>;

/// Where a service keeps its data.
#[derive(Clone, Debug)]
pub enum DbConfig {
    /// SQLite files in this directory (`<dir>/<service>.db`).
    DataDir(PathBuf),
    /// A PostgreSQL connection URL; each service uses its own schema in that database.
    Postgres(String),
}

impl DbConfig {
    /// This configuration with `settings` on PostgreSQL connections (see
    /// [`PostgresSettings::apply_to`]); SQLite is unchanged. Without it, connections get
    /// [`PostgresSettings::default`].
    pub fn with_postgres_settings(self, settings: &PostgresSettings) -> anyhow::Result<DbConfig> {
        Ok(match self {
            DbConfig::Postgres(url) => DbConfig::Postgres(settings.apply_to(&url)?),
            sqlite => sqlite,
        })
    }

    /// Postgres when a URL is given, the data directory otherwise.
    pub fn new(database_url: Option<&str>, data_dir: PathBuf) -> anyhow::Result<DbConfig> {
        match database_url.map(str::trim).filter(|u| !u.is_empty()) {
            None => Ok(DbConfig::DataDir(data_dir)),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(DbConfig::Postgres(url.to_string()))
            }
            Some(_) => anyhow::bail!(
                "KAPAL_DATABASE_URL must be a postgres:// or postgresql:// URL; leave it unset to use SQLite files in the data directory"
            ),
        }
    }
}

/// Limits every pooled PostgreSQL connection gets, so that neither a runaway query nor a
/// silently dead connection (a NAT or firewall that dropped it, a database host that vanished)
/// holds a request, a lease or a pool slot for long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PostgresSettings {
    /// The server cancels a statement that runs longer (PostgreSQL's `statement_timeout`).
    /// Migrations run without it. Default 30 s.
    pub statement_timeout: Duration,
    /// TCP keep-alive probes start after the connection is idle this long (libpq's
    /// `keepalives_idle`); a peer that stopped answering is found out instead of waited on for
    /// the operating system's 2 hours. Default 60 s.
    pub keepalive_idle: Duration,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        PostgresSettings {
            statement_timeout: Duration::from_secs(30),
            keepalive_idle: Duration::from_secs(60),
        }
    }
}

impl PostgresSettings {
    /// `url` with these settings as connection parameters (`keepalives`, `keepalives_idle`,
    /// `options=-c statement_timeout=…`), except those the URL sets itself: an operator's own
    /// parameters win.
    pub fn apply_to(&self, url: &str) -> anyhow::Result<String> {
        anyhow::ensure!(
            !self.statement_timeout.is_zero(),
            "the database statement timeout must be longer than zero"
        );
        anyhow::ensure!(
            self.keepalive_idle >= Duration::from_secs(1),
            "the database keep-alive interval must be at least one second"
        );
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, query),
            None => (url, ""),
        };
        let mut params: Vec<String> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        let has =
            |params: &[String], key: &str| params.iter().any(|p| p.split('=').next() == Some(key));
        if !has(&params, "keepalives") {
            params.push("keepalives=1".into());
        }
        if !has(&params, "keepalives_idle") {
            params.push(format!("keepalives_idle={}", self.keepalive_idle.as_secs()));
        }
        if !has(&params, "options") {
            // `-c statement_timeout=<ms>`, percent-encoded.
            params.push(format!(
                "options=-c%20statement_timeout%3D{}",
                self.statement_timeout.as_millis()
            ));
        }
        Ok(format!("{base}?{}", params.join("&")))
    }
}

/// The migrations of one service, one folder per backend. Build it from two `const`s made with
/// `diesel_migrations::embed_migrations!`.
pub struct Migrations {
    pub postgres: EmbeddedMigrations,
    pub sqlite: EmbeddedMigrations,
}

/// A failure to reach or use the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database connection unavailable: {0}")]
    Pool(String),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
}

impl From<RunError> for DbError {
    fn from(e: RunError) -> Self {
        DbError::Pool(e.to_string())
    }
}

impl DbError {
    /// Whether this is a unique-constraint violation (e.g. a duplicate idempotency key).
    pub fn is_unique_violation(&self) -> bool {
        matches!(
            self,
            DbError::Query(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _
            ))
        )
    }

    /// Whether the row asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, DbError::Query(diesel::result::Error::NotFound))
    }
}

/// Read-only SQLite connections per database: reads in parallel with the writer and each other.
const SQLITE_READERS: u32 = 4;

/// A pool of connections to one service's database.
#[derive(Clone)]
pub enum Db {
    Postgres(Pool<AsyncPgConnection>),
    Sqlite {
        /// The one connection that writes.
        writer: Pool<SqliteConn>,
        /// Read-only connections (`PRAGMA query_only`), for [`Db::read`].
        readers: Pool<SqliteConn>,
    },
}

/// One pooled connection; use it with [`db!`](crate::db).
#[expect(
    clippy::large_enum_variant,
    reason = "one short-lived connection handle per request; boxing would add an allocation"
)]
pub enum DbConn<'a> {
    Postgres(PooledConnection<'a, AsyncPgConnection>),
    Sqlite(PooledConnection<'a, SqliteConn>),
}

/// Runs the same diesel code on whichever backend the connection is: `$c` is bound to the
/// backend's connection inside `$body`.
#[macro_export]
macro_rules! db {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::db::DbConn::Postgres($c) => $body,
            $crate::db::DbConn::Sqlite($c) => $body,
        }
    };
}

impl Db {
    /// Connects to `service`'s database and runs its pending migrations.
    pub async fn connect(
        config: &DbConfig,
        service: &str,
        migrations: Migrations,
    ) -> anyhow::Result<Db> {
        let db = match config {
            DbConfig::DataDir(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating the data directory {}", dir.display()))?;
                let path = dir.join(format!("{service}.db"));
                let url = path.to_string_lossy().into_owned();
                // Both pools connect lazily: the writer's first connection (the migrations)
                // creates the file and switches it to WAL mode, before any reader opens it.
                let writer = sqlite_pool(&url, 1, false)
                    .await
                    .with_context(|| format!("opening SQLite database {}", path.display()))?;
                let readers = sqlite_pool(&url, SQLITE_READERS, true)
                    .await
                    .with_context(|| format!("opening SQLite database {}", path.display()))?;
                Db::Sqlite { writer, readers }
            }
            DbConfig::Postgres(url) => {
                // The defaults, for whatever the URL (or with_postgres_settings) left unset.
                let url = &PostgresSettings::default().apply_to(url)?;
                let schema = format!("kapal_{}", service.replace('-', "_"));
                create_schema(url, &schema).await?;
                let mut manager_config = ManagerConfig::<AsyncPgConnection>::default();
                manager_config.recycling_method = RecyclingMethod::Fast;
                let setup_schema = schema.clone();
                manager_config.custom_setup = Box::new(move |url| {
                    let url = url.to_string();
                    let schema = setup_schema.clone();
                    async move {
                        let mut conn = AsyncPgConnection::establish(&url).await?;
                        conn.batch_execute(&format!(
                            "SET search_path TO {schema}; SET TIME ZONE 'UTC'"
                        ))
                        .await
                        .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                        Ok(conn)
                    }
                    .boxed()
                });
                let manager =
                    AsyncDieselConnectionManager::new_with_config(url.to_string(), manager_config);
                let pool = Pool::builder()
                    .max_size(16)
                    .connection_timeout(Duration::from_secs(10))
                    .build(manager)
                    .await
                    .context("connecting to PostgreSQL (check KAPAL_DATABASE_URL)")?;
                Db::Postgres(pool)
            }
        };
        db.migrate(migrations).await?;
        Ok(db)
    }

    async fn migrate(&self, migrations: Migrations) -> anyhow::Result<()> {
        let result = match self {
            Db::Postgres(pool) => {
                let mut conn = pool
                    .get_owned()
                    .await
                    .context("connecting to run migrations")?;
                // A migration may rewrite a big table: no statement timeout for it, and the
                // connection's own (from its connection options) back before the pool has it.
                conn.batch_execute("SET statement_timeout = 0")
                    .await
                    .context("preparing to run migrations")?;
                let source = migrations.postgres;
                let mut harness = AsyncMigrationHarness::new(conn);
                let result = tokio::task::block_in_place(|| {
                    harness.run_pending_migrations(source).map(|_| ())
                });
                let mut conn = harness.into_inner();
                conn.batch_execute("RESET statement_timeout")
                    .await
                    .context("after running migrations")?;
                result
            }
            Db::Sqlite { writer, .. } => {
                let conn = writer
                    .get_owned()
                    .await
                    .context("connecting to run migrations")?;
                let source = migrations.sqlite;
                tokio::task::block_in_place(|| {
                    AsyncMigrationHarness::new(conn)
                        .run_pending_migrations(source)
                        .map(|_| ())
                })
            }
        };
        result.map_err(|e| anyhow::anyhow!("running database migrations: {e}"))
    }

    /// A connection that may write (and reads what it is about to write).
    pub async fn get(&self) -> Result<DbConn<'_>, DbError> {
        Ok(match self {
            Db::Postgres(pool) => DbConn::Postgres(pool.get().await?),
            Db::Sqlite { writer, .. } => DbConn::Sqlite(writer.get().await?),
        })
    }

    /// A connection for a read that writes nothing afterwards: on SQLite one of the read-only
    /// connections (a write through it fails), on PostgreSQL the same pool as [`Db::get`].
    pub async fn read(&self) -> Result<DbConn<'_>, DbError> {
        Ok(match self {
            Db::Postgres(pool) => DbConn::Postgres(pool.get().await?),
            Db::Sqlite { readers, .. } => DbConn::Sqlite(readers.get().await?),
        })
    }

    /// Which backend this is, for logs.
    pub fn backend(&self) -> &'static str {
        match self {
            Db::Postgres(_) => "postgres",
            Db::Sqlite { .. } => "sqlite",
        }
    }
}

/// A pool of `size` connections to the SQLite file at `url`; read-only ones refuse writes.
async fn sqlite_pool(url: &str, size: u32, read_only: bool) -> anyhow::Result<Pool<SqliteConn>> {
    let mut manager_config = ManagerConfig::<SqliteConn>::default();
    manager_config.recycling_method = RecyclingMethod::Fast;
    manager_config.custom_setup = Box::new(move |url| {
        let url = url.to_string();
        async move {
            let runtime = if read_only {
                SqliteRuntime::Inline
            } else {
                SqliteRuntime::blocking()
            };
            let conn = tokio::task::spawn_blocking(move || {
                <SqliteConnection as diesel::Connection>::establish(&url)
            })
            .await
            .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))??;
            let mut conn = SqliteConn::with_runtime(conn, runtime);
            let pragmas = if read_only {
                // journal_mode is the file's (set by the writer); a reader only waits and reads.
                "PRAGMA query_only = ON; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;"
            } else {
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                 PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;"
            };
            conn.batch_execute(pragmas)
                .await
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        }
        .boxed()
    });
    let manager = AsyncDieselConnectionManager::new_with_config(url, manager_config);
    Ok(Pool::builder()
        .max_size(size)
        .connection_timeout(Duration::from_secs(30))
        .build(manager)
        .await?)
}

async fn create_schema(url: &str, schema: &str) -> anyhow::Result<()> {
    let mut conn = AsyncPgConnection::establish(url)
        .await
        .context("connecting to PostgreSQL (check KAPAL_DATABASE_URL)")?;
    // Two services starting at once may race to create their schemas; retry once.
    let sql = format!("CREATE SCHEMA IF NOT EXISTS {schema}");
    if conn.batch_execute(&sql).await.is_err() {
        conn.batch_execute(&sql)
            .await
            .with_context(|| format!("creating schema {schema}"))?;
    }
    Ok(())
}

/// Where a SQLite connection does its (synchronous) work.
pub enum SqliteRuntime {
    /// On tokio's blocking pool: the writer, whose work may wait for a lock held by another
    /// process or for the disk.
    Blocking(tokio::runtime::Handle),
    /// Right where the query is awaited: the read-only connections. In WAL mode a read never
    /// waits for the writer, and Kapal's reads are indexed lookups and bounded pages that take
    /// microseconds; handing each one to a blocking thread and waking the caller again cost more
    /// CPU than the query itself (a third of a GetInstance in the read benchmark).
    Inline,
}

impl SqliteRuntime {
    fn blocking() -> SqliteRuntime {
        SqliteRuntime::Blocking(tokio::runtime::Handle::current())
    }
}

impl SpawnBlocking for SqliteRuntime {
    fn spawn_blocking<'a, R>(
        &mut self,
        task: impl FnOnce() -> R + Send + 'static,
    ) -> futures::future::BoxFuture<'a, Result<R, Box<dyn std::error::Error + Send + Sync + 'static>>>
    where
        R: Send + 'static,
    {
        match self {
            SqliteRuntime::Inline => futures::future::ready(Ok(task())).boxed(),
            SqliteRuntime::Blocking(handle) => FinishOnDrop {
                task: handle.spawn_blocking(task),
                handle: handle.clone(),
            }
            .map(|r| r.map_err(Box::from))
            .boxed(),
        }
    }

    fn get_runtime() -> SqliteRuntime {
        SqliteRuntime::blocking()
    }
}

/// A blocking task that is waited for if its caller gives up (a cancelled request): the
/// connection goes back to the pool only once its work is done, as diesel-async's own runtime
/// does.
struct FinishOnDrop<R> {
    task: tokio::task::JoinHandle<R>,
    handle: tokio::runtime::Handle,
}

impl<R> std::future::Future for FinishOnDrop<R> {
    type Output = Result<R, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.task).poll(cx)
    }
}

impl<R> Drop for FinishOnDrop<R> {
    fn drop(&mut self) {
        if !self.task.is_finished() {
            let (task, handle) = (&mut self.task, &self.handle);
            tokio::task::block_in_place(|| {
                let _ = handle.block_on(task);
            });
        }
    }
}

/// Opens a plain synchronous SQLite connection (for tools and tests).
pub fn sqlite_sync(path: &std::path::Path) -> anyhow::Result<SqliteConnection> {
    use diesel::Connection as _;
    let mut conn = SqliteConnection::establish(&path.to_string_lossy())?;
    conn.batch_execute("PRAGMA busy_timeout = 10000;")?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use diesel_migrations::EmbeddedMigrations;

    use super::*;

    const NO_MIGRATIONS: EmbeddedMigrations = EmbeddedMigrations::new(&[]);

    fn no_migrations() -> Migrations {
        Migrations {
            postgres: NO_MIGRATIONS,
            sqlite: NO_MIGRATIONS,
        }
    }

    #[test]
    fn settings_become_connection_parameters_and_the_operators_own_win() {
        let s = PostgresSettings {
            statement_timeout: Duration::from_millis(1500),
            keepalive_idle: Duration::from_secs(20),
        };
        assert_eq!(
            s.apply_to("postgres://u:p@db/kapal").ok().as_deref(),
            Some(
                "postgres://u:p@db/kapal?keepalives=1&keepalives_idle=20&options=-c%20statement_timeout%3D1500"
            )
        );
        assert_eq!(
            s.apply_to("postgres://db/k?sslmode=disable&keepalives_idle=5&options=-c%20x%3Dy")
                .ok()
                .as_deref(),
            Some(
                "postgres://db/k?sslmode=disable&keepalives_idle=5&options=-c%20x%3Dy&keepalives=1"
            )
        );
        let zero = PostgresSettings {
            statement_timeout: Duration::ZERO,
            ..s
        };
        assert!(zero.apply_to("postgres://db/k").is_err());
    }

    async fn show(db: &Db, setting: &str) -> String {
        #[derive(diesel::QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Text)]
            value: String,
        }
        let mut conn = db.get().await.expect("a connection");
        let DbConn::Postgres(c) = &mut conn else {
            panic!("not PostgreSQL");
        };
        let rows: Vec<Row> = diesel_async::RunQueryDsl::load(
            diesel::sql_query(format!("SELECT current_setting('{setting}') AS value")),
            &mut **c,
        )
        .await
        .expect("current_setting");
        rows.into_iter().next().map(|r| r.value).unwrap_or_default()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_postgres_query_longer_than_the_statement_timeout_is_cancelled() {
        let url = crate::testing::fresh_postgres_database()
            .await
            .expect("a PostgreSQL database (KAPAL_TEST_DATABASE_URL)");

        // Kapal's defaults, with nothing configured.
        let db = Db::connect(&DbConfig::Postgres(url.clone()), "probe", no_migrations())
            .await
            .expect("connect");
        assert_eq!(show(&db, "statement_timeout").await, "30s");

        let config = DbConfig::Postgres(url)
            .with_postgres_settings(&PostgresSettings {
                statement_timeout: Duration::from_secs(1),
                keepalive_idle: Duration::from_secs(30),
            })
            .expect("settings");
        let db = Db::connect(&config, "probe", no_migrations())
            .await
            .expect("connect");
        assert_eq!(show(&db, "statement_timeout").await, "1s");
        let mut conn = db.get().await.expect("a connection from the pool");
        let started = Instant::now();
        let slow = crate::db!(&mut conn, |c| c.batch_execute("SELECT pg_sleep(5)").await);
        let elapsed = started.elapsed();
        let error = slow.expect_err("a 5 s query under a 1 s statement timeout");
        assert!(error.to_string().contains("statement timeout"), "{error}");
        assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
        // The connection is still good for the next query.
        crate::db!(&mut conn, |c| c.batch_execute("SELECT 1").await).expect("next query");
    }
}
