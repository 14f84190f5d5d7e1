//! The one `spawn_app` of query-api's tests: the app on a schema and key prefix of its own,
//! beside a real projector (no database: the read model is built from the stream) that the
//! tests step by hand.
#![allow(dead_code)]

use std::sync::Arc;
pub use std::time::Duration;

use events::{Committed, EventEnvelope, commit};
use module_kit::testing::EventClock;
use projection::{Projector, ProjectorSettings};
use query_api::{Application, Settings};
use reqwest::StatusCode;
use serde_json::Value;
use service_kit::Secret;
use service_kit::http::auth::JwtKeys;
use service_kit::settings::{JwtArgs, PostgresArgs, RedisArgs, ShutdownArgs, TelemetryArgs};
use service_kit::startup::App as _;
use streams::publisher::{self, StreamEntry};
use streams::{GenerationState, Generations};
use task::Task;
use task::domain::{CreateTask, TaskCommand, TaskType, decide, decide_create};
use test_kit::{TestDb, TestRedis};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const SECRET: &str = "query-api-test-secret-0";

pub struct TestApp {
    pub base: String,
    pub redis: TestRedis,
    pub db: TestDb,
    pub projector: Projector,
    /// The galaxy's projector, on the galaxy stream.
    pub galaxy: Projector,
    pub jwt: JwtKeys,
    pub http: reqwest::Client,
    pub shutdown: CancellationToken,
    pub clock: EventClock,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_on(&test_kit::redis_url()).await
}

/// An app reaching Redis at `redis_url` (e.g. through a [`test_kit::proxy::TcpProxy`]); the
/// tests' own writes go to the shared server directly.
pub async fn spawn_app_on(redis_url: &str) -> TestApp {
    let db = TestDb::new().await;
    let redis = TestRedis::new().await;
    let settings = Settings {
        postgres: PostgresArgs::new(&test_kit::database_url(), &db.schema),
        redis: RedisArgs::new(redis_url, &redis.prefix),
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
    let galaxy = Projector::new(
        redis.pools.clone(),
        None,
        Arc::new(galaxy::GalaxyProjection),
        ProjectorSettings::new("q"),
    );
    galaxy.ensure_groups().await.expect("groups");
    galaxy.tick_leases().await.expect("leases");
    // The projectors have no database, so they build nothing: generation 1 of every module is
    // served from the start, as a built read model would be.
    for spec in modules::specs() {
        let generations = Generations::new(
            &redis.pools.keys,
            spec.name,
            spec.projection,
            GenerationState::default(),
        );
        let mut conn = redis.pools.commands.get().await.expect("redis");
        generations.activate(&mut conn, 1).await.expect("activate");
    }
    TestApp {
        base,
        redis,
        db,
        projector,
        galaxy,
        jwt: JwtKeys::new(&Secret::new(SECRET)),
        http: reqwest::Client::new(),
        shutdown,
        clock: EventClock::now(),
    }
}

impl TestApp {
    pub async fn publish(&self, envelopes: &[EventEnvelope]) {
        self.publish_to("task", envelopes).await;
    }

    /// Publishes `envelopes` on `module`'s stream (one partition).
    pub async fn publish_to(&self, module: &str, envelopes: &[EventEnvelope]) {
        let stream = self.redis.pools.keys.routing(1).stream(module, 0);
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

    /// Plays `cmd`'s decision on `task` as the command side does: the task after it, and the
    /// event (not yet projected).
    fn play(
        &mut self,
        user: Uuid,
        task: Option<&Task>,
        id: Uuid,
        events: &[task::TaskEvent],
    ) -> (Task, EventEnvelope) {
        let ctx = self.clock.context(user);
        let version = task.map_or(0, |t| t.version);
        let Committed {
            state,
            mut envelopes,
        } = commit(task.cloned(), version, id, events, &ctx).expect("evolve");
        (state.expect("exists"), envelopes.remove(0))
    }

    /// Emits a creation (not yet projected); returns the task and its envelope.
    pub fn create_event(&mut self, user: Uuid, title: &str) -> (Task, EventEnvelope) {
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
        let events = decide_create(user, &cmd);
        self.play(user, None, cmd.id, &events)
    }

    pub fn command_event(&mut self, task: &Task, cmd: TaskCommand) -> (Task, EventEnvelope) {
        let events = decide(task, &cmd).expect("allowed");
        self.play(task.user_id, Some(task), task.id, &events)
    }

    pub async fn project(&self) {
        for projector in [&self.projector, &self.galaxy] {
            while projector
                .consume_once(None)
                .await
                .expect("consume")
                .delivered
                > 0
            {}
        }
    }

    pub async fn get(
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
