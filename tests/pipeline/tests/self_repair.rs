//! Redis is disposable: whatever it loses (a failover to a replica that lagged, a rollback to an
//! older snapshot, keys deleted one by one while processes crash) the read side repairs from
//! event_store with no operator and no dead letter; a rebuild survives its rebuilder being
//! killed and never serves a half-built generation; readers meanwhile get right answers.
//!
//! CI runs short profiles; `make chaos` the long ones (`CHAOS_REPAIR_COMMANDS`,
//! `CHAOS_REBUILD_TASKS`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Options, Pipeline};
use outbox::operations::{NewOperation, OperationKind, OperationState, OperationStore};
use rand::RngExt as _;
use reqwest::StatusCode;
use serde_json::Value;
use streams::{GenerationState, Generations, redis};
use test_kit::servers::PrivateRedis;
use uuid::Uuid;

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

async fn converged(p: &Pipeline, users: &[Uuid], what: &str) {
    p.wait_idle(Duration::from_secs(90), what).await;
    p.assert_read_side_matches_postgres(users).await;
    assert_eq!(p.dead_letters().await, 0, "{what}: nothing is poison");
}

/// Two partitions and two projectors on the private Redis at `url`: the shape the repair
/// tests lose data under.
fn repairable_on(url: String) -> Options {
    Options {
        partitions: 2,
        projectors: 2,
        redis_url: Some(url),
        ..Options::default()
    }
}

#[tokio::test]
async fn a_failover_to_a_replica_that_lagged_is_repaired_with_no_dead_letter() {
    let primary = PrivateRedis::start(false).await;
    let mut replica = PrivateRedis::start_replica_of(&primary).await;
    let users: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
    let options = repairable_on(primary.url());
    let mut p = Pipeline::start(&users, options).await;
    p.random_commands(&users, 20, 1).await;
    p.wait_idle(
        Duration::from_secs(30),
        "idle before the replica falls behind",
    )
    .await;
    // The replica stops following (as one that lags), and the primary takes more writes.
    replica.detach().await;
    let lost = p.random_commands(&users, 30, 2).await;
    p.wait_idle(Duration::from_secs(30), "the primary has everything")
        .await;
    // The primary dies; the deployment fails over to the replica, which lacks all of that.
    drop(primary);
    p.move_to_redis(&replica.url()).await;
    eprintln!("failover: the replica missed {lost:?}");
    converged(&p, &users, "after the failover").await;
    p.stop_all().await;
}

#[tokio::test]
async fn a_rollback_to_an_older_snapshot_is_repaired_with_no_dead_letter() {
    let redis_server = PrivateRedis::start(false).await;
    let users: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
    let options = repairable_on(redis_server.url());
    let mut p = Pipeline::start(&users, options).await;
    p.random_commands(&users, 20, 3).await;
    p.wait_idle(Duration::from_secs(30), "idle before the snapshot")
        .await;
    // An atomic snapshot of every key.
    let mut c = connection(&redis_server.url()).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .expect("keys");
    let mut pipe = redis::pipe();
    pipe.atomic();
    for k in &keys {
        pipe.cmd("DUMP").arg(k);
    }
    let dumps: Vec<Option<Vec<u8>>> = pipe.query_async(&mut c).await.expect("dump");
    let later = p.random_commands(&users, 30, 4).await;
    p.wait_idle(Duration::from_secs(30), "idle after more writes")
        .await;
    // Redis goes back to the snapshot, under the running services.
    let () = redis::cmd("FLUSHALL")
        .query_async(&mut c)
        .await
        .expect("flush");
    let mut pipe = redis::pipe();
    pipe.atomic();
    for (k, d) in keys.iter().zip(&dumps) {
        if let Some(d) = d {
            pipe.cmd("RESTORE").arg(k).arg(0).arg(d).ignore();
        }
    }
    let () = pipe.query_async(&mut c).await.expect("restore");
    eprintln!("rollback: the snapshot predates {later:?}");
    converged(&p, &users, "after the rollback").await;
    p.stop_all().await;
}

