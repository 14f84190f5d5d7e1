//! The relay: publish each held partition's outbox rows to its streams, in sequence order, and
//! delete exactly what Redis accepted.
//!
//! # Guarantees
//! - **At least once.** Rows are deleted in the transaction that read them, after the XADD
//!   pipeline succeeded. A crash between XADD and commit leaves the rows, which are published
//!   again with the same `event_id`; consumers dedupe on `(aggregate_id, aggregate_version)`.
//! - **Per-aggregate order, whatever the number of replicas.** An aggregate lives in one
//!   partition; a partition is published only under its lease, inside a transaction that holds
//!   the lease row locked (see `outbox::lease`), so batches of one partition never overlap and
//!   a new holder continues exactly where the old one stopped.
//! - **Gap safety.** Nothing is remembered between batches but the table: a transaction that
//!   commits late with a lower sequence is simply read by the next batch.
//! - **Bounded storage.** Published rows are deleted; streams are trimmed only below what every
//!   consumer group has acknowledged (`streams::retention`); `event_store` keeps history.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use events::StreamRouting;
use outbox::lease::LeaseStore;
use outbox::listener::Listener;
use outbox::relay::{OutboxRow, OutboxStore, PublishError, Round};
use outbox::{OutboxError, PgSettings};
use resilience::{Backoff, Outage};
use streams::pool::SharedConnection;
use streams::publisher::{self, StreamEntry};
use streams::{RedisPools, StreamError};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics as m;

/// Why a relay step failed.
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

/// Tuning of the relay.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// This replica's lease holder id (unique per process).
    pub holder: String,
    /// Rows per batch (one transaction, one XADD pipeline).
    pub batch_size: i64,
    /// Poll when no notification arrives for this long.
    pub poll_interval: Duration,
    /// The least time between the starts of two rounds a wake-up starts: a wake-up that comes
    /// sooner waits for the rest of it, so that the rows of a steady stream share a
    /// transaction (a round costs PostgreSQL a transaction whatever it carries). A wake-up
    /// after a quiet spell starts its round at once, and a backlog is drained round after
    /// round: only a busy stream of single rows waits, at most this long.
    pub linger: Duration,
    /// Lease lifetime; renewed every third of it.
    pub lease_ttl: Duration,
    /// How often held partitions' streams are trimmed.
    pub trim_interval: Duration,
    /// How often the holder of partition 0 checks the outbox's dead tuples and vacuums it.
    pub vacuum_interval: Duration,
}

/// What the relay has been doing, for whoever watches it ([`Relay::progress`]): tests wait on
/// it instead of sleeping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Whether its LISTEN session is up (a commit that notifies PostgreSQL wakes it at once).
    pub listening: bool,
    /// Whether it follows the wake-ups sent through Redis (command-api's).
    pub following: bool,
    /// Rounds in which the publisher drained every partition it holds, since it started:
    /// after one, it waits for a wake-up (or the poll).
    pub drains: u64,
    /// Batches that failed because a dependency did, since it started.
    pub failed_batches: u64,
}

/// What [`Relay::drain`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drained {
    /// Rows published.
    pub published: usize,
    /// Partitions found not held (or with too little lease left): none of their rows was read.
    pub not_held: Vec<u32>,
}

/// Where wake-ups meet the publisher. A wake-up names the partitions its commits wrote; one
/// naming only partitions held by other replicas is ignored.
struct Wake {
    /// What the lease manager last said this replica holds.
    held: watch::Receiver<Vec<u32>>,
    notify: Notify,
}

impl Wake {
    /// Look now, whatever the partitions.
    fn all(&self) {
        self.notify.notify_one();
    }

    /// Look now if `payload` (comma-separated partitions) names one this replica holds, or
    /// cannot be read (an older writer: better a look for nothing than a missed row).
    fn partitions(&self, payload: &str) {
        let named: Vec<u32> = payload
            .split(',')
            .filter_map(|p| p.trim().parse().ok())
            .collect();
        let ours = named.is_empty() || named.iter().any(|p| self.held.borrow().contains(p));
        if ours {
            self.notify.notify_one();
        }
    }
}

