//! Turning SIGTERM / SIGINT into a cancellation that the application drains on.

use tokio_util::sync::CancellationToken;

/// Resolves at the first SIGTERM or SIGINT, logging which at info: an expected shutdown is not
/// an error. Call from `main` only; libraries take a future or a token instead.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested; draining"),
                    _ = int.recv() => tracing::info!(signal = "SIGINT", "shutdown requested; draining"),
                }
            }
            _ => {
                tracing::warn!("cannot install signal handlers; waiting for ctrl-c");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested; draining");
    }
}

/// A token cancelled when `signal` resolves.
#[must_use]
pub fn token_from(signal: impl Future<Output = ()> + Send + 'static) -> CancellationToken {
    let token = CancellationToken::new();
    let child = token.clone();
    tokio::spawn(async move {
        signal.await;
        child.cancel();
    });
    token
}
