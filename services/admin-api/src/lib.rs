//! admin-api: the operator's surface (http-api.md, admin section), the schema migrations
//! (`admin-api migrate`), and an operator CLI over its own HTTP API (`admin-api projections`,
//! `pause`, `rebuild --wait`, `dlq …`, `health`).
//!
//! It steers the workers only through PostgreSQL (desired states, holds, operations) and reads
//! what they report there and in Redis; long operations run in the workers, so they survive
//! admin-api's restarts.

pub mod admin;
pub mod auth;
pub mod cli;
pub mod health;
pub mod observe;
pub mod routes;
pub mod status;
pub mod views;

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::web;
use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use outbox::control::ControlStore;
use projection::snapshot::SnapshotSettings;
use service_kit::Secret;
use service_kit::health::Health;
use service_kit::http::Routes;
use service_kit::http::api::ApiInfo;
use service_kit::http::server::ServerOptions;
use service_kit::settings::{PostgresArgs, RedisArgs, ShutdownArgs, StreamArgs, TelemetryArgs};
use service_kit::startup::{App, HttpService, connect_postgres, host_name};
use streams::RedisPools;
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::auth::Tokens;
use crate::health::HealthSettings;
use crate::status::StatusSettings;

/// Command line of the binary.
#[derive(Debug, Parser)]
#[command(
    name = "admin-api",
    version,
    about = "Operator API, schema migrations, and the operator CLI"
)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings of the server.
    #[command(flatten)]
    pub settings: Settings,
    /// Settings of the CLI commands.
    #[command(flatten)]
    pub client: cli::ClientArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the SQL migrations to DATABASE_URL / DATABASE_SCHEMA and exit. Safe to run twice
    /// and from several places at once.
    Migrate,
    /// Operator commands, against the admin-api at ADMIN_URL with ADMIN_TOKEN.
    #[command(flatten)]
    Ops(cli::Ops),
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
    /// Listen address.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8082")]
    pub http_addr: SocketAddr,
    /// Operator bearer tokens, comma-separated, each optionally named `name:token` (the name
    /// is what the audit log shows). Required to serve.
    #[arg(
        long,
        env = "ADMIN_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub admin_tokens: Vec<Secret>,
    /// Read-only bearer tokens (GET only), comma-separated, optionally named.
    #[arg(
        long,
        env = "ADMIN_READONLY_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub admin_readonly_tokens: Vec<Secret>,
    /// A replica silent for longer is gone.
    #[arg(long, env = "HEALTH_HEARTBEAT_STALE_MS", default_value_t = 10_000)]
    pub heartbeat_stale_ms: u64,
    /// Events waiting this long with nothing applied meanwhile: the projection is stalled
    /// (unhealthy).
    #[arg(long, env = "HEALTH_STALL_AFTER_MS", default_value_t = 30_000)]
    pub stall_after_ms: u64,
    /// Oldest unapplied event older than this: degraded.
    #[arg(long, env = "HEALTH_LAG_DEGRADED_MS", default_value_t = 10_000)]
    pub lag_degraded_ms: u64,
    /// More undelivered entries than this: degraded.
    #[arg(long, env = "HEALTH_LAG_MESSAGES_DEGRADED", default_value_t = 10_000)]
    pub lag_messages_degraded: u64,
    /// Oldest outbox row older than this: degraded.
    #[arg(long, env = "HEALTH_OUTBOX_DEGRADED_MS", default_value_t = 5_000)]
    pub outbox_degraded_ms: u64,
    /// Oldest outbox row older than this: unhealthy.
    #[arg(long, env = "HEALTH_OUTBOX_UNHEALTHY_MS", default_value_t = 60_000)]
    pub outbox_unhealthy_ms: u64,
    /// Snapshots kept per projection.
    #[arg(long, env = "SNAPSHOT_KEEP", default_value_t = 3, value_parser = clap::value_parser!(i64).range(1..=100))]
    pub snapshot_keep: i64,
}

