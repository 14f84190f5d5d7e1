//! The pipeline harness shared by the whole-pipeline tests: start the binaries as processes
//! against a schema and key prefix of their own, send commands over HTTP, wait until the
//! pipeline is idle, and compare the read side with PostgreSQL. Idleness and the comparison
//! cover every module of the registry.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use module_kit::{Expected, ExpectedRead};
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use reqwest::StatusCode;
use serde_json::Value;
use streams::{GenerationState, Generations};
use test_kit::process::{Service, binary};
use test_kit::{TestDb, TestRedis};
use uuid::Uuid;

pub const SECRET: &str = "pipeline-test-secret-0123";
/// What to start.
pub struct Options {
    pub partitions: u32,
    pub relays: usize,
    pub projectors: usize,
    /// Redis for every service (`None`: the shared test server, isolated by prefix).
    pub redis_url: Option<String>,
    pub extra_env: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            partitions: 2,
            relays: 1,
            projectors: 1,
            redis_url: None,
            extra_env: vec![],
        }
    }
}

pub struct Pipeline {
    pub db: TestDb,
    pub redis: TestRedis,
    pub redis_url: String,
    pub partitions: u32,
    pub services: BTreeMap<String, Service>,
    pub http: reqwest::Client,
    pub log_dir: std::path::PathBuf,
    tokens: BTreeMap<Uuid, String>,
}

/// admin-api's operator token (named `ops` in its setting).
pub const OPERATOR_TOKEN: &str = "pipeline-operator-token-0001";
/// admin-api's read-only token (named `viewer`).
pub const READONLY_TOKEN: &str = "pipeline-readonly-token-0001";

