//! What admin-api's tests share: the binary and the environment of a schema of its own.
#![allow(dead_code)]

use std::path::Path;

use test_kit::TestDb;

/// The binary under test.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_admin-api"))
}

/// The environment of admin-api on `db`.
pub fn env_for(db: &TestDb) -> Vec<(String, String)> {
    vec![
        ("DATABASE_URL".into(), test_kit::database_url()),
        ("DATABASE_SCHEMA".into(), db.schema.clone()),
        ("REDIS_URL".into(), test_kit::redis_url()),
    ]
}

/// The operator token of in-process apps.
pub const OPERATOR: &str = "ops:operator-token-of-the-tests";
/// The read-only token of in-process apps.
pub const VIEWER: &str = "viewer:read-only-token-of-the-tests";

/// An admin-api served in this process, on a schema and key prefix of its own.
pub struct TestApp {
    pub base: String,
    pub db: TestDb,
    pub redis: test_kit::TestRedis,
    pub http: reqwest::Client,
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestApp {
    /// `Authorization` with the operator token.
    pub fn operator(&self) -> String {
        format!("Bearer {}", token_of(OPERATOR))
    }

    /// Writes a dead letter of task_projection as a projector does with an envelope it cannot
    /// read (no aggregate: a lone entry); answers its public id.
    pub async fn plant_dead_letter(&self) -> String {
        use streams::dlq::{DeadLetterKeys, Mode, Moved, NewDeadLetter, move_to_dead_letters};
        let keys = DeadLetterKeys::new(&self.redis.pools.keys, "task_projection");
        let mut conn = self.redis.pools.commands.get().await.expect("redis");
        let moved = move_to_dead_letters(
            &mut conn,
            &keys,
            &NewDeadLetter {
                source: None,
                fence: None,
                mode: Mode::Alone,
                aggregate_id: None,
                event_id: None,
                event: "{not json",
                error: "expected an envelope",
                error_type: "malformed_envelope",
                attempts: 1,
                first_failed_at: "2026-12-01T00:00:00Z",
                last_failed_at: "2026-12-01T00:00:00Z",
            },
        )
        .await
        .expect("dead letter");
        match moved {
            Moved::Written { id, .. } => format!("task_projection:{id}"),
            other => panic!("not written: {other:?}"),
        }
    }
}

/// The token part of `name:token`.
pub fn token_of(named: &str) -> &str {
    named.split_once(':').map_or(named, |(_, t)| t)
}

/// The settings of an in-process admin-api on `db` and `redis`.
pub fn settings(db: &TestDb, redis: &test_kit::TestRedis) -> admin_api::Settings {
    use clap::Parser as _;
    // The defaults of every setting, as the binary takes them, then what a test sets.
    let mut settings = admin_api::Cli::parse_from([
        "admin-api",
        "--admin-tokens",
        OPERATOR,
        "--admin-readonly-tokens",
        VIEWER,
    ])
    .settings;
    settings.postgres =
        service_kit::settings::PostgresArgs::new(&test_kit::database_url(), &db.schema);
    settings.redis = service_kit::settings::RedisArgs::new(&test_kit::redis_url(), &redis.prefix);
    settings.http_addr = "127.0.0.1:0".parse().expect("addr");
    settings
}

/// An admin-api on a fresh schema and key prefix.
pub async fn spawn_app() -> TestApp {
    use service_kit::startup::App as _;
    let db = TestDb::new().await;
    let redis = test_kit::TestRedis::new().await;
    let app = admin_api::Application::build(settings(&db, &redis))
        .await
        .expect("build");
    let base = format!("http://127.0.0.1:{}", app.port());
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        base,
        db,
        redis,
        http: reqwest::Client::new(),
        shutdown,
    }
}
