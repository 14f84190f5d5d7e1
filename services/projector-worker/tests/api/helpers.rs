//! The one `spawn_app` of projector-worker's tests.
#![allow(dead_code)]

use projector_worker::{Application, Settings};
use service_kit::settings::{PostgresArgs, RedisArgs, ShutdownArgs, StreamArgs, TelemetryArgs};
use service_kit::startup::App as _;
use test_kit::{TestDb, TestRedis};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A worker running in this process.
pub struct TestApp {
    pub db: TestDb,
    pub redis: TestRedis,
    pub port: u16,
    pub shutdown: CancellationToken,
    pub run: JoinHandle<anyhow::Result<()>>,
}

/// Settings of a worker over `partitions` partitions on `db` and `redis`, with short
/// timings.
pub fn settings(db: &TestDb, redis: &TestRedis, partitions: u32) -> Settings {
    Settings {
        postgres: PostgresArgs::new(&test_kit::database_url(), &db.schema),
        redis: RedisArgs::new(&test_kit::redis_url(), &redis.prefix),
        streams: StreamArgs {
            stream_partitions: partitions,
        },
        telemetry: TelemetryArgs::default(),
        shutdown: ShutdownArgs::default(),
        http_addr: "127.0.0.1:0".parse().expect("addr"),
        consumer_name: Some("worker-test".into()),
        projector_batch_size: 16,
        projector_block_ms: 100,
        projector_lease_ms: 2000,
        projector_max_attempts: 5,
        projector_retry_base_ms: 100,
        projector_retry_cap_ms: 10_000,
        projector_rollback_margin_ms: 120_000,
    }
}

/// Builds and starts a worker on `db` over `partitions` partitions.
pub async fn spawn_app_on(db: TestDb, partitions: u32) -> TestApp {
    let redis = TestRedis::new().await;
    let app = Application::build(settings(&db, &redis, partitions))
        .await
        .expect("build");
    let port = app.port();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        db,
        redis,
        port,
        shutdown,
        run,
    }
}

/// A worker on a fresh schema.
pub async fn spawn_app(partitions: u32) -> TestApp {
    spawn_app_on(TestDb::new().await, partitions).await
}
