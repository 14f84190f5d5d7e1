//! Views, lists and stats as query-api serves them.

use reqwest::StatusCode;
use serde_json::Value;
use task::Task;
use task::domain::TaskCommand;
use uuid::Uuid;

use crate::helpers::*;

#[tokio::test]
async fn a_task_view_is_served_to_its_owner_only() {
    let mut app = spawn_app().await;
    let owner = Uuid::now_v7();
    let (task, env) = app.create_event(owner, "Read");
    app.publish(&[env]).await;
    app.project().await;
    let (status, _, body) = app.get(owner, &format!("/v1/tasks/{}", task.id), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_value::<Task>(body.clone()).expect("view"),
        task
    );
    assert_eq!(body["version"], 1);
    let (status, _, body) = app
        .get(Uuid::now_v7(), &format!("/v1/tasks/{}", task.id), &[])
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found")),
        "another user's task is 404"
    );
    let (status, _, body) = app.get(owner, "/v1/tasks/nope", &[]).await;
    assert_eq!(
        (status, body["error"]["details"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("id"))
    );
    let res = app
        .http
        .get(format!("{}/v1/tasks/{}", app.base, task.id))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn lists_are_newest_first_filterable_and_paginated() {
    let mut app = spawn_app().await;
    let user = Uuid::now_v7();
    let mut envs = vec![];
    let mut tasks = vec![];
    for i in 0..5 {
        let (t, e) = app.create_event(user, &format!("task {i}"));
        tasks.push(t);
        envs.push(e);
    }
    let (started, e) = app.command_event(&tasks[1], TaskCommand::Start);
    envs.push(e);
    let (_, e) = app.command_event(&tasks[3], TaskCommand::Delete);
    envs.push(e);
    let (_, other) = app.create_event(Uuid::now_v7(), "someone else's");
    envs.push(other);
    app.publish(&envs).await;
    app.project().await;

    let titles = |body: &Value| -> Vec<String> {
        body["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|t| t["title"].as_str().expect("title").to_owned())
            .collect()
    };
    let (status, _, page1) = app.get(user, "/v1/me/tasks?limit=2", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        titles(&page1),
        ["task 4", "task 2"],
        "newest first, deleted excluded"
    );
    let cursor = page1["next_cursor"]
        .as_str()
        .expect("more pages")
        .to_owned();
    let (_, _, page2) = app
        .get(user, &format!("/v1/me/tasks?limit=2&cursor={cursor}"), &[])
        .await;
    assert_eq!(titles(&page2), ["task 1", "task 0"]);
    assert_eq!(page2["next_cursor"], Value::Null);
    let (_, _, in_progress) = app.get(user, "/v1/me/tasks?status=in_progress", &[]).await;
    assert_eq!(titles(&in_progress), ["task 1"]);
    assert_eq!(
        in_progress["items"][0]["started_at"],
        serde_json::to_value(started.started_at.map(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .expect("fmt")
        }))
        .expect("json")
    );
    for bad in [
        "status=done",
        "limit=0",
        "limit=101",
        "limit=x",
        "cursor=garbage",
    ] {
        let (status, _, body) = app.get(user, &format!("/v1/me/tasks?{bad}"), &[]).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("validation_failed")),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn stats_sum_the_users_live_tasks() {
    let mut app = spawn_app().await;
    let user = Uuid::now_v7();
    let (a, e1) = app.create_event(user, "a");
    let (b, e2) = app.create_event(user, "b");
    let (a2, e3) = app.command_event(&a, TaskCommand::Start);
    let (_, e4) = app.command_event(
        &a2,
        TaskCommand::Complete {
            actual_minutes: 25,
            note: None,
        },
    );
    let (_, e5) = app.command_event(&b, TaskCommand::Delete);
    app.publish(&[e1, e2, e3, e4, e5]).await;
    app.project().await;
    let (status, _, stats) = app.get(user, "/v1/me/task-stats", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        stats,
        serde_json::json!({"total_tasks": 1, "pending_tasks": 0, "in_progress_tasks": 0, "completed_tasks": 1,
            "abandoned_tasks": 0, "total_estimated_minutes": 30, "completed_minutes": 25})
    );
}

/// Reads share a multiplexed connection per thread (no pool checkout): when Redis goes away
/// they answer 503 at once, and once it is back the connection is opened again.
#[tokio::test]
async fn a_redis_outage_answers_503_and_reads_come_back_with_redis() {
    let proxy = test_kit::proxy::TcpProxy::redis().await;
    let mut app = spawn_app_on(&proxy.redis_url()).await;
    let owner = Uuid::now_v7();
    let (task, env) = app.create_event(owner, "Through the proxy");
    app.publish(&[env]).await;
    app.project().await;
    let path = format!("/v1/tasks/{}", task.id);
    let (status, _, body) = app.get(owner, &path, &[]).await;
    assert_eq!(
        (status, body["title"].as_str()),
        (StatusCode::OK, Some("Through the proxy"))
    );

    proxy.down();
    for _ in 0..3 {
        let (status, _, body) = app.get(owner, &path, &[]).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")),
            "{body}"
        );
    }

    proxy.up();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, body) = app.get(owner, &path, &[]).await;
        if status == StatusCode::OK {
            assert_eq!(body["title"], "Through the proxy");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reads did not come back within 10 s of Redis: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
