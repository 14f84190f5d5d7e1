//! The galaxy through the whole pipeline as processes: random commands of several users, and
//! many users at once on one node, checked against PostgreSQL.

mod common;

use std::time::Duration;

use common::{Options, Pipeline};
use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

/// Random galaxy commands of several users (nodes under random parents, relations, unlocks,
/// expands, studies), then every node view, relation list, progress, stat and study list that
/// query-api serves equals what PostgreSQL says.
#[tokio::test]
async fn random_galaxy_commands_leave_every_view_list_and_stat_equal_to_postgres() {
    let users: Vec<Uuid> = (0..8).map(|_| Uuid::now_v7()).collect();
    let mut p = Pipeline::start(&users, Options::default()).await;
    for round in 0..2u64 {
        let seed: u64 = rand::random();
        eprintln!(
            "galaxy round {round} seed {seed}; logs in {}",
            p.log_dir.display()
        );
        let totals = p
            .random_commands_of(&[galaxy::MODULE], &users, 40, seed)
            .await;
        eprintln!("answers by status: {totals:?}");
        assert_eq!(totals.values().sum::<usize>(), 320);
        assert!(
            totals.get(&201).copied().unwrap_or(0) >= 10
                && totals.get(&200).copied().unwrap_or(0) >= 50,
            "nodes were created and progress made: {totals:?}"
        );
        p.wait_idle(Duration::from_secs(60), "pipeline idle").await;
        // After every round: the read side has caught up with all of it, exactly.
        p.assert_read_side_matches_postgres(&users).await;
    }
    assert_eq!(p.dead_letters().await, 0, "nothing was poison");
    p.stop_all().await;
}

/// 30 users unlock (twice each, at once) and study one node concurrently, while 30 children
/// of it are created at once: every count is exact, nothing answers 5xx.
#[tokio::test]
async fn thirty_users_studying_one_node_at_once_count_exactly() {
    let users: Vec<Uuid> = (0..30).map(|_| Uuid::now_v7()).collect();
    let mut p = Pipeline::start(&users, Options::default()).await;
    let (status, body) = p
        .command(
            users[0],
            Method::POST,
            "/v1/galaxy/nodes",
            Some(json!({"name": "Lifetimes"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let node = body["id"].as_str().expect("id").to_owned();
    // A reference the request futures share (and copy into their closures).
    let pipe = &p;

    let unlocks = futures::future::join_all(users.iter().flat_map(|u| {
        let path = format!("/v1/galaxy/nodes/{node}/unlock");
        [0, 1].map(move |_| {
            let path = path.clone();
            async move { pipe.command(*u, Method::POST, &path, None).await }
        })
    }))
    .await;
    assert!(
        unlocks.iter().all(|(s, _)| *s == StatusCode::OK),
        "{unlocks:?}"
    );
    let changed = unlocks.iter().filter(|(_, b)| b["changed"] == true).count();
    assert_eq!(changed, 30, "one unlock per user changed something");

    const STUDIES: usize = 3;
    let studies = futures::future::join_all(users.iter().enumerate().flat_map(|(i, u)| {
        let path = format!("/v1/galaxy/nodes/{node}/study");
        (0..STUDIES).map(move |_| {
            let path = path.clone();
            async move {
                pipe.command(
                    *u,
                    Method::POST,
                    &path,
                    Some(json!({"minutes": 1 + i, "performance_score": 1.0, "activity_type": "study"})),
                )
                .await
            }
        })
    }))
    .await;
    for (status, body) in &studies {
        assert_eq!(*status, StatusCode::OK, "{body}");
        assert_eq!(body["event_ids"].as_array().map(Vec::len), Some(2));
    }
    let children = futures::future::join_all(users.iter().map(|u| {
        let node = node.clone();
        async move {
            pipe.command(
                *u,
                Method::POST,
                "/v1/galaxy/nodes",
                Some(json!({"name": "child", "parent_id": node})),
            )
            .await
        }
    }))
    .await;
    assert!(children.iter().all(|(s, _)| *s == StatusCode::CREATED));

    p.wait_idle(Duration::from_secs(60), "pipeline idle").await;
    for (i, user) in users.iter().enumerate() {
        let (status, _, me) = p.query(*user, "/v1/me/galaxy", None).await;
        assert_eq!(status, StatusCode::OK);
        let minutes = (1 + i) * STUDIES;
        assert_eq!(
            me["stats"],
            json!({"unlocked_nodes": 1, "mastered_nodes": 0, "total_study_minutes": minutes}),
            "user {i}"
        );
        assert_eq!(
            (
                me["nodes"][0]["study_count"].as_i64(),
                me["nodes"][0]["mastery_score"].as_f64()
            ),
            (Some(STUDIES as i64), Some(30.0))
        );
        let (_, _, list) = p.query(*user, "/v1/me/galaxy/studies", None).await;
        assert_eq!(list["items"].as_array().map(Vec::len), Some(STUDIES));
    }
    let (_, _, view) = p
        .query(users[0], &format!("/v1/galaxy/nodes/{node}"), None)
        .await;
    assert_eq!(view["child_count"], 30);
    p.assert_read_side_matches_postgres(&users).await;
    p.stop_all().await;
}
