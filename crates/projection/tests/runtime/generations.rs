//! Generations and self-repair: zero-downtime rebuilds (resumable, never switched half-built),
//! gaps repaired from `event_store`, inconsistent read models rebuilt instead of poisoning
//! events, Redis going back in time noticed and mended, parked aggregates re-evaluated, and
//! one process per replica name.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use outbox::operations::{NewOperation, OperationKind, OperationState, OperationStore, Started};
use projection::{CanaryCheck, Projector, RebuildOutcome, Status};
use streams::{GenerationState, Generations, redis};
use test_kit::{TestDb, eventually};
use uuid::Uuid;

use crate::fixture::*;

/// A built read model over `partitions` partitions on a database of its own, holding `history`.
async fn built(partitions: u32, history: &[events::EventEnvelope]) -> (TestDb, Fixture) {
    let db = TestDb::new().await;
    let f = Fixture::with_db(partitions, Some(db.pool.clone())).await;
    f.broken.store(false, Ordering::SeqCst);
    append(&db, history).await;
    assert!(
        !f.projector.heal_if_needed().await.expect("first build"),
        "served after the first build"
    );
    (db, f)
}

fn generations(f: &Fixture) -> Generations {
    Generations::new(
        &f.redis.pools.keys,
        "task",
        "task_projection",
        GenerationState::default(),
    )
}

/// Consumes and retries until the group has nothing left, keeping the leases as the run loop
/// does (a slow machine lets a 900 ms lease lapse while a rebuild runs beside).
async fn drain(f: &Fixture) {
    eventually(Duration::from_secs(10), "the group drained", || async {
        f.projector.tick_leases().await.expect("leases");
        f.projector.consume_once(None).await.expect("consume");
        f.projector.retry_due().await.expect("retry");
        (f.projector.observe_lag().await.expect("lag") == (0, 0)).then_some(())
    })
    .await;
}

async fn operator_rebuild(db: &TestDb) -> Uuid {
    match OperationStore::new(db.pool.clone())
        .start(NewOperation::new(
            OperationKind::Rebuild,
            "task_projection",
            "operator",
        ))
        .await
        .expect("start")
    {
        Started::New(op) => op.id,
        Started::AlreadyRunning(op) => panic!("one already runs: {op:?}"),
    }
}

fn lives(ids: &[Uuid], versions: std::ops::RangeInclusive<i64>) -> Vec<events::EventEnvelope> {
    ids.iter()
        .flat_map(|id| versions.clone().map(|v| envelope(*id, v, "task.updated")))
        .collect()
}

#[tokio::test]
async fn a_rebuild_builds_beside_the_served_generation_while_live_events_flow_and_switches_whole() {
    let ids: Vec<Uuid> = (0..2000).map(|_| Uuid::now_v7()).collect();
    let (db, f) = built(2, &lives(&ids, 1..=3)).await;
    let first = f.projector.generation_state().active.expect("served");

    // Readers watch a sample of aggregates in whatever generation is served: no log may ever
    // get shorter (a value going backwards) and none may be missing.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, pools, sample) = (stop.clone(), f.redis.pools.clone(), ids[..50].to_vec());
        let served = generations(&f);
        tokio::spawn(async move {
            let mut longest: HashMap<Uuid, usize> = HashMap::new();
            let mut seen = std::collections::BTreeSet::new();
            let mut reads = 0;
            while !stop.load(Ordering::SeqCst) {
                let mut c = pools.commands.get().await.expect("conn");
                served.refresh(&mut *c).await.expect("generations");
                let model = served.active_keys().expect("always a served generation");
                seen.insert(model.generation());
                let keys: Vec<String> = sample
                    .iter()
                    .map(|id| model.key(&format!("log:{id}")))
                    .collect();
                let logs: Vec<Option<String>> = redis::cmd("MGET")
                    .arg(&keys)
                    .query_async(&mut *c)
                    .await
                    .expect("mget");
                for (id, log) in sample.iter().zip(logs) {
                    let n = log
                        .expect("every aggregate has its view")
                        .split(',')
                        .count();
                    let before = longest.entry(*id).or_default();
                    assert!(n >= *before, "{id} went back from {before} to {n} versions");
                    *before = n;
                }
                reads += 1;
            }
            (reads, seen)
        })
    };

    // An operator asks for a rebuild; a replica runs it while live events keep coming.
    operator_rebuild(&db).await;
    let rebuild = {
        let p = f.projector.clone();
        tokio::spawn(async move { p.rebuild("operator").await })
    };
    let live = lives(&ids[..300], 4..=4);
    append(&db, &live).await;
    f.publish(&live).await;
    drain(&f).await;
    let outcome = rebuild.await.expect("task").expect("rebuild");
    let RebuildOutcome::Switched { generation, events } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(generation > first);
    assert!(events >= 6000, "the whole history was replayed ({events})");
    drain(&f).await;
    stop.store(true, Ordering::SeqCst);
    let (reads, seen) = reader.await.expect("reader");
    assert!(
        reads > 0 && seen.contains(&generation),
        "{reads} reads, {seen:?}"
    );

    assert_eq!(f.projector.generation_state().active, Some(generation));
    for id in &ids[..300] {
        assert_eq!(f.log(*id).await.as_deref(), Some("1,2,3,4"), "{id}");
    }
    for id in &ids[300..] {
        assert_eq!(f.log(*id).await.as_deref(), Some("1,2,3"), "{id}");
    }
    let op = OperationStore::new(db.pool.clone())
        .running("task_projection")
        .await
        .expect("operations");
    assert!(op.is_none(), "the operation ended");
    // The old generation is retired, then deleted in bounded steps.
    let old = generations(&f).keys_of(first);
    while f.projector.delete_retired().await.expect("delete") > 0 {}
    let mut c = f.redis.pools.commands.get().await.expect("conn");
    let (_, left): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("MATCH")
        .arg(format!("{}*", old.base()))
        .arg("COUNT")
        .arg(100_000)
        .query_async(&mut *c)
        .await
        .expect("scan");
    assert!(left.is_empty(), "generation {first} deleted: {left:?}");
}

