//! admin-api: applies migrations (`admin-api migrate`) and serves the operator endpoints. This
//! version serves `/healthz`, `/readyz` and `/metrics`; the projection, dead-letter and outbox
//! endpoints of http-api.md come with the projector control plane.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use service_kit::Secret;
use service_kit::health::Health;
use service_kit::http::server::{self, ServerOptions};
use service_kit::settings::{PostgresArgs, RedisArgs, ShutdownArgs, TelemetryArgs};
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

/// Applies the migrations and reports what was done.
///
/// # Errors
/// PostgreSQL unreachable, a failing or edited migration.
pub async fn migrate(settings: &Settings) -> anyhow::Result<outbox::migrate::MigrationReport> {
    let pg = settings.postgres.pg_settings("admin-api migrate");
    let pool = outbox::connect(&pg)?;
    let report = outbox::migrate::migrate(&pool, &pg.schema)
        .await
        .with_context(|| format!("migrating schema {}", pg.schema))?;
    tracing::info!(schema = %pg.schema, applied = ?report.applied, version = report.current, "schema is up to date");
    Ok(report)
}

/// A built admin-api.
pub struct Application {
    server: server::Server,
    health: Health,
    port: u16,
}

impl Application {
    /// Checks settings and the schema, binds the server.
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
        let pool = outbox::connect(&settings.postgres.pg_settings("admin-api"))?;
        outbox::migrate::ensure_current(&pool)
            .await
            .context("checking the database schema")?;
        let redis = RedisPools::connect(&settings.redis.redis_settings())?;
        let health = Health::new("admin-api")
            .with_postgres(pool)
            .with_redis(redis);
        let listener = server::bind(settings.http_addr)?;
        let port = listener.local_addr()?.port();
        let options = ServerOptions {
            workers: Some(1),
            grace: settings.shutdown.grace(),
        };
        let server = server::start(listener, options, health.clone(), |_| {})?;
        tracing::info!(port, "admin-api listening");
        Ok(Self {
            server,
            health,
            port,
        })
    }

    /// The bound port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown`.
    ///
    /// # Errors
    /// The server's IO error.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        server::run_until_cancelled(self.server, self.health, shutdown).await?;
        tracing::info!("admin-api stopped");
        Ok(())
    }
}