/// Applies the migrations, then creates the control row of every projection of the registry
/// that has none; reports what was done.
///
/// # Errors
/// PostgreSQL unreachable, a failing or edited migration.
pub async fn migrate(settings: &Settings) -> anyhow::Result<outbox::migrate::MigrationReport> {
    let pg = settings.postgres.pg_settings("admin-api migrate");
    let pool = outbox::connect(&pg)?;
    let report = outbox::migrate::migrate(&pool, &pg.schema)
        .await
        .with_context(|| format!("migrating schema {}", pg.schema))?;
    let created = register_projections(&pool).await?;
    tracing::info!(schema = %pg.schema, applied = ?report.applied, version = report.current,
        projections_registered = created, "schema is up to date");
    Ok(report)
}

/// Creates the missing control rows of the registry's projections.
async fn register_projections(pool: &outbox::Pool) -> anyhow::Result<u64> {
    let names: Vec<&str> = modules::specs().map(|s| s.projection).collect();
    ControlStore::new(pool.clone())
        .register(&names)
        .await
        .context("creating the projections' control rows")
}

/// A built admin-api.
pub struct Application {
    http: HttpService,
    admin: Admin,
}

impl Application {
    /// Checks settings and the schema, registers the projections' control rows, binds the
    /// server.
    ///
    /// # Errors
    /// No (or a too short) operator token, a schema behind this build, a busy port.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let tokens = web::Data::new(
            Tokens::new(&settings.admin_tokens, &settings.admin_readonly_tokens)
                .context("admin tokens")?,
        );
        let (_, pool) = connect_postgres(&settings.postgres, "admin-api").await?;
        register_projections(&pool).await?;
        let redis = RedisPools::connect(&settings.redis.redis_settings())?;
        let ms = Duration::from_millis;
        let snapshots = SnapshotSettings {
            keep: settings.snapshot_keep,
            stale_after: ms(settings.heartbeat_stale_ms),
            ..SnapshotSettings::new(
                format!(
                    "admin-api@{}",
                    host_name().unwrap_or_else(|| "unknown-host".into())
                ),
                env!("CARGO_PKG_VERSION"),
            )
        };
        let state = Admin {
            pg: pool.clone(),
            redis: redis.clone(),
            partitions: settings.streams.stream_partitions,
            status: StatusSettings {
                heartbeat_stale: ms(settings.heartbeat_stale_ms),
                stall_after: ms(settings.stall_after_ms),
            },
            health: HealthSettings {
                lag_degraded: ms(settings.lag_degraded_ms),
                lag_messages_degraded: settings.lag_messages_degraded,
                outbox_degraded: ms(settings.outbox_degraded_ms),
                outbox_unhealthy: ms(settings.outbox_unhealthy_ms),
            },
            snapshots,
        };
        let admin = web::Data::new(state.clone());
        service_kit::telemetry::metrics_handle();
        observe::describe();
        let health = Health::new("admin-api")
            .with_postgres(pool)
            .with_redis(redis);
        let options = ServerOptions {
            workers: Some(2),
            grace: settings.shutdown.grace(),
        };
        let mut api = Routes::new();
        api.app_data(admin).app_data(tokens);
        routes::routes(&mut api);
        let info = ApiInfo::new("admin-api", env!("CARGO_PKG_VERSION"));
        let http = HttpService::start_api(settings.http_addr, options, health, &info, api)?;
        tracing::info!(port = http.port(), "admin-api listening");
        Ok(Self { http, admin: state })
    }

    /// The bound port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.http.port()
    }
}

impl App for Application {
    /// Serves until `shutdown`.
    async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let observer = tokio::spawn(observe::run(self.admin, shutdown.clone()));
        self.http.run_until_stopped(shutdown).await?;
        observer.await.ok();
        tracing::info!("admin-api stopped");
        Ok(())
    }
}
