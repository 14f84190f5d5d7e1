//! The projector runtime against a real Redis (and PostgreSQL where history is replayed):
//! consuming, retries, dead letters, leases, pause, self-heal.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use events::{EventContext, EventEnvelope};
use outbox::control::DesiredState;
use projection::dead_letters::DeadLetterError;
use projection::{Projector, ProjectorSettings, Status};
use streams::redis;
use test_kit::{TestDb, eventually};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::fixture::*;

#[tokio::test]
async fn a_batch_is_applied_in_order_and_leaves_the_group_idle() {
    let f = Fixture::new(1).await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    f.publish(&[
        envelope(a, 1, "task.updated"),
        envelope(b, 1, "task.updated"),
        envelope(a, 2, "task.updated"),
        envelope(a, 3, "task.updated"),
    ])
    .await;
    let report = f.projector.consume_once(None).await.expect("consume");
    assert_eq!((report.delivered, report.applied), (4, 4));
    assert_eq!(f.log(a).await.as_deref(), Some("1,2,3"));
    assert_eq!(f.log(b).await.as_deref(), Some("1"));
    assert_eq!(
        f.projector.observe_lag().await.expect("lag"),
        (0, 0),
        "nothing left to read or ack"
    );
}

#[tokio::test]
async fn republished_events_change_nothing() {
    let f = Fixture::new(1).await;
    let a = Uuid::now_v7();
    let events = [
        envelope(a, 1, "task.updated"),
        envelope(a, 2, "task.updated"),
    ];
    f.publish(&events).await;
    f.projector.consume_once(None).await.expect("consume");
    f.publish(&events).await;
    let report = f.projector.consume_once(None).await.expect("consume");
    assert_eq!((report.applied, report.duplicates), (0, 2));
    assert_eq!(f.log(a).await.as_deref(), Some("1,2"));
    assert_eq!(
        f.projector.observe_lag().await.expect("lag"),
        (0, 0),
        "duplicates are acknowledged"
    );
}

#[tokio::test]
async fn an_event_ahead_of_its_predecessor_waits_then_applies() {
    let f = Fixture::new(1).await;
    let a = Uuid::now_v7();
    f.publish(&[envelope(a, 2, "task.updated")]).await;
    let report = f.projector.consume_once(None).await.expect("consume");
    assert_eq!((report.applied, report.retrying), (0, 1));
    f.publish(&[envelope(a, 1, "task.updated")]).await;
    f.projector.consume_once(None).await.expect("consume");
    f.settle(Duration::from_millis(300)).await;
    assert_eq!(f.log(a).await.as_deref(), Some("1,2"));
    assert_eq!(f.projector.observe_lag().await.expect("lag"), (0, 0));
}

