//! A command's transaction ([`outbox::CommandTx`]) against a real server: begun with its first
//! statement, all or nothing, and a connection left clean however it ends.

use outbox::{CommandTx, PgSettings};
use test_kit::TestDb;

/// A pool of one connection on `db`'s schema, so every transaction reuses the one before's.
fn one_connection(db: &TestDb) -> outbox::Pool {
    outbox::connect(&PgSettings {
        max_connections: 1,
        ..db.settings.clone()
    })
    .expect("pool")
}

async fn insert(tx: &CommandTx<'_>, key: &str) -> Result<u64, outbox::tokio_postgres::Error> {
    let statement = tx
        .prepare_cached(
            "INSERT INTO idempotency_keys (user_id, key, fingerprint, status_code, response)
             VALUES ('00000000-0000-0000-0000-000000000001', $1, 'f', 200, '{}')",
        )
        .await?;
    tx.execute(&statement, &[&key]).await
}

async fn keys(db: &TestDb) -> Vec<String> {
    let c = db.pool.get().await.expect("client");
    c.query("SELECT key FROM idempotency_keys ORDER BY key", &[])
        .await
        .expect("keys")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn the_first_statement_runs_inside_the_transaction_it_begins() {
    let db = TestDb::new().await;
    let pool = one_connection(&db);
    let client = pool.get().await.expect("client");
    let tx = CommandTx::new(&client);
    insert(&tx, "a").await.expect("insert");
    // In a transaction: it has an id, and nobody else sees the row yet.
    let xid = tx
        .query_opt(
            &tx.prepare_cached("SELECT pg_current_xact_id_if_assigned()::text")
                .await
                .expect("prepare"),
            &[],
        )
        .await
        .expect("xid")
        .and_then(|r| r.get::<_, Option<String>>(0));
    assert!(xid.is_some(), "the insert ran in a transaction");
    assert!(keys(&db).await.is_empty(), "not visible before the commit");
    tx.commit().await.expect("commit");
    assert_eq!(keys(&db).await, ["a"]);
}

#[tokio::test]
async fn a_transaction_dropped_or_failed_leaves_nothing_and_a_clean_connection() {
    let db = TestDb::new().await;
    let pool = one_connection(&db);
    {
        let client = pool.get().await.expect("client");
        let tx = CommandTx::new(&client);
        insert(&tx, "dropped").await.expect("insert");
        // Dropped unfinished: an early return, a cancelled request.
    }
    {
        let client = pool.get().await.expect("client");
        let tx = CommandTx::new(&client);
        insert(&tx, "first").await.expect("insert");
        // The same key again: the statement fails, the transaction is aborted.
        assert!(insert(&tx, "first").await.is_err());
    }
    {
        let client = pool.get().await.expect("client");
        let tx = CommandTx::new(&client);
        insert(&tx, "rolled back").await.expect("insert");
        tx.rollback().await.expect("rollback");
    }
    // Had any of them been left open, this would run inside it (and commit it, or fail).
    let client = pool.get().await.expect("client");
    let tx = CommandTx::new(&client);
    insert(&tx, "kept")
        .await
        .expect("insert on a clean connection");
    tx.commit().await.expect("commit");
    assert_eq!(keys(&db).await, ["kept"]);
    // A transaction with no statement sends nothing, and commits nothing.
    let tx = CommandTx::new(&client);
    tx.commit().await.expect("an empty commit");
}
