//! The whole pipeline as processes: command-api → PostgreSQL → outbox-relay → Redis Streams →
//! projector-worker → Redis read models → query-api, plus admin-api, on real servers.

mod common;

use std::time::{Duration, Instant};

use common::{Options, Pipeline};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

#[tokio::test]
async fn five_hundred_random_commands_leave_every_view_list_and_stat_equal_to_postgres() {
    let users: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
    let mut p = Pipeline::start(&users, Options::default()).await;
    let seed: u64 = rand::random();
    eprintln!("pipeline seed {seed}; logs in {}", p.log_dir.display());
    let totals = p.random_commands(&users, 25, seed).await;
    eprintln!("answers by status: {totals:?}");
    assert_eq!(totals.values().sum::<usize>(), 500);
    assert!(
        totals.get(&201).copied().unwrap_or(0) >= 20,
        "some tasks were created: {totals:?}"
    );

    let started = Instant::now();
    p.wait_idle(Duration::from_secs(60), "pipeline idle").await;
    eprintln!("idle {:?} after the last command", started.elapsed());
    p.assert_read_side_matches_postgres(&users).await;

    // Read-your-writes: a fresh command is visible through its consistency token.
    let user = users[0];
    let mut waits = vec![];
    for _ in 0..20 {
        let (status, body) = p
            .command(
                user,
                reqwest::Method::POST,
                "/v1/tasks",
                Some(json!({"title": "fresh", "type": "learning", "estimated_minutes": 5})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let t0 = Instant::now();
        let (status, headers, view) = p
            .query(
                user,
                &format!("/v1/tasks/{}", body["id"].as_str().expect("id")),
                body["consistency_token"].as_str(),
            )
            .await;
        waits.push(t0.elapsed());
        assert_eq!(
            (status, headers["x-consistency"].to_str().ok()),
            (StatusCode::OK, Some("fresh"))
        );
        assert_eq!(view["title"], "fresh");
    }
    waits.sort();
    eprintln!(
        "read-your-writes: median {:?}, max {:?}",
        waits[waits.len() / 2],
        waits[waits.len() - 1]
    );
    p.stop_all().await;
}

/// Commands commit without notifying inside their transaction (that serialises commits);
/// command-api wakes the relay right after. With the relay's poll a minute away, only those
/// wake-ups can make each command visible within seconds.
#[tokio::test]
async fn each_command_wakes_the_relay_after_its_commit() {
    let user = Uuid::now_v7();
    let mut p = Pipeline::start(
        &[user],
        Options {
            extra_env: vec![("RELAY_POLL_INTERVAL_MS".into(), "60000".into())],
            ..Options::default()
        },
    )
    .await;
    for i in 0..5 {
        let (status, body) = p
            .command(
                user,
                reqwest::Method::POST,
                "/v1/tasks",
                Some(json!({"title": format!("woken {i}"), "type": "learning", "estimated_minutes": 5})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let path = format!("/v1/tasks/{}", body["id"].as_str().expect("id"));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (status, _, view) = p.query(user, &path, None).await;
            if status == StatusCode::OK {
                assert_eq!(view["title"], format!("woken {i}"));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "command {i} not visible within 5 s: was its wake-up sent? ({status})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    p.stop_all().await;
}