#[tokio::test]
async fn poison_is_retried_with_growing_delays_then_dead_lettered_and_its_aggregate_parked() {
    let f = Fixture::new(1).await;
    let (bad, good) = (Uuid::now_v7(), Uuid::now_v7());
    f.publish(&[
        envelope(bad, 1, "task.updated"),
        envelope(bad, 2, "task.poison"),
        envelope(bad, 3, "task.updated"),
        envelope(good, 1, "task.updated"),
    ])
    .await;
    let first = f.projector.consume_once(None).await.expect("consume");
    assert_eq!(
        (first.applied, first.retrying, first.waiting),
        (2, 1, 1),
        "{first:?}"
    );
    assert_eq!(
        f.log(good).await.as_deref(),
        Some("1"),
        "other aggregates keep flowing"
    );

    // Retries: deliveries 2, 3, 4 at ≥ 40, 80, 160 ms after the previous one; then the dead
    // letters. Meanwhile the follower (v3) waits without using attempts.
    let started = Instant::now();
    let mut dead_at = None;
    while dead_at.is_none() && started.elapsed() < Duration::from_secs(5) {
        let r = f.projector.retry_due().await.expect("retry");
        if r.dead_lettered > 0 {
            dead_at = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dead_at = dead_at.expect("dead-lettered in time");
    assert!(
        dead_at >= Duration::from_millis(40 + 80 + 160),
        "backoff grows: {dead_at:?}"
    );
    f.settle(Duration::from_millis(200)).await;
    f.publish(&[
        envelope(bad, 4, "task.updated"),
        envelope(good, 2, "task.updated"),
    ])
    .await;
    f.projector.consume_once(None).await.expect("consume");

    let letters = f.dead_letters().list(None, 10).await.expect("list");
    let summary: Vec<(String, String)> = letters
        .iter()
        .map(|d| {
            let e = EventEnvelope::from_json(d.field("event").as_bytes()).expect("event");
            (
                format!("v{}", e.aggregate_version),
                d.field("error_type").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("v2".into(), "malformed_payload".into()),
            ("v3".into(), "parked".into()),
            ("v4".into(), "parked".into())
        ]
    );
    assert_eq!(letters[0].field("attempts"), "4");
    assert_eq!(letters[0].field("parked_behind"), "");
    let head_event = EventEnvelope::from_json(letters[0].field("event").as_bytes())
        .expect("event")
        .event_id
        .to_string();
    assert_eq!(letters[1].field("parked_behind"), head_event);
    assert_eq!(
        f.log(bad).await.as_deref(),
        Some("1"),
        "nothing of the parked aggregate applied"
    );
    assert_eq!(f.log(good).await.as_deref(), Some("1,2"));
    assert_eq!(
        f.projector.observe_lag().await.expect("lag"),
        (0, 0),
        "everything acknowledged: applied or dead-lettered"
    );
    let stats = f.dead_letters().stats().await.expect("stats");
    assert_eq!(
        (stats.total, stats.by_error_type.get("parked").copied()),
        (3, Some(2))
    );

    // A follower cannot be discarded before its head; after the fix, a re-drive applies the
    // chain in order and unparks the aggregate.
    let err = f
        .dead_letters()
        .discard(&letters[1].id)
        .await
        .expect_err("not the head");
    assert!(matches!(err, DeadLetterError::NotHead(..)), "{err:?}");
    let err = f
        .dead_letters()
        .redrive(&letters[2].id)
        .await
        .expect_err("still broken");
    assert!(
        matches!(err, DeadLetterError::StillFailing { .. }),
        "{err:?}"
    );
    f.broken.store(false, Ordering::SeqCst);
    let done = f
        .dead_letters()
        .redrive(&letters[2].id)
        .await
        .expect("redrive");
    assert_eq!((done.applied, done.unparked), (3, 1));
    assert_eq!(f.log(bad).await.as_deref(), Some("1,2,3,4"));
    assert!(
        f.dead_letters()
            .list(None, 10)
            .await
            .expect("list")
            .is_empty()
    );
    f.publish(&[envelope(bad, 5, "task.updated")]).await;
    f.projector.consume_once(None).await.expect("consume");
    assert_eq!(
        f.log(bad).await.as_deref(),
        Some("1,2,3,4,5"),
        "unparked: live events apply again"
    );
}

#[tokio::test]
async fn discarding_the_head_lets_the_rest_of_the_chain_apply() {
    let f = Fixture::new(1).await;
    let bad = Uuid::now_v7();
    f.publish(&[
        envelope(bad, 1, "task.poison"),
        envelope(bad, 2, "task.updated"),
        envelope(bad, 3, "task.updated"),
    ])
    .await;
    f.projector.consume_once(None).await.expect("consume");
    eventually(
        Duration::from_secs(5),
        "dead-lettered and parked",
        || async {
            f.projector.retry_due().await.expect("retry");
            (f.dead_letters().list(None, 10).await.expect("list").len() == 3).then_some(())
        },
    )
    .await;
    let head = f
        .dead_letters()
        .list(None, 1)
        .await
        .expect("list")
        .remove(0);
    let done = f.dead_letters().discard(&head.id).await.expect("discard");
    assert_eq!((done.discarded, done.applied, done.unparked), (1, 2, 1));
    assert_eq!(
        f.log(bad).await.as_deref(),
        Some("2,3"),
        "the discarded event's version is skipped"
    );
}

#[tokio::test]
async fn unreadable_and_foreign_entries_go_straight_to_the_dead_letters() {
    let f = Fixture::new(1).await;
    let stream = f.redis.pools.keys.routing(1).stream("task", 0);
    f.publish_raw(&[(stream.clone(), "{not json".to_owned())])
        .await;
    let foreign = EventContext::new(None, None, "t").envelope(
        "Post",
        Uuid::now_v7(),
        1,
        "community.post.created",
        serde_json::json!({}),
    );
    f.publish_raw(&[(stream, foreign.to_json())]).await;
    let report = f.projector.consume_once(None).await.expect("consume");
    assert_eq!(
        (report.dead_lettered, report.retrying),
        (2, 0),
        "no retries for what can never work"
    );
    let types: Vec<String> = f
        .dead_letters()
        .list(None, 10)
        .await
        .expect("list")
        .iter()
        .map(|d| d.field("error_type").to_owned())
        .collect();
    assert_eq!(types, vec!["malformed_envelope", "unknown_event_type"]);
    assert_eq!(f.projector.observe_lag().await.expect("lag"), (0, 0));
}

#[tokio::test]
async fn replicas_split_partitions_and_a_new_owner_takes_over_pending_work() {
    let f = Fixture::new(4).await;
    let b = f.another("r2");
    b.ensure_groups().await.expect("groups");
    // Both tick until the shares settle at 2 + 2.
    for _ in 0..3 {
        f.projector.tick_leases().await.expect("a");
        b.tick_leases().await.expect("b");
    }
    let (mine, theirs) = (f.projector.held(), b.held());
    assert_eq!((mine.len(), theirs.len()), (2, 2), "{mine:?} {theirs:?}");
    assert!(mine.iter().all(|p| !theirs.contains(p)));

    // r1 reads events of its partitions but dies before applying them (reads, never acks).
    let ids: Vec<Uuid> = (0..40).map(|_| Uuid::now_v7()).collect();
    f.publish(
        &ids.iter()
            .map(|id| envelope(*id, 1, "task.updated"))
            .collect::<Vec<_>>(),
    )
    .await;
    {
        let streams: Vec<String> = mine
            .iter()
            .map(|p| f.redis.pools.keys.routing(4).stream("task", *p))
            .collect();
        let mut c = f.redis.pools.commands.get().await.expect("conn");
        let got = streams::consumer::read_group(
            &mut *c,
            "task_projection_group",
            "r1",
            &streams,
            streams::consumer::ReadFrom::New,
            100,
            None,
        )
        .await
        .expect("read");
        assert!(!got.is_empty());
    }
    // Its leases expire; r2 takes everything over, claims r1's pending entries and applies them.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    b.tick_leases().await.expect("takeover");
    assert_eq!(b.held(), vec![0, 1, 2, 3]);
    b.consume_once(None).await.expect("consume");
    for id in &ids {
        assert_eq!(f.log(*id).await.as_deref(), Some("1"), "{id}");
    }
    assert_eq!(b.observe_lag().await.expect("lag"), (0, 0));
    // r1 is gone and has nothing pending: it is removed from the group.
    assert!(b.remove_dead_consumers().await.expect("cleanup") >= 1);
    // And r1, were it to come back with stale state, cannot apply: its lease is gone.
    f.publish(&[envelope(ids[0], 2, "task.updated")]).await;
    let report = f.projector.consume_once(None).await.expect("stale consume");
    assert_eq!(report.applied, 0);
}

#[tokio::test]
async fn a_paused_projector_applies_nothing_and_catches_up_on_resume() {
    let f = Fixture::new(1).await;
    let (tx, rx) = tokio::sync::watch::channel(DesiredState::Paused);
    let shutdown = CancellationToken::new();
    let run = {
        let (p, s) = (f.projector.clone(), shutdown.clone());
        tokio::spawn(async move { p.run(rx, s).await })
    };
    let a = Uuid::now_v7();
    f.publish(&[
        envelope(a, 1, "task.updated"),
        envelope(a, 2, "task.updated"),
    ])
    .await;
    // Several rounds of the loop pass after the events are published, each a chance to apply
    // them had the pause been ignored.
    let mut rounds = f.projector.rounds();
    let seen = rounds
        .wait_for(|r| r.status == Status::Paused)
        .await
        .expect("rounds")
        .count;
    rounds
        .wait_for(|r| r.count >= seen + 3)
        .await
        .expect("rounds");
    assert_eq!(rounds.borrow().status, Status::Paused);
    assert_eq!(f.log(a).await, None, "nothing applied while paused");
    tx.send(DesiredState::Running).expect("resume");
    eventually(Duration::from_secs(3), "caught up", || async {
        f.log(a).await.filter(|l| l == "1,2")
    })
    .await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(3), run)
        .await
        .expect("stops promptly")
        .expect("task");
    let mut c = f.redis.pools.commands.get().await.expect("conn");
    let lease: Option<String> = redis::cmd("GET")
        .arg(streams::lease::lease_key(
            &f.redis.pools.keys,
            "task_projection",
            0,
        ))
        .query_async(&mut *c)
        .await
        .expect("get");
    assert_eq!(lease, None, "leases released on shutdown");
}

#[tokio::test]
async fn replay_rebuilds_a_lost_read_model_from_event_store() {
    let db = TestDb::new().await;
    let f = Fixture::with_db(1, Some(db.pool.clone())).await;
    f.broken.store(false, Ordering::SeqCst);
    let ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    {
        let mut c = db.pool.get().await.expect("pg");
        let tx = c.transaction().await.expect("tx");
        let events: Vec<EventEnvelope> = ids
            .iter()
            .flat_map(|id| (1..=3).map(|v| envelope(*id, v, "task.updated")))
            .collect();
        outbox::append_events(&tx, &events, 1)
            .await
            .expect("append");
        tx.commit().await.expect("commit");
    }
    // First start: no marker, so the read model is built from history.
    assert!(
        !f.projector.heal_if_needed().await.expect("heal"),
        "ready after healing"
    );
    for id in &ids {
        assert_eq!(f.log(*id).await.as_deref(), Some("1,2,3"));
    }
    // Redis loses the read model (its keys, marker included): the next check rebuilds it.
    {
        let mut c = f.redis.pools.commands.get().await.expect("conn");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}rm:*", f.redis.prefix))
            .query_async(&mut *c)
            .await
            .expect("keys");
        let _: i64 = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut *c)
            .await
            .expect("del");
    }
    assert_eq!(f.log(ids[0]).await, None);
    f.projector.heal_if_needed().await.expect("heal");
    for id in &ids {
        assert_eq!(f.log(*id).await.as_deref(), Some("1,2,3"), "rebuilt {id}");
    }
    // The primitive on its own: replaying again changes nothing (all duplicates).
    let again = f.projector.replay(0, |_| {}).await.expect("replay");
    assert_eq!(
        (again.events, again.batch.applied, again.batch.duplicates),
        (15, 0, 15)
    );
}

