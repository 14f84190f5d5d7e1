//! projector-worker: consumes the module streams and maintains the read models, one projector
//! per module of the registry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser};
use outbox::control::ControlStore;
use projection::{Projector, ProjectorSettings};
use service_kit::health::Health;
use service_kit::http::server::ServerOptions;
use service_kit::settings::{PostgresArgs, RedisArgs, ShutdownArgs, StreamArgs, TelemetryArgs};
use service_kit::startup::{App, HttpService, connect_postgres, host_name};
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
    /// This replica's name: its consumer name and lease owner. Keep it stable across restarts
    /// (the pod name) and unique among running replicas. Default: the host name.
    #[arg(long, env = "CONSUMER_NAME")]
    pub consumer_name: Option<String>,
    /// Entries per read, per stream.
    #[arg(long, env = "PROJECTOR_BATCH_SIZE", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub projector_batch_size: u64,
    /// How long one read waits for new entries, milliseconds.
    #[arg(long, env = "PROJECTOR_BLOCK_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=2_000))]
    pub projector_block_ms: u64,
    /// Partition lease lifetime, milliseconds.
    #[arg(long, env = "PROJECTOR_LEASE_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(300..=600_000))]
    pub projector_lease_ms: u64,
    /// Deliveries of a failing event before it is dead-lettered.
    #[arg(long, env = "PROJECTOR_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub projector_max_attempts: u64,
    /// First retry delay of a failing event, milliseconds (doubles per attempt).
    #[arg(long, env = "PROJECTOR_RETRY_BASE_MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub projector_retry_base_ms: u64,
    /// Longest retry delay, milliseconds.
    #[arg(long, env = "PROJECTOR_RETRY_CAP_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub projector_retry_cap_ms: u64,
    /// When Redis went back in time, how far before that moment the replay of event_store
    /// starts, milliseconds: above the longest commit → applied lag you expect.
    #[arg(long, env = "PROJECTOR_ROLLBACK_MARGIN_MS", default_value_t = 120_000, value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    pub projector_rollback_margin_ms: u64,
}

/// A built worker.
pub struct Application {
    projectors: Vec<Arc<Projector>>,
    pg: outbox::PgSettings,
    pool: outbox::Pool,
    http: HttpService,
}

impl Application {
    /// Connects, checks the schema, registers the projections' control rows, binds the health
    /// server.
    ///
    /// # Errors
    /// Bad settings, a schema behind this build, a busy port.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let (pg, pool) = connect_postgres(&settings.postgres, "projector-worker").await?;
        service_kit::telemetry::metrics_handle();
        projection::metrics::describe();
        let names: Vec<&str> = modules::specs().map(|s| s.projection).collect();
        ControlStore::new(pool.clone())
            .register(&names)
            .await
            .context("creating the projections' control rows")?;
        let redis = RedisPools::connect(&settings.redis.redis_settings())?;
        let replica = settings
            .consumer_name
            .clone()
            .or_else(host_name)
            .unwrap_or_else(|| "projector".into());
        let projectors = modules::ALL
            .iter()
            .map(|m| {
                let s = ProjectorSettings {
                    partitions: settings.streams.stream_partitions,
                    batch_size: usize::try_from(settings.projector_batch_size).unwrap_or(256),
                    block: Duration::from_millis(settings.projector_block_ms),
                    lease_ttl: Duration::from_millis(settings.projector_lease_ms),
                    max_attempts: settings.projector_max_attempts,
                    retry_base: Duration::from_millis(settings.projector_retry_base_ms),
                    retry_cap: Duration::from_millis(settings.projector_retry_cap_ms),
                    rollback_margin: Duration::from_millis(settings.projector_rollback_margin_ms),
                    ..ProjectorSettings::new(replica.clone())
                };
                Arc::new(Projector::new(
                    redis.clone(),
                    Some(pool.clone()),
                    (m.projection)(),
                    s,
                ))
            })
            .collect::<Vec<Arc<Projector>>>();
        // Two live processes under one name would share a consumer and the leases.
        if let Some(first) = projectors.first() {
            first.ensure_sole_replica().await?;
        }
        if let Ok(Some(policy)) = redis.eviction_policy().await
            && policy != "noeviction"
        {
            tracing::error!(setting = "maxmemory-policy", policy = %policy,
                "{}", service_kit::health::eviction_message(&policy));
        }
        let health = Health::new("projector-worker")
            .with_postgres(pool.clone())
            .with_redis(redis.clone())
            .with_redis_noeviction(redis);
        let options = ServerOptions {
            workers: Some(1),
            grace: settings.shutdown.grace(),
        };
        let http = HttpService::start(settings.http_addr, options, health, |_| {})?;
        Ok(Self {
            projectors,
            pg,
            pool,
            http,
        })
    }

    /// The health server's port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.http.port()
    }
}

impl App for Application {
    /// Consumes until `shutdown`; batches in hand are finished and acknowledged first, and the
    /// partition leases are released.
    async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let http = self.http.spawn(shutdown.clone());
        let names: Vec<&str> = self
            .projectors
            .iter()
            .map(|p| p.projection_name())
            .collect();
        let mut desired =
            projection::control::watch_desired_states(self.pg, self.pool, &names, shutdown.clone());
        let runs = self.projectors.iter().map(|p| {
            let p = p.clone();
            let shutdown = shutdown.clone();
            let rx = desired.remove(p.projection_name());
            tokio::spawn(async move {
                if let Some(rx) = rx {
                    p.run(rx, shutdown).await;
                }
            })
        });
        for r in futures::future::join_all(runs).await {
            r.context("projector task")?;
        }
        http.await.context("health server task")??;
        tracing::info!("projector-worker stopped");
        Ok(())
    }
}
