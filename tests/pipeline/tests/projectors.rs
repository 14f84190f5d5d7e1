//! Projector processes under faults: killed at random, Redis flushed under load, paused and
//! resumed, a poison event. Afterwards the read side must equal PostgreSQL exactly.
//!
//! Sizes are profiles: the CI default is short; `make chaos` sets `CHAOS_COMMANDS=20000`.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Options, Pipeline};
use events::EventContext;
use outbox::control::{ControlStore, DesiredState};
use rand::RngExt as _;
use serde_json::json;
use test_kit::eventually;
use test_kit::servers::PrivateRedis;
use uuid::Uuid;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The applied versions of the served task read model.
async fn versions(p: &Pipeline) -> HashMap<String, i64> {
    let pools = p.redis_pools();
    let mut c = pools.commands.get().await.expect("redis");
    let generations = streams::Generations::new(
        &pools.keys,
        "task",
        "task_projection",
        streams::GenerationState::default(),
    );
    generations.refresh(&mut *c).await.expect("generations");
    let model = generations.active_keys().expect("a served generation");
    streams::redis::cmd("HGETALL")
        .arg(model.versions())
        .query_async(&mut *c)
        .await
        .expect("versions")
}

#[tokio::test]
async fn views_equal_postgres_after_projectors_were_killed_at_random_under_load() {
    let commands: usize = std::env::var("CHAOS_COMMANDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let users: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
    let options = Options {
        partitions: 4,
        relays: 1,
        projectors: 3,
        extra_env: env(&[("PROJECTOR_LEASE_MS", "1500")]),
        ..Options::default()
    };
    let mut p = Pipeline::start(&users, options).await;
    // The projector processes go to the killer; the rest of the pipeline serves the load.
    let names: Vec<String> = p
        .services
        .keys()
        .filter(|k| k.starts_with("projector-worker"))
        .cloned()
        .collect();
    let mut projectors: Vec<(String, test_kit::process::Service)> = names
        .into_iter()
        .filter_map(|n| p.services.remove(&n).map(|s| (n, s)))
        .collect();
    let started = std::time::Instant::now();
    let mut kills = 0usize;
    let totals = {
        let load = p.random_commands(&users, commands / users.len(), rand::random());
        let killer = async {
            loop {
                tokio::time::sleep(Duration::from_millis(rand::rng().random_range(500..=2000)))
                    .await;
                let i = rand::rng().random_range(0..projectors.len());
                projectors[i].1.kill().await;
                projectors[i].1.restart();
                kills += 1;
            }
        };
        tokio::select! {
            totals = load => totals,
            () = killer => unreachable!("the killer never stops by itself"),
        }
    };
    eprintln!(
        "chaos: {} commands ({totals:?}) in {:?} with {kills} projector SIGKILLs",
        totals.values().sum::<usize>(),
        started.elapsed()
    );
    for (name, mut svc) in projectors {
        svc.wait_ready(Duration::from_secs(20)).await;
        p.services.insert(name, svc);
    }
    p.wait_idle(Duration::from_secs(90), "pipeline idle after the chaos")
        .await;
    p.assert_read_side_matches_postgres(&users).await;
    p.stop_all().await;
}

#[tokio::test]
async fn read_models_converge_with_no_operator_after_redis_is_flushed_under_load() {
    let redis = PrivateRedis::start(false).await;
    let users: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
    let options = Options {
        partitions: 2,
        projectors: 2,
        redis_url: Some(redis.url()),
        ..Options::default()
    };
    let mut p = Pipeline::start(&users, options).await;
    let first = p.random_commands(&users, 30, 1).await;
    let flush = async {
        let client = streams::redis::Client::open(redis.url()).expect("client");
        let mut c = client
            .get_multiplexed_async_connection()
            .await
            .expect("conn");
        let _: () = streams::redis::cmd("FLUSHALL")
            .query_async(&mut c)
            .await
            .expect("flushall");
    };
    // Flush while the second wave of commands is running.
    let (second, ()) = tokio::join!(p.random_commands(&users, 30, 2), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        flush.await;
    });
    eprintln!("flush: {first:?} then {second:?}");
    p.wait_idle(Duration::from_secs(60), "read models rebuilt and idle")
        .await;
    p.assert_read_side_matches_postgres(&users).await;
    let logs: String = p
        .services
        .iter()
        .filter(|(n, _)| n.starts_with("projector"))
        .map(|(_, s)| s.log_text())
        .collect();
    assert!(
        logs.contains("read model rebuilt"),
        "a projector rebuilt from event_store:\n{logs}"
    );
    for (name, svc) in &p.services {
        if name.starts_with("projector") {
            // Two flushes, each losing every module's group once.
            let nogroup = svc.log_text().matches("consumer group missing").count();
            assert!(
                nogroup <= 2 * modules::ALL.len(),
                "{name} logged NOGROUP {nogroup} times: once per loss and module, not per read"
            );
        }
    }
    p.stop_all().await;
}

