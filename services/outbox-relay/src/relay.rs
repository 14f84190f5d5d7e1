//! The relay loop: publish each partition's outbox rows to its stream, in sequence order, and
//! delete exactly what Redis accepted.
//!
//! Guarantee: at-least-once, in per-aggregate order. Rows are deleted in the same transaction
//! that read them, after the XADD pipeline succeeded; a crash in between leaves the rows, which
//! are published again (same `event_id`), and consumers dedupe by aggregate version.

use std::sync::Arc;
use std::time::{Duration, Instant};

use events::StreamRouting;
use outbox::listener::Listener;
use outbox::relay::{OutboxRow, OutboxStore, PublishError};
use outbox::{OutboxError, PgSettings};
use resilience::{Backoff, Outage};
use streams::publisher::{self, StreamEntry};
use streams::{RedisPools, StreamError};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics as m;

/// Why a relay round failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// PostgreSQL failed.
    #[error("outbox unavailable")]
    Outbox(#[from] OutboxError),
    /// Redis failed.
    #[error("stream publish failed")]
    Streams(#[from] StreamError),
}

impl From<PublishError<StreamError>> for RelayError {
    fn from(e: PublishError<StreamError>) -> Self {
        match e {
            PublishError::Outbox(e) => Self::Outbox(e),
            PublishError::Publish(e) => Self::Streams(e),
        }
    }
}

/// Tuning of the relay loop.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Rows per batch (one transaction, one XADD pipeline).
    pub batch_size: i64,
    /// Poll when no notification arrives for this long.
    pub poll_interval: Duration,
}

/// Publishes the outbox.
#[derive(Clone)]
pub struct Relay {
    store: OutboxStore,
    redis: RedisPools,
    routing: StreamRouting,
    settings: RelaySettings,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("routing", &self.routing)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay from the outbox behind `pool` to the streams of `redis`.
    #[must_use]
    pub fn new(
        pool: outbox::Pool,
        redis: RedisPools,
        partitions: u32,
        settings: RelaySettings,
    ) -> Self {
        let routing = redis.keys.routing(partitions);
        Self {
            store: OutboxStore::new(pool),
            redis,
            routing,
            settings,
        }
    }

    /// Publishes one batch of `partition`. Returns how many rows went out.
    ///
    /// # Errors
    /// [`RelayError`] when PostgreSQL or Redis fails; rows not confirmed stay queued.
    pub async fn publish_partition(&self, partition: u32) -> Result<usize, RelayError> {
        let p = i32::try_from(partition).unwrap_or(i32::MAX);
        let n = self
            .store
            .publish_batch(p, self.settings.batch_size, async |rows: &[OutboxRow]| {
                let streams: Vec<String> = rows.iter().map(|r| self.routing.stream(&r.module, partition)).collect();
                let ids: Vec<String> = rows.iter().map(|r| r.event_id.to_string()).collect();
                let entries: Vec<StreamEntry<'_>> = rows
                    .iter()
                    .zip(&streams)
                    .zip(&ids)
                    .map(|((r, stream), id)| StreamEntry {
                        stream,
                        event_id: id,
                        event_type: &r.event_type,
                        envelope: &r.envelope,
                    })
                    .collect();
                let mut conn = self.redis.commands.get().await?;
                publisher::publish(&mut conn, &entries).await?;
                let now = time::OffsetDateTime::now_utc();
                for r in rows {
                    metrics::counter!(m::EVENTS_PUBLISHED_TOTAL, "event_type" => r.event_type.clone()).increment(1);
                    metrics::histogram!(m::PUBLISH_LAG_SECONDS).record((now - r.created_at).as_seconds_f64().max(0.0));
                }
                Ok::<(), StreamError>(())
            })
            .await?;
        Ok(n)
    }

    /// One pass over every partition, each drained until a batch comes back short. Returns
    /// how many rows went out.
    ///
    /// # Errors
    /// The first failure; partitions before it were published.
    pub async fn relay_once(&self) -> Result<usize, RelayError> {
        let mut total = 0;
        for p in 0..self.routing.partitions() {
            loop {
                let n = self.publish_partition(p).await?;
                total += n;
                if (n as i64) < self.settings.batch_size {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// Updates the pending-count and oldest-age gauges.
    ///
    /// # Errors
    /// When PostgreSQL fails.
    pub async fn observe_pending(&self) -> Result<(), OutboxError> {
        let stats = self.store.pending().await?;
        metrics::gauge!(m::OUTBOX_PENDING_COUNT).set(stats.count as f64);
        metrics::gauge!(m::OUTBOX_OLDEST_PENDING_AGE_SECONDS).set(stats.oldest_age_seconds);
        Ok(())
    }

    /// Runs until `shutdown`: wakes on NOTIFY (a dedicated connection from `pg`) or every poll
    /// interval, publishes everything pending, backs off while a dependency is down. A round in
    /// progress finishes before the loop exits.
    pub async fn run(&self, pg: PgSettings, shutdown: CancellationToken) {
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(pg, wake.clone(), shutdown.clone()));
        let mut pg_outage = Outage::new("postgres", "relay");
        let mut redis_outage = Outage::new("redis", "relay");
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut gauges_due = Instant::now();
        tracing::info!(partitions = self.routing.partitions(), "relay started");
        while !shutdown.is_cancelled() {
            match self.relay_once().await {
                Ok(n) => {
                    pg_outage.succeeded();
                    redis_outage.succeeded();
                    backoff.reset();
                    if Instant::now() >= gauges_due {
                        gauges_due = Instant::now() + Duration::from_secs(5);
                        if let Err(e) = self.observe_pending().await {
                            pg_outage.failed(&e);
                        }
                    }
                    if n == 0 {
                        tokio::select! {
                            () = wake.notified() => {}
                            () = tokio::time::sleep(self.settings.poll_interval) => {}
                            () = shutdown.cancelled() => {}
                        }
                    }
                }
                Err(e) => {
                    match &e {
                        RelayError::Outbox(inner) => pg_outage.failed(inner),
                        RelayError::Streams(inner) => redis_outage.failed(inner),
                    };
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_delay_jittered()) => {}
                        () = shutdown.cancelled() => {}
                    }
                }
            }
        }
        listener.abort();
        tracing::info!("relay stopped");
    }
}

/// Keeps a LISTEN session open, reconnecting with backoff; each notification wakes the loop.
/// Failures here are logged at debug: the main loop reports PostgreSQL outages.
async fn listen(pg: PgSettings, wake: Arc<Notify>, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    while !shutdown.is_cancelled() {
        match Listener::start(&pg, wake.clone()).await {
            Ok(mut l) => {
                backoff.reset();
                tokio::select! {
                    () = l.closed() => tracing::debug!("LISTEN connection lost; reconnecting"),
                    () = shutdown.cancelled() => return,
                }
            }
            Err(e) => {
                tracing::debug!(error = %resilience::error_chain(&e), "cannot LISTEN; retrying")
            }
        }
        // Rows committed while the listener was down are found by the poll fallback; wake
        // once anyway so a recovery is not delayed by a full poll interval.
        wake.notify_one();
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay_jittered()) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