#[tokio::test]
async fn stream_entries_wait_for_a_lost_read_model_instead_of_using_up_attempts() {
    let db = TestDb::new().await;
    let f = Fixture::with_db(1, Some(db.pool.clone())).await;
    f.broken.store(false, Ordering::SeqCst);
    let a = Uuid::now_v7();
    let history: Vec<EventEnvelope> = (1..=3).map(|v| envelope(a, v, "task.updated")).collect();
    append(&db, &history[..2]).await;
    f.projector.heal_if_needed().await.expect("first build");
    // Redis loses everything of the read model; the next event arrives on the stream.
    f.redis.flush_prefix().await;
    f.projector.ensure_groups().await.expect("groups");
    f.projector.tick_leases().await.expect("leases");
    append(&db, &history[2..]).await;
    f.publish(&history[2..]).await;
    let report = f.projector.consume_once(None).await.expect("consume");
    assert_eq!(
        (report.applied, report.retrying, report.not_ready),
        (0, 0, 1),
        "not judged against an empty model"
    );
    assert_eq!(f.log(a).await, None);
    f.projector.heal_if_needed().await.expect("rebuild");
    f.settle(Duration::from_millis(200)).await;
    assert_eq!(f.log(a).await.as_deref(), Some("1,2,3"));
    assert_eq!(f.projector.observe_lag().await.expect("lag"), (0, 0));
}

