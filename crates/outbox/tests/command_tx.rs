//! A command's transaction ([`outbox::CommandTx`]) against a real server: begun with its first
//! statement, all or nothing (statements sent without waiting included), and a connection left
//! clean however it ends.

use outbox::tokio_postgres::error::SqlState;
use outbox::{CommandTx, PgSettings, param};
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

const INSERT: &str =
    "INSERT INTO idempotency_keys (user_id, key, fingerprint, status_code, response)
     VALUES ('00000000-0000-0000-0000-000000000001', $1, 'f', 200, '{}')";

/// Sends an insert of `key` without waiting for its answer.
async fn send(tx: &CommandTx<'_>, key: &str) -> Result<(), outbox::tokio_postgres::Error> {
    tx.send(
        &tx.prepare_cached(INSERT).await?,
        vec![param(key.to_owned())],
    )
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

#[tokio::test]
async fn statements_sent_without_waiting_commit_with_the_transaction() {
    let db = TestDb::new().await;
    let pool = one_connection(&db);
    let client = pool.get().await.expect("client");
    let tx = CommandTx::new(&client);
    // Many answers pending at once, and a statement prepared behind them (a round trip of its
    // own, answered after all of theirs).
    for i in 0..200 {
        send(&tx, &format!("k{i:03}")).await.expect("send");
    }
    let count = tx
        .prepare_cached("SELECT count(*) FROM idempotency_keys")
        .await
        .expect("prepare behind the sent statements");
    let seen: i64 = tx
        .query_opt(&count, &[])
        .await
        .expect("read")
        .map(|r| r.get(0))
        .unwrap_or_default();
    assert_eq!(
        seen, 200,
        "a read sees the statements sent before it, in its transaction"
    );
    assert!(keys(&db).await.is_empty(), "not visible before the commit");
    send(&tx, "last").await.expect("send");
    tx.commit().await.expect("commit");
    assert_eq!(keys(&db).await.len(), 201);
}

#[tokio::test]
async fn a_sent_statement_postgresql_refuses_fails_the_commit_with_its_own_error_and_commits_nothing()
 {
    let db = TestDb::new().await;
    let pool = one_connection(&db);
    let client = pool.get().await.expect("client");
    let tx = CommandTx::new(&client);
    send(&tx, "a").await.expect("send");
    send(&tx, "a")
        .await
        .expect("sent: only PostgreSQL can refuse it");
    send(&tx, "b").await.expect("send");
    let err = tx
        .commit()
        .await
        .expect_err("the duplicate must fail the commit");
    // The refused statement's error, not the "transaction is aborted" of those behind it.
    assert!(
        matches!(err, outbox::OutboxError::Conflict(_)),
        "unexpected error: {err:?}"
    );
    assert!(keys(&db).await.is_empty(), "nothing of it committed");

    // A statement that waits for its answer reports an earlier refusal the same way.
    let tx = CommandTx::new(&client);
    send(&tx, "c").await.expect("send");
    send(&tx, "c").await.expect("send");
    let err = insert(&tx, "d")
        .await
        .expect_err("the transaction is aborted");
    assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION), "{err}");
    drop(tx);

    // The connection is clean for the next user.
    let tx = CommandTx::new(&client);
    send(&tx, "kept").await.expect("send");
    tx.commit().await.expect("commit");
    assert_eq!(keys(&db).await, ["kept"]);
}

#[tokio::test]
async fn a_statement_the_client_cannot_send_fails_at_once_and_nothing_behind_it_commits() {
    let db = TestDb::new().await;
    let pool = one_connection(&db);
    let client = pool.get().await.expect("client");
    let tx = CommandTx::new(&client);
    send(&tx, "before").await.expect("send");
    // An integer for a text column: the driver refuses to encode it, so it is never sent; a
    // COMMIT queued behind it would have committed "before" alone.
    let statement = tx.prepare_cached(INSERT).await.expect("prepare");
    assert!(tx.send(&statement, vec![param(7_i32)]).is_err());
    drop(tx); // what the caller's `?` does
    let tx = CommandTx::new(&client);
    send(&tx, "after").await.expect("send");
    tx.commit().await.expect("commit");
    assert_eq!(keys(&db).await, ["after"]);
}

#[tokio::test]
async fn a_write_and_its_commit_cost_one_round_trip_and_a_read_one_more() {
    let db = TestDb::new().await;
    let proxy = test_kit::proxy::TcpProxy::postgres().await;
    let pool = outbox::connect(&PgSettings {
        url: proxy.postgres_url(),
        max_connections: 1,
        ..db.settings.clone()
    })
    .expect("pool");
    let client = pool.get().await.expect("client");
    // Prepared once per connection, as a service's are after its first commands.
    let tx = CommandTx::new(&client);
    send(&tx, "warm-up").await.expect("send");
    insert(&tx, "warm-up, waited").await.expect("insert");
    tx.commit().await.expect("commit");

    // A create's shape: BEGIN, its row, its events, COMMIT.
    let before = proxy.round_trips();
    let tx = CommandTx::new(&client);
    send(&tx, "row").await.expect("send");
    send(&tx, "events").await.expect("send");
    tx.commit().await.expect("commit");
    assert_eq!(
        proxy.round_trips() - before,
        1,
        "BEGIN, two writes and COMMIT in one"
    );
    // The same writes waiting for their answers: one round trip each, and one for COMMIT.
    let before = proxy.round_trips();
    let tx = CommandTx::new(&client);
    insert(&tx, "row, waited").await.expect("insert");
    insert(&tx, "events, waited").await.expect("insert");
    tx.commit().await.expect("commit");
    assert_eq!(proxy.round_trips() - before, 3);

    // An update's shape: a locking read first (its answer is needed), then the writes.
    let before = proxy.round_trips();
    let tx = CommandTx::new(&client);
    let read = tx
        .prepare_cached("SELECT key FROM idempotency_keys WHERE key = $1 FOR UPDATE")
        .await
        .expect("prepare");
    let _ = tx.query_opt(&read, &[&"row"]).await.expect("read");
    let after_prepare_and_read = proxy.round_trips() - before;
    send(&tx, "update").await.expect("send");
    tx.commit().await.expect("commit");
    assert_eq!(
        proxy.round_trips() - before,
        after_prepare_and_read + 1,
        "the writes and COMMIT after the read in one"
    );
    assert_eq!(
        keys(&db).await,
        [
            "events",
            "events, waited",
            "row",
            "row, waited",
            "update",
            "warm-up",
            "warm-up, waited"
        ]
    );
}