#[tokio::test]
async fn versions_lost_on_the_way_are_repaired_from_event_store_not_dead_lettered() {
    let (db, f) = built(1, &[]).await;
    let ids: Vec<Uuid> = (0..50).map(|_| Uuid::now_v7()).collect();
    let history = lives(&ids, 1..=4);
    append(&db, &history).await;
    // Only the last version of each reaches the stream: versions 1 to 3 were lost on the way.
    let last: Vec<_> = history
        .iter()
        .filter(|e| e.aggregate_version == 4)
        .cloned()
        .collect();
    f.publish(&last).await;
    let report = f.projector.consume_once(None).await.expect("consume");
    assert_eq!(
        (report.applied, report.repaired, report.dead_lettered),
        (50, 150, 0),
        "{report:?}"
    );
    for id in &ids {
        assert_eq!(f.log(*id).await.as_deref(), Some("1,2,3,4"));
    }
    assert!(
        f.dead_letters()
            .list(None, 10)
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(f.projector.observe_lag().await.expect("lag"), (0, 0));
}

#[tokio::test]
async fn a_read_model_that_contradicts_its_versions_is_rebuilt_and_nothing_is_dead_lettered() {
    let a = Uuid::now_v7();
    let (db, f) = built(1, &lives(&[a], 1..=2)).await;
    // The view goes (evicted, or deleted by hand) while the version record stays.
    {
        let mut c = f.redis.pools.commands.get().await.expect("conn");
        let _: i64 = redis::cmd("DEL")
            .arg(f.projector.keys().key(&format!("log:{a}")))
            .query_async(&mut *c)
            .await
            .expect("del");
    }
    // Its next event needs the view (an update of a task, say).
    let next = vec![envelope(a, 3, "task.completed")];
    append(&db, &next).await;
    f.publish(&next).await;
    let report = f.projector.consume_once(None).await.expect("consume");
    assert_eq!(
        (
            report.applied,
            report.retrying,
            report.not_ready,
            report.dead_lettered
        ),
        (0, 0, 1, 0),
        "held back without an attempt: {report:?}"
    );
    let reason = f
        .projector
        .rebuild_needed()
        .await
        .expect("check")
        .expect("a rebuild is due");
    assert!(reason.contains("inconsistent"), "{reason}");
    let RebuildOutcome::Switched { .. } = f.projector.rebuild(&reason).await.expect("rebuild")
    else {
        panic!("not switched")
    };
    drain(&f).await;
    assert_eq!(f.log(a).await.as_deref(), Some("1,2,3"));
    assert!(
        f.dead_letters()
            .list(None, 10)
            .await
            .expect("list")
            .is_empty()
    );
}

#[tokio::test]
async fn a_rebuild_killed_half_way_is_resumed_elsewhere_and_never_switched_before_it_is_whole() {
    // Enough history that the replay outlasts several progress records (one per 250 ms) even
    // on the fast path: with less, it could end before its first record, and the kill came
    // too late.
    let ids: Vec<Uuid> = (0..20_000).map(|_| Uuid::now_v7()).collect();
    let (db, f) = built(1, &lives(&ids, 1..=2)).await;
    let first = f.projector.generation_state().active.expect("served");
    let op = operator_rebuild(&db).await;
    let store = OperationStore::new(db.pool.clone());
    // The rebuilding replica dies after a page or two.
    let rebuild = {
        let p = f.projector.clone();
        tokio::spawn(async move { p.rebuild("operator").await })
    };
    // Polled tightly (not with a backing-off poll), so the kill lands right after the first
    // progress record.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let stopped_at = loop {
        let row = store.get(op).await.expect("get").expect("row");
        if row.position > 0 {
            break row.position;
        }
        assert!(std::time::Instant::now() < deadline, "replay under way");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    rebuild.abort();
    let _ = rebuild.await;
    let state = generations(&f)
        .refresh(&mut *f.redis.pools.commands.get().await.expect("conn"))
        .await
        .expect("generations");
    let row = store.get(op).await.expect("get").expect("row");
    assert_eq!(row.state, OperationState::Running);
    assert_eq!(
        state.active,
        Some(first),
        "still serving the old generation"
    );
    assert_eq!(
        state.building,
        Some(row.generation),
        "the new one half-built"
    );
    assert!(row.position >= stopped_at && row.events_applied < 40_000);

    // Another replica resumes it from where it stopped (once the lock has expired).
    let other = f.another_with("r2", Some(db.pool.clone()));
    let outcome = eventually(Duration::from_secs(10), "resumed", || async {
        match other.rebuild("operator").await.expect("rebuild") {
            RebuildOutcome::Busy => None,
            done => Some(done),
        }
    })
    .await;
    assert_eq!(
        outcome,
        RebuildOutcome::Switched {
            generation: row.generation,
            events: 40_000
        }
    );
    let done = store.get(op).await.expect("get").expect("row");
    assert_eq!(
        (done.state, done.events_applied, done.events_total),
        (OperationState::Succeeded, 40_000, 40_000)
    );
    let served = other.generation_state().active.expect("served");
    assert_eq!(served, row.generation);
    let model = other.keys();
    let mut c = f.redis.pools.commands.get().await.expect("conn");
    let versions: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(model.versions())
        .query_async(&mut *c)
        .await
        .expect("versions");
    assert_eq!(versions.len(), 20_000);
    assert!(versions.values().all(|v| *v == 2));
}

/// Every key under `prefix` as `(key, DUMP, PTTL)`, read in one `MULTI`: an atomic snapshot.
async fn snapshot(f: &Fixture) -> Vec<(String, Vec<u8>)> {
    let keys = f.redis.keys().await;
    let mut c = f.redis.pools.commands.get().await.expect("conn");
    let mut pipe = redis::pipe();
    pipe.atomic();
    for k in &keys {
        pipe.cmd("DUMP").arg(k);
    }
    let dumps: Vec<Option<Vec<u8>>> = pipe.query_async(&mut *c).await.expect("dump");
    keys.into_iter()
        .zip(dumps)
        .filter_map(|(k, d)| d.map(|d| (k, d)))
        .collect()
}

async fn restore(f: &Fixture, snapshot: &[(String, Vec<u8>)]) {
    f.redis.flush_prefix().await;
    let mut c = f.redis.pools.commands.get().await.expect("conn");
    for (k, d) in snapshot {
        let () = redis::cmd("RESTORE")
            .arg(k)
            .arg(0)
            .arg(d)
            .query_async(&mut *c)
            .await
            .expect("restore");
    }
}

#[tokio::test]
async fn redis_going_back_in_time_is_noticed_and_what_it_lost_is_replayed() {
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let (db, f) = built(1, &[]).await;
    assert_eq!(
        f.projector.check_canary().await.expect("canary"),
        CanaryCheck::Healthy
    );
    let early = lives(&[a], 1..=2);
    append(&db, &early).await;
    f.publish(&early).await;
    drain(&f).await;
    f.projector.check_canary().await.expect("canary");
    let then = snapshot(&f).await;
    // More happens after the snapshot: a's third version, b's first.
    let late = [lives(&[a], 3..=3), lives(&[b], 1..=1)].concat();
    append(&db, &late).await;
    f.publish(&late).await;
    drain(&f).await;
    f.projector.check_canary().await.expect("canary");
    f.projector.check_canary().await.expect("canary");
    assert_eq!(f.log(b).await.as_deref(), Some("1"));

    // Redis goes back to the snapshot (a failover to a replica that lagged would do the same).
    restore(&f, &then).await;
    assert_eq!(f.log(a).await.as_deref(), Some("1,2"), "rolled back");
    assert_eq!(f.log(b).await, None);
    assert_eq!(
        f.projector.check_canary().await.expect("canary"),
        CanaryCheck::RolledBack
    );
    assert_eq!(f.log(a).await.as_deref(), Some("1,2,3"));
    assert_eq!(f.log(b).await.as_deref(), Some("1"));
    assert_eq!(
        f.projector.check_canary().await.expect("canary"),
        CanaryCheck::Healthy,
        "mended: the canary moves on"
    );
    assert!(
        f.dead_letters()
            .list(None, 10)
            .await
            .expect("list")
            .is_empty()
    );
}

#[tokio::test]
async fn a_rebuild_lets_parked_aggregates_whose_events_now_apply_leave_the_parking() {
    let (db, f) = built(1, &[]).await;
    f.broken.store(true, Ordering::SeqCst);
    let bad = Uuid::now_v7();
    let chain = vec![
        envelope(bad, 1, "task.poison"),
        envelope(bad, 2, "task.updated"),
    ];
    append(&db, &chain).await;
    f.publish(&chain).await;
    eventually(Duration::from_secs(5), "parked", || async {
        f.projector.consume_once(None).await.expect("consume");
        f.projector.retry_due().await.expect("retry");
        (f.dead_letters().list(None, 10).await.expect("list").len() == 2).then_some(())
    })
    .await;
    // The projection is fixed (a deploy); a rebuild re-evaluates the parked aggregate.
    f.broken.store(false, Ordering::SeqCst);
    operator_rebuild(&db).await;
    f.projector.rebuild("operator").await.expect("rebuild");
    assert_eq!(f.log(bad).await.as_deref(), Some("1,2"));
    assert!(
        f.dead_letters()
            .list(None, 10)
            .await
            .expect("list")
            .is_empty()
    );
    assert!(f.dead_letters().parked().await.expect("parked").is_empty());
}

#[tokio::test]
async fn a_second_live_process_under_one_name_is_refused_and_a_restart_is_not() {
    let (db, f) = built(1, &[]).await;
    let live = Arc::new(f.another_with("shared", Some(db.pool.clone())));
    let beating = {
        let live = live.clone();
        tokio::spawn(async move {
            loop {
                live.heartbeat(Status::Running).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    live.heartbeat(Status::Running).await;
    let twin = f.another_with("shared", Some(db.pool.clone()));
    let err = twin.ensure_sole_replica().await.expect_err("a live twin");
    assert!(err.to_string().contains("CONSUMER_NAME"), "{err}");
    // The first one dies without a word (SIGKILL): its last report goes stale, and a process
    // started under its name afterwards is not refused.
    beating.abort();
    let restarted = f.another_with("shared", Some(db.pool.clone()));
    restarted.ensure_sole_replica().await.expect("a restart");
}

/// [`Logging`], with `tweak` run on each event's writes: the faults the fast path of a rebuild
/// must survive.
struct Tweaked<F> {
    inner: Logging,
    tweak: F,
}

impl<F> projection::Projection for Tweaked<F>
where
    F: Fn(&events::EventEnvelope, &streams::ReadModelKeys, &mut Vec<streams::Op>)
        + Send
        + Sync
        + 'static,
{
    fn module(&self) -> &'static events::ModuleSpec {
        self.inner.module()
    }
    fn reads(&self, e: &events::EventEnvelope, keys: &streams::ReadModelKeys) -> Vec<String> {
        self.inner.reads(e, keys)
    }
    fn apply(
        &self,
        e: &events::EventEnvelope,
        s: &projection::ViewState,
        keys: &streams::ReadModelKeys,
    ) -> Result<Vec<streams::Op>, projection::ProjectionError> {
        let mut ops = self.inner.apply(e, s, keys)?;
        (self.tweak)(e, keys, &mut ops);
        Ok(ops)
    }
}

/// A replica of `f`'s projection, tweaked.
fn tweaked<F>(f: &Fixture, db: &TestDb, tweak: F) -> Projector
where
    F: Fn(&events::EventEnvelope, &streams::ReadModelKeys, &mut Vec<streams::Op>)
        + Send
        + Sync
        + 'static,
{
    Projector::new(
        f.redis.pools.clone(),
        Some(db.pool.clone()),
        Arc::new(Tweaked {
            inner: Logging {
                broken: f.broken.clone(),
            },
            tweak,
        }),
        settings("r2", f.partitions),
    )
}

#[tokio::test]
async fn a_live_apply_landing_between_a_rebuilds_read_and_write_is_not_applied_twice() {
    let ids: Vec<Uuid> = (0..300).map(|_| Uuid::now_v7()).collect();
    let (db, f) = built(1, &lives(&ids, 1..=3)).await;
    let armed = Arc::new(AtomicBool::new(true));
    let race = ids[17];
    let url = f.redis.settings.url.clone();
    // Every apply is counted in `applies` (a write that is not idempotent, like a stats
    // counter); and once, planning `race`'s version 1 in the generation being built also does
    // what a live apply landing right then would: it writes that version there.
    let racing = tweaked(&f, &db, {
        let armed = armed.clone();
        move |e, keys, ops| {
            let applies = keys.key("applies");
            if e.aggregate_id == race
                && e.aggregate_version == 1
                && armed.swap(false, Ordering::SeqCst)
            {
                // A test double of the live path, between the fast path's read and its write:
                // a blocking client, so the write has landed when planning goes on.
                let mut c = redis::Client::open(url.as_str())
                    .and_then(|c| c.get_connection())
                    .expect("a blocking connection");
                let () = redis::pipe()
                    .cmd("HSET")
                    .arg(keys.versions())
                    .arg(race.to_string())
                    .arg(1)
                    .ignore()
                    .cmd("SET")
                    .arg(keys.key(&format!("log:{race}")))
                    .arg("1")
                    .ignore()
                    .cmd("HINCRBY")
                    .arg(&applies)
                    .arg(race.to_string())
                    .arg(1)
                    .ignore()
                    .query(&mut c)
                    .expect("the live apply");
            }
            ops.push(streams::Op::HIncrBy {
                key: applies,
                field: e.aggregate_id.to_string(),
                delta: 1,
            });
        }
    });
    operator_rebuild(&db).await;
    let outcome = racing.rebuild("operator").await.expect("rebuild");
    assert!(
        matches!(outcome, RebuildOutcome::Switched { .. }),
        "{outcome:?}"
    );
    assert!(!armed.load(Ordering::SeqCst), "the race happened");
    let model = racing.keys();
    let mut c = f.redis.pools.commands.get().await.expect("conn");
    for id in &ids {
        let (log, applies): (Option<String>, Option<i64>) = redis::pipe()
            .cmd("GET")
            .arg(model.key(&format!("log:{id}")))
            .cmd("HGET")
            .arg(model.key("applies"))
            .arg(id.to_string())
            .query_async(&mut *c)
            .await
            .expect("read");
        assert_eq!(
            (log.as_deref(), applies),
            (Some("1,2,3"), Some(3)),
            "every version applied once to {id} (the raced one: {race})"
        );
    }
}

#[tokio::test]
async fn a_fast_rebuild_write_that_fails_half_way_starts_over_the_careful_way() {
    let ids: Vec<Uuid> = (0..50).map(|_| Uuid::now_v7()).collect();
    let (db, f) = built(1, &lives(&ids, 1..=3)).await;
    let clash = ids[7];
    // `clash`'s version 2 also counts in its log key, a string: projection code using one key
    // as two types, which only Redis can catch.
    let clashing = tweaked(&f, &db, move |e, keys, ops| {
        if e.aggregate_id == clash && e.aggregate_version == 2 {
            ops.push(streams::Op::HIncrBy {
                key: keys.key(&format!("log:{clash}")),
                field: "n".into(),
                delta: 1,
            });
        }
    });
    operator_rebuild(&db).await;
    let first = clashing.rebuild("operator").await;
    assert!(
        matches!(
            first,
            Err(projection::ReplayError::Streams(
                streams::StreamError::Redis(_)
            ))
        ),
        "{first:?}"
    );
    // Carried on by whoever comes next: a fresh generation, built the careful way, where the
    // bad write is refused whole (dead-lettered) and everything else applies.
    let outcome = clashing.rebuild("operator").await.expect("rebuild");
    let RebuildOutcome::Switched { generation, .. } = outcome else {
        panic!("{outcome:?}")
    };
    let model = clashing.keys();
    assert_eq!(model.generation(), generation);
    let mut c = f.redis.pools.commands.get().await.expect("conn");
    for id in &ids {
        let log: Option<String> = redis::cmd("GET")
            .arg(model.key(&format!("log:{id}")))
            .query_async(&mut *c)
            .await
            .expect("get");
        let want = if *id == clash { "1" } else { "1,2,3" };
        assert_eq!(log.as_deref(), Some(want), "{id}");
    }
    let letters = f.dead_letters().list(None, 10).await.expect("list");
    assert_eq!(letters.len(), 1, "{letters:?}");
}
