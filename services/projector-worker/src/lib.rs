//! projector-worker: consumes the module streams and maintains the read models. Each hosted
//! projection is one line in [`projections`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser};
use projection::{Projection, Projector, ProjectorSettings};
use service_kit::health::Health;
use service_kit::http::server::{self, ServerOptions};
use service_kit::settings::{PostgresArgs, RedisArgs, ShutdownArgs, StreamArgs, TelemetryArgs};
use streams::RedisPools;
use tokio_util::sync::CancellationToken;

/// Command line of the binary.
#[derive(Debug, Parser)]
#[command(
    name = "projector-worker",
    version,
    about = "Applies stream events to the Redis read models"
)]
pub struct Cli {
    /// Settings.
    #[command(flatten)]
    pub settings: Settings,
}

/// Settings (flags or same-named environment variables).
#[derive(Debug, Clone, Args)]
pub struct Settings {
    #[command(flatten)]
    pub postgres: PostgresArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub streams: StreamArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
    /// Listen address of /healthz, /readyz, /metrics.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:9102")]
    pub http_addr: SocketAddr,
    /// Consumer name in the groups; keep it stable across restarts (the pod or host name) so a
    /// restarted worker finds its own pending entries. Default: the host name.
    #[arg(long, env = "CONSUMER_NAME")]
    pub consumer_name: Option<String>,
    /// Entries per read, per stream.
    #[arg(long, env = "PROJECTOR_BATCH_SIZE", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub projector_batch_size: u64,
    /// How long one read waits for new entries, milliseconds.
    #[arg(long, env = "PROJECTOR_BLOCK_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=30_000))]
    pub projector_block_ms: u64,
}

/// The projections this worker hosts.
#[must_use]
pub fn projections() -> Vec<Arc<dyn Projection>> {
    vec![Arc::new(task::TaskProjection)]
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "projector".into())
}

/// A built worker.
pub struct Application {
    projectors: Vec<Arc<Projector>>,
    server: server::Server,
    health: Health,
    port: u16,
}

impl Application {
    /// Connects, checks the schema, binds the health server.
    ///
    /// # Errors
    /// Bad settings, a schema behind this build, a busy port.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = outbox::connect(&settings.postgres.pg_settings("projector-worker"))?;
        outbox::migrate::ensure_current(&pool)
            .await
            .context("checking the database schema")?;
        let redis = RedisPools::connect(&settings.redis.redis_settings())?;
        let consumer = settings.consumer_name.clone().unwrap_or_else(host_name);
        let projectors = projections()
            .into_iter()
            .map(|p| {
                let s = ProjectorSettings {
                    partitions: settings.streams.stream_partitions,
                    batch_size: usize::try_from(settings.projector_batch_size).unwrap_or(256),
                    block: Duration::from_millis(settings.projector_block_ms),
                    ..ProjectorSettings::new(consumer.clone())
                };
                Arc::new(Projector::new(redis.clone(), p, s))
            })
            .collect();
        let health = Health::new("projector-worker")
            .with_postgres(pool)
            .with_redis(redis);
        let listener = server::bind(settings.http_addr)?;
        let port = listener.local_addr()?.port();
        let options = ServerOptions {
            workers: Some(1),
            grace: settings.shutdown.grace(),
        };
        let server = server::start(listener, options, health.clone(), |_| {})?;
        Ok(Self {
            projectors,
            server,
            health,
            port,
        })
    }

    /// The health server's port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Consumes until `shutdown`; batches in hand are finished and acknowledged first.
    ///
    /// # Errors
    /// The health server's IO error.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let http = tokio::spawn(server::run_until_cancelled(
            self.server,
            self.health,
            shutdown.clone(),
        ));
        let runs = self.projectors.iter().map(|p| {
            let p = p.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { p.run(shutdown).await })
        });
        for r in futures::future::join_all(runs).await {
            r.context("projector task")?;
        }
        http.await.context("health server task")??;
        tracing::info!("projector-worker stopped");
        Ok(())
    }
}
