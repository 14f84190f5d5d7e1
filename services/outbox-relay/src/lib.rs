//! outbox-relay: moves committed events from the PostgreSQL outbox to Redis Streams.

pub mod metrics;
pub mod relay;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser};
use service_kit::health::Health;
use service_kit::http::server::ServerOptions;
use service_kit::settings::{PostgresArgs, RedisArgs, ShutdownArgs, StreamArgs, TelemetryArgs};
use service_kit::startup::{App, HttpService, connect_postgres, host_name};
use streams::RedisPools;
use tokio_util::sync::CancellationToken;

pub use relay::{Progress, Relay, RelaySettings};

/// Command line of the binary.
#[derive(Debug, Parser)]
#[command(
    name = "outbox-relay",
    version,
    about = "Publishes the outbox to Redis Streams"
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
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:9101")]
    pub http_addr: SocketAddr,
    /// Rows per publish batch.
    #[arg(long, env = "RELAY_BATCH_SIZE", default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub relay_batch_size: i64,
    /// Poll fallback when no NOTIFY arrives, milliseconds.
    #[arg(long, env = "RELAY_POLL_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub relay_poll_interval_ms: u64,
    /// The least time between the starts of two rounds started by wake-ups, microseconds:
    /// the rows of a steady stream share a transaction; a wake-up after a quiet spell
    /// publishes at once (0: every wake-up at once).
    #[arg(long, env = "RELAY_LINGER_US", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub relay_linger_us: u64,
    /// Partition lease lifetime, milliseconds: how long a dead replica's partitions wait
    /// before others take them.
    #[arg(long, env = "RELAY_LEASE_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(300..=600_000))]
    pub relay_lease_ms: u64,
    /// How often streams are trimmed below what every group acknowledged, milliseconds.
    #[arg(long, env = "RELAY_TRIM_INTERVAL_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub relay_trim_interval_ms: u64,
    /// How often the outbox's dead tuples are checked (and the table vacuumed when there
    /// are many), milliseconds.
    #[arg(long, env = "RELAY_VACUUM_INTERVAL_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub relay_vacuum_interval_ms: u64,
    /// This replica's lease holder id; default `<host>-<pid>-<random>`, unique per process.
    #[arg(long, env = "RELAY_ID")]
    pub relay_id: Option<String>,
}

fn default_holder() -> String {
    let host = host_name().unwrap_or_else(|| "relay".to_owned());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// A built relay.
pub struct Application {
    relay: Relay,
    pg: outbox::PgSettings,
    /// Where command-api's wake-ups arrive.
    wake: streams::redis::Client,
    http: HttpService,
}

impl Application {
    /// Connects, checks the schema, binds the health server.
    ///
    /// # Errors
    /// Bad settings, a schema behind this build, a busy port.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let (pg, pool) = connect_postgres(&settings.postgres, "outbox-relay").await?;
        service_kit::telemetry::metrics_handle();
        crate::metrics::register(settings.streams.stream_partitions);
        let redis = RedisPools::connect(&settings.redis.redis_settings())?;
        let wake = streams::redis::Client::open(settings.redis.redis_url.expose())
            .context("REDIS_URL does not parse")?;
        let relay = Relay::new(
            pool.clone(),
            redis.clone(),
            settings.streams.stream_partitions,
            RelaySettings {
                holder: settings.relay_id.clone().unwrap_or_else(default_holder),
                batch_size: settings.relay_batch_size,
                poll_interval: Duration::from_millis(settings.relay_poll_interval_ms),
                linger: Duration::from_micros(settings.relay_linger_us),
                lease_ttl: Duration::from_millis(settings.relay_lease_ms),
                trim_interval: Duration::from_millis(settings.relay_trim_interval_ms),
                vacuum_interval: Duration::from_millis(settings.relay_vacuum_interval_ms),
            },
        );
        let health = Health::new("outbox-relay")
            .with_postgres(pool)
            .with_redis(redis);
        let options = ServerOptions {
            workers: Some(1),
            grace: settings.shutdown.grace(),
        };
        let http = HttpService::start(settings.http_addr, options, health, |_| {})?;
        Ok(Self {
            relay,
            pg,
            wake,
            http,
        })
    }

    /// The health server's port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.http.port()
    }

    /// The relay (tests step it directly).
    #[must_use]
    pub fn relay(&self) -> &Relay {
        &self.relay
    }
}

impl App for Application {
    /// Relays until `shutdown`, then finishes the round in hand and stops.
    async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let http = self.http.spawn(shutdown.clone());
        self.relay.run(self.pg, Some(self.wake), shutdown).await;
        http.await??;
        Ok(())
    }
}
