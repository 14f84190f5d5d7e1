//! The active generation is resolved at run time: a switch needs no restart.

use events::ConsistencyToken;
use reqwest::StatusCode;
use streams::{GenerationState, Generations};
use task::domain::{TaskCommand, UpdateTask};
use uuid::Uuid;

use crate::helpers::*;

#[tokio::test]
async fn a_switch_of_the_active_generation_is_followed_without_a_restart() {
    let mut app = spawn_app().await;
    let user = Uuid::now_v7();
    let (task, created) = app.create_event(user, "Read");
    app.publish(std::slice::from_ref(&created)).await;
    app.project().await;
    let path = format!("/v1/tasks/{}", task.id);
    let (_, _, body) = app.get(user, &path, &[]).await;
    assert_eq!(body["title"], "Read");

    // Generation 2 becomes the active one; the projector resolves it (without a database it
    // has nothing to rebuild) and builds it from the history published again, plus an edit.
    let (_, edited) = app.command_event(
        &task,
        TaskCommand::Update(UpdateTask {
            title: Some("Read again".into()),
            ..UpdateTask::default()
        }),
    );
    let pointer = Generations::new(
        &app.redis.pools.keys,
        "task",
        "task_projection",
        GenerationState::default(),
    );
    {
        let mut conn = app.redis.pools.commands.get().await.expect("redis");
        pointer.activate(&mut conn, 2).await.expect("switch");
    }
    app.projector.heal_if_needed().await.expect("resolve");
    assert_eq!(app.projector.keys().generation(), 2);

    // A token for the edit, sent before generation 2 holds it, waits across the switch.
    let token = ConsistencyToken {
        module: "task".into(),
        aggregate_id: task.id,
        version: 2,
    }
    .encode();
    let waiting = format!("{path}?wait_ms=3000");
    let headers = [("x-consistency-token", token)];
    let query = app.get(user, &waiting, &headers);
    let build = async {
        app.publish(&[created, edited]).await;
        app.project().await;
    };
    let ((status, headers, body), ()) = tokio::join!(query, build);
    assert_eq!(
        (status, headers["x-consistency"].to_str().ok()),
        (StatusCode::OK, Some("fresh"))
    );
    assert_eq!(
        (body["title"].as_str(), body["version"].as_i64()),
        (Some("Read again"), Some(2))
    );

    // Generation 1 still holds the old view: the answers came from generation 2.
    let old = app.redis.pools.keys.read_model("task", 1);
    let mut conn = app.redis.pools.commands.get().await.expect("redis");
    let v1: String = streams::redis::cmd("GET")
        .arg(old.key(&format!("view:{}", task.id)))
        .query_async(&mut *conn)
        .await
        .expect("old view");
    assert!(v1.contains("\"Read\""), "{v1}");
    let (_, _, stats) = app.get(user, "/v1/me/task-stats", &[]).await;
    assert_eq!(stats["total_tasks"], 1);
}

#[tokio::test]
async fn with_no_usable_generation_reads_answer_503_never_a_false_404_or_zeros() {
    let mut app = spawn_app().await;
    let user = Uuid::now_v7();
    let (task, created) = app.create_event(user, "Read");
    app.publish(&[created]).await;
    app.project().await;
    // Redis loses everything of the read model, its pointer included.
    app.redis.flush_prefix().await;
    for path in [
        format!("/v1/tasks/{}", task.id),
        "/v1/me/task-stats".to_owned(),
        "/v1/me/tasks".to_owned(),
    ] {
        let (status, headers, body) = app.get(user, &path, &[]).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")),
            "{path}: {body}"
        );
        assert!(headers.contains_key("retry-after"), "{path}");
    }
    // Once a generation is served again, so are reads.
    let pointer = Generations::new(
        &app.redis.pools.keys,
        "task",
        "task_projection",
        GenerationState::default(),
    );
    let mut conn = app.redis.pools.commands.get().await.expect("redis");
    pointer.activate(&mut conn, 1).await.expect("activate");
    let (status, _, stats) = app.get(user, "/v1/me/task-stats", &[]).await;
    assert_eq!(
        (status, stats["total_tasks"].as_i64()),
        (StatusCode::OK, Some(0))
    );
}
