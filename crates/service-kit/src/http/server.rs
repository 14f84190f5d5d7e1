//! The actix server every binary runs: request-id/metrics middleware, `/healthz` `/readyz`
//! `/metrics`, the JSON 404, and whatever routes the service adds. Stopped by a cancellation
//! token, gracefully.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

pub use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use tokio_util::sync::CancellationToken;

use crate::health::{self, Health};
use crate::http::api::{ApiInfo, Routes};
use crate::http::middleware::observe;
use crate::http::not_found;

/// Binds `addr` (port 0 picks a free port: what tests do).
///
/// # Errors
/// The bind error, naming the address and the setting.
pub fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr} (HTTP_ADDR)"))
}

/// How the server runs.
#[derive(Debug, Clone, Copy)]
pub struct ServerOptions {
    /// Worker threads (`None`: one per core).
    pub workers: Option<usize>,
    /// How long in-flight requests may take to finish after a stop.
    pub grace: Duration,
}

/// Starts serving on `listener`: the common routes (`/healthz`, `/readyz`, `/metrics`) plus
/// `routes`. For a process whose only HTTP face is its health; APIs use [`start_api`].
///
/// # Errors
/// When the listener cannot be used.
pub fn start<F>(
    listener: TcpListener,
    options: ServerOptions,
    health: Health,
    routes: F,
) -> anyhow::Result<Server>
where
    F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
{
    let mut common = Routes::new();
    health::routes(&mut common);
    let (common, _) = common.into_parts()?;
    serve(listener, options, health, move |cfg| {
        common(cfg);
        routes(cfg);
    })
}

/// Starts serving an API on `listener`: `routes`, the common routes, and `GET /openapi.json`
/// with the document of all of them, titled by `info`.
///
/// # Errors
/// When the listener cannot be used, or a route is not (or wrongly) documented.
pub fn start_api(
    listener: TcpListener,
    options: ServerOptions,
    health: Health,
    info: &ApiInfo,
    mut routes: Routes,
) -> anyhow::Result<Server> {
    health::routes(&mut routes);
    let _ = crate::telemetry::metrics_handle();
    routes.register_metrics();
    let (configure, _) = routes.into_api(info)?;
    serve(listener, options, health, configure)
}

fn serve<F>(
    listener: TcpListener,
    options: ServerOptions,
    health: Health,
    routes: F,
) -> anyhow::Result<Server>
where
    F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
{
    // Install the recorder before the first request: metrics recorded earlier would be lost.
    let _ = crate::telemetry::metrics_handle();
    let health_data = web::Data::new(health);
    let mut server = HttpServer::new(move || {
        App::new()
            .wrap(from_fn(observe))
            .app_data(health_data.clone())
            .configure(routes.clone())
            .default_service(web::to(not_found))
    })
    .listen(listener)?
    // Signals are the binary's business (main turns them into the token below).
    .disable_signals()
    .shutdown_timeout(options.grace.as_secs().max(1));
    if let Some(n) = options.workers {
        server = server.workers(n);
    }
    Ok(server.run())
}

/// Runs `server` until `shutdown` is cancelled; then marks the process as draining (so
/// `/readyz` turns 503), stops accepting, lets in-flight requests finish, and returns.
///
/// # Errors
/// The server's IO error.
pub async fn run_until_cancelled(
    server: Server,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let handle = server.handle();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        health.set_draining();
        handle.stop(true).await;
    });
    server.await
}
