//! Running an actix server until a cancellation token fires.

use std::net::{SocketAddr, TcpListener};

use actix_web::dev::Server;
use tokio_util::sync::CancellationToken;

/// Binds `addr` (port 0 picks a free port: what tests do).
///
/// # Errors
/// The bind error, with the address.
pub fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr} (HTTP_ADDR)"))
}

/// Runs `server` until `shutdown` is cancelled, then stops it gracefully: it stops accepting,
/// lets in-flight requests finish (up to the server's `shutdown_timeout`), and returns.
///
/// # Errors
/// The server's IO error.
pub async fn run_until_cancelled(
    server: Server,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let handle = server.handle();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        handle.stop(true).await;
    });
    server.await
}