/// Publishes the outbox.
#[derive(Clone)]
pub struct Relay {
    store: OutboxStore,
    leases: LeaseStore,
    redis: RedisPools,
    routing: StreamRouting,
    settings: RelaySettings,
    outages: Arc<Outages>,
    progress: Arc<watch::Sender<Progress>>,
}

/// Outage trackers shared by the publisher and the lease manager, so one outage logs once.
struct Outages {
    postgres: Mutex<Outage>,
    redis: Mutex<Outage>,
}

impl Outages {
    fn failed(&self, e: &RelayError) {
        let (tracker, err): (&Mutex<Outage>, &dyn std::error::Error) = match e {
            RelayError::Outbox(inner) => (&self.postgres, inner),
            RelayError::Streams(inner) => (&self.redis, inner),
        };
        if let Ok(mut t) = tracker.lock() {
            t.failed(err);
        }
    }

    /// A batch went through: both dependencies answer.
    fn succeeded(&self) {
        self.postgres_succeeded();
        if let Ok(mut t) = self.redis.lock() {
            t.succeeded();
        }
    }

    /// A PostgreSQL-only step (a lease tick) went through.
    fn postgres_succeeded(&self) {
        if let Ok(mut t) = self.postgres.lock() {
            t.succeeded();
        }
    }
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("holder", &self.settings.holder)
            .field("routing", &self.routing)
            .finish_non_exhaustive()
    }
}

/// Dead outbox tuples above which the relay vacuums the table itself.
const VACUUM_THRESHOLD: i64 = 2000;

