//! Bad input: every documented 4xx, and nothing written.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

/// Every rejection of http-api.md: its status and code, and nothing written.
#[tokio::test]
async fn every_bad_input_is_rejected_with_its_code_and_writes_nothing() {
    let app = spawn_app().await;
    let owner = Uuid::now_v7();
    let stranger = Uuid::now_v7();
    let id = id_of(&app.create(owner).await);
    let start = format!("/v1/tasks/{id}/start");
    let complete = format!("/v1/tasks/{id}/complete");
    let before = app.counts().await;
    assert_eq!(before, (1, 1, 1));

    let raw = |body: &str, ct: &str| {
        let req = app
            .http
            .post(format!("{}/v1/tasks", app.base))
            .bearer_auth(app.token(owner))
            .header("content-type", ct.to_owned())
            .body(body.to_owned());
        async move {
            let res = req.send().await.expect("send");
            let status = res.status();
            let body: Value = res.json().await.expect("json");
            (
                status,
                body["error"]["code"].as_str().unwrap_or("").to_owned(),
                body["error"]["details"]["field"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            )
        }
    };
    assert_eq!(
        raw("{\"title\": ", "application/json").await,
        (
            StatusCode::BAD_REQUEST,
            "invalid_json".into(),
            String::new()
        )
    );
    let mut unknown = task_body();
    unknown["colour"] = json!("red");
    assert_eq!(
        raw(&unknown.to_string(), "application/json").await,
        (
            StatusCode::BAD_REQUEST,
            "validation_failed".into(),
            "colour".into()
        )
    );
    assert_eq!(
        raw(&task_body().to_string(), "text/plain").await.0,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    let big = json!({"title": "x".repeat(1024 * 1024), "type": "learning", "estimated_minutes": 1})
        .to_string();
    let (status, code, _) = raw(&big, "application/json").await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );

    for (title, why) in [("   ", "blank"), (&"t".repeat(300) as &str, "300 chars")] {
        let mut b = task_body();
        b["title"] = json!(title);
        let a = app
            .send(Method::POST, "/v1/tasks", Some(owner), Some(b), &[])
            .await;
        assert_eq!(
            (a.status, a.code(), a.field()),
            (StatusCode::BAD_REQUEST, "validation_failed", "title"),
            "{why}"
        );
    }
    let mut b = task_body();
    b["estimated_minutes"] = json!("forty");
    let a = app
        .send(Method::POST, "/v1/tasks", Some(owner), Some(b), &[])
        .await;
    assert_eq!(
        (a.status, a.field()),
        (StatusCode::BAD_REQUEST, "estimated_minutes")
    );

    let a = app
        .send(
            Method::POST,
            "/v1/tasks/not-a-uuid/start",
            Some(owner),
            None,
            &[],
        )
        .await;
    assert_eq!(
        (a.status, a.code(), a.field()),
        (StatusCode::BAD_REQUEST, "validation_failed", "id")
    );

    let a = app
        .send(Method::POST, "/v1/tasks", None, Some(task_body()), &[])
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::UNAUTHORIZED, "unauthorized"),
        "missing JWT"
    );
    let expired = app
        .send(
            Method::POST,
            "/v1/tasks",
            None,
            Some(task_body()),
            &[("authorization", &expired_bearer(SECRET, owner))],
        )
        .await;
    assert_eq!(
        (expired.status, expired.code()),
        (StatusCode::UNAUTHORIZED, "unauthorized"),
        "expired JWT"
    );
    let forged = JwtKeys::new(&Secret::new("some-other-secret-123"))
        .issue(owner, Duration::from_secs(60))
        .expect("forge");
    let a = app
        .send(
            Method::POST,
            "/v1/tasks",
            None,
            Some(task_body()),
            &[("authorization", &format!("Bearer {forged}"))],
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::UNAUTHORIZED, "unauthorized"),
        "forged JWT"
    );
    let a = app
        .send(
            Method::POST,
            "/v1/tasks",
            None,
            Some(task_body()),
            &[("authorization", "Basic abc")],
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "not a bearer token");

    for (method, path) in [
        (Method::POST, start.clone()),
        (Method::DELETE, format!("/v1/tasks/{id}")),
        (Method::PATCH, format!("/v1/tasks/{id}")),
    ] {
        let body = (method == Method::PATCH).then(|| json!({"priority": 5}));
        let a = app
            .send(method.clone(), &path, Some(stranger), body, &[])
            .await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::NOT_FOUND, "not_found"),
            "another user's task: {method} {path}"
        );
    }
    let a = app
        .send(
            Method::POST,
            &format!("/v1/tasks/{}/start", Uuid::now_v7()),
            Some(owner),
            None,
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "unknown task");

    let a = app
        .send(
            Method::POST,
            &complete,
            Some(owner),
            Some(json!({"actual_minutes": 5})),
            &[],
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::CONFLICT, "invalid_transition"),
        "complete a pending task"
    );
    let a = app
        .send(
            Method::POST,
            &start,
            Some(owner),
            None,
            &[("if-match", "\"7\"")],
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::PRECONDITION_FAILED, "version_mismatch")
    );
    assert_eq!(a.body["error"]["details"]["current_version"], 1);
    let a = app
        .send(
            Method::POST,
            &start,
            Some(owner),
            None,
            &[("if-match", "soon")],
        )
        .await;
    assert_eq!((a.status, a.field()), (StatusCode::BAD_REQUEST, "If-Match"));
    let a = app
        .send(
            Method::PATCH,
            &format!("/v1/tasks/{id}"),
            Some(owner),
            Some(json!({})),
            &[],
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_REQUEST, "validation_failed"),
        "empty patch"
    );
    let a = app
        .send(
            Method::PATCH,
            &format!("/v1/tasks/{id}"),
            Some(owner),
            Some(json!({"title": null})),
            &[],
        )
        .await;
    assert_eq!((a.status, a.field()), (StatusCode::BAD_REQUEST, "title"));
    let a = app
        .send(
            Method::POST,
            &complete,
            Some(owner),
            Some(json!({"actual_minutes": 2000})),
            &[],
        )
        .await;
    assert_eq!(
        (a.status, a.field()),
        (StatusCode::BAD_REQUEST, "actual_minutes")
    );
    let a = app
        .send(Method::GET, "/v1/tasks", Some(owner), None, &[])
        .await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    let a = app
        .send(Method::GET, "/v1/nothing-here", Some(owner), None, &[])
        .await;
    assert_eq!((a.status, a.code()), (StatusCode::NOT_FOUND, "not_found"));

    assert_eq!(
        app.counts().await,
        before,
        "no rejected command left a row, an event or an outbox entry"
    );
    let c = app.db.pool.get().await.expect("client");
    let version: i64 = c
        .query_one("SELECT version FROM tasks", &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(version, 1);
}

