//! query-api: serves the Redis read models, with read-your-writes through consistency tokens.
//! Every module of the registry mounts its query routes here, each reading the active
//! generation of its own read model.

use std::net::SocketAddr;

use actix_web::web;
use clap::{Args, Parser};
use service_kit::health::Health;
use service_kit::http::Routes;
use service_kit::http::api::{ApiInfo, BEARER, jwt_bearer};
use service_kit::http::auth::JwtKeys;
use service_kit::http::server::ServerOptions;
use service_kit::read_side::ReadSides;
use service_kit::settings::{JwtArgs, PostgresArgs, RedisArgs, ShutdownArgs, TelemetryArgs};
use service_kit::startup::{ApiCommand, App, HttpService, connect_postgres};
use streams::RedisPools;
use streams::visibility::AppliedWatch;
use tokio_util::sync::CancellationToken;

/// Command line of the binary.
#[derive(Debug, Parser)]
#[command(name = "query-api", version, about = "Serves the read models")]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<ApiCommand>,
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
    http: HttpService,
}

impl Application {
    /// Connects, checks the schema, binds and builds the server.
    ///
    /// # Errors
    /// A schema behind this build, a busy port, bad settings.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        // Serving needs Redis only; PostgreSQL is needed for the start-up schema check.
        connect_postgres(&settings.postgres, "query-api").await?;
        let redis = RedisPools::connect(&settings.redis.redis_settings())?;
        let jwt = web::Data::new(JwtKeys::new(&settings.jwt.jwt_secret));
        let health = Health::new("query-api").with_redis(redis.clone());
        // One subscription for all requests: waiting reads wake on the projector's
        // announcements instead of polling Redis.
        let watch = AppliedWatch::start(settings.redis.redis_url.expose(), &redis.keys)?;
        let specs: Vec<_> = modules::specs().collect();
        let reads = ReadSides::new(redis, watch, &specs);
        let options = ServerOptions {
            workers: settings.http_workers,
            grace: settings.shutdown.grace(),
        };
        let mut routes = Routes::new();
        routes.app_data(jwt).security_scheme(BEARER, jwt_bearer());
        for module in modules::ALL {
            (module.query_routes)(&mut routes, &reads.of(module.spec));
        }
        let info = ApiInfo::new("query-api", env!("CARGO_PKG_VERSION"));
        let http = HttpService::start_api(settings.http_addr, options, health, &info, routes)?;
        tracing::info!(port = http.port(), "query-api listening");
        Ok(Self { http })
    }

    /// The bound port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.http.port()
    }
}

impl App for Application {
    /// Serves until `shutdown`; in-flight requests finish first.
    async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.http.run_until_stopped(shutdown).await?;
        tracing::info!("query-api stopped");
        Ok(())
    }
}
