//! Outages, health endpoints and metrics.

use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::*;

#[tokio::test]
async fn a_database_outage_answers_503_with_retry_after_and_recovers() {
    let proxy = TcpProxy::postgres().await;
    let app = spawn_app_with(TestDb::new().await, &proxy.postgres_url()).await;
    let user = Uuid::now_v7();
    assert_eq!(app.create(user).await.status, StatusCode::CREATED);
    proxy.down();
    let a = app.create(user).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
    assert!(a.headers.contains_key("retry-after"));
    assert!(
        !a.body.to_string().contains("SELECT"),
        "no internals in the body"
    );
    let ready = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    proxy.up();
    test_kit::eventually(Duration::from_secs(10), "writes succeed again", || async {
        (app.create(user).await.status == StatusCode::CREATED).then_some(())
    })
    .await;
    assert_eq!(
        app.counts().await,
        (2, 2, 2),
        "the failed command wrote nothing"
    );
}

#[tokio::test]
async fn health_endpoints_answer() {
    let app = spawn_app().await;
    let h = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .expect("healthz");
    assert_eq!(h.status(), StatusCode::OK);
    let r: Value = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(r["ready"], true);
    app.create(Uuid::now_v7()).await;
    let m = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(m.contains("http_requests_total"), "{m}");
    assert!(
        m.contains(r#"route="/v1/tasks""#),
        "routes are labelled by pattern: {m}"
    );
}
