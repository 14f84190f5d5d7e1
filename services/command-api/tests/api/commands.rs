//! Commands over HTTP: what each one writes and answers.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

#[tokio::test]
async fn create_commits_row_event_and_outbox_entry_with_the_request_id() {
    let app = spawn_app().await;
    let user = Uuid::now_v7();
    let a = app
        .send(
            Method::POST,
            "/v1/tasks",
            Some(user),
            Some(task_body()),
            &[("x-request-id", "req-42")],
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    let id = id_of(&a);
    assert_eq!(a.headers["location"], format!("/v1/tasks/{id}").as_str());
    assert_eq!(a.headers["x-request-id"], "req-42");
    assert_eq!(
        (a.body["version"].as_i64(), a.body["changed"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(a.body["event_ids"].as_array().map(Vec::len), Some(1));
    let token =
        events::ConsistencyToken::decode(a.body["consistency_token"].as_str().expect("token"))
            .expect("decode");
    assert_eq!(
        (token.aggregate_id.to_string(), token.version),
        (id.clone(), 1)
    );
    assert_eq!(app.counts().await, (1, 1, 1));
    let c = app.db.pool.get().await.expect("client");
    let row = c
        .query_one("SELECT event_type, metadata, payload FROM event_store WHERE aggregate_id = $1::text::uuid", &[&id])
        .await
        .expect("event");
    assert_eq!(row.get::<_, &str>(0), "task.created");
    let metadata: Value = row.get(1);
    assert_eq!(metadata["correlation_id"], "req-42");
    assert_eq!(metadata["user_id"], user.to_string());
    let payload: Value = row.get(2);
    assert_eq!(payload["title"], "Read chapter 3");
    let task = c
        .query_one(
            "SELECT status, version, user_id FROM tasks WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .expect("row");
    assert_eq!(
        (
            task.get::<_, &str>(0),
            task.get::<_, i64>(1),
            task.get::<_, Uuid>(2)
        ),
        ("pending", 1, user)
    );
}

#[tokio::test]
async fn a_request_id_is_generated_when_absent_and_echoed() {
    let app = spawn_app().await;
    let a = app.create(Uuid::now_v7()).await;
    let rid = a.headers["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(!rid.is_empty());
    let c = app.db.pool.get().await.expect("client");
    let meta: Value = c
        .query_one("SELECT metadata FROM event_store", &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(meta["correlation_id"], rid.as_str());
}

#[tokio::test]
async fn the_full_life_of_a_task_over_http() {
    let app = spawn_app().await;
    let user = Uuid::now_v7();
    let id = id_of(&app.create(user).await);
    let path = |s: &str| format!("/v1/tasks/{id}{s}");
    let upd = app
        .send(
            Method::PATCH,
            &path(""),
            Some(user),
            Some(json!({"title": "Read chapter 4", "due_date": null})),
            &[],
        )
        .await;
    assert_eq!(
        (upd.status, upd.body["version"].as_i64()),
        (StatusCode::OK, Some(2))
    );
    let same = app
        .send(
            Method::PATCH,
            &path(""),
            Some(user),
            Some(json!({"title": "Read chapter 4"})),
            &[],
        )
        .await;
    assert_eq!(
        (
            same.status,
            same.body["changed"].as_bool(),
            same.body["version"].as_i64()
        ),
        (StatusCode::OK, Some(false), Some(2))
    );
    assert_eq!(same.body["event_ids"], json!([]));
    let started = app
        .send(
            Method::POST,
            &path("/start"),
            Some(user),
            None,
            &[("if-match", "\"2\"")],
        )
        .await;
    assert_eq!(
        (started.status, started.body["version"].as_i64()),
        (StatusCode::OK, Some(3))
    );
    let done = app
        .send(
            Method::POST,
            &path("/complete"),
            Some(user),
            Some(json!({"actual_minutes": 50, "note": "ok"})),
            &[],
        )
        .await;
    assert_eq!(done.status, StatusCode::OK);
    let gone = app
        .send(Method::DELETE, &path(""), Some(user), None, &[])
        .await;
    assert_eq!(
        (gone.status, gone.body["version"].as_i64()),
        (StatusCode::OK, Some(5))
    );
    let again = app
        .send(Method::POST, &path("/start"), Some(user), None, &[])
        .await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::NOT_FOUND, "not_found"),
        "deleted tasks are 404 everywhere"
    );
    let c = app.db.pool.get().await.expect("client");
    let types: Vec<String> = c
        .query(
            "SELECT event_type FROM event_store ORDER BY aggregate_version",
            &[],
        )
        .await
        .expect("events")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        types,
        [
            "task.created",
            "task.updated",
            "task.started",
            "task.completed",
            "task.deleted"
        ]
    );
    let row = c.query_one("SELECT status, actual_minutes, due_date IS NULL, deleted_at IS NOT NULL, version FROM tasks", &[]).await.expect("row");
    assert_eq!(row.get::<_, &str>(0), "completed");
    assert_eq!(row.get::<_, Option<i32>>(1), Some(50));
    assert!(row.get::<_, bool>(2) && row.get::<_, bool>(3));
    assert_eq!(row.get::<_, i64>(4), 5);
}

#[tokio::test]
async fn abandon_takes_an_optional_body() {
    let app = spawn_app().await;
    let user = Uuid::now_v7();
    let a = id_of(&app.create(user).await);
    let b = id_of(&app.create(user).await);
    let r = app
        .send(
            Method::POST,
            &format!("/v1/tasks/{a}/abandon"),
            Some(user),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = app
        .send(
            Method::POST,
            &format!("/v1/tasks/{b}/abandon"),
            Some(user),
            Some(json!({"reason": "later"})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let c = app.db.pool.get().await.expect("client");
    let reason: Option<String> = c
        .query_one(
            "SELECT abandon_reason FROM tasks WHERE id = $1::text::uuid",
            &[&b],
        )
        .await
        .expect("row")
        .get(0);
    assert_eq!(reason.as_deref(), Some("later"));
}