/// A token from the binary's own `token` subcommand: exactly what a newcomer uses.
pub async fn mint(user: Uuid) -> String {
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
    pub async fn start(users: &[Uuid], options: Options) -> Self {
        let db = TestDb::new().await;
        let redis = TestRedis::new().await;
        let redis_url = options
            .redis_url
            .clone()
            .unwrap_or_else(test_kit::redis_url);
        let log_dir = std::env::temp_dir().join(format!("cqrs-pipeline-{}", db.schema));
        std::fs::create_dir_all(&log_dir).expect("log dir");
        let mut env: Vec<(String, String)> = [
            ("DATABASE_URL", test_kit::database_url()),
            ("DATABASE_SCHEMA", db.schema.clone()),
            ("REDIS_URL", redis_url.clone()),
            ("REDIS_KEY_PREFIX", redis.prefix.clone()),
            ("STREAM_PARTITIONS", options.partitions.to_string()),
            ("JWT_SECRET", SECRET.into()),
            ("ADMIN_TOKENS", format!("ops:{OPERATOR_TOKEN}")),
            ("ADMIN_READONLY_TOKENS", format!("viewer:{READONLY_TOKEN}")),
            ("RUST_LOG", "info".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        env.extend(options.extra_env.clone());
        let mut services = BTreeMap::new();
        for name in ["command-api", "query-api", "admin-api"] {
            services.insert(
                name.to_owned(),
                Service::spawn(&binary(name), &env, &log_dir),
            );
        }
        for i in 0..options.relays {
            services.insert(
                format!("outbox-relay#{i}"),
                Service::spawn(&binary("outbox-relay"), &env, &log_dir),
            );
        }
        for i in 0..options.projectors {
            let mut e = env.clone();
            e.push(("CONSUMER_NAME".into(), format!("projector-{i}")));
            services.insert(
                format!("projector-worker#{i}"),
                Service::spawn(&binary("projector-worker"), &e, &log_dir),
            );
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
            redis_url,
            partitions: options.partitions,
            services,
            http: reqwest::Client::new(),
            log_dir,
            tokens,
        }
    }

    pub fn url(&self, service: &str, path: &str) -> String {
        format!("{}{path}", self.services[service].url())
    }

    pub fn token(&self, user: Uuid) -> &str {
        &self.tokens[&user]
    }

    pub async fn command(
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

    /// Calls admin-api with `token` (`None`: no Authorization header).
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, self.url("admin-api", path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.expect("admin call");
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Runs the operator CLI (`admin-api <args>`) against this pipeline's admin-api with the
    /// operator token; returns its exit code, stdout and stderr.
    pub async fn admin_cli(&self, args: &[&str]) -> (i32, String, String) {
        let env = [
            ("ADMIN_URL".to_owned(), self.services["admin-api"].url()),
            ("ADMIN_TOKEN".to_owned(), OPERATOR_TOKEN.to_owned()),
        ];
        test_kit::process::run(&binary("admin-api"), args, &env).await
    }

    pub async fn query(
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

    /// Sends `per_user` random commands for each user, users concurrently, each user's in
    /// sequence, each command of a module picked at random from the registry (every module's
    /// own [`module_kit::Traffic`]). Returns the answers by status. Every answer must be one a
    /// valid client can get.
    pub async fn random_commands(
        &self,
        users: &[Uuid],
        per_user: usize,
        seed: u64,
    ) -> BTreeMap<u16, usize> {
        self.random_commands_of(modules::ALL, users, per_user, seed)
            .await
    }

    /// [`Pipeline::random_commands`], drawing only from `of`'s traffic.
    pub async fn random_commands_of(
        &self,
        of: &[module_kit::Module],
        users: &[Uuid],
        per_user: usize,
        seed: u64,
    ) -> BTreeMap<u16, usize> {
        let traffic: Vec<std::sync::Mutex<Box<dyn module_kit::Traffic>>> = of
            .iter()
            .map(|m| std::sync::Mutex::new((m.traffic)()))
            .collect();
        let traffic = &traffic;
        let statuses =
            futures::future::join_all(users.iter().enumerate().map(|(i, user)| async move {
                let mut rng = StdRng::seed_from_u64(seed.wrapping_add(i as u64));
                let mut seen = BTreeMap::<u16, usize>::new();
                for _ in 0..per_user {
                    let module = &traffic[rng.random_range(0..traffic.len())];
                    let call = {
                        let mut pick = |n: usize| rng.random_range(0..n.max(1));
                        module.lock().expect("traffic").next(*user, &mut pick)
                    };
                    let method =
                        reqwest::Method::from_bytes(call.method.as_bytes()).expect("method");
                    let (status, body) = self
                        .command(*user, method, &call.path, call.body.clone())
                        .await;
                    let status = status.as_u16();
                    *seen.entry(status).or_default() += 1;
                    assert!(
                        matches!(status, 200 | 201 | 403 | 404 | 409),
                        "unexpected {status} for {} {}: {body}",
                        call.method,
                        call.path
                    );
                    module
                        .lock()
                        .expect("traffic")
                        .answered(*user, &call, status, &body);
                }
                seen
            }))
            .await;
        let mut totals = BTreeMap::<u16, usize>::new();
        for s in statuses {
            for (k, v) in s {
                *totals.entry(k).or_default() += v;
            }
        }
        totals
    }

    /// Idle: nothing in the outbox, and for every module: its read model exists (the marker
    /// of its active generation is set) and its group has read and acknowledged everything.
    pub async fn idle(&self) -> bool {
        self.not_idle_because().await.is_none()
    }

    /// Why the pipeline is not idle yet (`None` when it is): what a failing wait reports.
    pub async fn not_idle_because(&self) -> Option<String> {
        let c = match self.db.pool.get().await {
            Ok(c) => c,
            Err(e) => return Some(format!("postgres: {e}")),
        };
        match c.query_one("SELECT count(*) FROM outbox", &[]).await {
            Ok(row) if row.get::<_, i64>(0) > 0 => {
                return Some(format!("outbox holds {} rows", row.get::<_, i64>(0)));
            }
            Ok(_) => {}
            Err(e) => return Some(format!("outbox: {e}")),
        }
        // A rebuild asked for (a loss one replica saw) and not answered yet.
        match c
            .query_opt(
                "SELECT string_agg(name || ': ' || rebuild_requested, '; ') FROM projections
                 WHERE rebuild_requested IS NOT NULL",
                &[],
            )
            .await
        {
            Ok(Some(row)) => {
                if let Some(requested) = row.get::<_, Option<String>>(0) {
                    return Some(format!("rebuild requested: {requested}"));
                }
            }
            Ok(None) => {}
            Err(e) => return Some(format!("projections: {e}")),
        }
        let pools = self.redis_pools();
        let mut conn = match pools.commands.get().await {
            Ok(c) => c,
            Err(e) => return Some(format!("redis: {e}")),
        };
        let mut busy = vec![];
        for spec in modules::specs() {
            let generations = Generations::new(
                &pools.keys,
                spec.name,
                spec.projection,
                GenerationState::default(),
            );
            match generations.refresh(&mut *conn).await {
                Err(e) => return Some(format!("{}: generations: {e}", spec.name)),
                Ok(GenerationState {
                    building: Some(b), ..
                }) => busy.push(format!("{}: generation {b} being built", spec.name)),
                Ok(_) => {}
            }
            // Redis behind the canary PostgreSQL recorded: it went back in time, and what it
            // lost is not replayed yet.
            let recorded = outbox::control::ControlStore::new(self.db.pool.clone())
                .canary(spec.projection)
                .await
                .map(|c| c.epoch)
                .unwrap_or(0);
            let held = streams::read_model::canary(&mut *conn, &pools.keys.canary(spec.projection))
                .await
                .ok()
                .flatten()
                .map_or(0, |(epoch, _)| epoch);
            if held < recorded {
                busy.push(format!(
                    "{}: Redis is at canary {held}, PostgreSQL recorded {recorded}",
                    spec.name
                ));
            }
            match generations.active_keys() {
                None => busy.push(format!("{}: no generation served", spec.name)),
                Some(model) => {
                    if !streams::read_model::is_built(&mut *conn, &model)
                        .await
                        .unwrap_or(false)
                    {
                        busy.push(format!("{}: read model marker missing", spec.name));
                    }
                }
            }
            for stream in pools.keys.routing(self.partitions).streams(spec.name) {
                match streams::consumer::groups(&mut *conn, &stream).await {
                    Ok(groups) if groups.is_empty() => busy.push(format!("{stream}: no group")),
                    Ok(groups) => busy.extend(
                        groups
                            .iter()
                            .filter(|g| g.pending > 0 || g.lag != Some(0))
                            .map(|g| {
                                format!(
                                    "{stream}: group {} pending {} lag {:?} last {}",
                                    g.name, g.pending, g.lag, g.last_delivered_id
                                )
                            }),
                    ),
                    Err(e) => busy.push(format!("{stream}: {e}")),
                }
            }
        }
        (!busy.is_empty()).then(|| busy.join("; "))
    }

    /// Waits until the pipeline is idle; on time-out, panics with the reason and the
    /// projectors' recent log lines.
    pub async fn wait_idle(&self, timeout: Duration, what: &str) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let Some(reason) = self.not_idle_because().await else {
                return;
            };
            if std::time::Instant::now() > deadline {
                let logs: String = self
                    .services
                    .iter()
                    .filter(|(n, _)| n.starts_with("projector") || n.starts_with("outbox-relay"))
                    .map(|(n, s)| {
                        let text = s.log_text();
                        let tail: Vec<&str> =
                            text.lines().filter(|l| !l.contains(" DEBUG ")).collect();
                        format!(
                            "--- {n}\n{}\n",
                            tail[tail.len().saturating_sub(40)..].join("\n")
                        )
                    })
                    .collect();
                panic!(
                    "timed out after {timeout:?} waiting for: {what}; not idle: {reason}\n{logs}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Pools on the pipeline's Redis (shared or private) and prefix.
    pub fn redis_pools(&self) -> streams::RedisPools {
        streams::RedisPools::connect(&streams::RedisSettings::new(
            self.redis_url.clone(),
            self.redis.prefix.clone(),
        ))
        .expect("pools")
    }

    /// Every view, list and stat served by query-api equals what PostgreSQL says, for every
    /// module of the registry ([`module_kit::Module::expected_reads`]).
    pub async fn assert_read_side_matches_postgres(&self, users: &[Uuid]) {
        let c = self.db.pool.get().await.expect("client");
        for module in modules::ALL {
            let expected = (module.expected_reads)(&c, users)
                .await
                .unwrap_or_else(|e| panic!("{}: reading PostgreSQL: {e}", module.spec.name));
            for read in expected {
                self.assert_read(&read).await;
            }
        }
    }

    /// Asks query-api `read` and checks its answer.
    async fn assert_read(&self, read: &ExpectedRead) {
        let ExpectedRead { user, path, expect } = read;
        match expect {
            Expected::NotFound => {
                let (status, _, body) = self.query(*user, path, None).await;
                assert_eq!(status, StatusCode::NOT_FOUND, "{path} is gone: {body}");
            }
            Expected::Body(want) => {
                let (status, _, body) = self.query(*user, path, None).await;
                assert_eq!(status, StatusCode::OK, "{path}: {body}");
                assert_eq!(&body, want, "{path} equals PostgreSQL");
            }
            Expected::Items(want) => {
                let mut listed: Vec<Value> = vec![];
                let mut cursor: Option<String> = None;
                loop {
                    let page_path = match &cursor {
                        Some(c) => format!("{path}&cursor={c}"),
                        None => path.clone(),
                    };
                    let (status, _, page) = self.query(*user, &page_path, None).await;
                    assert_eq!(status, StatusCode::OK, "{page_path}: {page}");
                    listed.extend(page["items"].as_array().cloned().unwrap_or_default());
                    match page["next_cursor"].as_str() {
                        Some(c) => cursor = Some(c.to_owned()),
                        None => break,
                    }
                }
                assert_eq!(
                    &listed, want,
                    "{path}: every item, in order, over all pages"
                );
            }
        }
    }

    /// Dead letters of every projection (what the read side treated as poison).
    pub async fn dead_letters(&self) -> usize {
        let pools = self.redis_pools();
        let mut c = pools.commands.get().await.expect("redis");
        let mut n = 0;
        for spec in modules::specs() {
            let keys = streams::dlq::DeadLetterKeys::new(&pools.keys, spec.projection);
            let len: usize = streams::redis::cmd("XLEN")
                .arg(&keys.stream)
                .query_async(&mut *c)
                .await
                .expect("xlen");
            n += len;
        }
        n
    }

    /// The names of the services whose name starts with `kind`.
    pub fn named(&self, kind: &str) -> Vec<String> {
        self.services
            .keys()
            .filter(|k| k.starts_with(kind))
            .cloned()
            .collect()
    }

    /// SIGKILLs the services named and starts them again with `REDIS_URL` = `url`: the
    /// deployment moving to another Redis (a failover).
    pub async fn move_to_redis(&mut self, url: &str) {
        let names: Vec<String> = self
            .services
            .keys()
            .filter(|k| !k.starts_with("command-api"))
            .cloned()
            .collect();
        for name in &names {
            let svc = self.services.get_mut(name).expect("service");
            svc.kill().await;
            svc.set_env("REDIS_URL", url);
            svc.restart();
        }
        for name in &names {
            let svc = self.services.get_mut(name).expect("service");
            svc.wait_ready(Duration::from_secs(30)).await;
        }
        self.redis_url = url.to_owned();
    }

    /// Writes `n` tasks of `user` straight into PostgreSQL, each with its `task.created` in
    /// `event_store` (and no outbox row: history that predates the streams), in one statement:
    /// a large history in no time.
    pub async fn seed_history(&self, user: Uuid, n: i64) {
        let c = self.db.pool.get().await.expect("client");
        c.execute(
            "WITH t AS (
                 SELECT gen_random_uuid() AS id, i,
                        date_trunc('milliseconds', now()) - make_interval(secs => i / 1000.0) AS at
                 FROM generate_series(1, $2::bigint) AS i
             ), ins AS (
                 INSERT INTO tasks (id, user_id, title, type, tags, estimated_minutes, priority,
                                    difficulty, status, created_at, updated_at, version)
                 SELECT id, $1, 'seed ' || i, 'learning', '{}', 30, 3, 1, 'pending', at, at, 1
                 FROM t
                 RETURNING id, title, created_at
             )
             INSERT INTO event_store (event_id, event_type, schema_version, aggregate_type,
                                      aggregate_id, aggregate_version, occurred_at, payload, metadata)
             SELECT gen_random_uuid(), 'task.created', 1, 'Task', id, 1, created_at,
                    jsonb_build_object('user_id', $1, 'title', title, 'type', 'learning',
                        'tags', '[]'::jsonb, 'estimated_minutes', 30, 'priority', 3,
                        'difficulty', 1, 'due_date', null),
                    jsonb_build_object('user_id', $1, 'correlation_id', null,
                        'causation_id', null, 'source', 'seed')
             FROM ins",
            &[&user, &n],
        )
        .await
        .expect("seed");
    }

    /// SIGTERMs every service; each must exit 0 without logging an error.
    pub async fn stop_all(&mut self) {
        for (name, svc) in &mut self.services {
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
        let _ = std::fs::remove_dir_all(&self.log_dir);
    }
}