#[tokio::test]
async fn followers_go_on_once_their_failing_head_was_applied_elsewhere() {
    let db = TestDb::new().await;
    let f = Fixture::with_db(1, Some(db.pool.clone())).await;
    f.broken.store(false, Ordering::SeqCst);
    // Backoff capped far beyond the test: only the head's settlement can free the follower.
    let projector = Projector::new(
        f.redis.pools.clone(),
        Some(db.pool.clone()),
        Arc::new(Logging {
            broken: f.broken.clone(),
        }),
        ProjectorSettings {
            retry_cap: Duration::from_secs(30),
            ..settings("r1", 1)
        },
    );
    projector.heal_if_needed().await.expect("build");
    projector.tick_leases().await.expect("leases");
    let a = Uuid::now_v7();
    let history: Vec<EventEnvelope> = (1..=3).map(|v| envelope(a, v, "task.updated")).collect();
    // v2 (head) and v3 (follower) arrive; v1 was lost on the way.
    f.publish(&history[1..]).await;
    let report = projector.consume_once(None).await.expect("consume");
    assert_eq!((report.retrying, report.waiting), (1, 1));
    // Meanwhile a rebuild by a peer applies the whole history from event_store.
    append(&db, &history).await;
    f.projector.replay(0, |_| {}).await.expect("peer replay");
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        projector.retry_due().await.expect("retry");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(f.log(a).await.as_deref(), Some("1,2,3"));
    assert_eq!(
        projector.observe_lag().await.expect("lag"),
        (0, 0),
        "the head became a duplicate, and the follower went on"
    );
}

