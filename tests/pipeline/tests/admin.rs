//! The operator's surface against real processes: every admin route's auth and audit, pause
//! and resume under load, rebuild and reset through the API while readers read, snapshots and
//! rebuilds from them, dead letters listed, counted, retried and discarded, and a health that
//! turns unhealthy when nothing consumes and healthy again when it does.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{OPERATOR_TOKEN, Options, Pipeline, READONLY_TOKEN};
use events::EventContext;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use test_kit::eventually;
use uuid::Uuid;

const P: &str = "task_projection";

/// Waits until operation `id` ended; returns its last state, and every progress seen.
async fn wait_operation(p: &Pipeline, id: &str) -> (Value, Vec<Value>) {
    let seen = std::sync::Mutex::new(Vec::new());
    let op = eventually(Duration::from_secs(120), "the operation to end", || async {
        let (s, op) = p
            .admin(
                Method::GET,
                &format!("/admin/cqrs/operations/{id}"),
                Some(READONLY_TOKEN),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{op}");
        seen.lock().expect("lock").push(op.clone());
        (op["state"] != "running").then_some(op)
    })
    .await;
    (op, seen.into_inner().expect("lock"))
}

async fn status(p: &Pipeline) -> Value {
    let (s, v) = p
        .admin(
            Method::GET,
            &format!("/admin/cqrs/projections/{P}"),
            Some(READONLY_TOKEN),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

/// Every audit entry, newest first, paging through the API.
async fn audit(p: &Pipeline) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/admin/cqrs/audit?limit=7&cursor={c}"),
            None => "/admin/cqrs/audit?limit=7".to_owned(),
        };
        let (s, page) = p.admin(Method::GET, &path, Some(READONLY_TOKEN)).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        out.extend(page["items"].as_array().expect("items").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

#[tokio::test]
async fn every_route_refuses_missing_and_wrong_tokens_readonly_tokens_only_read_and_every_change_is_audited()
 {
    let users: Vec<Uuid> = (0..2).map(|_| Uuid::now_v7()).collect();
    let mut p = Pipeline::start(&users, Options::default()).await;
    let nothing = Uuid::now_v7();
    // (method, path, changes something)
    let routes: Vec<(Method, String, bool)> = vec![
        (Method::GET, "/admin/cqrs/projections".into(), false),
        (Method::GET, format!("/admin/cqrs/projections/{P}"), false),
        (
            Method::POST,
            format!("/admin/cqrs/projections/{P}/pause"),
            true,
        ),
        (
            Method::POST,
            format!("/admin/cqrs/projections/{P}/resume"),
            true,
        ),
        (
            Method::POST,
            format!("/admin/cqrs/projections/{P}/reset"),
            true,
        ),
        (
            Method::POST,
            format!("/admin/cqrs/projections/{P}/rebuild"),
            true,
        ),
        (
            Method::POST,
            format!("/admin/cqrs/projections/{P}/snapshot"),
            true,
        ),
        (
            Method::GET,
            format!("/admin/cqrs/snapshots/{P}/count"),
            false,
        ),
        (
            Method::GET,
            format!("/admin/cqrs/operations/{nothing}"),
            false,
        ),
        (Method::GET, "/admin/cqrs/dlq".into(), false),
        (Method::GET, "/admin/cqrs/dlq/stats".into(), false),
        (
            Method::POST,
            format!("/admin/cqrs/dlq/retry?projection={P}"),
            true,
        ),
        (Method::POST, format!("/admin/cqrs/dlq/{P}:1-0/retry"), true),
        (
            Method::DELETE,
            format!("/admin/cqrs/dlq/{P}:1-0?reason=test"),
            true,
        ),
        (Method::GET, "/admin/cqrs/outbox/stats".into(), false),
        (Method::GET, "/admin/cqrs/streams".into(), false),
        (Method::GET, "/admin/cqrs/audit".into(), false),
    ];
    for (method, path, changes) in &routes {
        for token in [None, Some("not-a-token-at-all-000")] {
            let (s, body) = p.admin(method.clone(), path, token).await;
            assert_eq!(
                s,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {token:?}: {body}"
            );
            assert_eq!(body["error"]["code"], "unauthorized");
        }
        let (s, body) = p.admin(method.clone(), path, Some(READONLY_TOKEN)).await;
        if *changes {
            assert_eq!(s, StatusCode::FORBIDDEN, "{method} {path}: {body}");
            assert_eq!(body["error"]["code"], "forbidden");
        } else {
            assert!(
                s == StatusCode::OK || (s == StatusCode::NOT_FOUND && path.contains("operations")),
                "{method} {path} read-only: {s} {body}"
            );
        }
    }
    // The operator's calls, in an order that shows each answer: the reset runs, so a rebuild
    // and a snapshot meanwhile conflict, naming the running operation.
    let mut answers = Vec::new();
    for (method, path, changes) in routes.iter().filter(|r| r.2) {
        let (s, body) = p.admin(method.clone(), path, Some(OPERATOR_TOKEN)).await;
        assert!(*changes);
        answers.push((path.clone(), s, body));
    }
    let by_path = |suffix: &str| {
        answers
            .iter()
            .find(|(path, ..)| path.ends_with(suffix) || path.contains(suffix))
            .cloned()
            .expect("answer")
    };
    assert_eq!(by_path("/pause").1, StatusCode::ACCEPTED);
    assert_eq!(by_path("/resume").1, StatusCode::ACCEPTED);
    let (_, s, reset) = by_path("/reset");
    assert_eq!(s, StatusCode::ACCEPTED, "{reset}");
    let reset_id = reset["operation_id"]
        .as_str()
        .expect("operation id")
        .to_owned();
    let (_, s, rebuild) = by_path("/rebuild");
    assert_eq!(s, StatusCode::CONFLICT, "{rebuild}");
    assert_eq!(rebuild["error"]["code"], "conflict");
    assert_eq!(
        rebuild["error"]["details"]["operation_id"],
        reset_id.as_str()
    );
    assert_eq!(by_path("/snapshot").1, StatusCode::CONFLICT);
    assert_eq!(by_path("dlq/retry?").1, StatusCode::ACCEPTED);
    assert_eq!(by_path(":1-0/retry").1, StatusCode::NOT_FOUND);
    assert_eq!(by_path(":1-0?reason").1, StatusCode::NOT_FOUND);

    // Every mutating call, refused or not, is in the audit log: twice unauthenticated, once
    // by the read-only token, once by the operator; no token ever shows.
    let entries = audit(&p).await;
    let text = serde_json::to_string(&entries).expect("json");
    assert!(
        !text.contains(OPERATOR_TOKEN) && !text.contains(READONLY_TOKEN),
        "{text}"
    );
    let log = p.services["admin-api"].log_text();
    assert!(
        !log.contains(OPERATOR_TOKEN) && !log.contains(READONLY_TOKEN),
        "a token in the log:\n{log}"
    );
    for (action, target, operator_outcome) in [
        ("projection.pause", P.to_owned(), "accepted"),
        ("projection.resume", P.to_owned(), "accepted"),
        ("projection.reset", P.to_owned(), "accepted"),
        ("projection.rebuild", P.to_owned(), "refused"),
        ("projection.snapshot", P.to_owned(), "refused"),
        ("dlq.retry_all", P.to_owned(), "accepted"),
        ("dlq.retry", format!("{P}:1-0"), "refused"),
        ("dlq.discard", format!("{P}:1-0"), "refused"),
    ] {
        let mine: Vec<&Value> = entries
            .iter()
            .filter(|e| e["action"] == action && e["target"] == target.as_str())
            .collect();
        let actors: Vec<(&str, &str)> = mine
            .iter()
            .map(|e| {
                (
                    e["actor"].as_str().unwrap_or(""),
                    e["outcome"].as_str().unwrap_or(""),
                )
            })
            .collect();
        let count =
            |actor: &str, outcome: &str| actors.iter().filter(|a| **a == (actor, outcome)).count();
        assert_eq!(
            count("unauthenticated", "refused"),
            2,
            "{action}: {actors:?}"
        );
        assert_eq!(
            count("readonly:viewer", "refused"),
            1,
            "{action}: {actors:?}"
        );
        assert_eq!(
            count("operator:ops", operator_outcome),
            1,
            "{action}: {actors:?}"
        );
    }
    let (op, _) = wait_operation(&p, &reset_id).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    p.stop_all().await;
}

#[tokio::test]
async fn pause_stops_every_replica_and_resume_catches_up_while_commands_flow() {
    let users: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();
    let options = Options {
        partitions: 2,
        projectors: 2,
        ..Options::default()
    };
    let mut p = Pipeline::start(&users, options).await;
    p.random_commands(&users, 5, 1).await;
    p.wait_idle(Duration::from_secs(30), "idle before the pause")
        .await;

    let loading = AtomicBool::new(true);
    let (paused_after, _) = tokio::join!(
        async {
            let asked = Instant::now();
            let (s, body) = p
                .admin(
                    Method::POST,
                    &format!("/admin/cqrs/projections/{P}/pause"),
                    Some(OPERATOR_TOKEN),
                )
                .await;
            assert_eq!(s, StatusCode::ACCEPTED, "{body}");
            assert_eq!(body["desired_state"], "paused");
            let st = eventually(Duration::from_secs(10), "every replica paused", || async {
                let st = status(&p).await;
                (st["status"] == "paused").then_some(st)
            })
            .await;
            let live: Vec<&Value> = st["replicas"]
                .as_array()
                .expect("replicas")
                .iter()
                .filter(|r| r["live"] == true)
                .collect();
            assert_eq!(live.len(), 2, "{st}");
            assert!(live.iter().all(|r| r["status"] == "paused"), "{st}");
            loading.store(false, Ordering::SeqCst);
            asked.elapsed()
        },
        async {
            while loading.load(Ordering::SeqCst) {
                p.random_commands(&users, 2, rand::random()).await;
            }
        }
    );
    eprintln!("paused {paused_after:?} after the call");
    assert!(
        paused_after < Duration::from_secs(5),
        "took {paused_after:?}"
    );

    // Paused: new commands pile up on the streams, nothing is consumed.
    let created = p.random_commands(&users, 3, 99).await;
    eventually(
        Duration::from_secs(20),
        "the relay to publish everything",
        || async {
            let (_, stats) = p
                .admin(
                    Method::GET,
                    "/admin/cqrs/outbox/stats",
                    Some(READONLY_TOKEN),
                )
                .await;
            (stats["pending_count"] == 0).then_some(())
        },
    )
    .await;
    let st = status(&p).await;
    assert_eq!(st["status"], "paused", "{st}");
    let sent: usize = created
        .iter()
        .filter(|(s, _)| **s < 300)
        .map(|(_, n)| n)
        .sum();
    assert!(
        st["lag_messages"].as_u64().unwrap_or(0) >= sent as u64,
        "{sent} accepted commands wait undelivered: {st}"
    );
    assert!(st["lag_seconds"].as_f64().unwrap_or(0.0) > 0.0, "{st}");

    let (s, _) = p
        .admin(
            Method::POST,
            &format!("/admin/cqrs/projections/{P}/resume"),
            Some(OPERATOR_TOKEN),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    p.wait_idle(Duration::from_secs(30), "caught up after the resume")
        .await;
    p.assert_read_side_matches_postgres(&users).await;
    let st = status(&p).await;
    assert_eq!(
        (st["status"].as_str(), st["lag_messages"].as_u64()),
        (Some("running"), Some(0)),
        "{st}"
    );
    assert_eq!(st["lag_seconds"], 0.0, "{st}");
    p.stop_all().await;
}

#[tokio::test]
async fn a_rebuild_through_the_api_reports_progress_while_readers_always_get_right_answers() {
    let seeded = Uuid::now_v7();
    let users = vec![seeded, Uuid::now_v7()];
    let mut p = Pipeline::start(
        &users,
        Options {
            projectors: 2,
            ..Options::default()
        },
    )
    .await;
    p.seed_history(seeded, 8000).await;
    let (s, first) = p
        .admin(
            Method::POST,
            &format!("/admin/cqrs/projections/{P}/rebuild"),
            Some(OPERATOR_TOKEN),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{first}");
    let (op, _) = wait_operation(&p, first["operation_id"].as_str().expect("id")).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    let before = status(&p).await["generation"].as_i64().expect("served");

    let stop = Arc::new(AtomicBool::new(false));
    let expected_stats = {
        let c = p.db.pool.get().await.expect("pg");
        c.query_one("SELECT count(*) FROM tasks WHERE user_id = $1", &[&seeded])
            .await
            .expect("count")
            .get::<_, i64>(0)
    };
    let readers = async {
        let mut answers = 0;
        let mut generations = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let (s, _, stats) = p.query(seeded, "/v1/me/task-stats", None).await;
            assert_eq!(s, StatusCode::OK, "{stats}");
            assert_eq!(
                stats["total_tasks"].as_i64(),
                Some(expected_stats),
                "{stats}"
            );
            let g = status(&p).await["generation"]
                .as_i64()
                .expect("always served");
            assert!(
                generations.last().is_none_or(|last| *last <= g),
                "generation went back: {generations:?} then {g}"
            );
            generations.push(g);
            answers += 1;
        }
        (answers, generations)
    };
    let work = async {
        let (s, started) = p
            .admin(
                Method::POST,
                &format!("/admin/cqrs/projections/{P}/rebuild"),
                Some(OPERATOR_TOKEN),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{started}");
        let id = started["operation_id"].as_str().expect("id").to_owned();
        let (s, again) = p
            .admin(
                Method::POST,
                &format!("/admin/cqrs/projections/{P}/rebuild"),
                Some(OPERATOR_TOKEN),
            )
            .await;
        if s == StatusCode::CONFLICT {
            assert_eq!(
                again["error"]["details"]["operation_id"],
                id.as_str(),
                "{again}"
            );
        } else {
            // The first one finished in between: then this is a new one.
            assert_eq!(s, StatusCode::ACCEPTED, "{again}");
        }
        let commands = p.random_commands(&users[1..], 20, 3);
        let ((op, progress), _) = tokio::join!(wait_operation(&p, &id), commands);
        stop.store(true, Ordering::SeqCst);
        (op, progress)
    };
    let ((answers, generations), (op, progress)) = tokio::join!(readers, work);
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(op["events_applied"], op["events_total"], "{op}");
    assert!(op["events_total"].as_i64().unwrap_or(0) >= 8000, "{op}");
    let applied: Vec<i64> = progress
        .iter()
        .filter_map(|o| o["events_applied"].as_i64())
        .collect();
    assert!(
        applied.windows(2).all(|w| w[0] <= w[1]),
        "progress never goes back: {applied:?}"
    );
    let after = status(&p).await["generation"].as_i64().expect("served");
    assert!(
        after > before,
        "a new generation is served: {before} → {after}"
    );
    eprintln!(
        "{answers} reader rounds over generations {:?}",
        generations.iter().collect::<BTreeSet<_>>()
    );
    p.wait_idle(Duration::from_secs(30), "idle after the rebuild")
        .await;
    p.assert_read_side_matches_postgres(&users).await;

    // The CLI does the same and follows it to the end.
    let (code, out, err) = p.admin_cli(&["rebuild", P, "--wait"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("succeeded"), "{out}");
    assert!(
        err.contains("events") && err.contains("ETA"),
        "a progress line: {err}"
    );
    let (code, out, err) = p.admin_cli(&["projections"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("NAME") && out.contains(P) && out.contains("running"),
        "{out}"
    );
    let (code, out, _) = p.admin_cli(&["projections", "--json"]).await;
    assert_eq!(code, 0);
    let parsed: Value = serde_json::from_str(&out).expect("json for scripts");
    assert_eq!(parsed[0]["name"], P);
    // A failing call exits non-zero with the API's reason.
    let (code, out, err) = p.admin_cli(&["rebuild", "no_such_projection"]).await;
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("404"), "{err}");

    // Operations run in the workers: one started before admin-api dies ends while it is down,
    // and admin-api, back, reports it.
    let (s, started) = p
        .admin(
            Method::POST,
            &format!("/admin/cqrs/projections/{P}/rebuild"),
            Some(OPERATOR_TOKEN),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{started}");
    let id: Uuid = started["operation_id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    let admin = p.services.get_mut("admin-api").expect("admin-api");
    admin.kill().await;
    let store = outbox::operations::OperationStore::new(p.db.pool.clone());
    eventually(
        Duration::from_secs(60),
        "the rebuild to end without admin-api",
        || async {
            let op = store.get(id).await.expect("pg").expect("row");
            (op.state != outbox::operations::OperationState::Running).then_some(())
        },
    )
    .await;
    let admin = p.services.get_mut("admin-api").expect("admin-api");
    admin.restart();
    admin.wait_ready(Duration::from_secs(20)).await;
    let (op, _) = wait_operation(&p, &id.to_string()).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    p.stop_all().await;
}

#[tokio::test]
async fn a_reset_wipes_the_read_model_and_replays_history_and_readers_never_get_a_false_answer() {
    let users: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    let mut p = Pipeline::start(&users, Options::default()).await;
    p.random_commands(&users, 15, 5).await;
    p.wait_idle(Duration::from_secs(30), "idle before the reset")
        .await;
    let before = status(&p).await["generation"].as_i64().expect("served");
    let (s, started) = p
        .admin(
            Method::POST,
            &format!("/admin/cqrs/projections/{P}/reset"),
            Some(OPERATOR_TOKEN),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{started}");
    let id = started["operation_id"].as_str().expect("id").to_owned();
    let stop = AtomicBool::new(false);
    let readers = async {
        let mut unavailable = 0;
        while !stop.load(Ordering::SeqCst) {
            for u in &users {
                let (s, headers, stats) = p.query(*u, "/v1/me/task-stats", None).await;
                match s {
                    StatusCode::OK => {}
                    StatusCode::SERVICE_UNAVAILABLE => {
                        assert!(headers.contains_key("retry-after"), "{stats}");
                        unavailable += 1;
                    }
                    other => panic!("{other}: {stats}"),
                }
            }
        }
        unavailable
    };
    let ((op, _), unavailable) = tokio::join!(
        async {
            let r = wait_operation(&p, &id).await;
            stop.store(true, Ordering::SeqCst);
            r
        },
        readers
    );
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(op["kind"], "reset");
    eprintln!("{unavailable} answers were 503 while the read model was rebuilt");
    let after = status(&p).await;
    assert!(
        after["generation"].as_i64().expect("served") > before,
        "{after}"
    );
    p.wait_idle(Duration::from_secs(30), "idle after the reset")
        .await;
    p.assert_read_side_matches_postgres(&users).await;
    p.stop_all().await;
}

#[tokio::test]
async fn a_snapshot_lets_a_rebuild_replay_only_what_follows_it() {
    let seeded = Uuid::now_v7();
    let users = vec![seeded, Uuid::now_v7(), Uuid::now_v7()];
    let mut p = Pipeline::start(
        &users,
        Options {
            projectors: 2,
            ..Options::default()
        },
    )
    .await;
    let (s, none) = p
        .admin(
            Method::POST,
            &format!("/admin/cqrs/projections/{P}/rebuild?from=snapshot"),
            Some(OPERATOR_TOKEN),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "no snapshot yet: {none}");
    let (s, bad) = p
        .admin(
            Method::POST,
            &format!("/admin/cqrs/projections/{P}/rebuild?from=yesterday"),
            Some(OPERATOR_TOKEN),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");

    p.seed_history(seeded, 3000).await;
    let (_, first) = p
        .admin(
            Method::POST,
            &format!("/admin/cqrs/projections/{P}/rebuild"),
            Some(OPERATOR_TOKEN),
        )
        .await;
    wait_operation(&p, first["operation_id"].as_str().expect("id")).await;
    p.random_commands(&users[1..], 10, 8).await;
    p.wait_idle(Duration::from_secs(30), "idle before the snapshot")
        .await;
    let total: i64 = {
        let c = p.db.pool.get().await.expect("pg");
        c.query_one("SELECT count(*) FROM event_store", &[])
            .await
            .expect("count")
            .get(0)
    };

    // The snapshot holds the projection still while commands keep coming.
    let snapshot_path = format!("/admin/cqrs/projections/{P}/snapshot");
    let (snap, _) = tokio::join!(
        p.admin(Method::POST, &snapshot_path, Some(OPERATOR_TOKEN)),
        p.random_commands(&users[1..], 5, 9)
    );
    let (s, snap) = snap;
    assert_eq!(s, StatusCode::CREATED, "{snap}");
    assert!(
        snap["position"].as_i64().unwrap_or(0) >= total,
        "every event so far is in it: {snap}"
    );
    assert!(snap["keys"].as_i64().unwrap_or(0) > 3000, "{snap}");
    let (_, count) = p
        .admin(
            Method::GET,
            &format!("/admin/cqrs/snapshots/{P}/count"),
            Some(READONLY_TOKEN),
        )
        .await;
    assert_eq!(count["count"], 1);
    assert_eq!(
        status(&p).await["desired_state"],
        "running",
        "the hold ended"
    );

    p.random_commands(&users[1..], 10, 10).await;
    p.wait_idle(Duration::from_secs(30), "idle after more commands")
        .await;
    let (s, started) = p
        .admin(
            Method::POST,
            &format!("/admin/cqrs/projections/{P}/rebuild?from=snapshot"),
            Some(OPERATOR_TOKEN),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{started}");
    let (op, _) = wait_operation(&p, started["operation_id"].as_str().expect("id")).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(op["snapshot_id"], snap["snapshot_id"], "{op}");
    let replayed = op["events_total"].as_i64().expect("total");
    assert!(
        replayed < 1000,
        "only what follows the snapshot is replayed: {replayed} of {total}+ events"
    );
    p.wait_idle(
        Duration::from_secs(30),
        "idle after the rebuild from the snapshot",
    )
    .await;
    p.assert_read_side_matches_postgres(&users).await;
    p.stop_all().await;
}

#[tokio::test]
async fn dead_letters_are_listed_counted_retried_without_loss_and_discarded_with_an_audited_reason()
{
    let users: Vec<Uuid> = (0..2).map(|_| Uuid::now_v7()).collect();
    let mut p = Pipeline::start(&users, Options::default()).await;
    let (s, created) = p
        .command(
            users[0],
            Method::POST,
            "/v1/tasks",
            Some(json!({"title": "a", "type": "learning", "estimated_minutes": 30})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let a: Uuid = created["id"].as_str().expect("id").parse().expect("uuid");
    p.wait_idle(Duration::from_secs(20), "created").await;
    // A buggy writer commits an event the projection refuses; the next event of the task
    // parks behind it.
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
            Method::POST,
            &format!("/v1/tasks/{a}/start"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let listed = eventually(
        Duration::from_secs(30),
        "two dead letters listed",
        || async {
            let (_, v) = p
                .admin(
                    Method::GET,
                    &format!("/admin/cqrs/dlq?projection={P}"),
                    Some(READONLY_TOKEN),
                )
                .await;
            (v["items"].as_array().map(Vec::len) == Some(2)).then_some(v)
        },
    )
    .await;
    let items = listed["items"].as_array().expect("items");
    let head = items[0]["id"].as_str().expect("id").to_owned();
    let follower = items[1]["id"].as_str().expect("id").to_owned();
    assert!(head.starts_with(&format!("{P}:")), "{head}");
    assert_eq!(items[0]["error_type"], "malformed_payload");
    assert_eq!(items[0]["event"]["aggregate_id"], a.to_string());
    assert_eq!(items[0]["parked_behind"], Value::Null);
    assert_eq!(items[1]["error_type"], "parked");
    assert!(items[1]["parked_behind"].is_string());
    // One at a time, with a cursor.
    let (_, page) = p
        .admin(Method::GET, "/admin/cqrs/dlq?limit=1", Some(READONLY_TOKEN))
        .await;
    assert_eq!(page["items"][0]["id"], head.as_str());
    let cursor = page["next_cursor"].as_str().expect("more");
    let (_, page) = p
        .admin(
            Method::GET,
            &format!("/admin/cqrs/dlq?limit=1&cursor={cursor}"),
            Some(READONLY_TOKEN),
        )
        .await;
    assert_eq!(page["items"][0]["id"], follower.as_str());
    let (s, bad) = p
        .admin(
            Method::GET,
            "/admin/cqrs/dlq?cursor=%%%",
            Some(READONLY_TOKEN),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");

    let (_, stats) = p
        .admin(Method::GET, "/admin/cqrs/dlq/stats", Some(READONLY_TOKEN))
        .await;
    assert_eq!(stats["total"], 2, "{stats}");
    assert_eq!(stats["by_projection"][P], 2);
    assert_eq!(stats["by_error_type"]["malformed_payload"], 1);
    assert_eq!(stats["by_error_type"]["parked"], 1);
    assert!(stats["oldest_age_seconds"].as_f64().unwrap_or(-1.0) >= 0.0);

    // A retry of what still fails: 409, and nothing is lost.
    let (s, again) = p
        .admin(
            Method::POST,
            &format!("/admin/cqrs/dlq/{head}/retry"),
            Some(OPERATOR_TOKEN),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{again}");
    let (s, dry) = p
        .admin(
            Method::POST,
            &format!("/admin/cqrs/dlq/retry?projection={P}&dry_run=true"),
            Some(OPERATOR_TOKEN),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{dry}");
    assert_eq!(
        (
            dry["dry_run"].as_bool(),
            dry["entries"].as_u64(),
            dry["chains"].as_u64()
        ),
        (Some(true), Some(2), Some(1)),
        "{dry}"
    );
    let (s, all) = p
        .admin(
            Method::POST,
            &format!("/admin/cqrs/dlq/retry?projection={P}"),
            Some(OPERATOR_TOKEN),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{all}");
    assert_eq!(all["still_failing"], 1, "{all}");
    assert_eq!(p.dead_letters().await, 2, "still failing means still there");

    // Discarding: only the head, only with a reason.
    let (s, _) = p
        .admin(
            Method::DELETE,
            &format!("/admin/cqrs/dlq/{follower}?reason=x"),
            Some(OPERATOR_TOKEN),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = p
        .admin(
            Method::DELETE,
            &format!("/admin/cqrs/dlq/{head}"),
            Some(OPERATOR_TOKEN),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, done) = p
        .admin(
            Method::DELETE,
            &format!("/admin/cqrs/dlq/{head}?reason=written%20by%20the%20buggy%20importer"),
            Some(OPERATOR_TOKEN),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{done}");
    assert_eq!(
        (done["discarded"].as_u64(), done["applied"].as_u64()),
        (Some(1), Some(1)),
        "{done}"
    );
    assert_eq!(
        p.dead_letters().await,
        0,
        "the follower applied once its head was gone"
    );
    p.wait_idle(Duration::from_secs(20), "idle after the discard")
        .await;
    p.assert_read_side_matches_postgres(&users).await;
    let entries = audit(&p).await;
    let discard = entries
        .iter()
        .find(|e| e["action"] == "dlq.discard" && e["outcome"] == "accepted")
        .expect("the discard is audited");
    assert_eq!(discard["target"], head.as_str());
    assert_eq!(discard["reason"], "written by the buggy importer");
    assert_eq!(
        discard["details"]["dead_letter"]["event"]["aggregate_version"], 2,
        "{discard}"
    );

    // A rebuild meets the discarded event again in event_store: it stays discarded.
    let (s, started) = p
        .admin(
            Method::POST,
            &format!("/admin/cqrs/projections/{P}/rebuild"),
            Some(OPERATOR_TOKEN),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{started}");
    let (op, _) = wait_operation(&p, started["operation_id"].as_str().expect("id")).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(
        p.dead_letters().await,
        0,
        "a discarded event is not dead-lettered again"
    );
    p.wait_idle(Duration::from_secs(20), "idle after the rebuild")
        .await;
    p.assert_read_side_matches_postgres(&users).await;
    p.stop_all().await;
}

async fn health(p: &Pipeline) -> (StatusCode, Value) {
    p.admin(Method::GET, "/health/cqrs", None).await
}

fn component<'a>(h: &'a Value, name: &str) -> &'a Value {
    h["components"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

#[tokio::test]
async fn health_is_unhealthy_when_nothing_consumes_or_relays_and_healthy_again_when_it_does() {
    let users: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    let options = Options {
        projectors: 2,
        ..Options::default()
    };
    let mut p = Pipeline::start(&users, options).await;
    p.random_commands(&users, 3, 1).await;
    p.wait_idle(Duration::from_secs(30), "idle").await;
    eventually(Duration::from_secs(30), "healthy", || async {
        let (s, h) = health(&p).await;
        (s == StatusCode::OK && h["status"] == "healthy").then_some(())
    })
    .await;
    let (_, h) = health(&p).await;
    for name in ["postgres", "redis", "relay", &format!("projection:{P}")] {
        assert_eq!(component(&h, name)["status"], "healthy", "{name}: {h}");
    }

    // Every projector SIGKILLed: unhealthy within 30 s, naming every projection (each module's
    // heartbeats go stale on their own clock, so wait for all of them).
    let projectors = p.named("projector-worker");
    for name in &projectors {
        p.services.get_mut(name).expect("svc").kill().await;
    }
    let killed = Instant::now();
    let all_down = |h: &Value| {
        modules::specs()
            .all(|m| component(h, &format!("projection:{}", m.projection))["status"] == "unhealthy")
    };
    let h = eventually(
        Duration::from_secs(30),
        "unhealthy with no projector",
        || async {
            let (s, h) = health(&p).await;
            (s == StatusCode::SERVICE_UNAVAILABLE && all_down(&h)).then_some(h)
        },
    )
    .await;
    eprintln!("unhealthy {:?} after the kill", killed.elapsed());
    assert_eq!(h["status"], "unhealthy");
    assert_eq!(
        component(&h, &format!("projection:{P}"))["status"],
        "unhealthy",
        "{h}"
    );
    for name in &projectors {
        let svc = p.services.get_mut(name).expect("svc");
        svc.restart();
        svc.wait_ready(Duration::from_secs(20)).await;
    }
    eventually(
        Duration::from_secs(30),
        "healthy after the restart",
        || async {
            let (s, h) = health(&p).await;
            (s == StatusCode::OK && h["status"] == "healthy").then_some(())
        },
    )
    .await;

    // The relay stops while commands flow: never healthy.
    let relay = p.named("outbox-relay")[0].clone();
    let status = p
        .services
        .get_mut(&relay)
        .expect("relay")
        .terminate(Duration::from_secs(15))
        .await;
    assert!(status.success());
    p.random_commands(&users, 3, 2).await;
    let (s, h) = health(&p).await;
    assert_ne!(h["status"], "healthy", "{s} {h}");
    assert_ne!(component(&h, "relay")["status"], "healthy", "{h}");
    let svc = p.services.get_mut(&relay).expect("relay");
    svc.restart();
    svc.wait_ready(Duration::from_secs(20)).await;
    p.wait_idle(Duration::from_secs(30), "relayed after the restart")
        .await;
    eventually(Duration::from_secs(30), "healthy again", || async {
        let (s, h) = health(&p).await;
        (s == StatusCode::OK && h["status"] == "healthy").then_some(())
    })
    .await;
    let (code, out, _) = p.admin_cli(&["health"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("HEALTHY"), "{out}");
    p.stop_all().await;
}