#[tokio::test]
async fn a_pause_stops_every_replica_within_two_seconds_and_resume_catches_up() {
    let users: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    let options = Options {
        partitions: 2,
        projectors: 2,
        ..Options::default()
    };
    let mut p = Pipeline::start(&users, options).await;
    p.random_commands(&users, 10, 3).await;
    p.wait_idle(Duration::from_secs(20), "idle").await;

    let control = ControlStore::new(p.db.pool.clone());
    assert!(
        control
            .set_desired_state("task_projection", DesiredState::Paused)
            .await
            .expect("pause")
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let p = &p;
        let users = users.clone();
        async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                p.random_commands(&users, 2, 100 + n).await;
                n += 1;
            }
            n
        }
    };
    let watch = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let at_two = versions(&p).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let at_four = versions(&p).await;
        let workers = control.workers("task_projection").await.expect("workers");
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        (at_two, at_four, workers)
    };
    let (rounds, (at_two, at_four, workers)) = tokio::join!(writer, watch);
    assert!(rounds > 0, "commands kept arriving");
    assert_eq!(at_two, at_four, "no event applied from 2 s after the pause");
    assert_eq!(workers.len(), 2);
    assert!(workers.iter().all(|w| w.status == "paused"), "{workers:?}");
    let c = p.db.pool.get().await.expect("pg");
    let pending: i64 = c
        .query_one("SELECT count(*) FROM outbox", &[])
        .await
        .expect("count")
        .get(0);
    drop(c);
    eprintln!(
        "pause: read model frozen for 2 s while {rounds} rounds of commands arrived (outbox {pending})"
    );

    assert!(
        control
            .set_desired_state("task_projection", DesiredState::Running)
            .await
            .expect("resume")
    );
    p.wait_idle(Duration::from_secs(30), "caught up after resume")
        .await;
    p.assert_read_side_matches_postgres(&users).await;
    p.stop_all().await;
}

