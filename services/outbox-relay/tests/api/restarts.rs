//! The relay through real server restarts, and with a transaction that commits late.

use std::time::Duration;

use events::EventContext;
use outbox::PgSettings;
use service_kit::startup::App as _;
use streams::{RedisPools, RedisSettings};
use test_kit::events_check::{audit_streams, write_events};
use test_kit::servers::{PrivatePostgres, PrivateRedis};
use test_kit::{TestDb, TestRedis, eventually};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use outbox_relay::Application;

use crate::helpers::*;

#[tokio::test]
async fn publishing_survives_redis_and_postgres_restarts_with_nothing_lost() {
    let pg = PrivatePostgres::start().await;
    let mut redis = PrivateRedis::start(true).await;
    let pg_settings = PgSettings::new(pg.url(), "relay_restarts");
    let pool = outbox::connect(&pg_settings).expect("pool");
    outbox::migrate::migrate(&pool, "relay_restarts")
        .await
        .expect("migrate");
    let app = Application::build(settings(&pg.url(), "relay_restarts", &redis.url(), "", 4))
        .await
        .expect("build");
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(app.run_until_stopped(shutdown.clone()));

    // Concurrent writers keep committing while both servers restart underneath the relay.
    let writer = {
        let pool = pool.clone();
        tokio::spawn(async move { write_events(&pool, 50, 3000, 4, 4).await })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.kill().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.start_again().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    pg.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.start_again().await;
    let committed = writer.await.expect("writer");
    assert_eq!(committed, 3000);

    eventually(
        Duration::from_secs(30),
        "outbox drained after the restarts",
        || async { (outbox_len(&pool).await == Some(0)).then_some(()) },
    )
    .await;
    let redis_pools = RedisPools::connect(&RedisSettings::new(redis.url(), "")).expect("pools");
    let audit = audit_streams(&pool, &redis_pools, "task", 4).await;
    eprintln!(
        "restarts: {} committed, {} entries, {} duplicates",
        audit.committed, audit.entries, audit.duplicates
    );
    assert!(
        audit.missing.is_empty(),
        "lost {} events",
        audit.missing.len()
    );
    assert!(
        audit.out_of_order.is_empty(),
        "out of order: {:?}",
        &audit.out_of_order[..audit.out_of_order.len().min(3)]
    );
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), run).await;
}

#[tokio::test]
async fn a_transaction_committing_late_with_a_low_sequence_is_still_published() {
    let db = TestDb::new().await;
    let r = TestRedis::new().await;
    let app = Application::build(settings(
        &test_kit::database_url(),
        &db.schema,
        &test_kit::redis_url(),
        &r.prefix,
        1,
    ))
    .await
    .expect("build");
    let shutdown = CancellationToken::new();
    let _run = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let ctx = EventContext::new(None, None, "test");
    let (early, late) = (Uuid::now_v7(), Uuid::now_v7());

    let mut slow = db.pool.get().await.expect("client");
    let slow_tx = slow.transaction().await.expect("tx");
    outbox::append_events(
        &slow_tx,
        &[ctx.envelope("Task", early, 1, "task.updated", serde_json::json!({}))],
        1,
    )
    .await
    .expect("low sequence taken");
    {
        let mut c = db.pool.get().await.expect("client");
        let tx = c.transaction().await.expect("tx");
        outbox::append_events(
            &tx,
            &[ctx.envelope("Task", late, 1, "task.updated", serde_json::json!({}))],
            1,
        )
        .await
        .expect("append");
        tx.commit().await.expect("commit");
    }
    eventually(
        Duration::from_secs(5),
        "the later commit is published",
        || async {
            let seen = test_kit::events_check::stream_events(&r.pools, "task", 1).await;
            (seen.len() == 1 && seen[0].aggregate_id == late).then_some(())
        },
    )
    .await;
    slow_tx.commit().await.expect("late commit");
    eventually(
        Duration::from_secs(5),
        "the late commit is published too",
        || async {
            let seen = test_kit::events_check::stream_events(&r.pools, "task", 1).await;
            (seen.iter().map(|e| e.aggregate_id).collect::<Vec<_>>() == vec![late, early])
                .then_some(())
        },
    )
    .await;
    shutdown.cancel();
}
