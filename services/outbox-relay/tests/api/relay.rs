//! The relay against real PostgreSQL and Redis: order, wake-ups, outages.

use std::time::Duration;

use outbox_relay::Settings;
use test_kit::eventually;
use test_kit::proxy::TcpProxy;
use uuid::Uuid;

use crate::helpers::*;

#[tokio::test]
async fn a_backlog_is_published_in_aggregate_order_across_partitions_and_deleted() {
    let f = Fixture::new(4).await;
    let ids: Vec<Uuid> = (0..8).map(|_| Uuid::now_v7()).collect();
    for round in 0..3 {
        for id in &ids {
            f.write(*id, (round * 10 + 1)..=(round * 10 + 10)).await;
        }
    }
    let Running {
        shutdown, handle, ..
    } = f
        .start(f.settings(&test_kit::database_url(), &test_kit::redis_url(), 1000))
        .await;
    eventually(Duration::from_secs(10), "outbox drained", || async {
        (f.outbox_len().await == 0).then_some(())
    })
    .await;
    let published = f.published().await;
    assert_eq!(published.len(), 8 * 30);
    for id in &ids {
        let versions: Vec<i64> = published
            .iter()
            .filter(|(a, _)| a == id)
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(
            versions,
            (1..=30).collect::<Vec<_>>(),
            "per-aggregate order for {id}"
        );
    }
    shutdown.cancel();
    handle.await.expect("join").expect("clean stop");
}

#[tokio::test]
async fn a_commit_wakes_the_relay_long_before_the_poll_interval() {
    let f = Fixture::new(1).await;
    // A one-minute poll: only the NOTIFY can explain a prompt publish.
    let Running {
        shutdown,
        mut progress,
        ..
    } = f
        .start(f.settings(&test_kit::database_url(), &test_kit::redis_url(), 60_000))
        .await;
    // Write once it listens and its worker has made its first look for work: from then on
    // only a wake-up (or the poll, a minute away) makes it look again.
    progress
        .wait_for(|p| p.listening && p.drains > 0)
        .await
        .expect("relay running");
    let id = Uuid::now_v7();
    f.write(id, 1..=1).await;
    eventually(Duration::from_secs(3), "published on NOTIFY", || async {
        (f.published().await == vec![(id, 1)]).then_some(())
    })
    .await;
    shutdown.cancel();
}

/// command-api wakes the relay through Redis (a `PUBLISH` instead of a PostgreSQL transaction
/// per burst of commits): with the poll a minute away, only that wake-up explains a prompt
/// publish of a row committed without a NOTIFY.
#[tokio::test]
async fn a_wake_up_through_redis_wakes_the_relay_long_before_the_poll_interval() {
    let f = Fixture::new(4).await;
    let Running {
        shutdown,
        mut progress,
        ..
    } = f
        .start(f.settings(&test_kit::database_url(), &test_kit::redis_url(), 60_000))
        .await;
    tokio::time::timeout(
        Duration::from_secs(10),
        progress.wait_for(|p| p.following && p.drains > 0),
    )
    .await
    .expect("it follows the wake-ups within 10 s")
    .expect("relay running");
    let id = Uuid::now_v7();
    let events = f.write_quietly(id, 1..=2).await;
    let pools = &f.redis.pools;
    let mut conn = pools.commands.get().await.expect("redis");
    streams::wake::publish(
        &mut *conn,
        &pools.keys,
        &outbox::wake::partitions_of(&events, 4),
    )
    .await
    .expect("publish");
    eventually(
        Duration::from_secs(3),
        "published on the wake-up",
        || async { (f.published().await == vec![(id, 1), (id, 2)]).then_some(()) },
    )
    .await;
    shutdown.cancel();
}

/// A steady stream of one-row commits, each with its wake-up: rounds start at most once per
/// linger, so the rows share transactions instead of costing one each.
#[tokio::test]
async fn a_steady_stream_of_wake_ups_shares_rounds() {
    let f = Fixture::new(4).await;
    let Running {
        shutdown,
        mut progress,
        ..
    } = f
        .start(Settings {
            relay_linger_us: 300_000,
            // No lease ticks or polls during the test: only wake-ups start rounds.
            relay_lease_ms: 60_000,
            ..f.settings(&test_kit::database_url(), &test_kit::redis_url(), 60_000)
        })
        .await;
    progress
        .wait_for(|p| p.listening && p.following && p.drains > 0)
        .await
        .expect("relay running");
    let before = progress.borrow().drains;
    let ids: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
    for id in &ids {
        f.write(*id, 1..=1).await;
    }
    eventually(Duration::from_secs(10), "all published", || async {
        (f.published().await.len() == ids.len()).then_some(())
    })
    .await;
    let rounds = progress.borrow().drains - before;
    assert!(
        rounds < 10,
        "20 commits in {rounds} rounds: wake-ups within the linger share a round"
    );
    shutdown.cancel();
}

