//! Read-your-writes: consistency tokens, across generations too.

use std::time::Instant;

use events::ConsistencyToken;
use reqwest::StatusCode;
use uuid::Uuid;

use crate::helpers::*;

#[tokio::test]
async fn a_consistency_token_waits_for_its_write_or_says_stale() {
    let mut app = spawn_app().await;
    let user = Uuid::now_v7();
    let (task, env) = app.create_event(user, "Read");
    let token = ConsistencyToken {
        module: "task".into(),
        aggregate_id: task.id,
        version: 1,
    }
    .encode();
    app.publish(&[env]).await;

    // Not projected yet: a short wait answers stale (here, 404: the view does not exist yet).
    let started = Instant::now();
    let (status, headers, _) = app
        .get(
            user,
            &format!("/v1/tasks/{}?wait_ms=150", task.id),
            &[("x-consistency-token", token.clone())],
        )
        .await;
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{status} {headers:?}"
    );
    assert_eq!(
        (
            status,
            headers.get("x-consistency").and_then(|v| v.to_str().ok())
        ),
        (StatusCode::NOT_FOUND, Some("stale")),
        "{headers:?}"
    );

    // The projector applies it while the query waits: the answer is fresh.
    let projecting = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        app.project().await;
    };
    let path = format!("/v1/tasks/{}?wait_ms=3000", task.id);
    let headers = [("x-consistency-token", token.clone())];
    let query = app.get(user, &path, &headers);
    let ((status, headers, body), ()) = tokio::join!(query, projecting);
    assert_eq!(
        (status, headers["x-consistency"].to_str().ok()),
        (StatusCode::OK, Some("fresh"))
    );
    assert_eq!(body["title"], "Read");

    let (status, _, body) = app
        .get(
            user,
            "/v1/me/task-stats",
            &[("x-consistency-token", "forged".into())],
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("validation_failed"))
    );
    let (status, _, _) = app
        .get(
            user,
            "/v1/me/task-stats?wait_ms=9000",
            &[("x-consistency-token", token)],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