#[tokio::test]
async fn streams_lost_with_entries_nobody_applied_are_repaired_with_no_dead_letter() {
    let redis_server = PrivateRedis::start(false).await;
    let users: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
    let options = repairable_on(redis_server.url());
    let mut p = Pipeline::start(&users, options).await;
    p.random_commands(&users, 10, 5).await;
    p.wait_idle(Duration::from_secs(30), "idle before the projectors stop")
        .await;
    // The projectors are down (a deploy, a crash loop) while commands go on: the relay
    // publishes them and deletes their outbox rows, so the streams alone hold them.
    let projectors = p.named("projector-worker");
    for name in &projectors {
        let status = p
            .services
            .get_mut(name)
            .expect("projector")
            .terminate(Duration::from_secs(15))
            .await;
        assert!(status.success(), "{name} stopped: {status}");
    }
    let unapplied = p.random_commands(&users, 20, 6).await;
    let c = p.db.pool.get().await.expect("pg");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let outbox: i64 = c
            .query_one("SELECT count(*) FROM outbox", &[])
            .await
            .expect("outbox")
            .get(0);
        if outbox == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the relay published everything");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(c);
    // Redis loses the streams (and nothing else): the canary, the markers and the read models
    // stay, so only the missing groups can tell.
    let pools = p.redis_pools();
    let mut conn = connection(&redis_server.url()).await;
    let mut lost = 0usize;
    for spec in modules::specs() {
        for stream in pools.keys.routing(2).streams(spec.name) {
            let n: usize = redis::cmd("XLEN")
                .arg(&stream)
                .query_async(&mut conn)
                .await
                .expect("xlen");
            lost += n;
            let _: usize = redis::cmd("DEL")
                .arg(&stream)
                .query_async(&mut conn)
                .await
                .expect("del");
        }
    }
    eprintln!("streams lost: {lost} entries, {unapplied:?} commands nobody applied");
    assert!(lost > 0, "the streams held entries");
    for name in &projectors {
        let svc = p.services.get_mut(name).expect("projector");
        svc.restart();
        svc.wait_ready(Duration::from_secs(30)).await;
    }
    converged(&p, &users, "after the streams were lost").await;
    let logs: String = projectors
        .iter()
        .map(|n| p.services[n].log_text())
        .collect();
    assert!(
        logs.contains("a stream was lost"),
        "a projector noticed:\n{logs}"
    );
    p.stop_all().await;
}

