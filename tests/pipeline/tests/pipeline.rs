//! The whole pipeline as processes: command-api → PostgreSQL → outbox-relay → Redis Streams →
//! projector-worker → Redis read models → query-api, plus admin-api, on real servers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use reqwest::StatusCode;
use serde_json::{Value, json};
use task::Task;
use test_kit::process::{Service, binary};
use test_kit::{TestDb, TestRedis, eventually};
use uuid::Uuid;

const SECRET: &str = "pipeline-test-secret-0123";
const PARTITIONS: u32 = 2;
const TYPES: [&str; 6] = [
    "learning",
    "training",
    "error_fix",
    "reflection",
    "social",
    "planning",
];

struct Pipeline {
    db: TestDb,
    redis: TestRedis,
    services: BTreeMap<&'static str, Service>,
    http: reqwest::Client,
    log_dir: std::path::PathBuf,
    tokens: BTreeMap<Uuid, String>,
}

/// A token from the binary's own `token` subcommand: exactly what a newcomer uses.
async fn mint(user: Uuid) -> String {
    let env = [("JWT_SECRET".to_owned(), SECRET.to_owned())];
    let (code, out, err) = test_kit::process::run(
        &binary("command-api"),
        &["token", "--user", &user.to_string(), "--ttl", "1h"],
        &env,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    out.trim().to_owned()
}

impl Pipeline {
    async fn start(users: &[Uuid]) -> Self {
        let db = TestDb::new().await;
        let redis = TestRedis::new().await;
        let log_dir = std::env::temp_dir().join(format!("cqrs-pipeline-{}", db.schema));
        std::fs::create_dir_all(&log_dir).expect("log dir");
        let env: Vec<(String, String)> = [
            ("DATABASE_URL", test_kit::database_url()),
            ("DATABASE_SCHEMA", db.schema.clone()),
            ("REDIS_URL", test_kit::redis_url()),
            ("REDIS_KEY_PREFIX", redis.prefix.clone()),
            ("STREAM_PARTITIONS", PARTITIONS.to_string()),
            ("JWT_SECRET", SECRET.into()),
            ("ADMIN_TOKENS", "op-token".into()),
            ("RUST_LOG", "info".into()),
            ("CONSUMER_NAME", "pipeline-projector".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let mut services = BTreeMap::new();
        for name in [
            "command-api",
            "query-api",
            "admin-api",
            "outbox-relay",
            "projector-worker",
        ] {
            services.insert(name, Service::spawn(&binary(name), &env, &log_dir));
        }
        for svc in services.values_mut() {
            svc.wait_ready(Duration::from_secs(20)).await;
        }
        let mut tokens = BTreeMap::new();
        for u in users {
            tokens.insert(*u, mint(*u).await);
        }
        Self {
            db,
            redis,
            services,
            http: reqwest::Client::new(),
            log_dir,
            tokens,
        }
    }

    fn url(&self, service: &str, path: &str) -> String {
        format!("{}{path}", self.services[service].url())
    }

    fn token(&self, user: Uuid) -> &str {
        &self.tokens[&user]
    }

    async fn command(
        &self,
        user: Uuid,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, self.url("command-api", path))
            .bearer_auth(self.token(user));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("command");
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn query(
        &self,
        user: Uuid,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .http
            .get(self.url("query-api", path))
            .bearer_auth(self.token(user));
        if let Some(t) = token {
            req = req.header("x-consistency-token", t);
        }
        let res = req.send().await.expect("query");
        let (status, headers) = (res.status(), res.headers().clone());
        (status, headers, res.json().await.unwrap_or(Value::Null))
    }

    /// Idle: nothing in the outbox, and every group has read and acknowledged everything.
    async fn idle(&self) -> bool {
        let c = self.db.pool.get().await.expect("client");
        let pending: i64 = c
            .query_one("SELECT count(*) FROM outbox", &[])
            .await
            .expect("count")
            .get(0);
        if pending > 0 {
            return false;
        }
        let mut conn = self.redis.pools.commands.get().await.expect("redis");
        for stream in self.redis.pools.keys.routing(PARTITIONS).streams("task") {
            let groups = streams::consumer::groups(&mut *conn, &stream)
                .await
                .expect("groups");
            let busy = groups.iter().any(|g| g.pending > 0 || g.lag != Some(0));
            if busy {
                return false;
            }
        }
        true
    }
}

#[tokio::test]
async fn five_hundred_random_commands_leave_every_view_list_and_stat_equal_to_postgres() {
    let users: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
    let p = Pipeline::start(&users).await;
    let seed: u64 = rand::random();
    eprintln!("pipeline seed {seed}; logs in {}", p.log_dir.display());

    // Each user sends 25 commands in sequence; the 20 users run concurrently.
    let statuses = futures::future::join_all(users.iter().enumerate().map(|(i, user)| {
        let p = &p;
        let token = p.token(*user).to_owned();
        async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(i as u64));
            let mut tasks: Vec<String> = vec![];
            let mut seen = BTreeMap::<u16, usize>::new();
            for _ in 0..25 {
                let pick = if tasks.is_empty() { 0 } else { rng.random_range(0..10) };
                let (method, path, body) = match pick {
                    0..=2 => (reqwest::Method::POST, "/v1/tasks".to_owned(), Some(json!({
                        "title": format!("task {}", rng.random_range(0..1000)),
                        "type": TYPES[rng.random_range(0..TYPES.len())],
                        "estimated_minutes": rng.random_range(1..=1440),
                        "priority": rng.random_range(1..=5),
                        "tags": ["a", "b"],
                    }))),
                    other => {
                        let id = &tasks[rng.random_range(0..tasks.len())];
                        match other {
                            3 => (reqwest::Method::PATCH, format!("/v1/tasks/{id}"), Some(json!({"estimated_minutes": rng.random_range(1..=600), "title": "edited"}))),
                            4 | 5 => (reqwest::Method::POST, format!("/v1/tasks/{id}/start"), None),
                            6 | 7 => (reqwest::Method::POST, format!("/v1/tasks/{id}/complete"), Some(json!({"actual_minutes": rng.random_range(0..=300)}))),
                            8 => (reqwest::Method::POST, format!("/v1/tasks/{id}/abandon"), None),
                            _ => (reqwest::Method::DELETE, format!("/v1/tasks/{id}"), None),
                        }
                    }
                };
                let mut req = p.http.request(method, p.url("command-api", &path)).bearer_auth(&token);
                if let Some(b) = body {
                    req = req.json(&b);
                }
                let res = req.send().await.expect("command");
                let status = res.status().as_u16();
                *seen.entry(status).or_default() += 1;
                let body: Value = res.json().await.expect("json");
                assert!(
                    matches!(status, 200 | 201 | 404 | 409),
                    "unexpected {status} for {path}: {body}"
                );
                if status == 201 {
                    tasks.push(body["id"].as_str().expect("id").to_owned());
                }
            }
            seen
        }
    }))
    .await;
    let mut totals = BTreeMap::<u16, usize>::new();
    for s in statuses {
        for (k, v) in s {
            *totals.entry(k).or_default() += v;
        }
    }
    eprintln!("answers by status: {totals:?}");
    assert_eq!(totals.values().sum::<usize>(), 500);
    assert!(
        totals.get(&201).copied().unwrap_or(0) >= 20,
        "some tasks were created: {totals:?}"
    );

    let started = Instant::now();
    eventually(Duration::from_secs(60), "pipeline idle", || async {
        p.idle().await.then_some(())
    })
    .await;
    eprintln!("idle {:?} after the last command", started.elapsed());

    let c = p.db.pool.get().await.expect("client");
    let rows = c.query("SELECT id FROM tasks", &[]).await.expect("ids");
    let events: i64 = c
        .query_one("SELECT count(*) FROM event_store", &[])
        .await
        .expect("n")
        .get(0);
    eprintln!("{} tasks, {events} events", rows.len());
    for row in rows {
        let id: Uuid = row.get(0);
        let task: Task = task::store::load(&**c, id)
            .await
            .expect("load")
            .expect("row");
        let (status, _, body) = p
            .query(task.user_id, &format!("/v1/tasks/{id}"), None)
            .await;
        if task.deleted {
            assert_eq!(
                status,
                StatusCode::NOT_FOUND,
                "deleted task {id} is gone from the read side"
            );
        } else {
            assert_eq!(status, StatusCode::OK, "{id}");
            let view: Task = serde_json::from_value(body).expect("view");
            assert_eq!(view, task, "view of {id} equals its row");
        }
    }
    for user in &users {
        let row = c
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'in_progress'),
                        count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'abandoned'),
                        coalesce(sum(estimated_minutes), 0)::bigint,
                        coalesce(sum(actual_minutes) FILTER (WHERE status = 'completed'), 0)::bigint
                 FROM tasks WHERE user_id = $1 AND deleted_at IS NULL",
                &[user],
            )
            .await
            .expect("stats");
        let expected = json!({
            "total_tasks": row.get::<_, i64>(0), "pending_tasks": row.get::<_, i64>(1),
            "in_progress_tasks": row.get::<_, i64>(2), "completed_tasks": row.get::<_, i64>(3),
            "abandoned_tasks": row.get::<_, i64>(4), "total_estimated_minutes": row.get::<_, i64>(5),
            "completed_minutes": row.get::<_, i64>(6),
        });
        let (status, _, stats) = p.query(*user, "/v1/me/task-stats", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(stats, expected, "stats of {user}");

        let live = task::store::live_tasks_of(&**c, *user).await.expect("live");
        let (_, _, list) = p.query(*user, "/v1/me/tasks?limit=100", None).await;
        let listed: Vec<Task> = serde_json::from_value(list["items"].clone()).expect("items");
        assert_eq!(listed, live, "list of {user}: live tasks, newest first");
    }
    drop(c);

    // Read-your-writes: a fresh command is visible through its consistency token.
    let user = users[0];
    let mut waits = vec![];
    for _ in 0..20 {
        let (status, body) = p
            .command(
                user,
                reqwest::Method::POST,
                "/v1/tasks",
                Some(json!({"title": "fresh", "type": "learning", "estimated_minutes": 5})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let t0 = Instant::now();
        let (status, headers, view) = p
            .query(
                user,
                &format!("/v1/tasks/{}", body["id"].as_str().expect("id")),
                body["consistency_token"].as_str(),
            )
            .await;
        waits.push(t0.elapsed());
        assert_eq!(
            (status, headers["x-consistency"].to_str().ok()),
            (StatusCode::OK, Some("fresh"))
        );
        assert_eq!(view["title"], "fresh");
    }
    waits.sort();
    eprintln!(
        "read-your-writes: median {:?}, max {:?}",
        waits[waits.len() / 2],
        waits[waits.len() - 1]
    );

    // Every binary drains on SIGTERM and exits 0.
    let mut p = p;
    for (name, svc) in &mut p.services {
        let status = svc.terminate(Duration::from_secs(15)).await;
        assert!(
            status.success(),
            "{name} exited with {status}:\n{}",
            svc.log_text()
        );
        let log = svc.log_text();
        assert!(
            log.contains("shutdown requested"),
            "{name} logs its shutdown"
        );
        assert!(!log.contains(" ERROR "), "{name} logged an error:\n{log}");
    }
    let _ = std::fs::remove_dir_all(&p.log_dir);
}
