//! Watching operators' desired state: NOTIFY on the control channel wakes a re-read, and a poll
//! every second covers notifications lost while disconnected. Every replica therefore obeys a
//! pause or resume within about a second (the bound is two).

use std::collections::HashMap;
use std::time::Duration;

use outbox::PgSettings;
use outbox::control::{ControlStore, DesiredState, control_channel};
use outbox::listener::Listener;
use resilience::Backoff;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// How often the desired states are re-read without a notification.
pub const POLL: Duration = Duration::from_secs(1);

/// Starts watching the desired state of `projections`; returns one receiver per projection,
/// starting at [`DesiredState::Running`] until the first read.
#[must_use]
pub fn watch_desired_states(
    pg: PgSettings,
    pool: outbox::Pool,
    projections: &[&str],
    shutdown: CancellationToken,
) -> HashMap<String, watch::Receiver<DesiredState>> {
    let mut senders = HashMap::new();
    let mut receivers = HashMap::new();
    for p in projections {
        let (tx, rx) = watch::channel(DesiredState::Running);
        senders.insert((*p).to_owned(), tx);
        receivers.insert((*p).to_owned(), rx);
    }
    tokio::spawn(run(pg, ControlStore::new(pool), senders, shutdown));
    receivers
}

async fn run(
    pg: PgSettings,
    store: ControlStore,
    senders: HashMap<String, watch::Sender<DesiredState>>,
    shutdown: CancellationToken,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let channel = control_channel(&pg.schema);
    let mut listener: Option<Listener> = None;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut next_connect = tokio::time::Instant::now();
    loop {
        if listener.is_none() && tokio::time::Instant::now() >= next_connect {
            match Listener::start(&pg, &channel, tx.clone()).await {
                Ok(l) => {
                    backoff.reset();
                    listener = Some(l);
                }
                Err(e) => {
                    tracing::debug!(error = %resilience::error_chain(&e), "cannot LISTEN for control changes; polling");
                    next_connect = tokio::time::Instant::now() + backoff.next_delay_jittered();
                }
            }
        }
        for (projection, sender) in &senders {
            match store.desired_state(projection).await {
                Ok(state) => {
                    sender.send_if_modified(|current| {
                        let changed = *current != state;
                        if changed {
                            tracing::info!(projection = %projection, desired = state.as_str(), "desired state changed");
                            *current = state;
                        }
                        changed
                    });
                }
                Err(e) => {
                    tracing::debug!(error = %resilience::error_chain(&e), "cannot read the desired state; keeping the last")
                }
            }
        }
        let closed = async {
            match listener.as_mut() {
                Some(l) => l.closed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = rx.recv() => {}
            () = closed => listener = None,
            () = tokio::time::sleep(POLL) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