#[tokio::test]
async fn keys_deleted_one_by_one_while_relays_and_projectors_crash_converge_with_no_operator() {
    let commands = env_usize("CHAOS_REPAIR_COMMANDS", 1500);
    let redis_server = PrivateRedis::start(false).await;
    let users: Vec<Uuid> = (0..15).map(|_| Uuid::now_v7()).collect();
    let options = Options {
        partitions: 4,
        relays: 2,
        projectors: 2,
        redis_url: Some(redis_server.url()),
        extra_env: vec![
            ("PROJECTOR_LEASE_MS".into(), "1500".into()),
            ("RELAY_LEASE_MS".into(), "1500".into()),
        ],
    };
    let mut p = Pipeline::start(&users, options).await;
    let workers: Vec<String> = [p.named("outbox-relay"), p.named("projector-worker")].concat();
    let mut crashing: Vec<(String, test_kit::process::Service)> = workers
        .into_iter()
        .filter_map(|n| p.services.remove(&n).map(|s| (n, s)))
        .collect();
    let deleted = AtomicUsize::new(0);
    let started = Instant::now();
    let totals = {
        let load = p.random_commands(&users, commands / users.len(), rand::random());
        let killer = async {
            loop {
                tokio::time::sleep(Duration::from_millis(rand::rng().random_range(500..=2000)))
                    .await;
                let i = rand::rng().random_range(0..crashing.len());
                crashing[i].1.kill().await;
                crashing[i].1.restart();
            }
        };
        // Halfway, every key goes, a few at a time (not atomically: as eviction, a careless
        // operator or a half-finished failover would).
        let wipe = async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let mut c = connection(&redis_server.url()).await;
            let mut cursor = 0u64;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(20)
                    .query_async(&mut c)
                    .await
                    .expect("scan");
                if !keys.is_empty() {
                    let n: usize = redis::cmd("UNLINK")
                        .arg(&keys)
                        .query_async(&mut c)
                        .await
                        .expect("unlink");
                    deleted.fetch_add(n, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            totals = load => totals,
            () = killer => unreachable!("the killer never stops by itself"),
            () = wipe => unreachable!("the wipe never ends by itself"),
        }
    };
    eprintln!(
        "wipe: {} commands ({totals:?}) in {:?}, {} keys deleted one by one",
        totals.values().sum::<usize>(),
        started.elapsed(),
        deleted.load(Ordering::SeqCst)
    );
    for (name, mut svc) in crashing {
        svc.wait_ready(Duration::from_secs(30)).await;
        p.services.insert(name, svc);
    }
    converged(&p, &users, "after the wipe and the crashes").await;
    p.stop_all().await;
}

/// The served generation and whether its marker exists, read together.
async fn served(p: &Pipeline) -> (Option<i64>, bool) {
    let pools = p.redis_pools();
    let mut c = pools.commands.get().await.expect("redis");
    let g = Generations::new(
        &pools.keys,
        "task",
        "task_projection",
        GenerationState::default(),
    );
    g.refresh(&mut *c).await.expect("generations");
    let Some(model) = g.active_keys() else {
        return (None, false);
    };
    let built = streams::read_model::is_built(&mut *c, &model)
        .await
        .expect("marker");
    (Some(model.generation()), built)
}

async fn wait_operation(p: &Pipeline, what: &str) {
    let store = OperationStore::new(p.db.pool.clone());
    let deadline = Instant::now() + Duration::from_secs(90);
    while store
        .running("task_projection")
        .await
        .expect("operations")
        .is_some()
    {
        assert!(Instant::now() < deadline, "{what}: the rebuild never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_rebuild_survives_its_rebuilder_being_killed_and_readers_never_see_a_wrong_answer() {
    let tasks = env_usize("CHAOS_REBUILD_TASKS", 20_000);
    let seeded = Uuid::now_v7();
    let live: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    let options = Options {
        partitions: 2,
        projectors: 2,
        extra_env: vec![("PROJECTOR_LEASE_MS".into(), "1500".into())],
        ..Options::default()
    };
    let mut p = Pipeline::start(&[vec![seeded], live.clone()].concat(), options).await;
    // A large history written before the streams knew of it; a first rebuild serves it.
    p.seed_history(seeded, i64::try_from(tasks).expect("count"))
        .await;
    let store = OperationStore::new(p.db.pool.clone());
    store
        .start(NewOperation::new(
            OperationKind::Rebuild,
            "task_projection",
            "seeded",
        ))
        .await
        .expect("start");
    wait_operation(&p, "the first rebuild").await;
    let (first, _) = served(&p).await;

    // Readers hammer a sample of the seeded tasks and their owner's stats: every answer must
    // be the one PostgreSQL gives (nothing changes them meanwhile), never a 404, never zeros.
    let sample: Vec<(Uuid, Value)> = {
        let c = p.db.pool.get().await.expect("pg");
        let rows = c
            .query(
                "SELECT id FROM tasks WHERE user_id = $1 ORDER BY random() LIMIT 20",
                &[&seeded],
            )
            .await
            .expect("sample");
        let mut out = vec![];
        for r in rows {
            let id: Uuid = r.get(0);
            let task = task::store::load(&**c, id)
                .await
                .expect("load")
                .expect("row");
            out.push((id, serde_json::to_value(task).expect("json")));
        }
        out
    };
    // The projectors are the killer's to SIGKILL and restart; the rest serves the readers.
    let mut projectors: Vec<(String, test_kit::process::Service)> = p
        .named("projector-worker")
        .into_iter()
        .filter_map(|n| p.services.remove(&n).map(|s| (n, s)))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let readers = {
        let (stop, p) = (stop.clone(), &p);
        let sample = &sample;
        async move {
            let mut answers = 0usize;
            let mut generations = std::collections::BTreeSet::new();
            while !stop.load(Ordering::SeqCst) {
                for (id, want) in sample {
                    let (status, _, body) = p.query(seeded, &format!("/v1/tasks/{id}"), None).await;
                    assert_eq!(status, StatusCode::OK, "{id}: {body}");
                    assert_eq!(&body, want, "{id}");
                    answers += 1;
                }
                let (status, _, stats) = p.query(seeded, "/v1/me/task-stats", None).await;
                assert_eq!(status, StatusCode::OK, "{stats}");
                assert_eq!(stats["total_tasks"].as_u64(), Some(tasks as u64), "{stats}");
                answers += 1;
                // Whatever is served is whole: a switch never lands on a half-built generation.
                let (g, built) = served(p).await;
                assert!(built, "generation {g:?} is served without its marker");
                generations.extend(g);
            }
            (answers, generations)
        }
    };
    // A second rebuild, whose rebuilder is SIGKILLed (and restarted) at random points while
    // commands flow and the readers read.
    let kills = AtomicUsize::new(0);
    let work = async {
        store
            .start(NewOperation::new(
                OperationKind::Rebuild,
                "task_projection",
                "operator",
            ))
            .await
            .expect("start");
        let commands = p.random_commands(&live, 40, 7);
        let killer = async {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(rand::rng().random_range(200..=600)))
                    .await;
                let owner: Option<String> = {
                    let pools = p.redis_pools();
                    let mut c = pools.commands.get().await.expect("redis");
                    redis::cmd("GET")
                        .arg(pools.keys.rebuild_lock("task_projection"))
                        .query_async(&mut *c)
                        .await
                        .expect("lock")
                };
                let Some(owner) = owner else { continue };
                let name = format!(
                    "projector-worker#{}",
                    owner.trim_start_matches("projector-")
                );
                if let Some((_, svc)) = projectors.iter_mut().find(|(n, _)| *n == name) {
                    svc.kill().await;
                    svc.restart();
                    kills.fetch_add(1, Ordering::SeqCst);
                }
            }
        };
        tokio::join!(commands, killer);
        wait_operation(&p, "the second rebuild").await;
        stop.store(true, Ordering::SeqCst);
    };
    let ((answers, seen), ()) = tokio::join!(readers, work);
    eprintln!(
        "rebuild: {answers} right answers across generations {seen:?}, {} rebuilder kills",
        kills.load(Ordering::SeqCst)
    );
    let ops = {
        let c = p.db.pool.get().await.expect("pg");
        c.query(
            "SELECT state, events_applied, events_total FROM operations ORDER BY started_at",
            &[],
        )
        .await
        .expect("operations")
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                r.get::<_, i64>(1),
                r.get::<_, i64>(2),
            )
        })
        .collect::<Vec<_>>()
    };
    assert!(
        ops.iter()
            .all(|(s, _, _)| s == OperationState::Succeeded.as_str()),
        "{ops:?}"
    );
    let (now, _) = served(&p).await;
    assert!(
        now > first,
        "a new generation is served: {first:?} → {now:?}"
    );
    for (name, mut svc) in projectors {
        svc.wait_ready(Duration::from_secs(30)).await;
        p.services.insert(name, svc);
    }
    let mut all = vec![seeded];
    all.extend(&live);
    converged(&p, &all, "after the rebuild").await;
    p.stop_all().await;
}
