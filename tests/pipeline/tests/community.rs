//! The community module through the whole pipeline as processes: random post commands of
//! several users (a property test, checked against PostgreSQL after every round), and many
//! users liking one post at once.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Options, Pipeline};
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

/// Sends `per_user` random community commands for each user (users concurrently, each user's
/// in sequence) through one shared [`community::contract::CommunityTraffic`]; returns the
/// answers by status. Every answer must be one a valid client can get.
async fn post_commands(
    p: &Pipeline,
    users: &[Uuid],
    per_user: usize,
    seed: u64,
) -> BTreeMap<u16, usize> {
    let traffic = std::sync::Mutex::new(community::contract::traffic());
    let traffic = &traffic;
    let seen = futures::future::join_all(users.iter().enumerate().map(|(i, user)| async move {
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(i as u64));
        let mut seen = BTreeMap::<u16, usize>::new();
        for _ in 0..per_user {
            let call = {
                let mut pick = |n: usize| rng.random_range(0..n.max(1));
                traffic.lock().expect("traffic").next(*user, &mut pick)
            };
            let method = Method::from_bytes(call.method.as_bytes()).expect("method");
            let (status, body) = p
                .command(*user, method, &call.path, call.body.clone())
                .await;
            let status = status.as_u16();
            assert!(
                matches!(status, 200 | 201 | 403 | 404),
                "unexpected {status} for {} {}: {body}",
                call.method,
                call.path
            );
            *seen.entry(status).or_default() += 1;
            traffic
                .lock()
                .expect("traffic")
                .answered(*user, &call, status, &body);
        }
        seen
    }))
    .await;
    let mut totals = BTreeMap::new();
    for s in seen {
        for (k, v) in s {
            *totals.entry(k).or_default() += v;
        }
    }
    totals
}

#[tokio::test]
async fn random_post_commands_of_several_users_leave_every_post_feed_and_list_equal_to_postgres() {
    let users: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();
    let mut p = Pipeline::start(&users, Options::default()).await;
    let seed: u64 = rand::random();
    eprintln!("community seed {seed}; logs in {}", p.log_dir.display());
    let mut all = BTreeMap::<u16, usize>::new();
    // Several rounds, each a new random sequence on top of the last: the read side must equal
    // PostgreSQL after every one, not only at the end.
    for round in 0..4u64 {
        let totals = post_commands(&p, &users, 40, seed.wrapping_add(round * 1000)).await;
        for (k, v) in totals {
            *all.entry(k).or_default() += v;
        }
        p.wait_idle(Duration::from_secs(60), "pipeline idle").await;
        p.assert_read_side_matches_postgres(&users).await;
    }
    eprintln!("answers by status: {all:?}");
    for status in [200, 201, 404] {
        assert!(all.contains_key(&status), "some {status}: {all:?}");
    }
    assert_eq!(p.dead_letters().await, 0);
    p.stop_all().await;
}

#[tokio::test]
async fn forty_users_liking_one_post_at_once_are_counted_exactly() {
    let users: Vec<Uuid> = (0..41).map(|_| Uuid::now_v7()).collect();
    let (author, fans) = (users[0], &users[1..]);
    let mut p = Pipeline::start(&users, Options::default()).await;
    let (status, created) = p
        .command(
            author,
            Method::POST,
            "/v1/posts",
            Some(json!({"content": "Like me"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = created["id"].as_str().expect("id").to_owned();
    let like = format!("/v1/posts/{id}/like");

    // Every fan likes twice at once (40 changes, 40 no-ops), then the first ten take it back
    // while the others like once more.
    let answers = futures::future::join_all(
        fans.iter()
            .chain(fans.iter())
            .map(|fan| p.command(*fan, Method::PUT, &like, None)),
    )
    .await;
    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::OK, "{body}");
    }
    let changed = answers.iter().filter(|(_, b)| b["changed"] == true).count();
    assert_eq!(changed, 40, "one change per fan");
    let answers = futures::future::join_all(fans.iter().enumerate().map(|(i, fan)| {
        let method = if i < 10 { Method::DELETE } else { Method::PUT };
        p.command(*fan, method, &like, None)
    }))
    .await;
    assert!(answers.iter().all(|(s, _)| *s == StatusCode::OK), "no 5xx");

    p.wait_idle(Duration::from_secs(60), "pipeline idle").await;
    for (i, fan) in fans.iter().enumerate() {
        let (status, _, view) = p.query(*fan, &format!("/v1/posts/{id}"), None).await;
        assert_eq!(status, StatusCode::OK, "{view}");
        assert_eq!(view["like_count"], 30);
        assert_eq!(view["liked_by_me"], i >= 10, "fan {i}");
    }
    let (_, _, view) = p.query(author, &format!("/v1/posts/{id}"), None).await;
    assert_eq!(
        (view["like_count"].as_i64(), view["liked_by_me"].as_bool()),
        (Some(30), Some(false))
    );
    assert_eq!(view["version"], 1 + 40 + 10);
    p.assert_read_side_matches_postgres(&users).await;
    p.stop_all().await;
}
