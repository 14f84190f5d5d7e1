//! query-api: serves the Redis read models, with read-your-writes through consistency tokens.
//! Modules plug in with one `.configure(..)` line each.

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::web;
use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use service_kit::health::Health;
use service_kit::http::auth::{JwtKeys, parse_ttl};
use service_kit::http::server::{self, ServerOptions};
use service_kit::settings::{JwtArgs, PostgresArgs, RedisArgs, ShutdownArgs, TelemetryArgs};
use streams::RedisPools;
use streams::keys::INITIAL_GENERATION;
use streams::visibility::AppliedWatch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Command line of the binary.
#[derive(Debug, Parser)]
#[command(name = "query-api", version, about = "Serves the read models")]
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
    pub redis: RedisArgs,
    #[command(flatten)]
    pub jwt: JwtArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
    /// Listen address.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8081")]
    pub http_addr: SocketAddr,
    /// HTTP worker threads (default: one per core).
    #[arg(long, env = "HTTP_WORKERS")]
    pub http_workers: Option<usize>,
}

/// A built, not yet running, query-api.
pub struct Application {
    server: server::Server,
    health: Health,
    port: u16,
}

impl Application {
    /// Connects, checks the schema, binds and builds the server.
    ///
    /// # Errors
    /// A schema behind this build, a busy port, bad settings.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = outbox::connect(&settings.postgres.pg_settings("query-api"))?;
        outbox::migrate::ensure_current(&pool)
            .await
            .context("checking the database schema")?;
        let redis = RedisPools::connect(&settings.redis.redis_settings())?;
        let jwt = web::Data::new(JwtKeys::new(&settings.jwt.jwt_secret));
        let tasks = web::Data::new(task::queries::TaskQueries::new(
            redis.commands.clone(),
            redis.keys.read_model(task::MODULE.name, INITIAL_GENERATION),
        ));
        // Serving needs Redis only; PostgreSQL was needed for the start-up schema check.
        let health = Health::new("query-api").with_redis(redis.clone());
        // One subscription for all requests: waiting reads wake on the projector's
        // announcements instead of polling Redis.
        let watch = web::Data::new(AppliedWatch::start(
            settings.redis.redis_url.expose(),
            &redis.keys,
        )?);
        let redis = web::Data::new(redis);
        let listener = server::bind(settings.http_addr)?;
        let port = listener.local_addr()?.port();
        let options = ServerOptions {
            workers: settings.http_workers,
            grace: settings.shutdown.grace(),
        };
        let server = server::start(listener, options, health.clone(), move |cfg| {
            cfg.app_data(jwt.clone())
                .app_data(redis.clone())
                .app_data(watch.clone())
                .app_data(tasks.clone())
                .configure(task::http::query_routes);
        })?;
        tracing::info!(port, "query-api listening");
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

    /// Serves until `shutdown`; in-flight requests finish first.
    ///
    /// # Errors
    /// The server's IO error.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        server::run_until_cancelled(self.server, self.health, shutdown).await?;
        tracing::info!("query-api stopped");
        Ok(())
    }
}

/// Prints a token for `user`.
///
/// # Errors
/// If signing fails.
pub fn print_token(settings: &Settings, user: Uuid, ttl: Duration) -> anyhow::Result<()> {
    println!(
        "{}",
        JwtKeys::new(&settings.jwt.jwt_secret).issue(user, ttl)?
    );
    Ok(())
}