/// Modules whose streams each partition feeds.
fn modules() -> impl Iterator<Item = &'static str> {
    modules::specs().map(|m| m.name)
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
        let leases = LeaseStore::new(
            pool.clone(),
            settings.holder.clone(),
            partitions,
            settings.lease_ttl,
        );
        Self {
            store: OutboxStore::new(pool),
            leases,
            redis,
            routing,
            settings,
            outages: Arc::new(Outages {
                postgres: Mutex::new(Outage::new("postgres", "relay")),
                redis: Mutex::new(Outage::new("redis", "relay")),
            }),
            progress: Arc::new(watch::Sender::new(Progress::default())),
        }
    }

    /// What the relay is doing, as it happens.
    #[must_use]
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// The lease bookkeeping (tests tick it by hand).
    #[must_use]
    pub fn leases(&self) -> &LeaseStore {
        &self.leases
    }

    /// A batch must finish well inside the lease: it needs this much lease left to start...
    fn lease_margin(&self) -> Duration {
        self.settings.lease_ttl / 3
    }

    /// ...and its XADD pipeline gets half of that, so a stalled Redis cannot stretch a batch
    /// past the lease.
    fn publish_timeout(&self) -> Duration {
        self.lease_margin() / 2
    }

    /// Publishes one round over `partitions` under this replica's leases: up to a batch of
    /// each, in one transaction and one XADD pipeline (see [`OutboxStore::publish_round`]).
    ///
    /// # Errors
    /// PostgreSQL or Redis failures. Rows not confirmed stay queued; partitions whose lease is
    /// not held are reported in [`Round::not_held`], not as an error.
    pub async fn publish_round(&self, partitions: &[u32]) -> Result<Round, RelayError> {
        let asked: Vec<i32> = partitions
            .iter()
            .filter_map(|p| i32::try_from(*p).ok())
            .collect();
        let lease = Some((self.settings.holder.as_str(), self.lease_margin()));
        let round = self
            .store
            .publish_round(
                &asked,
                self.settings.batch_size,
                lease,
                async |rows: &[OutboxRow]| {
                    // The multiplexed connection: a pooled one costs a round trip of
                    // `UNWATCH` + `PING` at every checkout, once per round.
                    let mut conn = self.redis.shared.get()?;
                    let result = match tokio::time::timeout(
                        self.publish_timeout(),
                        self.xadd(&mut conn, rows),
                    )
                    .await
                    {
                        Ok(result) => result,
                        Err(_) => Err(StreamError::Unavailable("XADD pipeline timed out".into())),
                    };
                    if let Err(e) = &result {
                        self.redis.shared.forget_if_unavailable(&conn, e);
                    }
                    result
                },
            )
            .await?;
        Ok(round)
    }

    async fn xadd(
        &self,
        conn: &mut SharedConnection,
        rows: &[OutboxRow],
    ) -> Result<(), StreamError> {
        let streams: Vec<String> = rows
            .iter()
            .map(|r| {
                let partition = u32::try_from(r.partition).unwrap_or_default();
                self.routing.stream(&r.module, partition)
            })
            .collect();
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
        publisher::publish(conn, &entries).await?;
        let now = time::OffsetDateTime::now_utc();
        for r in rows {
            metrics::counter!(m::EVENTS_PUBLISHED_TOTAL, "event_type" => r.event_type.clone())
                .increment(1);
            metrics::histogram!(m::PUBLISH_LAG_SECONDS)
                .record((now - r.created_at).as_seconds_f64().max(0.0));
        }
        Ok(())
    }

    /// Publishes `partitions` until none gives a full batch: one round over all of them (at
    /// a low rate, the only one), then every partition that came back full is drained on its
    /// own, all of them at once, so that a backlog keeps PostgreSQL and Redis busy side by
    /// side (one partition's XADDs while another's rows are read) as separate workers would.
    ///
    /// # Errors
    /// As [`Relay::publish_round`]: the first failure, once every partition in flight has
    /// stopped (their rows stay queued).
    pub async fn drain(&self, partitions: &[u32]) -> Result<Drained, RelayError> {
        let round = self.publish_round(partitions).await?;
        let mut drained = Drained {
            published: round.published,
            not_held: to_u32(&round.not_held),
        };
        let backlog = to_u32(&round.full).into_iter().map(|p| self.drain_one(p));
        for result in futures::future::join_all(backlog).await {
            let one = result?;
            drained.published += one.published;
            drained.not_held.extend(one.not_held);
        }
        Ok(drained)
    }

    /// Publishes `partition` until a batch comes back short.
    async fn drain_one(&self, partition: u32) -> Result<Drained, RelayError> {
        let mut drained = Drained::default();
        loop {
            let round = self.publish_round(&[partition]).await?;
            drained.published += round.published;
            drained.not_held.extend(to_u32(&round.not_held));
            if round.full.is_empty() {
                return Ok(drained);
            }
        }
    }

    /// Trims the streams of `partition` below what every group acknowledged; records stream
    /// lengths. Returns the entries removed.
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn trim_partition(&self, partition: u32) -> Result<u64, StreamError> {
        let mut conn = self.redis.commands.get().await?;
        let mut removed = 0;
        for module in modules() {
            let stream = self.routing.stream(module, partition);
            let t = streams::retention::trim_acknowledged(&mut conn, &stream).await?;
            removed += t.removed;
            metrics::counter!(m::STREAM_TRIMMED_TOTAL, "module" => module).increment(t.removed);
            let len = streams::retention::length(&mut conn, &stream).await?;
            metrics::gauge!(m::STREAM_LENGTH, "module" => module, "partition" => partition.to_string()).set(len as f64);
        }
        Ok(removed)
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

    /// Runs until `shutdown`. A lease manager ticks every third of the lease time; one
    /// publisher drains every partition held, in one transaction per round (at a low rate a
    /// round carries the few rows of all of them; under load each partition's batch fills).
    /// It wakes on a wake-up from Redis (`wake`: what command-api sends, [`streams::wake`]), on
    /// a NOTIFY (a dedicated connection from `pg`, for writers that notify there), at every
    /// lease tick, or every poll interval. On shutdown, the publisher finishes its round in
    /// hand, then the leases are released so peers take over at once.
    pub async fn run(
        &self,
        pg: PgSettings,
        wake: Option<streams::redis::Client>,
        shutdown: CancellationToken,
    ) {
        // Sent at every tick, changed or not: a partition a round found not held is retried
        // once the manager has renewed (or really lost) it.
        let (held_tx, held_rx) = watch::channel(Vec::<u32>::new());
        let wakeup = Arc::new(Wake {
            held: held_rx.clone(),
            notify: Notify::new(),
        });
        let rebalance = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(
            pg,
            wakeup.clone(),
            rebalance.clone(),
            self.progress.clone(),
            shutdown.clone(),
        ));
        let follower = wake.map(|client| {
            let (wakeup, keys, progress) = (
                wakeup.clone(),
                self.redis.keys.clone(),
                self.progress.clone(),
            );
            tokio::spawn(async move {
                streams::wake::follow(
                    client,
                    &keys,
                    |up| {
                        progress
                            .send_if_modified(|p| std::mem::replace(&mut p.following, up) != up);
                        // Subscribed: look once for work committed before the subscription.
                        if up {
                            wakeup.all();
                        }
                    },
                    |payload| wakeup.partitions(payload),
                )
                .await;
            })
        });
        let stop_publisher = CancellationToken::new();
        let mut publisher: Option<JoinHandle<()>> = None;
        let mut held: Vec<u32> = vec![];
        let mut trim_due = Instant::now();
        let mut gauges_due = Instant::now();
        let mut vacuum_due = Instant::now();
        let mut tick = tokio::time::interval(self.settings.lease_ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(holder = %self.settings.holder, partitions = self.routing.partitions(), "relay started");
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                // A peer released its leases: take our share now, not at the next tick.
                () = rebalance.notified() => {}
                () = shutdown.cancelled() => break,
            }
            match self.leases.tick().await {
                Ok(state) => {
                    self.outages.postgres_succeeded();
                    let now_held: Vec<u32> = state
                        .held
                        .iter()
                        .filter_map(|p| u32::try_from(*p).ok())
                        .collect();
                    if now_held != held {
                        tracing::info!(held = ?now_held, live_replicas = state.live_replicas, "partition leases changed");
                        held = now_held;
                    }
                    metrics::gauge!(m::PARTITIONS_HELD).set(held.len() as f64);
                }
                // The publisher keeps going: every round re-checks its leases in PostgreSQL.
                Err(e) => self.outages.failed(&RelayError::Outbox(e)),
            }
            held_tx.send_replace(held.clone());
            if publisher.as_ref().is_none_or(JoinHandle::is_finished) {
                let relay = self.clone();
                let (held_rx, wakeup, stop) =
                    (held_rx.clone(), wakeup.clone(), stop_publisher.clone());
                publisher = Some(tokio::spawn(async move {
                    relay.publisher(held_rx, wakeup, stop).await;
                }));
            }
            if Instant::now() >= trim_due {
                trim_due = Instant::now() + self.settings.trim_interval;
                for p in &held {
                    if let Err(e) = self.trim_partition(*p).await {
                        tracing::debug!(partition = p, error = %resilience::error_chain(&e), "trim failed; will retry");
                    }
                }
            }
            // One replica cleans the shared table: whoever holds partition 0.
            if held.first() == Some(&0) && Instant::now() >= vacuum_due {
                vacuum_due = Instant::now() + self.settings.vacuum_interval;
                match self.store.vacuum_if_needed(VACUUM_THRESHOLD).await {
                    Ok(dead) => metrics::gauge!(m::OUTBOX_DEAD_TUPLES).set(dead as f64),
                    Err(e) => {
                        tracing::debug!(error = %resilience::error_chain(&e), "outbox vacuum failed; will retry")
                    }
                }
            }
            if Instant::now() >= gauges_due {
                gauges_due = Instant::now() + Duration::from_secs(5);
                let _ = self.observe_pending().await;
            }
        }
        stop_publisher.cancel();
        if let Some(publisher) = publisher {
            let _ = publisher.await;
        }
        listener.abort();
        if let Some(follower) = follower {
            follower.abort();
        }
        match self.leases.release_all().await {
            Ok(()) => tracing::info!(released = ?held, "partition leases released"),
            Err(e) => {
                tracing::warn!(error = %resilience::error_chain(&e), "cannot release leases; they expire by themselves")
            }
        }
        metrics::gauge!(m::PARTITIONS_HELD).set(0.0);
        tracing::info!("relay stopped");
    }

    /// Drains the partitions `held` names, then waits for a wake-up, the next lease tick or
    /// the poll, until `stop`.
    async fn publisher(
        &self,
        mut held: watch::Receiver<Vec<u32>>,
        wakeup: Arc<Wake>,
        stop: CancellationToken,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        // Partitions a round found not held are left alone until the manager's next tick:
        // taking their fence round after round could keep a peer from winning it.
        let mut not_held: Vec<u32> = vec![];
        // When the last round started (see `RelaySettings::linger`).
        let mut started: Option<tokio::time::Instant> = None;
        while !stop.is_cancelled() {
            if held.has_changed().unwrap_or(false) {
                not_held.clear();
            }
            let partitions: Vec<u32> = held
                .borrow_and_update()
                .iter()
                .copied()
                .filter(|p| !not_held.contains(p))
                .collect();
            let outcome = if partitions.is_empty() {
                Ok(Drained::default())
            } else {
                started = Some(tokio::time::Instant::now());
                self.drain(&partitions).await
            };
            match outcome {
                // An empty round touched PostgreSQL only: it says nothing about Redis
                // (counting it as Redis's recovery logged an outage as many short ones).
                Ok(drained) => {
                    if partitions.is_empty() {
                        // Nothing held: nothing was asked of anyone.
                    } else if drained.published == 0 {
                        self.outages.postgres_succeeded();
                    } else {
                        self.outages.succeeded();
                    }
                    not_held.extend(drained.not_held);
                    backoff.reset();
                    self.progress.send_modify(|p| p.drains += 1);
                    let woken = tokio::select! {
                        () = wakeup.notify.notified() => true,
                        changed = held.changed() => if changed.is_err() { return } else { false },
                        () = tokio::time::sleep(self.settings.poll_interval) => false,
                        () = stop.cancelled() => false,
                    };
                    if woken && let Some(started) = started {
                        tokio::select! {
                            () = tokio::time::sleep_until(started + self.settings.linger) => {}
                            () = stop.cancelled() => {}
                        }
                    }
                }
                Err(e) => {
                    self.outages.failed(&e);
                    self.progress.send_modify(|p| p.failed_batches += 1);
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_delay_jittered()) => {}
                        () = stop.cancelled() => {}
                    }
                }
            }
        }
    }
}