/// Commits wake nobody inside their transaction (that would serialise every commit): a
/// wake-up follows the commit, and may be lost. The poll still publishes the row.
#[tokio::test]
async fn an_event_whose_wake_up_was_lost_is_published_by_the_poll() {
    let f = Fixture::new(1).await;
    let Running {
        shutdown,
        mut progress,
        ..
    } = f
        .start(f.settings(&test_kit::database_url(), &test_kit::redis_url(), 300))
        .await;
    progress
        .wait_for(|p| p.listening && p.drains > 0)
        .await
        .expect("relay running");
    let id = Uuid::now_v7();
    f.write_quietly(id, 1..=2).await;
    eventually(Duration::from_secs(5), "published by the poll", || async {
        (f.published().await == vec![(id, 1), (id, 2)]).then_some(())
    })
    .await;
    shutdown.cancel();
}

#[tokio::test]
async fn a_redis_outage_keeps_rows_and_publishing_resumes_with_nothing_lost() {
    let f = Fixture::new(2).await;
    let proxy = TcpProxy::redis().await;
    let Running {
        shutdown,
        port,
        mut progress,
        ..
    } = f
        .start(f.settings(&test_kit::database_url(), &proxy.redis_url(), 100))
        .await;
    let http = reqwest::Client::new();
    let a = Uuid::now_v7();
    f.write(a, 1..=5).await;
    eventually(Duration::from_secs(5), "first batch published", || async {
        (f.published().await.len() == 5).then_some(())
    })
    .await;

    proxy.down();
    f.write(a, 6..=10).await;
    let b = Uuid::now_v7();
    f.write(b, 1..=3).await;
    eventually(
        Duration::from_secs(5),
        "/readyz reports Redis down",
        || async {
            let r = http
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
                .ok()?;
            (r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE).then_some(())
        },
    )
    .await;
    // Three more batches fail while Redis is down, each a chance to delete what it read.
    let failed = progress.borrow().failed_batches;
    progress
        .wait_for(|p| p.failed_batches >= failed + 3)
        .await
        .expect("relay running");
    assert_eq!(
        f.outbox_len().await,
        8,
        "nothing is deleted while Redis is down"
    );

    proxy.up();
    eventually(
        Duration::from_secs(15),
        "backlog published after recovery",
        || async { (f.outbox_len().await == 0).then_some(()) },
    )
    .await;
    let published = f.published().await;
    let of = |id: Uuid| {
        published
            .iter()
            .filter(|(x, _)| *x == id)
            .map(|(_, v)| *v)
            .collect::<Vec<_>>()
    };
    // At least once: a batch cut mid-pipeline may be published twice, never lost or reordered
    // by first occurrence.
    let first_seen = |vs: Vec<i64>| {
        vs.into_iter().fold(vec![], |mut acc: Vec<i64>, v| {
            if !acc.contains(&v) {
                acc.push(v);
            }
            acc
        })
    };
    assert_eq!(first_seen(of(a)), (1..=10).collect::<Vec<_>>());
    assert_eq!(first_seen(of(b)), vec![1, 2, 3]);
    let r = http
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    shutdown.cancel();
}

#[tokio::test]
async fn a_postgres_outage_is_survived_and_publishing_resumes() {
    let f = Fixture::new(1).await;
    let proxy = TcpProxy::postgres().await;
    let Running { shutdown, port, .. } = f
        .start(f.settings(&proxy.postgres_url(), &test_kit::redis_url(), 100))
        .await;
    let id = Uuid::now_v7();
    f.write(id, 1..=2).await;
    // Published *and* deleted: cut off between its XADD and its commit, the relay would
    // publish them again after the outage (a duplicate, which the contract allows but this
    // test's exact expectation would not).
    eventually(Duration::from_secs(5), "published and deleted", || async {
        (f.published().await.len() == 2 && f.outbox_len().await == 0).then_some(())
    })
    .await;
    proxy.down();
    // Commits keep landing (directly, not through the relay's proxy) while the relay is cut off.
    f.write(id, 3..=4).await;
    let http = reqwest::Client::new();
    eventually(
        Duration::from_secs(5),
        "/readyz reports PostgreSQL down",
        || async {
            let r = http
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
                .ok()?;
            (r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE).then_some(())
        },
    )
    .await;
    proxy.up();
    eventually(Duration::from_secs(15), "resumed", || async {
        let vs: Vec<i64> = f.published().await.into_iter().map(|(_, v)| v).collect();
        (vs == vec![1, 2, 3, 4]).then_some(())
    })
    .await;
    assert_eq!(f.outbox_len().await, 0);
    shutdown.cancel();
}