/// PostgreSQL stores no U+0000 in `text` or `jsonb`: a NUL in any text field is refused with
/// 400 naming the field, not a failed transaction answered 500 (found by schemathesis).
#[tokio::test]
async fn text_with_a_nul_character_is_refused_naming_its_field() {
    let app = spawn_app().await;
    let user = Uuid::now_v7();
    let id = id_of(&app.create(user).await);
    let mut created = task_body();
    created["title"] = json!("a\u{0}b");
    let mut tagged = task_body();
    tagged["tags"] = json!(["ok", "\u{0}"]);
    let cases = [
        (Method::POST, "/v1/tasks".to_owned(), created, "title"),
        (Method::POST, "/v1/tasks".to_owned(), tagged, "tags"),
        (
            Method::PATCH,
            format!("/v1/tasks/{id}"),
            json!({"title": "\u{0}"}),
            "title",
        ),
        (
            Method::POST,
            format!("/v1/tasks/{id}/abandon"),
            json!({"reason": "no\u{0}"}),
            "reason",
        ),
    ];
    for (method, path, body, field) in cases {
        let a = app.send(method, &path, Some(user), Some(body), &[]).await;
        assert_eq!(
            (a.status, a.code(), a.field()),
            (StatusCode::BAD_REQUEST, "validation_failed", field),
            "{path}: {:?}",
            a.body
        );
    }
    assert_eq!(app.counts().await, (1, 1, 1), "nothing written");
}
