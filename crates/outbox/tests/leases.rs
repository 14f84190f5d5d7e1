//! Partition leases against a real PostgreSQL.

use std::collections::BTreeSet;
use std::time::Duration;

use events::EventContext;
use outbox::lease::LeaseStore;
use outbox::relay::{OutboxStore, Round};
use test_kit::TestDb;
use uuid::Uuid;

fn store(db: &TestDb, holder: &str, partitions: u32, ttl_ms: u64) -> LeaseStore {
    LeaseStore::new(
        db.pool.clone(),
        holder,
        partitions,
        Duration::from_millis(ttl_ms),
    )
}

#[tokio::test]
async fn leases_spread_fairly_and_never_overlap() {
    let db = TestDb::new().await;
    let replicas: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|h| store(&db, h, 8, 10_000))
        .collect();
    // Everyone joins first, then a few rounds let shares settle.
    for r in &replicas {
        r.tick().await.expect("tick");
    }
    let mut held = vec![];
    for _ in 0..4 {
        held.clear();
        for r in &replicas {
            held.push(r.tick().await.expect("tick").held);
        }
    }
    let sizes: Vec<usize> = held.iter().map(Vec::len).collect();
    assert!(
        sizes.iter().all(|n| (2..=3).contains(n)),
        "fair shares of 8 over 3: {sizes:?}"
    );
    let all: Vec<i32> = held.concat();
    let unique: BTreeSet<i32> = all.iter().copied().collect();
    assert_eq!(all.len(), unique.len(), "no partition held twice: {held:?}");
    assert_eq!(unique, (0..8).collect(), "every partition held");
}

