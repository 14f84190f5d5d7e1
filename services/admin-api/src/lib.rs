//! admin-api: applies migrations (`admin-api migrate`) and serves the operator endpoints. This
//! version serves `/healthz`, `/readyz` and `/metrics`; the projection, dead-letter and outbox
//! endpoints of http-api.md come with the projector control plane.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use outbox::control::ControlStore;
use service_kit::Secret;
use service_kit::health::Health;
use service_kit::http::server::ServerOptions;
use service_kit::settings::{PostgresArgs, RedisArgs, ShutdownArgs, TelemetryArgs};
use service_kit::startup::{App, HttpService, connect_postgres};
use streams::RedisPools;
use tokio_util::sync::CancellationToken;

/// Command line of the binary.
#[derive(Debug, Parser)]
#[command(
    name = "admin-api",
    version,
    about = "Operator API and schema migrations"
)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings.
    #[command(flatten)]
    pub settings: Settings,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the SQL migrations to DATABASE_URL / DATABASE_SCHEMA and exit. Safe to run twice
    /// and from several places at once.
    Migrate,
}

/// Settings (flags or same-named environment variables).
#[derive(Debug, Clone, Args)]
pub struct Settings {
    #[command(flatten)]
    pub postgres: PostgresArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
    /// Listen address.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8082")]
    pub http_addr: SocketAddr,
    /// Operator bearer tokens, comma-separated (required to serve).
    #[arg(long, env = "ADMIN_TOKENS", value_delimiter = ',')]
    pub admin_tokens: Vec<Secret>,
    /// Read-only bearer tokens, comma-separated.
    #[arg(long, env = "ADMIN_READONLY_TOKENS", value_delimiter = ',')]
    pub admin_readonly_tokens: Vec<Secret>,
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
}

impl Application {
    /// Checks settings and the schema, registers the projections' control rows, binds the
    /// server.
    ///
    /// # Errors
    /// No operator token, a schema behind this build, a busy port.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        if settings
            .admin_tokens
            .iter()
            .all(|t| t.expose().trim().is_empty())
        {
            anyhow::bail!("ADMIN_TOKENS must hold at least one operator token (comma-separated)");
        }
        let (_, pool) = connect_postgres(&settings.postgres, "admin-api").await?;
        register_projections(&pool).await?;
        let redis = RedisPools::connect(&settings.redis.redis_settings())?;
        let health = Health::new("admin-api")
            .with_postgres(pool)
            .with_redis(redis);
        let options = ServerOptions {
            workers: Some(1),
            grace: settings.shutdown.grace(),
        };
        let http = HttpService::start(settings.http_addr, options, health, |_| {})?;
        tracing::info!(port = http.port(), "admin-api listening");
        Ok(Self { http })
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
        self.http.run_until_stopped(shutdown).await?;
        tracing::info!("admin-api stopped");
        Ok(())
    }
}
