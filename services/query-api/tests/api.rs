//! query-api over HTTP against read models built by the real projector from a real stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use events::{ConsistencyToken, EventContext, EventEnvelope};
use projection::{Projector, ProjectorSettings};
use query_api::{Application, Settings};
use reqwest::StatusCode;
use serde_json::Value;
use service_kit::Secret;
use service_kit::http::auth::JwtKeys;
use service_kit::settings::{JwtArgs, PostgresArgs, RedisArgs, ShutdownArgs, TelemetryArgs};
use streams::publisher::{self, StreamEntry};
use task::domain::{CreateTask, Task, TaskCommand, TaskType, decide, decide_create, evolve};
use test_kit::{TestDb, TestRedis};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const SECRET: &str = "query-api-test-secret-0";

struct TestApp {
    base: String,
    redis: TestRedis,
    _db: TestDb,
    projector: Projector,
    jwt: JwtKeys,
    http: reqwest::Client,
    shutdown: CancellationToken,
    clock: i64,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn spawn_app() -> TestApp {
    let db = TestDb::new().await;
    let redis = TestRedis::new().await;
    let settings = Settings {
        postgres: PostgresArgs::new(&test_kit::database_url(), &db.schema),
        redis: RedisArgs::new(&test_kit::redis_url(), &redis.prefix),
        jwt: JwtArgs {
            jwt_secret: Secret::new(SECRET),
        },
        telemetry: TelemetryArgs::default(),
        shutdown: ShutdownArgs::default(),
        http_addr: "127.0.0.1:0".parse().expect("addr"),
        http_workers: Some(1),
    };
    let app = Application::build(settings).await.expect("build");
    let base = format!("http://127.0.0.1:{}", app.port());
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let projector = Projector::new(
        redis.pools.clone(),
        None,
        Arc::new(task::TaskProjection),
        ProjectorSettings::new("q"),
    );
    projector.ensure_groups().await.expect("groups");
    projector.tick_leases().await.expect("leases");
    TestApp {
        base,
        redis,
        _db: db,
        projector,
        jwt: JwtKeys::new(&Secret::new(SECRET)),
        http: reqwest::Client::new(),
        shutdown,
        clock: 0,
    }
}

impl TestApp {
    fn ctx(&mut self, user: Uuid) -> EventContext {
        self.clock += 1;
        EventContext {
            user_id: Some(user),
            correlation_id: None,
            source: "test".into(),
            now: time::OffsetDateTime::now_utc()
                .replace_microsecond(0)
                .expect("micros")
                + time::Duration::milliseconds(self.clock),
        }
    }

    async fn publish(&self, envelopes: &[EventEnvelope]) {
        let stream = self.redis.pools.keys.routing(1).stream("task", 0);
        let json: Vec<String> = envelopes.iter().map(EventEnvelope::to_json).collect();
        let entries: Vec<_> = json
            .iter()
            .map(|e| StreamEntry {
                stream: &stream,
                event_id: "x",
                event_type: "t",
                envelope: e,
            })
            .collect();
        let mut c = self.redis.pools.commands.get().await.expect("conn");
        publisher::publish(&mut *c, &entries)
            .await
            .expect("publish");
    }

    /// Emits a creation (not yet projected); returns the task and its envelope.
    fn create_event(&mut self, user: Uuid, title: &str) -> (Task, EventEnvelope) {
        let cmd = CreateTask {
            id: Uuid::now_v7(),
            title: title.into(),
            task_type: TaskType::Learning,
            estimated_minutes: 30,
            priority: 3,
            difficulty: 1,
            due_date: None,
            tags: vec![],
        };
        let ctx = self.ctx(user);
        let e = decide_create(user, &cmd).remove(0);
        let env = ctx.envelope("Task", cmd.id, 1, e.event_type(), e.payload());
        (evolve(None, &e, cmd.id, 1, ctx.now).expect("evolve"), env)
    }

    fn command_event(&mut self, task: &Task, cmd: TaskCommand) -> (Task, EventEnvelope) {
        let ctx = self.ctx(task.user_id);
        let e = decide(task, &cmd).expect("allowed").remove(0);
        let v = task.version + 1;
        let env = ctx.envelope("Task", task.id, v, e.event_type(), e.payload());
        (
            evolve(Some(task.clone()), &e, task.id, v, ctx.now).expect("evolve"),
            env,
        )
    }

    async fn project(&self) {
        while self
            .projector
            .consume_once(None)
            .await
            .expect("consume")
            .delivered
            > 0
        {}
    }

    async fn get(
        &self,
        user: Uuid,
        path: &str,
        headers: &[(&str, String)],
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self.http.get(format!("{}{path}", self.base)).bearer_auth(
            self.jwt
                .issue(user, Duration::from_secs(60))
                .expect("token"),
        );
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let res = req.send().await.expect("send");
        let (status, headers) = (res.status(), res.headers().clone());
        (status, headers, res.json().await.unwrap_or(Value::Null))
    }
}

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