#[tokio::test]
async fn a_silent_replicas_partitions_move_after_the_lease_time() {
    let db = TestDb::new().await;
    let (a, b) = (store(&db, "a", 4, 400), store(&db, "b", 4, 400));
    a.tick().await.expect("a");
    b.tick().await.expect("b");
    a.tick().await.expect("a");
    assert_eq!(b.tick().await.expect("b").held.len(), 2);
    // `a` dies: it stops ticking. Until its leases expire, `b` cannot take them.
    assert_eq!(b.tick().await.expect("b").held.len(), 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let state = b.tick().await.expect("b");
    assert_eq!(
        state.held,
        vec![0, 1, 2, 3],
        "all partitions moved to the survivor"
    );
    assert_eq!(
        state.live_replicas, 1,
        "the silent replica left the membership"
    );
}

#[tokio::test]
async fn a_graceful_stop_hands_partitions_over_at_once() {
    let db = TestDb::new().await;
    let (a, b) = (store(&db, "a", 4, 60_000), store(&db, "b", 4, 60_000));
    a.tick().await.expect("a");
    b.tick().await.expect("b");
    a.tick().await.expect("a");
    b.tick().await.expect("b");
    a.release_all().await.expect("release");
    // No waiting for the (one-minute) lease: the next tick takes everything.
    assert_eq!(b.tick().await.expect("b").held, vec![0, 1, 2, 3]);
    let owners = LeaseStore::owners(&db.pool).await.expect("owners");
    assert!(
        owners.iter().all(|(_, o)| o.as_deref() == Some("b")),
        "{owners:?}"
    );
}

#[tokio::test]
async fn no_takeover_while_the_holder_is_mid_batch_and_the_old_holder_is_fenced_after() {
    let db = TestDb::new().await;
    let ctx = EventContext::new(None, None, "test");
    {
        let mut c = db.pool.get().await.expect("client");
        let tx = c.transaction().await.expect("tx");
        let e = ctx.envelope(
            "Task",
            Uuid::now_v7(),
            1,
            "task.updated",
            serde_json::json!({}),
        );
        outbox::append_events(&tx, &[e], 1).await.expect("append");
        tx.commit().await.expect("commit");
    }
    let (a, b) = (store(&db, "a", 1, 300), store(&db, "b", 1, 300));
    assert_eq!(a.tick().await.expect("a").held, vec![0]);
    let outbox = OutboxStore::new(db.pool.clone());

    // `a` publishes a batch that outlives its lease (a stalled Redis, say); meanwhile `b`
    // tries to take the expired lease.
    let slow_batch = outbox.publish_round(&[0], 10, Some(("a", Duration::ZERO)), async |_rows| {
        tokio::time::sleep(Duration::from_millis(800)).await;
        Ok::<(), std::io::Error>(())
    });
    let takeover = async {
        tokio::time::sleep(Duration::from_millis(450)).await;
        b.tick().await.expect("b tick").held
    };
    let (published, held_by_b_meanwhile) = tokio::join!(slow_batch, takeover);
    assert_eq!(published.expect("a's batch commits").published, 1);
    assert!(
        held_by_b_meanwhile.is_empty(),
        "b must not hold the partition while a's batch is open"
    );

    // Once a's batch is done, b takes over, and a is fenced off.
    assert_eq!(b.tick().await.expect("b").held, vec![0]);
    let fenced = outbox
        .publish_round(&[0], 10, Some(("a", Duration::ZERO)), async |_| {
            Ok::<(), std::io::Error>(())
        })
        .await
        .expect("a's round");
    assert_eq!(fenced.not_held, vec![0], "a is fenced off: {fenced:?}");
    let ok = outbox
        .publish_round(&[0], 10, Some(("b", Duration::ZERO)), async |_| {
            Ok::<(), std::io::Error>(())
        })
        .await;
    assert_eq!(
        ok.expect("b publishes"),
        Round::default(),
        "nothing left: a's rows were deleted exactly once"
    );
}

#[tokio::test]
async fn a_batch_needs_enough_lease_left_to_start() {
    let db = TestDb::new().await;
    let a = store(&db, "a", 1, 1000);
    a.tick().await.expect("a");
    let outbox = OutboxStore::new(db.pool.clone());
    let r = outbox
        .publish_round(&[0], 10, Some(("a", Duration::from_secs(5))), async |_| {
            Ok::<(), std::io::Error>(())
        })
        .await
        .expect("round");
    assert_eq!(
        r.not_held,
        vec![0],
        "1 s lease, 5 s margin: refuse to start"
    );
    let r = outbox
        .publish_round(
            &[0],
            10,
            Some(("a", Duration::from_millis(100))),
            async |_| Ok::<(), std::io::Error>(()),
        )
        .await
        .expect("round");
    assert!(r.not_held.is_empty());
}

/// A round over several partitions reads only those whose lease is held, and says which it
/// left alone: a replica never publishes a peer's partition because it asked for too many.
#[tokio::test]
async fn a_round_over_several_partitions_reads_only_the_held_ones() {
    let db = TestDb::new().await;
    let ctx = EventContext::new(None, None, "test");
    let (a, b) = (store(&db, "a", 2, 60_000), store(&db, "b", 2, 60_000));
    a.tick().await.expect("a");
    b.tick().await.expect("b");
    assert_eq!(a.tick().await.expect("a").held, vec![0]);
    assert_eq!(b.tick().await.expect("b").held, vec![1]);
    let mut ids = std::collections::BTreeMap::new();
    while ids.len() < 2 {
        let id = Uuid::now_v7();
        ids.entry(events::partition_for(id, 2)).or_insert(id);
    }
    for id in ids.values() {
        let mut c = db.pool.get().await.expect("client");
        let tx = c.transaction().await.expect("tx");
        let e = ctx.envelope("Task", *id, 1, "task.created", serde_json::json!({}));
        outbox::append_events(&tx, &[e], 2).await.expect("append");
        tx.commit().await.expect("commit");
    }
    let outbox = OutboxStore::new(db.pool.clone());
    let mut read = vec![];
    let round = outbox
        .publish_round(&[0, 1], 10, Some(("a", Duration::ZERO)), async |rows| {
            read.extend(rows.iter().map(|r| r.partition));
            Ok::<(), std::io::Error>(())
        })
        .await
        .expect("a's round");
    assert_eq!(read, vec![0], "only a's partition is read");
    assert_eq!((round.published, round.not_held), (1, vec![1]));
    let left: i64 = db
        .pool
        .get()
        .await
        .expect("client")
        .query_one("SELECT count(*) FROM outbox WHERE partition = 1", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 1, "b's row waits for b");
}
