//! Seeds many instances for one account straight into the control-plane's tables.
//!
//! Checking out 10,000 orders would take hours on the local cluster, and the control-plane's
//! diesel `schema` module is private, so these are plain SQL INSERTs against its tables
//! (`orders`, `instances`; the account is a real one, signed up through the API), written for
//! the schema of control-plane/migrations. The rows are DELETED instances: the provisioner's
//! resync converges every instance not deleted, and would otherwise try to create 10,000
//! namespaces in the local cluster. ListInstances does not filter by status, so listing them
//! costs what listing live ones would.

use std::path::Path;

use anyhow::Context as _;
use diesel::connection::SimpleConnection as _;
use diesel_async::{AsyncConnection as _, AsyncPgConnection, SimpleAsyncConnection as _};
use kapal::testing::Backend;

/// The INSERTs for `n` instances (and their orders) of `account_id`.
fn statements(backend: Backend, account_id: &str, n: u32) -> anyhow::Result<String> {
    anyhow::ensure!(
        uuid::Uuid::parse_str(account_id).is_ok(),
        "account id {account_id:?} is not a UUID"
    );
    Ok(match backend {
        Backend::Sqlite => format!(
            "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < {n}) \
             INSERT INTO orders (id, account_id, idempotency_key, app_id, plan_id, status, \
               failure_reason, amount, currency, subscription_id, instance_id, created_at, updated_at) \
             SELECT printf('5eed0000-0000-4000-8000-%012d', n), '{account_id}', printf('bench-seed-%08d', n), \
               'n8n', 'trial', 'completed', '', 0, 'IDR', NULL, printf('5eed1111-0000-4000-8000-%012d', n), \
               strftime('%Y-%m-%d %H:%M:%f', 'now', printf('-%d seconds', n)), \
               strftime('%Y-%m-%d %H:%M:%f', 'now', printf('-%d seconds', n)) FROM seq; \
             WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < {n}) \
             INSERT INTO instances (id, account_id, order_id, app_id, plan_id, hostname, namespace, \
               subscription_id, desired_state, status, status_reason, restart_generation, created_at, \
               updated_at, ready_at) \
             SELECT printf('5eed1111-0000-4000-8000-%012d', n), '{account_id}', \
               printf('5eed0000-0000-4000-8000-%012d', n), 'n8n', 'trial', \
               printf('seed-%d.n8n.kapal.bench', n), printf('kapal-seed-%d-n8n', n), NULL, \
               'deleted', 'deleted', 'Seeded by kapal-bench.', 0, \
               strftime('%Y-%m-%d %H:%M:%f', 'now', printf('-%d seconds', n)), \
               strftime('%Y-%m-%d %H:%M:%f', 'now', printf('-%d seconds', n)), NULL FROM seq;"
        ),
        Backend::Postgres => format!(
            "SET search_path TO kapal_control_plane; \
             INSERT INTO orders (id, account_id, idempotency_key, app_id, plan_id, status, \
               failure_reason, amount, currency, subscription_id, instance_id, created_at, updated_at) \
             SELECT '5eed0000-0000-4000-8000-' || lpad(n::text, 12, '0'), '{account_id}', \
               'bench-seed-' || lpad(n::text, 8, '0'), 'n8n', 'trial', 'completed', '', 0, 'IDR', NULL, \
               '5eed1111-0000-4000-8000-' || lpad(n::text, 12, '0'), \
               (now() AT TIME ZONE 'UTC') - n * interval '1 second', \
               (now() AT TIME ZONE 'UTC') - n * interval '1 second' \
             FROM generate_series(1, {n}) AS n; \
             INSERT INTO instances (id, account_id, order_id, app_id, plan_id, hostname, namespace, \
               subscription_id, desired_state, status, status_reason, restart_generation, created_at, \
               updated_at, ready_at) \
             SELECT '5eed1111-0000-4000-8000-' || lpad(n::text, 12, '0'), '{account_id}', \
               '5eed0000-0000-4000-8000-' || lpad(n::text, 12, '0'), 'n8n', 'trial', \
               'seed-' || n || '.n8n.kapal.bench', 'kapal-seed-' || n || '-n8n', NULL, \
               'deleted', 'deleted', 'Seeded by kapal-bench.', 0, \
               (now() AT TIME ZONE 'UTC') - n * interval '1 second', \
               (now() AT TIME ZONE 'UTC') - n * interval '1 second', NULL \
             FROM generate_series(1, {n}) AS n; \
             ANALYZE orders; ANALYZE instances;"
        ),
    })
}

/// Inserts `n` instances of `account_id` into the control-plane database of a running server:
/// `<data_dir>/control-plane.db` on SQLite, schema `kapal_control_plane` on PostgreSQL.
pub async fn instances(
    backend: Backend,
    data_dir: &Path,
    database_url: Option<&str>,
    account_id: &str,
    n: u32,
) -> anyhow::Result<()> {
    let sql = statements(backend, account_id, n)?;
    match backend {
        Backend::Sqlite => {
            let path = data_dir.join("control-plane.db");
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let mut conn = kapal::db::sqlite_sync(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                conn.batch_execute(&format!("BEGIN; {sql} COMMIT;"))?;
                Ok(())
            })
            .await??;
        }
        Backend::Postgres => {
            let url = database_url.context("no PostgreSQL URL")?;
            let mut conn = AsyncPgConnection::establish(url).await?;
            conn.batch_execute(&sql).await?;
        }
    }
    Ok(())
}