fn to_u32(partitions: &[i32]) -> Vec<u32> {
    partitions
        .iter()
        .filter_map(|p| u32::try_from(*p).ok())
        .collect()
}

/// Keeps a LISTEN session open, reconnecting with backoff. A notification's payload lists the
/// partitions its transaction wrote; each is woken. Failures here are logged at debug: the
/// workers report PostgreSQL outages.
async fn listen(
    pg: PgSettings,
    wakeup: Arc<Wake>,
    rebalance: Arc<Notify>,
    progress: Arc<watch::Sender<Progress>>,
    shutdown: CancellationToken,
) {
    let listening =
        |up: bool| progress.send_if_modified(|p| std::mem::replace(&mut p.listening, up) != up);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    while !shutdown.is_cancelled() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        match Listener::start(&pg, &outbox::notify_channel(&pg.schema), tx).await {
            Ok(mut l) => {
                backoff.reset();
                listening(true);
                // Subscribed: look once for work committed before the subscription existed.
                wakeup.all();
                loop {
                    tokio::select! {
                        payload = rx.recv() => match payload {
                            Some(payload) if payload == outbox::lease::REBALANCE => rebalance.notify_one(),
                            Some(payload) => wakeup.partitions(&payload),
                            None => break,
                        },
                        () = l.closed() => {
                            tracing::debug!("LISTEN connection lost; reconnecting");
                            break;
                        }
                        () = shutdown.cancelled() => return,
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %resilience::error_chain(&e), "cannot LISTEN; retrying")
            }
        }
        listening(false);
        // Rows committed while disconnected are found by the poll fallback; wake everyone
        // once anyway so a recovery is not delayed by a full poll interval.
        wakeup.all();
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay_jittered()) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Wake;

    /// Whether a look was asked for (a stored permit completes `notified` at its first poll).
    async fn woken(wake: &Wake) -> bool {
        tokio::time::timeout(Duration::ZERO, wake.notify.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_wake_up_for_partitions_held_elsewhere_is_ignored() {
        let (_held, rx) = tokio::sync::watch::channel(vec![1, 3]);
        let wake = Wake {
            held: rx,
            notify: tokio::sync::Notify::new(),
        };
        wake.partitions("0,2");
        assert!(!woken(&wake).await, "nothing of ours was written");
        wake.partitions("2,3");
        assert!(woken(&wake).await, "partition 3 is ours");
        wake.partitions("rebalanced?");
        assert!(
            woken(&wake).await,
            "an unreadable payload wakes rather than risk a miss"
        );
        wake.all();
        assert!(woken(&wake).await);
    }
}
