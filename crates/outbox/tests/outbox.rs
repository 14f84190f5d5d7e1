//! The PostgreSQL side against a real server: migrations, append, relay batches, LISTEN.

use std::time::Duration;

use events::{EventContext, EventEnvelope};
use outbox::listener::Listener;
use outbox::relay::{OutboxStore, PublishError};
use outbox::{OutboxError, append_events};
use test_kit::TestDb;
use uuid::Uuid;

fn events_for(aggregate: Uuid, versions: std::ops::RangeInclusive<i64>) -> Vec<EventEnvelope> {
    let ctx = EventContext::new(Some(Uuid::now_v7()), Some("req-1".into()), "test");
    versions
        .map(|v| {
            ctx.envelope(
                "Task",
                aggregate,
                v,
                "task.updated",
                serde_json::json!({"n": v}),
            )
        })
        .collect()
}

async fn count(db: &TestDb, table: &str) -> i64 {
    let c = db.pool.get().await.expect("client");
    c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count")
        .get(0)
}

async fn append(db: &TestDb, events: &[EventEnvelope]) {
    append_with(db, events, 4).await;
}

async fn append_with(db: &TestDb, events: &[EventEnvelope], partitions: u32) {
    let mut c = db.pool.get().await.expect("client");
    let tx = c.transaction().await.expect("tx");
    append_events(&tx, events, partitions)
        .await
        .expect("append");
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn migrate_is_idempotent_and_safe_from_concurrent_runners() {
    let db = TestDb::unmigrated().await;
    let other = outbox::connect(&db.settings).expect("second pool");
    let (a, b) = tokio::join!(
        outbox::migrate::migrate(&db.pool, &db.schema),
        outbox::migrate::migrate(&other, &db.schema)
    );
    let (a, b) = (a.expect("first runner"), b.expect("second runner"));
    let required = outbox::migrate::required_version();
    // Exactly one runner applied the migrations; the other found nothing to do.
    let mut applied = [a.applied.len(), b.applied.len()];
    applied.sort_unstable();
    assert_eq!(applied, [0, outbox::migrate::MIGRATIONS.len()]);
    assert_eq!((a.current, b.current), (required, required));
    let again = outbox::migrate::migrate(&db.pool, &db.schema)
        .await
        .expect("third run");
    assert!(again.applied.is_empty());
    outbox::migrate::ensure_current(&db.pool)
        .await
        .expect("current");
}

#[tokio::test]
async fn a_schema_behind_the_build_is_refused_naming_the_command() {
    let db = TestDb::unmigrated().await;
    let err = outbox::migrate::ensure_current(&db.pool)
        .await
        .expect_err("behind");
    assert!(
        matches!(err, OutboxError::SchemaBehind { current: 0, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("admin-api migrate"), "{err}");
}

/// Migration numbers need not be contiguous (two modules written at once each take one), so a
/// database holding the newest but missing an older one is behind too, and `migrate` fills
/// the hole.
#[tokio::test]
async fn a_schema_missing_an_older_migration_is_behind_and_migrate_fills_it() {
    let db = TestDb::new().await;
    let c = db.pool.get().await.expect("client");
    // Pretend the second migration never ran (its tables stay; only the record goes).
    c.execute("DELETE FROM schema_migrations WHERE version = 2", &[])
        .await
        .expect("forget");
    let err = outbox::migrate::ensure_current(&db.pool)
        .await
        .expect_err("behind");
    assert!(
        matches!(&err, OutboxError::SchemaBehind { missing, current, .. }
            if *missing == vec![2] && *current == outbox::migrate::required_version()),
        "{err:?}"
    );
    // Its tables go too, so that applying it again is what a never-applied file would do.
    c.batch_execute("DROP TABLE relay_members, relay_leases CASCADE")
        .await
        .expect("drop");
    let report = outbox::migrate::migrate(&db.pool, &db.schema)
        .await
        .expect("migrate");
    assert_eq!(report.applied, vec![2]);
    outbox::migrate::ensure_current(&db.pool)
        .await
        .expect("current");
}

#[tokio::test]
async fn an_edited_migration_is_detected() {
    let db = TestDb::new().await;
    let c = db.pool.get().await.expect("client");
    c.execute(
        "UPDATE schema_migrations SET checksum = 'x' WHERE version = 1",
        &[],
    )
    .await
    .expect("tamper");
    let err = outbox::migrate::migrate(&db.pool, &db.schema)
        .await
        .expect_err("edited");
    assert!(
        matches!(err, OutboxError::MigrationEdited { version: 1 }),
        "{err:?}"
    );
}

#[tokio::test]
async fn appended_events_land_in_both_tables_only_on_commit() {
    let db = TestDb::new().await;
    let id = Uuid::now_v7();
    {
        let mut c = db.pool.get().await.expect("client");
        let tx = c.transaction().await.expect("tx");
        append_events(&tx, &events_for(id, 1..=2), 4)
            .await
            .expect("append");
        tx.rollback().await.expect("rollback");
    }
    assert_eq!(
        (count(&db, "event_store").await, count(&db, "outbox").await),
        (0, 0)
    );
    append(&db, &events_for(id, 1..=2)).await;
    assert_eq!(
        (count(&db, "event_store").await, count(&db, "outbox").await),
        (2, 2)
    );
    let c = db.pool.get().await.expect("client");
    let row = c
        .query_one(
            "SELECT partition, event_type, module, envelope::text FROM outbox ORDER BY seq LIMIT 1",
            &[],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, i32>(0) as u32, events::partition_for(id, 4));
    assert_eq!(
        (row.get::<_, &str>(1), row.get::<_, &str>(2)),
        ("task.updated", "task")
    );
    let envelope = EventEnvelope::from_json(row.get::<_, &str>(3).as_bytes()).expect("envelope");
    assert_eq!((envelope.aggregate_id, envelope.aggregate_version), (id, 1));
    assert_eq!(envelope.metadata.correlation_id.as_deref(), Some("req-1"));
}

#[tokio::test]
async fn a_second_writer_of_the_same_version_conflicts() {
    let db = TestDb::new().await;
    let id = Uuid::now_v7();
    append(&db, &events_for(id, 1..=1)).await;
    let mut c = db.pool.get().await.expect("client");
    let tx = c.transaction().await.expect("tx");
    let err = append_events(&tx, &events_for(id, 1..=1), 4)
        .await
        .expect_err("duplicate version");
    assert!(matches!(err, OutboxError::Conflict(_)), "{err:?}");
}

#[tokio::test]
async fn relay_batches_delete_only_rows_whose_publish_succeeded() {
    let db = TestDb::new().await;
    let id = Uuid::now_v7();
    let p = events::partition_for(id, 4) as i32;
    append(&db, &events_for(id, 1..=5)).await;
    let store = OutboxStore::new(db.pool.clone());

    let failed = store
        .publish_round(&[p], 3, None, async |_rows| {
            Err::<(), _>(std::io::Error::other("redis down"))
        })
        .await;
    assert!(matches!(failed, Err(PublishError::Publish(_))));
    assert_eq!(
        count(&db, "outbox").await,
        5,
        "a failed publish deletes nothing"
    );

    let mut seen = vec![];
    let round = store
        .publish_round(&[p], 3, None, async |rows| {
            seen.extend(rows.iter().map(|r| r.seq));
            Ok::<(), std::io::Error>(())
        })
        .await
        .expect("publish");
    assert_eq!(round.published, 3);
    assert_eq!(round.full, vec![p], "a full batch: more may wait");
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "sequence order: {seen:?}"
    );
    assert_eq!(count(&db, "outbox").await, 2);
    assert_eq!(count(&db, "event_store").await, 5, "history is kept");
    let empty = store
        .publish_round(&[(p + 1) % 4], 3, None, async |_| {
            Ok::<(), std::io::Error>(())
        })
        .await
        .expect("other");
    assert_eq!(empty.published, 0, "other partitions are untouched");
}

/// At a low rate each partition holds a row or two: one round reads them all in one
/// transaction, a batch limit per partition, every partition's rows in commit order.
#[tokio::test]
async fn one_round_publishes_every_partition_asked_for_in_commit_order() {
    let db = TestDb::new().await;
    let store = OutboxStore::new(db.pool.clone());
    // One aggregate in each of three partitions of four: four events in the first, one in the
    // others.
    let mut by_partition = std::collections::BTreeMap::new();
    while by_partition.len() < 3 {
        let id = Uuid::now_v7();
        by_partition
            .entry(events::partition_for(id, 4) as i32)
            .or_insert(id);
    }
    let busy = *by_partition.keys().next().expect("three partitions");
    for (p, id) in &by_partition {
        let versions = if *p == busy { 1..=4 } else { 1..=1 };
        append_with(&db, &events_for(*id, versions), 4).await;
    }
    let asked: Vec<i32> = by_partition.keys().copied().collect();
    let mut seen = vec![];
    let round = store
        .publish_round(&asked, 3, None, async |rows| {
            seen.extend(rows.iter().map(|r| (r.partition, r.seq)));
            Ok::<(), std::io::Error>(())
        })
        .await
        .expect("publish");
    assert_eq!(
        round.published,
        3 + 2,
        "three of the busy one, one of each other"
    );
    assert_eq!(
        round.full,
        vec![busy],
        "only the busy partition may hold more"
    );
    assert!(round.not_held.is_empty());
    assert!(
        seen.windows(2).all(|w| w[0].1 < w[1].1),
        "commit order: {seen:?}"
    );
    assert_eq!(
        seen.iter()
            .map(|(p, _)| *p)
            .collect::<std::collections::BTreeSet<_>>(),
        asked.iter().copied().collect(),
        "every partition asked for"
    );
    let rest = store
        .publish_round(&asked, 3, None, async |rows| {
            assert!(rows.iter().all(|r| r.partition == busy));
            Ok::<(), std::io::Error>(())
        })
        .await
        .expect("publish");
    assert_eq!(
        (rest.published, rest.full),
        (1, vec![]),
        "the busy one's last row"
    );
    assert_eq!(count(&db, "outbox").await, 0);
}

#[tokio::test]
async fn a_late_commit_with_a_lower_sequence_is_still_published() {
    let db = TestDb::new().await;
    let store = OutboxStore::new(db.pool.clone());
    let (early, late) = (Uuid::now_v7(), Uuid::now_v7());
    // Take a low sequence number in a transaction that stays open...
    let mut slow = db.pool.get().await.expect("client");
    let slow_tx = slow.transaction().await.expect("tx");
    append_events(&slow_tx, &events_for(early, 1..=1), 1)
        .await
        .expect("append");
    // ...while a later transaction commits and is published.
    append_with(&db, &events_for(late, 1..=1), 1).await;
    let mut published = vec![];
    store
        .publish_round(&[0], 100, None, async |rows| {
            published.extend(rows.iter().map(|r| r.event_id));
            Ok::<(), std::io::Error>(())
        })
        .await
        .expect("publish");
    assert_eq!(published.len(), 1);
    slow_tx.commit().await.expect("late commit");
    let mut later = vec![];
    store
        .publish_round(&[0], 100, None, async |rows| {
            later.extend(rows.iter().map(|r| r.aggregate_id_of()));
            Ok::<(), std::io::Error>(())
        })
        .await
        .expect("publish");
    assert_eq!(
        later,
        vec![early],
        "the late row is found by the next round"
    );
}

trait AggregateOf {
    fn aggregate_id_of(&self) -> Uuid;
}

impl AggregateOf for outbox::relay::OutboxRow {
    fn aggregate_id_of(&self) -> Uuid {
        EventEnvelope::from_json(self.envelope.as_bytes())
            .expect("envelope")
            .aggregate_id
    }
}

#[tokio::test]
async fn listener_hears_a_wake_up_naming_the_partitions_written() {
    let db = TestDb::new().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _listener = Listener::start(&db.settings, &outbox::notify_channel(&db.schema), tx)
        .await
        .expect("listen");
    let id = Uuid::now_v7();
    let events = events_for(id, 1..=2);
    append(&db, &events).await;
    let c = db.pool.get().await.expect("client");
    outbox::wake::notify(&c, &outbox::wake::partitions_of(&events, 4))
        .await
        .expect("wake");
    let payload = tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .expect("woken")
        .expect("payload");
    assert_eq!(
        payload,
        events::partition_for(id, 4).to_string(),
        "the payload names the partition written, once"
    );
}

#[tokio::test]
async fn a_replay_snapshot_never_shows_an_aggregate_with_a_hole() {
    let db = TestDb::new().await;
    let (x, y) = (Uuid::now_v7(), Uuid::now_v7());
    // X's creation takes a position first but commits late (a slow command)...
    let mut slow = db.pool.get().await.expect("pg");
    let slow_tx = slow.transaction().await.expect("tx");
    append_events(&slow_tx, &events_for(x, 1..=1), 1)
        .await
        .expect("append x1");
    // ...while Y, with a higher position, commits at once.
    append(&db, &events_for(y, 1..=1)).await;
    let types = vec!["Task".to_owned()];

    let mut client = db.pool.get().await.expect("pg");
    let snapshot = outbox::history::snapshot(&mut client)
        .await
        .expect("snapshot");
    let first = outbox::history::page(&snapshot, &types, 0, 1)
        .await
        .expect("page 1");
    assert_eq!(
        first
            .iter()
            .map(|(_, e)| e.aggregate_id)
            .collect::<Vec<_>>(),
        vec![y],
        "the uncommitted creation is not visible"
    );
    let last = first[0].0;
    // X commits, and its next version follows: both after the snapshot.
    slow_tx.commit().await.expect("commit x1");
    append(&db, &events_for(x, 2..=2)).await;
    let next = outbox::history::page(&snapshot, &types, last, 100)
        .await
        .expect("page 2");
    assert!(
        next.is_empty(),
        "X's version 2 without its version 1 would be a false gap: {next:?}"
    );
    drop(snapshot);
    // A new snapshot sees X whole, in order.
    let snapshot = outbox::history::snapshot(&mut client)
        .await
        .expect("snapshot");
    let all = outbox::history::page(&snapshot, &types, 0, 100)
        .await
        .expect("all");
    let of_x: Vec<i64> = all
        .iter()
        .filter(|(_, e)| e.aggregate_id == x)
        .map(|(_, e)| e.aggregate_version)
        .collect();
    assert_eq!(of_x, vec![1, 2]);
}

/// A page of history costs about its own size whatever PostgreSQL's statistics say: right
/// after a bulk import (no statistics yet) the planner used to pick a bitmap scan and sort every
/// row after the position for each page, a quadratic replay. Pages of several aggregate types
/// interleave in position order.
#[tokio::test]
async fn a_history_page_reads_about_its_own_size_and_interleaves_types() {
    let db = TestDb::new().await;
    let ctx = EventContext::new(None, None, "test");
    let history: Vec<EventEnvelope> = (0..6000)
        .map(|i| {
            let kind = if i % 3 == 0 { "Node" } else { "Task" };
            ctx.envelope(
                kind,
                Uuid::now_v7(),
                1,
                "x.y",
                serde_json::json!({ "i": i }),
            )
        })
        .collect();
    outbox::history::import(&**db.pool.get().await.expect("pg"), &history)
        .await
        .expect("import");
    // A type named twice is read once.
    let types = vec!["Task".to_owned(), "Node".to_owned(), "Task".to_owned()];
    let mut client = db.pool.get().await.expect("pg");
    let snapshot = outbox::history::snapshot(&mut client)
        .await
        .expect("snapshot");
    let fetched = async |tx: &outbox::Transaction<'_>| -> i64 {
        tx.query_one(
            "SELECT coalesce(sum(coalesce(idx_tup_fetch, 0) + coalesce(seq_tup_read, 0)), 0)::bigint
             FROM pg_stat_xact_user_tables WHERE relname = 'event_store'",
            &[],
        )
        .await
        .expect("stats")
        .get(0)
    };
    let before = fetched(&snapshot).await;
    let first = outbox::history::page(&snapshot, &types, 0, 100)
        .await
        .expect("page");
    let second = outbox::history::page(&snapshot, &types, first[99].0, 100)
        .await
        .expect("page");
    let read = fetched(&snapshot).await - before;
    assert!(
        read <= 2 * 2 * 100,
        "two pages of 100 read {read} rows of event_store: every row after the position was read"
    );
    let got: Vec<i32> = first
        .iter()
        .chain(&second)
        .map(|(_, e)| i32::try_from(e.payload["i"].as_i64().expect("i")).expect("small"))
        .collect();
    assert_eq!(
        got,
        (0..200).collect::<Vec<_>>(),
        "both types, in position order"
    );
}

/// Input that PostgreSQL's `text` refuses (a NUL) is still audited, with the NUL shown as
/// U+FFFD: a refused call must leave its trace whatever it carried.
#[tokio::test]
async fn an_audit_entry_keeps_text_with_a_nul() {
    use outbox::audit::{AuditStore, NewEntry, Outcome};
    let db = TestDb::new().await;
    let audit = AuditStore::new(db.pool.clone());
    let id = audit
        .record(&NewEntry {
            actor: "ops",
            action: "dlq.discard",
            target: "task_projection:1-0\0",
            outcome: Outcome::Pending,
            reason: Some("bad\0reason"),
            details: serde_json::json!({"k\0": ["v\0"]}),
        })
        .await
        .expect("recorded");
    audit
        .finish(
            id,
            Outcome::Refused,
            Some("no\0pe"),
            &serde_json::json!({"x": "\0"}),
        )
        .await
        .expect("finished");
    let entries = audit.list(None, 10).await.expect("list");
    let entry = entries.iter().find(|e| e.id == id).expect("the entry");
    assert_eq!(entry.target, "task_projection:1-0\u{fffd}");
    assert_eq!(entry.reason.as_deref(), Some("no\u{fffd}pe"));
    assert_eq!(entry.outcome, "refused");
    assert_eq!(
        entry.details,
        serde_json::json!({"k\u{fffd}": ["v\u{fffd}"], "x": "\u{fffd}"})
    );
}

/// A commit no longer notifies inside its transaction; the waker notifies after it, naming
/// every partition woken, however many wakes come at once (they coalesce into few
/// notifications, none lost).
#[tokio::test]
async fn the_waker_names_every_woken_partition_after_the_commit() {
    use outbox::listener::Listener;
    use outbox::wake::Waker;
    let db = TestDb::new().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _listener = Listener::start(&db.settings, &outbox::notify_channel(&db.schema), tx)
        .await
        .expect("listen");
    // An append alone wakes nobody.
    let e = EventContext::new(None, None, "test").envelope(
        "Task",
        Uuid::now_v7(),
        1,
        "task.created",
        serde_json::json!({}),
    );
    append(&db, &[e]).await;
    // Notifications arrive in commit order: this one, committed after the append, comes first
    // unless the append notified.
    let c = db.pool.get().await.expect("client");
    c.execute(
        "SELECT pg_notify($1, 'barrier')",
        &[&outbox::notify_channel(&db.schema)],
    )
    .await
    .expect("notify");
    let first = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("the barrier within 5 s");
    assert_eq!(first.as_deref(), Some("barrier"));

    let waker = Waker::start(db.pool.clone());
    for p in 0..200 {
        waker.wake([p % 7]);
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut notifications = 0;
    while seen.len() < 7 {
        let payload = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a notification within 5 s")
            .expect("listening");
        notifications += 1;
        seen.extend(
            payload
                .split(',')
                .map(|p| p.parse::<i32>().expect("a partition")),
        );
    }
    assert_eq!(seen, (0..7).collect());
    assert!(
        notifications < 200,
        "{notifications} notifications for 200 wakes"
    );
}
