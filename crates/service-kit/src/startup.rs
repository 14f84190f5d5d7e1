//! What every binary does to start and stop, written once: `main` runs an [`App`] with
//! [`run_app`]; `build` connects with [`connect_postgres`] (which refuses a schema behind this
//! build) and serves with [`HttpService`]; the APIs share the `token` subcommand.

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::web;
use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::health::Health;
use crate::http::api::{ApiInfo, Routes};
use crate::http::auth::{JwtKeys, parse_ttl};
use crate::http::server::{self, Server, ServerOptions};
use crate::settings::{JwtArgs, PostgresArgs, TelemetryArgs};
use crate::shutdown::{shutdown_signal, token_from};
use crate::telemetry::init_tracing;

/// A built service, ready to run until its shutdown token is cancelled.
pub trait App: Sized {
    /// Runs until `shutdown`, then drains.
    fn run_until_stopped(
        self,
        shutdown: CancellationToken,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// `main`'s body: starts logging as `service`, builds the app (logging why it cannot start),
/// and runs it until SIGTERM or SIGINT.
///
/// # Errors
/// Why the app could not be built, or its run's error.
pub async fn run_app<A: App>(
    service: &'static str,
    telemetry: &TelemetryArgs,
    build: impl Future<Output = anyhow::Result<A>>,
) -> anyhow::Result<()> {
    init_tracing(telemetry, service);
    // Installed before anything registers a metric: registrations made earlier would be lost.
    crate::telemetry::metrics_handle();
    let app = build
        .await
        .inspect_err(|e| tracing::error!(error = format!("{e:#}"), "cannot start"))?;
    app.run_until_stopped(token_from(shutdown_signal())).await
}

/// A pool on the configured database, named `application_name` in `pg_stat_activity`, after
/// checking that its schema is not behind this build.
///
/// # Errors
/// Bad settings, PostgreSQL unreachable, or a schema to migrate first (the message says how).
pub async fn connect_postgres(
    args: &PostgresArgs,
    application_name: &str,
) -> anyhow::Result<(outbox::PgSettings, outbox::Pool)> {
    let pg = args.pg_settings(application_name);
    let pool = outbox::connect(&pg)?;
    outbox::migrate::ensure_current(&pool)
        .await
        .context("checking the database schema")?;
    Ok((pg, pool))
}

/// The HTTP side of a service: `/healthz`, `/readyz`, `/metrics` and its routes, bound and
/// started, not yet awaited.
pub struct HttpService {
    server: Server,
    health: Health,
    port: u16,
}

impl std::fmt::Debug for HttpService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpService")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl HttpService {
    /// Binds `addr` (port 0 picks a free port) and starts serving `routes` beside the health
    /// endpoints of `health`.
    ///
    /// # Errors
    /// A busy or invalid address.
    pub fn start<F>(
        addr: SocketAddr,
        options: ServerOptions,
        health: Health,
        routes: F,
    ) -> anyhow::Result<Self>
    where
        F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
    {
        let listener = server::bind(addr)?;
        let port = listener.local_addr()?.port();
        let server = server::start(listener, options, health.clone(), routes)?;
        Ok(Self {
            server,
            health,
            port,
        })
    }

    /// Binds `addr` and starts serving an API: `routes`, the health endpoints, and
    /// `GET /openapi.json` documenting all of them under `info`.
    ///
    /// # Errors
    /// A busy or invalid address, or a route that is not (or wrongly) documented.
    pub fn start_api(
        addr: SocketAddr,
        options: ServerOptions,
        health: Health,
        info: &ApiInfo,
        routes: Routes,
    ) -> anyhow::Result<Self> {
        let listener = server::bind(addr)?;
        let port = listener.local_addr()?.port();
        let server = server::start_api(listener, options, health.clone(), info, routes)?;
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

    /// Serves until `shutdown`; then `/readyz` turns 503 and in-flight requests finish.
    ///
    /// # Errors
    /// The server's IO error.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        server::run_until_cancelled(self.server, self.health, shutdown)
            .await
            .context("HTTP server")
    }

    /// [`HttpService::run_until_stopped`] on a task of its own, beside a worker's loop.
    #[must_use]
    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        tokio::spawn(self.run_until_stopped(shutdown))
    }
}

/// The APIs' subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ApiCommand {
    /// Print a JWT for local use.
    Token(TokenArgs),
}

/// `token --user <uuid> [--ttl 1h]`.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// The user the token authenticates.
    #[arg(long)]
    pub user: Uuid,
    /// Lifetime, e.g. 90s, 15m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
}

impl TokenArgs {
    /// Prints a token signed with `jwt`'s secret.
    ///
    /// # Errors
    /// If signing fails.
    pub fn print(&self, jwt: &JwtArgs) -> anyhow::Result<()> {
        println!(
            "{}",
            JwtKeys::new(&jwt.jwt_secret).issue(self.user, self.ttl)?
        );
        Ok(())
    }
}

/// This machine's host name (the pod name in Kubernetes), if it has one.
#[must_use]
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}
