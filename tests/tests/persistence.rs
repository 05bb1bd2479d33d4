//! The shared persistence plumbing (`kapal::db`) on both backends: API reads go through
//! `Db::read`, which must see every committed write, never an uncommitted one, and must not
//! wait for a write in progress (on SQLite: read-only connections beside the single writer).

use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::BigInt;
use diesel_async::{RunQueryDsl as _, SimpleAsyncConnection as _};
use kapal::db::{Db, DbConn};
use kapal::testing::Backend;

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn rows(conn: &mut DbConn<'_>) -> anyhow::Result<i64> {
    let count: Count = kapal::db!(conn, |c| diesel::sql_query(
        "SELECT COUNT(*) AS n FROM kapal_probe"
    )
    .get_result(c)
    .await)?;
    Ok(count.n)
}

async fn execute(conn: &mut DbConn<'_>, sql: &str) -> Result<(), diesel::result::Error> {
    kapal::db!(conn, |c| c.batch_execute(sql).await)
}

async fn reads_see_commits_and_never_wait_for_a_write(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = kapal::testing::db_config(backend, dir.path())
        .await
        .expect("database");
    // Any service's migrations will do: the test works on a table of its own.
    let db = Db::connect(&config, "probe", kapal_billing::migrations())
        .await
        .expect("connect");
    let mut writer = db.get().await.expect("writer");
    execute(
        &mut writer,
        "CREATE TABLE kapal_probe (id BIGINT PRIMARY KEY); INSERT INTO kapal_probe VALUES (1);",
    )
    .await
    .expect("create and insert");

    // A write in progress: the writer holds its transaction open while the reads run.
    execute(&mut writer, "BEGIN; INSERT INTO kapal_probe VALUES (2);")
        .await
        .expect("begin");
    let read = async {
        let mut reader = db.read().await?;
        rows(&mut reader).await
    };
    let seen = tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("a read waited for the open write transaction")
        .expect("read");
    assert_eq!(seen, 1, "a read saw a row that was not committed");

    // Many reads at once, still during the write.
    let reads = (0..16).map(|_| async {
        let mut reader = db.read().await?;
        rows(&mut reader).await
    });
    let all = tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(reads))
        .await
        .expect("parallel reads waited for the open write transaction");
    assert!(all.iter().all(|r| matches!(r, Ok(1))), "{:?}", all.len());

    execute(&mut writer, "COMMIT;").await.expect("commit");
    drop(writer);
    let mut reader = db.read().await.expect("reader");
    assert_eq!(
        rows(&mut reader).await.expect("read"),
        2,
        "a read after the commit must see it"
    );

    if backend == Backend::Sqlite {
        let refused = execute(&mut reader, "INSERT INTO kapal_probe VALUES (3);").await;
        let message = format!("{:?}", refused.expect_err("a reader must not write"));
        assert!(message.contains("readonly"), "{message}");
        drop(reader);
        let mut writer = db.get().await.expect("writer");
        assert_eq!(rows(&mut writer).await.expect("read"), 2);
    }
}

mod reads_see_commits_and_never_wait_for_a_write {
    #[tokio::test(flavor = "multi_thread")]
    async fn sqlite() {
        super::reads_see_commits_and_never_wait_for_a_write(kapal::testing::Backend::Sqlite).await
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn postgres() {
        super::reads_see_commits_and_never_wait_for_a_write(kapal::testing::Backend::Postgres).await
    }
}
