//! command-api: takes commands over HTTP and commits each one, with its events, in one
//! PostgreSQL transaction. Modules plug in with one `.configure(..)` line each.

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::web;
use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use service_kit::command::CommandRunner;
use service_kit::health::Health;
use service_kit::http::auth::{JwtKeys, parse_ttl};
use service_kit::http::server::{self, ServerOptions};
use service_kit::settings::{JwtArgs, PostgresArgs, ShutdownArgs, StreamArgs, TelemetryArgs};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Command line of the binary.
#[derive(Debug, Parser)]
#[command(
    name = "command-api",
    version,
    about = "Takes commands over HTTP; one transaction per command"
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
    /// Print a JWT for local use.
    Token {
        /// The user the token authenticates.
        #[arg(long)]
        user: Uuid,
        /// Lifetime, e.g. 90s, 15m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
    },
}

/// Settings (flags or same-named environment variables).
#[derive(Debug, Clone, Args)]
pub struct Settings {
    #[command(flatten)]
    pub postgres: PostgresArgs,
    #[command(flatten)]
    pub streams: StreamArgs,
    #[command(flatten)]
    pub jwt: JwtArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
    /// Listen address.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// HTTP worker threads (default: one per core).
    #[arg(long, env = "HTTP_WORKERS")]
    pub http_workers: Option<usize>,
}

/// A built, not yet running, command-api.
pub struct Application {
    server: server::Server,
    health: Health,
    pool: outbox::Pool,
    port: u16,
}

impl Application {
    /// Connects, checks the schema, binds and builds the server.
    ///
    /// # Errors
    /// Unreachable PostgreSQL, a schema behind this build, a busy port.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = outbox::connect(&settings.postgres.pg_settings("command-api"))?;
        outbox::migrate::ensure_current(&pool)
            .await
            .context("checking the database schema")?;
        let runner = web::Data::new(CommandRunner::new(
            pool.clone(),
            settings.streams.stream_partitions,
            "command-api",
        ));
        let jwt = web::Data::new(JwtKeys::new(&settings.jwt.jwt_secret));
        let health = Health::new("command-api").with_postgres(pool.clone());
        let listener = server::bind(settings.http_addr)?;
        let port = listener.local_addr()?.port();
        let options = ServerOptions {
            workers: settings.http_workers,
            grace: settings.shutdown.grace(),
        };
        let server = server::start(listener, options, health.clone(), move |cfg| {
            cfg.app_data(runner.clone())
                .app_data(jwt.clone())
                .configure(task::http::command_routes);
        })?;
        tracing::info!(port, "command-api listening");
        Ok(Self {
            server,
            health,
            pool,
            port,
        })
    }

    /// The bound port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown`; in-flight requests finish first.
    ///
    /// # Errors
    /// The server's IO error.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let purge = tokio::spawn(purge_idempotency_keys(self.pool.clone(), shutdown.clone()));
        server::run_until_cancelled(self.server, self.health, shutdown).await?;
        purge.abort();
        tracing::info!("command-api stopped");
        Ok(())
    }
}

/// Deletes expired idempotency answers every ten minutes so the table stays small.
async fn purge_idempotency_keys(pool: outbox::Pool, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(600)) => {}
            () = shutdown.cancelled() => return,
        }
        match outbox::idempotency::purge_expired(&pool).await {
            Ok(n) if n > 0 => tracing::info!(deleted = n, "expired idempotency keys purged"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot purge idempotency keys"),
        }
    }
}

/// Prints a token for `user`.
///
/// # Errors
/// If signing fails.
pub fn print_token(settings: &Settings, user: Uuid, ttl: Duration) -> anyhow::Result<()> {
    let token = JwtKeys::new(&settings.jwt.jwt_secret).issue(user, ttl)?;
    println!("{token}");
    Ok(())
}
