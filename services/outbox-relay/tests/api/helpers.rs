//! The one `spawn_app` of the relay's tests, and the fixture that writes to the outbox and
//! reads what reached the streams.
#![allow(dead_code)]

use events::{EventContext, EventEnvelope};
use outbox_relay::{Application, Progress, Settings};
use service_kit::settings::{PostgresArgs, RedisArgs, ShutdownArgs, StreamArgs, TelemetryArgs};
use service_kit::startup::App as _;
use streams::redis;
use test_kit::{TestDb, TestRedis};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A relay running in this process.
pub struct Running {
    pub shutdown: CancellationToken,
    pub port: u16,
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// What the relay is doing (listening, failing).
    pub progress: watch::Receiver<Progress>,
}

/// Builds and starts a relay with `settings`.
pub async fn spawn_app(settings: Settings) -> Running {
    let app = Application::build(settings).await.expect("build");
    let port = app.port();
    let progress = app.relay().progress();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    Running {
        shutdown,
        port,
        handle,
        progress,
    }
}

pub fn settings(
    pg_url: &str,
    schema: &str,
    redis_url: &str,
    prefix: &str,
    partitions: u32,
) -> Settings {
    Settings {
        postgres: PostgresArgs::new(pg_url, schema),
        redis: RedisArgs::new(redis_url, prefix),
        streams: StreamArgs {
            stream_partitions: partitions,
        },
        telemetry: TelemetryArgs::default(),
        shutdown: ShutdownArgs::default(),
        http_addr: "127.0.0.1:0".parse().expect("addr"),
        relay_batch_size: 100,
        relay_poll_interval_ms: 200,
        relay_linger_us: 1000,
        relay_lease_ms: 1500,
        relay_trim_interval_ms: 60_000,
        relay_vacuum_interval_ms: 5000,
        relay_id: None,
    }
}

pub async fn outbox_len(pool: &outbox::Pool) -> Option<i64> {
    let c = pool.get().await.ok()?;
    c.query_one("SELECT count(*) FROM outbox", &[])
        .await
        .ok()
        .map(|r| r.get(0))
}

pub struct Fixture {
    pub db: TestDb,
    pub redis: TestRedis,
    pub partitions: u32,
}

impl Fixture {
    pub async fn new(partitions: u32) -> Self {
        Self {
            db: TestDb::new().await,
            redis: TestRedis::new().await,
            partitions,
        }
    }

    pub fn settings(&self, pg_url: &str, redis_url: &str, poll_ms: u64) -> Settings {
        Settings {
            relay_batch_size: 50,
            relay_poll_interval_ms: poll_ms,
            relay_trim_interval_ms: 200,
            ..settings(
                pg_url,
                &self.db.schema,
                redis_url,
                &self.redis.prefix,
                self.partitions,
            )
        }
    }

    pub async fn start(&self, settings: Settings) -> Running {
        spawn_app(settings).await
    }

    /// Commits events `versions` of `aggregate`, then wakes the relay as command-api does.
    pub async fn write(
        &self,
        aggregate: Uuid,
        versions: std::ops::RangeInclusive<i64>,
    ) -> Vec<EventEnvelope> {
        let events = self.write_quietly(aggregate, versions).await;
        let c = self.db.pool.get().await.expect("client");
        outbox::wake::notify(&c, &outbox::wake::partitions_of(&events, self.partitions))
            .await
            .expect("wake");
        events
    }

    /// Commits events `versions` of `aggregate` and wakes nobody: a wake-up lost.
    pub async fn write_quietly(
        &self,
        aggregate: Uuid,
        versions: std::ops::RangeInclusive<i64>,
    ) -> Vec<EventEnvelope> {
        let ctx = EventContext::new(None, None, "test");
        let events: Vec<_> = versions
            .map(|v| ctx.envelope("Task", aggregate, v, "task.updated", serde_json::json!({})))
            .collect();
        let mut c = self.db.pool.get().await.expect("client");
        let tx = c.transaction().await.expect("tx");
        outbox::append_events(&tx, &events, self.partitions)
            .await
            .expect("append");
        tx.commit().await.expect("commit");
        events
    }

    pub async fn outbox_len(&self) -> i64 {
        let c = self.db.pool.get().await.expect("client");
        c.query_one("SELECT count(*) FROM outbox", &[])
            .await
            .expect("count")
            .get(0)
    }

    /// (aggregate, version) of every entry of every partition stream, in stream order.
    pub async fn published(&self) -> Vec<(Uuid, i64)> {
        let mut c = self.redis.pools.commands.get().await.expect("conn");
        let mut out = vec![];
        for stream in self
            .redis
            .pools
            .keys
            .routing(self.partitions)
            .streams("task")
        {
            let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                .arg(&stream)
                .arg("-")
                .arg("+")
                .query_async(&mut *c)
                .await
                .expect("xrange");
            for (_, fields) in entries {
                let env = fields
                    .iter()
                    .find(|(k, _)| k == "envelope")
                    .expect("envelope");
                let e = EventEnvelope::from_json(env.1.as_bytes()).expect("json");
                assert_eq!(
                    stream,
                    self.redis
                        .pools
                        .keys
                        .routing(self.partitions)
                        .stream_for("task", e.aggregate_id),
                    "each event goes to its aggregate's partition stream"
                );
                out.push((e.aggregate_id, e.aggregate_version));
            }
        }
        out
    }
}
