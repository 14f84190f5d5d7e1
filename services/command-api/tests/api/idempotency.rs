//! Idempotency-Key: a retry gets the first answer and writes nothing.

use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;

#[tokio::test]
async fn idempotency_keys_replay_the_first_answer_and_refuse_reuse() {
    let app = spawn_app().await;
    let user = Uuid::now_v7();
    let key = [("idempotency-key", "create-once")];
    let first = app
        .send(
            Method::POST,
            "/v1/tasks",
            Some(user),
            Some(task_body()),
            &key,
        )
        .await;
    let second = app
        .send(
            Method::POST,
            "/v1/tasks",
            Some(user),
            Some(task_body()),
            &key,
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(
        (second.status, &second.body),
        (StatusCode::CREATED, &first.body),
        "same answer"
    );
    assert_eq!(second.headers["location"], first.headers["location"]);
    assert_eq!(second.headers["idempotency-replayed"], "true");
    assert_eq!(app.counts().await, (1, 1, 1), "the retry wrote nothing");
    let mut other = task_body();
    other["title"] = json!("Something else");
    let reused = app
        .send(Method::POST, "/v1/tasks", Some(user), Some(other), &key)
        .await;
    assert_eq!(
        (reused.status, reused.code()),
        (StatusCode::CONFLICT, "idempotency_key_reused")
    );
    // Keys are per user: another user's identical key is independent.
    let theirs = app
        .send(
            Method::POST,
            "/v1/tasks",
            Some(Uuid::now_v7()),
            Some(task_body()),
            &key,
        )
        .await;
    assert_eq!(theirs.status, StatusCode::CREATED);
    assert_ne!(theirs.body["id"], first.body["id"]);
    let long = "k".repeat(256);
    let a = app
        .send(
            Method::POST,
            "/v1/tasks",
            Some(user),
            Some(task_body()),
            &[("idempotency-key", &long)],
        )
        .await;
    assert_eq!(
        (a.status, a.field()),
        (StatusCode::BAD_REQUEST, "Idempotency-Key")
    );
    assert_eq!(app.counts().await, (2, 2, 2));
}

#[tokio::test]
async fn concurrent_retries_with_one_key_write_once() {
    let app = spawn_app().await;
    let user = Uuid::now_v7();
    let sends = (0..8).map(|_| {
        app.send(
            Method::POST,
            "/v1/tasks",
            Some(user),
            Some(task_body()),
            &[("idempotency-key", "race")],
        )
    });
    let answers = futures::future::join_all(sends).await;
    let ids: std::collections::BTreeSet<_> =
        answers.iter().map(|a| a.body["id"].to_string()).collect();
    assert_eq!(ids.len(), 1, "every retry got the same task");
    assert_eq!(app.counts().await, (1, 1, 1));
}