#[tokio::test]
async fn a_poison_event_is_dead_lettered_parks_its_aggregate_and_a_discard_brings_it_right() {
    let users: Vec<Uuid> = (0..2).map(|_| Uuid::now_v7()).collect();
    let options = Options {
        partitions: 2,
        extra_env: env(&[
            ("PROJECTOR_MAX_ATTEMPTS", "3"),
            ("PROJECTOR_RETRY_BASE_MS", "50"),
        ]),
        ..Options::default()
    };
    let mut p = Pipeline::start(&users, options).await;
    let body = json!({"title": "victim", "type": "learning", "estimated_minutes": 10});
    let (_, a) = p
        .command(
            users[0],
            reqwest::Method::POST,
            "/v1/tasks",
            Some(body.clone()),
        )
        .await;
    let (_, b) = p
        .command(users[1], reqwest::Method::POST, "/v1/tasks", Some(body))
        .await;
    let (a, b) = (
        Uuid::parse_str(a["id"].as_str().expect("id")).expect("uuid"),
        Uuid::parse_str(b["id"].as_str().expect("id")).expect("uuid"),
    );
    // A buggy writer commits version 2 of `a` with a payload the projection cannot read.
    {
        let mut c = p.db.pool.get().await.expect("pg");
        let tx = c.transaction().await.expect("tx");
        tx.execute("UPDATE tasks SET version = 2 WHERE id = $1", &[&a])
            .await
            .expect("bump");
        let poison = EventContext::new(Some(users[0]), None, "buggy-writer").envelope(
            "Task",
            a,
            2,
            "task.updated",
            json!({"estimated_minutes": "lots"}),
        );
        // Routed and announced as command-api would: same partitions, woken after commit.
        let woken = outbox::wake::partitions_of(std::slice::from_ref(&poison), p.partitions);
        outbox::append_events(&tx, &[poison], p.partitions)
            .await
            .expect("append");
        tx.commit().await.expect("commit");
        outbox::wake::notify(&c, &woken).await.expect("wake");
    }
    let (s, _) = p
        .command(
            users[0],
            reqwest::Method::POST,
            &format!("/v1/tasks/{a}/start"),
            None,
        )
        .await;
    assert_eq!(s, reqwest::StatusCode::OK);
    let (s, _) = p
        .command(
            users[1],
            reqwest::Method::POST,
            &format!("/v1/tasks/{b}/start"),
            None,
        )
        .await;
    assert_eq!(s, reqwest::StatusCode::OK);

    let letters =
        projection::dead_letters::DeadLetters::new(p.redis_pools(), Arc::new(task::TaskProjection));
    eventually(
        Duration::from_secs(20),
        "poison dead-lettered, follower parked",
        || async { (letters.list(None, 10).await.ok()?.len() == 2).then_some(()) },
    )
    .await;
    let list = letters.list(None, 10).await.expect("list");
    assert_eq!(list[0].field("error_type"), "malformed_payload");
    assert_eq!(list[0].field("attempts"), "3");
    assert_eq!(list[1].field("error_type"), "parked");
    let (_, _, view_b) = p.query(users[1], &format!("/v1/tasks/{b}"), None).await;
    assert_eq!(
        view_b["status"], "in_progress",
        "other aggregates keep flowing"
    );
    let (_, _, view_a) = p.query(users[0], &format!("/v1/tasks/{a}"), None).await;
    assert_eq!(
        (view_a["status"].as_str(), view_a["version"].as_i64()),
        (Some("pending"), Some(1)),
        "parked at v1"
    );
    p.wait_idle(Duration::from_secs(10), "everything acknowledged")
        .await;

    letters
        .discard(&list[0].id)
        .await
        .expect("discard the head");
    p.assert_read_side_matches_postgres(&users).await;
    let (_, _, view_a) = p.query(users[0], &format!("/v1/tasks/{a}"), None).await;
    assert_eq!(
        (view_a["status"].as_str(), view_a["version"].as_i64()),
        (Some("in_progress"), Some(3))
    );
    p.stop_all().await;
}

#[tokio::test]
async fn a_stopped_projector_hands_its_partitions_over_at_once() {
    let users: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    // Leases of 6 s: a takeover after expiry would take that long; a handover, one tick (2 s).
    let options = Options {
        partitions: 2,
        projectors: 2,
        extra_env: env(&[("PROJECTOR_LEASE_MS", "6000")]),
        ..Options::default()
    };
    let mut p = Pipeline::start(&users, options).await;
    let pools = p.redis_pools();
    let owners = |pools: &streams::RedisPools| {
        let pools = pools.clone();
        async move {
            let mut c = pools.commands.get().await.expect("redis");
            let mut out = vec![];
            for partition in 0..2 {
                let owner: Option<String> = streams::redis::cmd("GET")
                    .arg(streams::lease::lease_key(
                        &pools.keys,
                        "task_projection",
                        partition,
                    ))
                    .query_async(&mut *c)
                    .await
                    .expect("get");
                out.push(owner.unwrap_or_default());
            }
            out
        }
    };
    eventually(Duration::from_secs(20), "one partition each", || async {
        let o = owners(&pools).await;
        (o[0] != o[1] && o.iter().all(|x| x.starts_with("projector-"))).then_some(())
    })
    .await;
    let mut leaving = p
        .services
        .remove("projector-worker#0")
        .expect("projector 0");
    let status = leaving.terminate(Duration::from_secs(15)).await;
    let stopped = std::time::Instant::now();
    assert!(status.success(), "exit 0:\n{}", leaving.log_text());
    let log = leaving.log_text();
    assert!(log.contains("partition leases released"), "{log}");
    assert!(log.contains("projector stopped"), "{log}");
    eventually(
        Duration::from_secs(20),
        "the survivor holds both partitions",
        || async { (owners(&pools).await == ["projector-1", "projector-1"]).then_some(()) },
    )
    .await;
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "handed over in {took:?}, not after the 6 s lease expired"
    );
    eprintln!("handover: the survivor held both partitions {took:?} after the SIGTERM exit");
    p.random_commands(&users, 15, 7).await;
    p.wait_idle(Duration::from_secs(20), "the survivor applies everything")
        .await;
    p.assert_read_side_matches_postgres(&users).await;
    p.stop_all().await;
}