#[tokio::test]
async fn entries_left_with_a_stale_owner_are_claimed_by_the_holder() {
    let f = Fixture::new(1).await;
    f.broken.store(false, Ordering::SeqCst);
    let ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    f.publish(
        &ids.iter()
            .map(|id| envelope(*id, 1, "task.updated"))
            .collect::<Vec<_>>(),
    )
    .await;
    // r0, which lost the partition a moment ago, still read them (after r1's takeover claim).
    {
        let stream = f.redis.pools.keys.routing(1).stream("task", 0);
        let mut c = f.redis.pools.commands.get().await.expect("conn");
        let got = streams::consumer::read_group(
            &mut *c,
            "task_projection_group",
            "r0",
            &[stream],
            streams::consumer::ReadFrom::New,
            100,
            None,
        )
        .await
        .expect("read");
        assert_eq!(got.len(), 5);
    }
    assert_eq!(
        f.projector.claim_stranded().await.expect("claim"),
        0,
        "in flight for under a second: left alone"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    f.projector.tick_leases().await.expect("renew");
    assert_eq!(f.projector.claim_stranded().await.expect("claim"), 5);
    for id in &ids {
        assert_eq!(f.log(*id).await.as_deref(), Some("1"));
    }
    assert_eq!(f.projector.observe_lag().await.expect("lag"), (0, 0));
}

#[tokio::test]
async fn an_event_whose_dead_letter_cannot_be_written_stays_pending() {
    let f = Fixture::new(1).await;
    let bad = Uuid::now_v7();
    f.publish(&[envelope(bad, 1, "task.poison")]).await;
    // The dead-letter stream's key holds a string: every move to it fails.
    let dlq_stream = f.projector.dead_letter_keys().stream.clone();
    let mut c = f.redis.pools.commands.get().await.expect("conn");
    let _: () = redis::cmd("SET")
        .arg(&dlq_stream)
        .arg("not a stream")
        .query_async(&mut *c)
        .await
        .expect("sabotage");
    f.projector.consume_once(None).await.expect("consume");
    // All attempts (4, 40 ms × 2ⁿ apart) are used up well within a second; each move fails.
    let mut failures = 0;
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        f.projector.tick_leases().await.expect("renew");
        match f.projector.retry_due().await {
            Ok(r) => assert_eq!(r.dead_lettered, 0, "nothing was written"),
            Err(_) => failures += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        failures > 0,
        "the failed move is an error for the run loop to back off on"
    );
    assert_eq!(
        f.projector.observe_lag().await.expect("lag").1,
        1,
        "not acknowledged: the event is still pending"
    );
    // Once the dead letters can be written again, it moves there and is acknowledged.
    let _: i64 = redis::cmd("DEL")
        .arg(&dlq_stream)
        .query_async(&mut *c)
        .await
        .expect("repair");
    // The retry is due after a backoff that grew with the failures: wait for the move itself,
    // not for a fixed time (a loaded runner takes longer).
    let until = Instant::now() + Duration::from_secs(10);
    let letters = loop {
        f.projector.tick_leases().await.expect("renew");
        let _ = f.projector.retry_due().await;
        let letters = f.dead_letters().list(None, 10).await.expect("list");
        if !letters.is_empty() || Instant::now() > until {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(letters.len(), 1);
    assert_eq!(f.projector.observe_lag().await.expect("lag"), (0, 0));
}

#[tokio::test]
async fn entries_read_ahead_are_processed_once_even_when_retries_run_first() {
    let f = Fixture::new(1).await;
    f.broken.store(false, Ordering::SeqCst);
    // One entry per batch, so the second entry is read ahead by the first batch's apply.
    let projector = Projector::new(
        f.redis.pools.clone(),
        None,
        Arc::new(Logging {
            broken: f.broken.clone(),
        }),
        ProjectorSettings {
            batch_size: 1,
            ..settings("r1", 1)
        },
    );
    projector.tick_leases().await.expect("leases");
    let a = Uuid::now_v7();
    let stream = f.redis.pools.keys.routing(1).stream("task", 0);
    f.publish(&[envelope(a, 1, "task.updated")]).await;
    f.publish_raw(&[(stream, "{not json".to_owned())]).await;
    let first = projector.consume_once(None).await.expect("consume");
    assert_eq!((first.delivered, first.applied), (1, 1));
    // The unreadable entry is now pending here, read ahead. Retries come first in the loop;
    // they must leave it to consume_once, or it would be dead-lettered twice.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let retried = projector.retry_due().await.expect("retry");
    assert_eq!(retried.delivered, 0, "{retried:?}");
    let second = projector.consume_once(None).await.expect("consume");
    assert_eq!((second.delivered, second.dead_lettered), (1, 1));
    projector.retry_due().await.expect("retry");
    let letters = f.dead_letters().list(None, 10).await.expect("list");
    assert_eq!(letters.len(), 1, "dead-lettered once");
    assert_eq!(projector.observe_lag().await.expect("lag"), (0, 0));
}
