//! command-api: takes commands over HTTP and commits each one, with its events, in one
//! PostgreSQL transaction. Every module of the registry mounts its command routes here.

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::web;
use clap::{Args, Parser};
use service_kit::command::CommandRunner;
use service_kit::health::Health;
use service_kit::http::Routes;
use service_kit::http::api::{ApiInfo, BEARER, jwt_bearer};
use service_kit::http::auth::JwtKeys;
use service_kit::http::server::ServerOptions;
use service_kit::settings::{
    JwtArgs, PostgresArgs, RedisArgs, ShutdownArgs, StreamArgs, TelemetryArgs,
};
use service_kit::startup::{ApiCommand, App, HttpService, connect_postgres};
use tokio_util::sync::CancellationToken;

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
    pub streams: StreamArgs,
    /// Where the relays are woken after a commit (commands themselves never need Redis: while
    /// it is down they commit, and the relay's poll finds their rows).
    #[command(flatten)]
    pub redis: RedisArgs,
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
    http: HttpService,
    pool: outbox::Pool,
}

impl Application {
    /// Connects, checks the schema, binds and builds the server.
    ///
    /// # Errors
    /// Unreachable PostgreSQL, a schema behind this build, a busy port.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let (pg, pool) = connect_postgres(&settings.postgres, "command-api").await?;
        let workers = settings
            .http_workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
            .max(1);
        // Each HTTP worker thread commits through a pool (and a relay waker) of its own, made
        // on that thread: a connection's IO task then runs where its requests run. With one
        // pool for all, a create woke another thread at every round trip (8 cross-thread
        // wake-ups for 4 round trips, issue 14). The pool size is shared out between them;
        // connections open on first use.
        let per_worker = outbox::PgSettings {
            max_connections: pg.max_connections.div_ceil(workers).max(1),
            ..pg
        };
        let spare = (0..workers)
            .map(|_| outbox::connect(&per_worker))
            .collect::<Result<Vec<_>, _>>()?;
        let spare = std::sync::Mutex::new(spare);
        let redis = streams::RedisPools::connect(&settings.redis.redis_settings())?;
        let (shared, partitions) = (pool.clone(), settings.streams.stream_partitions);
        let jwt = web::Data::new(JwtKeys::new(&settings.jwt.jwt_secret));
        let health = Health::new("command-api").with_postgres(pool.clone());
        let options = ServerOptions {
            workers: Some(workers),
            grace: settings.shutdown.grace(),
        };
        let mut routes = Routes::new();
        routes
            .worker_data(move || {
                // A worker restarted after a panic finds none spare and shares the main pool.
                let pool = spare
                    .lock()
                    .ok()
                    .and_then(|mut s| s.pop())
                    .unwrap_or_else(|| shared.clone());
                let waker = service_kit::command::redis_waker(redis.clone());
                web::Data::new(CommandRunner::new(pool, partitions, "command-api", waker))
            })
            .app_data(jwt)
            .security_scheme(BEARER, jwt_bearer());
        for module in modules::ALL {
            (module.command_routes)(&mut routes);
        }
        let info = ApiInfo::new("command-api", env!("CARGO_PKG_VERSION"));
        let http = HttpService::start_api(settings.http_addr, options, health, &info, routes)?;
        tracing::info!(port = http.port(), "command-api listening");
        Ok(Self { http, pool })
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
        let purge = tokio::spawn(purge_idempotency_keys(self.pool.clone(), shutdown.clone()));
        self.http.run_until_stopped(shutdown).await?;
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
