//! The projector runtime: one [`Projector`] per projection per replica.
//!
//! - **Ordered parallelism.** Replicas split the projection's partitions with leases
//!   ([`streams::lease`]); only the lease holder reads a partition's stream, and the apply
//!   script re-checks the lease atomically with each write. A replica taking a partition over
//!   first claims the previous owner's pending entries (`XAUTOCLAIM`).
//! - **Exactly-once effect.** Each event's change commits with the aggregate's applied
//!   version; duplicates change nothing ([`streams::apply`]).
//! - **Retries without head-of-line blocking.** A failing event stays pending and is claimed
//!   again after `retry_base × 2ⁿ` (capped), `n` being Redis's delivery count, so attempts
//!   survive restarts; other aggregates keep flowing. Later events of the same aggregate wait
//!   behind it without using up their own attempts.
//! - **Dead letters, nothing lost.** After the last attempt the event moves to the dead-letter
//!   stream and is acknowledged in the same atomic step ([`streams::dlq`]); its aggregate is
//!   parked and its later events follow it there, in order.
//! - **Control and self-heal.** Operators' desired state is obeyed within a poll interval;
//!   a lost read model (no marker) is rebuilt from `event_store` by one replica while the
//!   others wait.
//!
//! Memory is bounded: the only per-aggregate state kept is for aggregates with an event
//! currently failing, which the pending list bounds.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use events::{EventEnvelope, StreamRouting};
use outbox::control::{ControlStore, DesiredState, Heartbeat};
use resilience::{Backoff, Outage};
use streams::consumer::{self, Delivery};
use streams::dlq::{self, DeadLetterKeys, Mode, Moved, NewDeadLetter};
use streams::lease::PartitionLeases;
use streams::{ApplyItem, ApplyOutcome, ReadModelKeys, RedisPools, StreamError, redis};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics as m;
use crate::plan::{PlanOutcome, Projection, ProjectionError, ViewState, plan};

/// How a projector runs.
#[derive(Debug, Clone)]
pub struct ProjectorSettings {
    /// This replica's name: its consumer name in the groups and its lease owner id. Keep it
    /// stable across restarts (the pod name) and unique among live replicas.
    pub replica: String,
    /// Partitions per module stream.
    pub partitions: u32,
    /// Entries per read, per stream.
    pub batch_size: usize,
    /// How long a read waits for new entries (also bounds how fast control changes are seen).
    pub block: Duration,
    /// Partition lease lifetime; renewed every third of it.
    pub lease_ttl: Duration,
    /// Deliveries before an event is dead-lettered.
    pub max_attempts: u64,
    /// First retry delay; doubles per attempt.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_cap: Duration,
    /// The read-model generation written.
    pub generation: i64,
}

impl ProjectorSettings {
    /// Defaults for `replica`.
    #[must_use]
    pub fn new(replica: impl Into<String>) -> Self {
        Self {
            replica: replica.into(),
            partitions: 1,
            batch_size: 256,
            block: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(5),
            max_attempts: 5,
            retry_base: Duration::from_millis(100),
            retry_cap: Duration::from_secs(10),
            generation: streams::keys::INITIAL_GENERATION,
        }
    }

    fn backoff(&self, deliveries: u64) -> Duration {
        let exp = u32::try_from(deliveries.saturating_sub(1).min(20)).unwrap_or(20);
        self.retry_base
            .saturating_mul(2u32.saturating_pow(exp))
            .min(self.retry_cap)
    }
}

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Entries handled.
    pub delivered: usize,
    /// Events applied.
    pub applied: usize,
    /// Duplicates acknowledged without change.
    pub duplicates: usize,
    /// Events waiting behind a failing predecessor (not counted as attempts).
    pub waiting: usize,
    /// Events that failed and will be retried.
    pub retrying: usize,
    /// Entries moved to the dead letters.
    pub dead_lettered: usize,
    /// Entries left alone because this replica lost the partition's lease.
    pub fenced: usize,
    /// Entries left pending because the read model is missing (Redis lost it): they wait for
    /// the rebuild instead of using up attempts against an empty model.
    pub not_ready: usize,
}

impl BatchReport {
    fn add(&mut self, o: &Self) {
        self.delivered += o.delivered;
        self.applied += o.applied;
        self.duplicates += o.duplicates;
        self.waiting += o.waiting;
        self.retrying += o.retrying;
        self.dead_lettered += o.dead_lettered;
        self.fenced += o.fenced;
        self.not_ready += o.not_ready;
    }
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Events read from `event_store`.
    pub events: u64,
    /// Their fate.
    pub batch: BatchReport,
    /// The last `event_store` position replayed.
    pub position: i64,
}

/// The status a replica reports in its heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Consuming.
    Running,
    /// Obeying a pause.
    Paused,
    /// Rebuilding the read model (or waiting for a peer to finish doing so).
    Rebuilding,
    /// A dependency is failing.
    Error,
    /// Stopped.
    Stopped,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Rebuilding => "rebuilding",
            Self::Error => "error",
            Self::Stopped => "stopped",
        }
    }
}

#[derive(Default)]
struct State {
    held: Vec<u32>,
    /// Aggregate → lowest version currently failing (retrying) here.
    blocked: HashMap<Uuid, i64>,
    /// Pending entries waiting behind a blocked aggregate: `stream|entry` → aggregate.
    waiting: HashMap<String, Uuid>,
    applied_total: i64,
    /// Set when a batch found the read model missing: the run loop heals at once.
    heal_due: bool,
    /// New entries read ahead in the last apply's round trip, processed next.
    prefetched: Vec<Delivery>,
    last_event: Option<(Uuid, OffsetDateTime)>,
    last_error: Option<String>,
}

impl State {
    /// `e` is applied (or found applied already): if it was its aggregate's failing head, the
    /// aggregate is no longer blocked and its followers are free to go.
    fn settled(&mut self, e: &EventEnvelope) {
        if self
            .blocked
            .get(&e.aggregate_id)
            .is_some_and(|v| *v <= e.aggregate_version)
        {
            self.blocked.remove(&e.aggregate_id);
        }
    }
}

/// How long an entry may sit with another consumer of a held partition before this replica
/// claims it (an old owner's in-flight batch is fenced, so this only needs to outlast it).
const STRANDED_AFTER: Duration = Duration::from_secs(1);

/// A stream entry id as `(milliseconds, sequence)`, for ordering ids numerically.
fn entry_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// Bound on the in-memory bookkeeping of failing aggregates: if ever exceeded (a storm of
/// distinct failures), it is cleared; the cost is only that followers may use up attempts.
const MAX_TRACKED: usize = 100_000;

/// How an entry enters the dead letters, and why.
struct Verdict<'a> {
    mode: Mode,
    error_type: &'a str,
    error: &'a str,
}

enum Decoded {
    Event(EventEnvelope),
    Bad(&'static str, String),
}

/// One projection's consumer.
pub struct Projector {
    redis: RedisPools,
    pg: Option<outbox::Pool>,
    projection: Arc<dyn Projection>,
    settings: ProjectorSettings,
    group: String,
    keys: ReadModelKeys,
    dlq: DeadLetterKeys,
    routing: StreamRouting,
    leases: PartitionLeases,
    state: Mutex<State>,
}

impl std::fmt::Debug for Projector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projector")
            .field("projection", &self.projection.module().projection)
            .field("replica", &self.settings.replica)
            .finish_non_exhaustive()
    }
}

fn entry_time(entry_id: &str) -> OffsetDateTime {
    let ms: i128 = entry_id
        .split('-')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Projector {
    /// A projector of `projection` over the streams of its module. `pg` (the event store and
    /// control rows) is needed for heartbeats, replays and self-healing; without it those are
    /// skipped (tests of the stream side).
    #[must_use]
    pub fn new(
        redis: RedisPools,
        pg: Option<outbox::Pool>,
        projection: Arc<dyn Projection>,
        settings: ProjectorSettings,
    ) -> Self {
        let module = projection.module();
        let routing = redis.keys.routing(settings.partitions);
        let keys = redis.keys.read_model(module.name, settings.generation);
        let dlq = DeadLetterKeys::new(&redis.keys, module.projection);
        let leases = PartitionLeases::new(
            &redis.keys,
            module.projection,
            settings.partitions,
            settings.replica.clone(),
            settings.lease_ttl,
        );
        Self {
            group: module.consumer_group.to_owned(),
            redis,
            pg,
            projection,
            settings,
            keys,
            dlq,
            routing,
            leases,
            state: Mutex::new(State::default()),
        }
    }

    /// The projection's name.
    #[must_use]
    pub fn projection_name(&self) -> &'static str {
        self.projection.module().projection
    }

    /// The read-model keys written.
    #[must_use]
    pub fn keys(&self) -> &ReadModelKeys {
        &self.keys
    }

    /// The dead-letter keys.
    #[must_use]
    pub fn dead_letter_keys(&self) -> &DeadLetterKeys {
        &self.dlq
    }

    /// Partitions held after the last lease tick.
    #[must_use]
    pub fn held(&self) -> Vec<u32> {
        self.lock().held.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug in this module; recover the data.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn marker_key(&self) -> String {
        self.keys.key("marker")
    }

    fn rebuild_lock_key(&self) -> String {
        format!(
            "{}cqrs:rebuild:{}",
            self.redis.keys.prefix(),
            self.projection_name()
        )
    }

    /// Creates the consumer group on every partition stream (idempotent).
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn ensure_groups(&self) -> Result<(), StreamError> {
        let mut conn = self.redis.commands.get().await?;
        for stream in self.routing.streams(self.projection.module().name) {
            if consumer::ensure_group(&mut conn, &stream, &self.group).await? {
                tracing::info!(stream = %stream, group = %self.group, "consumer group created");
            }
        }
        Ok(())
    }

    /// Renews and rebalances this replica's leases; takes over the pending entries of any
    /// partition newly acquired, and applies them. Returns the partitions held.
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn tick_leases(&self) -> Result<Vec<u32>, StreamError> {
        let held = {
            let mut conn = self.redis.commands.get().await?;
            self.leases.tick(&mut conn).await?
        };
        let previous = std::mem::replace(&mut self.lock().held, held.partitions.clone());
        if previous != held.partitions {
            tracing::info!(projection = self.projection_name(), held = ?held.partitions, live = held.live, "partition leases changed");
        }
        metrics::gauge!(m::PARTITIONS_HELD, "projection" => self.projection_name())
            .set(held.partitions.len() as f64);
        for p in held.partitions.iter().filter(|p| !previous.contains(p)) {
            let stream = self.routing.stream(self.projection.module().name, *p);
            let claimed = {
                let mut conn = self.redis.commands.get().await?;
                consumer::ensure_group(&mut conn, &stream, &self.group).await?;
                consumer::claim_all(&mut conn, &stream, &self.group, &self.settings.replica).await?
            };
            if !claimed.is_empty() {
                tracing::info!(
                    projection = self.projection_name(),
                    partition = p,
                    entries = claimed.len(),
                    "took over pending entries of the previous owner"
                );
                self.process(claimed).await?;
            }
        }
        Ok(held.partitions)
    }

    /// Processes the entries read ahead by the previous apply, if any; otherwise reads new
    /// entries of the held partitions (waiting up to `block`) and processes them.
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails; nothing unapplied was acknowledged.
    pub async fn consume_once(&self, block: Option<Duration>) -> Result<BatchReport, StreamError> {
        // Entries read ahead in the previous apply's round trip come first (they are already
        // delivered to this consumer: pending here until applied).
        let ahead = std::mem::take(&mut self.lock().prefetched);
        if !ahead.is_empty() {
            return self.process_deliveries(ahead, true).await;
        }
        let held = self.held();
        if held.is_empty() {
            if let Some(b) = block {
                tokio::time::sleep(b).await;
            }
            return Ok(BatchReport::default());
        }
        let streams: Vec<String> = held
            .iter()
            .map(|p| self.routing.stream(self.projection.module().name, *p))
            .collect();
        let deliveries = {
            let pool = if block.is_some() {
                &self.redis.blocking
            } else {
                &self.redis.commands
            };
            let mut conn = pool.get().await?;
            consumer::read_group(
                &mut conn,
                &self.group,
                &self.settings.replica,
                &streams,
                consumer::ReadFrom::New,
                self.settings.batch_size,
                block,
            )
            .await?
        };
        self.process_deliveries(deliveries, true).await
    }

    /// Claims and processes this replica's pending entries whose backoff has elapsed (by their
    /// delivery count), skipping those waiting behind a failing predecessor.
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn retry_due(&self) -> Result<BatchReport, StreamError> {
        let mut report = BatchReport::default();
        for p in self.held() {
            let stream = self.routing.stream(self.projection.module().name, p);
            let due: Vec<consumer::Pending> = {
                let mut conn = self.redis.commands.get().await?;
                let pending = consumer::pending(
                    &mut conn,
                    &stream,
                    &self.group,
                    &self.settings.replica,
                    self.settings.retry_base,
                    self.settings.batch_size,
                )
                .await?;
                let state = self.lock();
                pending
                    .into_iter()
                    // Read ahead and not processed yet: not a retry (consume_once has it).
                    .filter(|e| {
                        !state
                            .prefetched
                            .iter()
                            .any(|d| d.entry_id == e.id && d.stream == stream)
                    })
                    .filter(|e| {
                        Duration::from_millis(e.idle_ms) >= self.settings.backoff(e.deliveries)
                    })
                    .filter(|e| {
                        // Waiting behind a predecessor that still fails: not its turn yet.
                        // Past the backoff cap it is retried regardless, so that bookkeeping
                        // gone stale (a head settled elsewhere) can never strand an entry; a
                        // follower retried too early only goes back to waiting.
                        Duration::from_millis(e.idle_ms) >= self.settings.retry_cap
                            || state
                                .waiting
                                .get(&format!("{stream}|{}", e.id))
                                .is_none_or(|a| !state.blocked.contains_key(a))
                    })
                    .collect()
            };
            if due.is_empty() {
                continue;
            }
            let claimed = {
                let mut conn = self.redis.commands.get().await?;
                consumer::claim(
                    &mut conn,
                    &stream,
                    &self.group,
                    &self.settings.replica,
                    &due,
                    self.settings.retry_base,
                )
                .await?
            };
            let retries = claimed.iter().filter(|d| d.deliveries > 1).count();
            metrics::counter!(m::RETRY_ATTEMPTS_TOTAL, "projection" => self.projection_name())
                .increment(retries as u64);
            report.add(&self.process(claimed).await?);
        }
        Ok(report)
    }

    fn decode(&self, d: &Delivery) -> Decoded {
        let Some(bytes) = &d.envelope else {
            return Decoded::Bad("missing_entry", "entry has no envelope field".into());
        };
        match EventEnvelope::from_json(bytes) {
            Ok(e) if e.module() == self.projection.module().name => Decoded::Event(e),
            Ok(e) => Decoded::Bad(
                "unknown_event_type",
                format!(
                    "{} does not belong to {}",
                    e.event_type,
                    self.projection_name()
                ),
            ),
            Err(e) => Decoded::Bad("malformed_envelope", e.to_string()),
        }
    }

    fn fence(&self, stream: &str) -> Option<(String, String)> {
        let p = (0..self.settings.partitions)
            .find(|p| self.routing.stream(self.projection.module().name, *p) == stream)?;
        Some((self.leases.key(p).to_owned(), self.settings.replica.clone()))
    }

    /// Moves one entry to the dead letters; returns whether it was written.
    async fn dead_letter(
        &self,
        d: Option<&Delivery>,
        event: Option<&EventEnvelope>,
        raw: &str,
        verdict: Verdict<'_>,
        report: &mut BatchReport,
    ) -> Result<Moved, StreamError> {
        let Verdict {
            mode,
            error_type,
            error,
        } = verdict;
        let now = rfc3339(OffsetDateTime::now_utc());
        let first = d.map_or_else(|| now.clone(), |d| rfc3339(entry_time(&d.entry_id)));
        let fence = d.and_then(|d| self.fence(&d.stream));
        let letter = NewDeadLetter {
            source: d.map(|d| (d.stream.as_str(), self.group.as_str(), d.entry_id.as_str())),
            fence: fence.as_ref().map(|(k, o)| (k.as_str(), o.as_str())),
            mode,
            aggregate_id: event.map(|e| e.aggregate_id),
            event_id: event.map(|e| e.event_id),
            event: raw,
            error,
            error_type,
            attempts: d.map_or(1, |d| d.deliveries),
            first_failed_at: &first,
            last_failed_at: &now,
        };
        let moved = {
            let mut conn = self.redis.commands.get().await?;
            dlq::move_to_dead_letters(&mut conn, &self.dlq, &letter).await?
        };
        match &moved {
            Moved::Written { parked_behind, .. } => {
                report.dead_lettered += 1;
                metrics::counter!(m::DLQ_MESSAGES_TOTAL, "projection" => self.projection_name(), "error_type" => error_type.to_owned())
                    .increment(1);
                if let Some(e) = event {
                    let mut state = self.lock();
                    state.blocked.remove(&e.aggregate_id);
                    if parked_behind.is_none() {
                        tracing::warn!(projection = self.projection_name(), event_id = %e.event_id, aggregate_id = %e.aggregate_id,
                            error_type, error, correlation_id = e.metadata.correlation_id.as_deref().unwrap_or(""),
                            "event dead-lettered; its aggregate is parked until an operator re-drives or discards it");
                    }
                } else {
                    tracing::warn!(
                        projection = self.projection_name(),
                        error_type,
                        error,
                        "unreadable entry dead-lettered"
                    );
                }
            }
            Moved::Fenced => report.fenced += 1,
            Moved::NotParked => {}
        }
        Ok(moved)
    }

    /// Plans and applies `deliveries` (from streams; `deliveries` counts included).
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails; the version guard makes a redelivery safe.
    pub async fn process(&self, deliveries: Vec<Delivery>) -> Result<BatchReport, StreamError> {
        self.process_deliveries(deliveries, false).await
    }

    /// [`Projector::process`]; with `prefetch`, the apply's round trip also reads the next
    /// batch of new entries (kept for the next [`Projector::consume_once`]).
    async fn process_deliveries(
        &self,
        deliveries: Vec<Delivery>,
        prefetch: bool,
    ) -> Result<BatchReport, StreamError> {
        let inputs: Vec<(Option<Delivery>, Decoded)> = deliveries
            .into_iter()
            .map(|d| {
                let decoded = self.decode(&d);
                (Some(d), decoded)
            })
            .collect();
        self.process_inputs(inputs, prefetch).await
    }

    /// The read of new entries of the held partitions, without blocking.
    fn next_read(&self) -> Option<redis::Cmd> {
        let streams: Vec<String> = self
            .held()
            .iter()
            .map(|p| self.routing.stream(self.projection.module().name, *p))
            .collect();
        (!streams.is_empty()).then(|| {
            consumer::read_group_cmd(
                &self.group,
                &self.settings.replica,
                &streams,
                consumer::ReadFrom::New,
                self.settings.batch_size,
                None,
            )
        })
    }

    async fn process_inputs(
        &self,
        inputs: Vec<(Option<Delivery>, Decoded)>,
        prefetch: bool,
    ) -> Result<BatchReport, StreamError> {
        let started = Instant::now();
        let name = self.projection_name();
        let mut report = BatchReport {
            delivered: inputs.len(),
            ..BatchReport::default()
        };
        if inputs.is_empty() {
            return Ok(report);
        }
        // 1. Unreadable entries go straight to the dead letters, alone.
        let mut events: Vec<(Option<&Delivery>, &EventEnvelope)> = Vec::new();
        for (d, decoded) in &inputs {
            match decoded {
                Decoded::Event(e) => events.push((d.as_ref(), e)),
                Decoded::Bad(error_type, reason) => {
                    let raw = d
                        .as_ref()
                        .and_then(|d| d.envelope.as_deref())
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default();
                    self.dead_letter(
                        d.as_ref(),
                        None,
                        &raw,
                        Verdict {
                            mode: Mode::Alone,
                            error_type,
                            error: reason,
                        },
                        &mut report,
                    )
                    .await?;
                }
            }
        }
        // 2. One round trip reads all that planning needs: applied versions, the views the
        //    projection reads, which aggregates are parked, and (for stream entries) whether
        //    the read model exists at all. A replay is what builds it, so it skips that check.
        let all: Vec<&EventEnvelope> = events.iter().map(|(_, e)| *e).collect();
        let from_stream = self.pg.is_some() && events.iter().any(|(d, _)| d.is_some());
        let marker = self.marker_key();
        let Some(Loaded {
            versions,
            mut view,
            parked,
        }) = load(
            &self.redis,
            self.projection.as_ref(),
            &self.keys,
            &all,
            from_stream.then_some(marker.as_str()),
            Some(&self.dlq.parked),
        )
        .await?
        else {
            report.not_ready += events.len();
            self.lock().heal_due = true;
            return Ok(report);
        };
        // 3. Events of parked aggregates follow their head into the dead letters.
        let mut live = Vec::with_capacity(events.len());
        for (d, e) in events {
            if parked.contains(&e.aggregate_id) {
                let moved = self
                    .dead_letter(
                        d,
                        Some(e),
                        &e.to_json(),
                        Verdict {
                            mode: Mode::Follow,
                            error_type: "parked",
                            error: "parked behind an earlier event of the aggregate",
                        },
                        &mut report,
                    )
                    .await?;
                if moved != Moved::NotParked {
                    continue;
                }
            }
            live.push((d, e));
        }
        // 4. Plan against state and versions read together, then apply in one round trip.
        let refs: Vec<&EventEnvelope> = live.iter().map(|(_, e)| *e).collect();
        let plans = plan(
            self.projection.as_ref(),
            &self.keys,
            &refs,
            &versions,
            &mut view,
        );
        let mut items = Vec::new();
        let mut item_of: Vec<Option<usize>> = Vec::with_capacity(plans.len());
        for ((d, e), outcome) in live.iter().zip(&plans) {
            let ops = match outcome {
                PlanOutcome::Apply(ops) => ops.clone(),
                PlanOutcome::Duplicate => vec![],
                PlanOutcome::Gap { .. } | PlanOutcome::Failed(_) => {
                    item_of.push(None);
                    continue;
                }
            };
            item_of.push(Some(items.len()));
            items.push(ApplyItem {
                versions_key: self.keys.versions(),
                aggregate_id: e.aggregate_id,
                version: e.aggregate_version,
                ops,
                ack: d.map(|d| (d.stream.clone(), self.group.clone(), d.entry_id.clone())),
                fence: d.and_then(|d| self.fence(&d.stream)),
            });
        }
        let outcomes = if items.is_empty() {
            vec![]
        } else {
            // The same round trip wakes the readers waiting for these writes and, when
            // consuming, reads the next batch (after the applies, so in order).
            let next = if prefetch { self.next_read() } else { None };
            let mut conn = self.redis.commands.get().await?;
            let (outcomes, after) = streams::apply::apply_batch_then(
                &mut conn,
                &items,
                Some(&self.redis.keys),
                next.into_iter().collect(),
            )
            .await?;
            if let Some(reply) = after.into_iter().next() {
                match consumer::parse_read_reply(reply) {
                    Ok(next) => self.lock().prefetched = next,
                    // The next plain read meets the same condition and handles it.
                    Err(e) => {
                        tracing::debug!(error = %e, "read-ahead failed");
                    }
                }
            }
            outcomes
        };
        // 5. Settle each event's fate, in order (a head's failure is known before its followers).
        let now = OffsetDateTime::now_utc();

        for (((d, e), planned), slot) in live.iter().zip(plans).zip(item_of) {
            let failure: Option<(&'static str, String)> = match (
                slot.map(|i| &outcomes[i]),
                planned,
            ) {
                (Some(ApplyOutcome::Applied), _) => {
                    report.applied += 1;
                    metrics::counter!(m::EVENTS_PROCESSED_TOTAL, "event_type" => e.event_type.clone(), "projection" => name).increment(1);
                    metrics::histogram!(m::PROJECTION_LAG_SECONDS, "projection" => name)
                        .record((now - e.occurred_at).as_seconds_f64().max(0.0));
                    let mut state = self.lock();
                    state.applied_total += 1;
                    state.last_event = Some((e.event_id, now));
                    state.settled(e);
                    None
                }
                (Some(ApplyOutcome::Duplicate { .. }), _) => {
                    report.duplicates += 1;
                    metrics::counter!(m::DUPLICATE_EVENTS_TOTAL, "projection" => name).increment(1);
                    // A failing head can become a duplicate (a rebuild applied it meanwhile):
                    // it is settled, so its followers are free to go.
                    let mut state = self.lock();
                    state.settled(e);
                    None
                }
                (Some(ApplyOutcome::Fenced), _) => {
                    report.fenced += 1;
                    None
                }
                (Some(ApplyOutcome::Gap { .. }), _) | (None, PlanOutcome::Gap { .. }) => {
                    Some(("version_gap", String::new()))
                }
                (Some(ApplyOutcome::Rejected(reason)), _) => {
                    Some(("rejected_by_redis", reason.clone()))
                }
                (None, PlanOutcome::Failed(err)) => Some((err.error_type(), err.to_string())),
                (None, _) => None,
            };
            let Some((error_type, reason)) = failure else {
                continue;
            };
            let attempts = d.map_or(u64::MAX, |d| d.deliveries);
            let behind = {
                let state = self.lock();
                state
                    .blocked
                    .get(&e.aggregate_id)
                    .is_some_and(|v| *v < e.aggregate_version)
            };
            if error_type == "version_gap" && behind {
                // Waiting behind a failing predecessor: not an attempt of its own.
                report.waiting += 1;
                if let Some(d) = d {
                    let mut state = self.lock();
                    if state.waiting.len() > MAX_TRACKED {
                        state.waiting.clear();
                    }
                    state
                        .waiting
                        .insert(format!("{}|{}", d.stream, d.entry_id), e.aggregate_id);
                }
                continue;
            }
            let reason = if error_type == "version_gap" {
                let expected = versions.get(&e.aggregate_id).copied().unwrap_or(0) + 1;
                format!(
                    "version {} arrived but {expected} was expected",
                    e.aggregate_version
                )
            } else {
                reason
            };
            metrics::counter!(m::WORKER_ERRORS_TOTAL, "projection" => name, "error_type" => error_type).increment(1);
            let permanent =
                error_type == ProjectionError::UnknownEventType(String::new()).error_type();
            if permanent || attempts >= self.settings.max_attempts {
                self.dead_letter(
                    *d,
                    Some(e),
                    &e.to_json(),
                    Verdict {
                        mode: Mode::Park,
                        error_type,
                        error: &reason,
                    },
                    &mut report,
                )
                .await?;
            } else {
                report.retrying += 1;
                let mut state = self.lock();
                if state.blocked.len() > MAX_TRACKED {
                    state.blocked.clear();
                }
                let v = state
                    .blocked
                    .entry(e.aggregate_id)
                    .or_insert(e.aggregate_version);
                *v = (*v).min(e.aggregate_version);
                state.last_error = Some(format!("{error_type}: {reason}"));
                tracing::debug!(projection = name, event_id = %e.event_id, attempts, error_type, reason = %reason, "event failed; will retry");
            }
        }

        let per_event = started.elapsed().as_secs_f64() / report.delivered.max(1) as f64;
        let histogram =
            metrics::histogram!(m::EVENT_PROCESSING_DURATION_SECONDS, "projection" => name);
        for _ in 0..report.delivered {
            histogram.record(per_event);
        }
        Ok(report)
    }

    /// Applies `event_store` (from `after`, exclusive) into the read model: the primitive that
    /// self-healing, reset and rebuild stand on. No stream is touched; an event that fails is
    /// dead-lettered at once (its aggregate parked). `progress` is called after every page.
    ///
    /// # Errors
    /// [`ReplayError`] when PostgreSQL or Redis fails.
    pub async fn replay(
        &self,
        after: i64,
        mut progress: impl FnMut(&ReplayReport),
    ) -> Result<ReplayReport, ReplayError> {
        let pool = self.pg.as_ref().ok_or(ReplayError::NoDatabase)?;
        let mut report = ReplayReport {
            position: after,
            ..ReplayReport::default()
        };
        let types: Vec<String> = self
            .projection
            .module()
            .aggregate_types
            .iter()
            .map(|t| (*t).to_owned())
            .collect();
        // One snapshot for every page: see `outbox::history` for the gap it prevents.
        let mut client = pool.get().await.map_err(outbox::OutboxError::from)?;
        let snapshot = outbox::history::snapshot(&mut client).await?;
        loop {
            let page = outbox::history::page(&snapshot, &types, report.position, 1000).await?;
            let Some(last) = page.last().map(|(p, _)| *p) else {
                break;
            };
            report.events += page.len() as u64;
            let inputs: Vec<(Option<Delivery>, Decoded)> = page
                .into_iter()
                .map(|(_, e)| (None, Decoded::Event(e)))
                .collect();
            report.batch.add(&self.process_inputs(inputs, false).await?);
            report.position = last;
            progress(&report);
        }
        Ok(report)
    }

    /// If the read model is missing (no marker: Redis lost its data, or this is a first
    /// start), rebuilds it from `event_store`, one replica at a time; the others wait.
    /// Returns `true` while the read model is not ready (the caller must not consume).
    ///
    /// # Errors
    /// [`ReplayError`] when PostgreSQL or Redis fails.
    pub async fn heal_if_needed(&self) -> Result<bool, ReplayError> {
        if self.pg.is_none() {
            return Ok(false);
        }
        let marker = self.marker_key();
        let lock = self.rebuild_lock_key();
        {
            let mut conn = self.redis.commands.get().await.map_err(StreamError::from)?;
            let exists: bool = redis::cmd("EXISTS")
                .arg(&marker)
                .query_async(&mut conn)
                .await
                .map_err(StreamError::from)?;
            if exists {
                return Ok(false);
            }
            let won: Option<String> = redis::cmd("SET")
                .arg(&lock)
                .arg(&self.settings.replica)
                .arg("NX")
                .arg("PX")
                .arg(30_000)
                .query_async(&mut conn)
                .await
                .map_err(StreamError::from)?;
            if won.is_none() {
                return Ok(true);
            }
        }
        tracing::warn!(
            projection = self.projection_name(),
            "read model missing (first start, or Redis lost its data); rebuilding from event_store"
        );
        self.heartbeat(Status::Rebuilding).await;
        self.ensure_groups().await?;
        let started = Instant::now();
        let lock_key = lock.clone();
        let pools = self.redis.clone();
        let replayed = self
            .replay(0, |r| {
                // Keep the rebuild lock while working; best effort, the next page renews again.
                let (pools, key) = (pools.clone(), lock_key.clone());
                let _ = r;
                tokio::spawn(async move {
                    if let Ok(mut c) = pools.commands.get().await {
                        let _: Result<i64, _> = redis::cmd("PEXPIRE")
                            .arg(&key)
                            .arg(30_000)
                            .query_async(&mut c)
                            .await;
                    }
                });
            })
            .await?;
        {
            // Versions were rebuilt: whatever was failing here is settled or will be
            // re-judged against the new read model.
            let mut state = self.lock();
            state.blocked.clear();
            state.waiting.clear();
        }
        let mut conn = self.redis.commands.get().await.map_err(StreamError::from)?;
        let info = serde_json::json!({"generation": self.settings.generation, "built_at": rfc3339(OffsetDateTime::now_utc()),
            "events": replayed.events}).to_string();
        let _: () = redis::cmd("SET")
            .arg(&marker)
            .arg(info)
            .query_async(&mut conn)
            .await
            .map_err(StreamError::from)?;
        let _: i64 = redis::cmd("DEL")
            .arg(&lock)
            .query_async(&mut conn)
            .await
            .map_err(StreamError::from)?;
        // A long rebuild may have outlived this replica's leases: renew (or learn what moved)
        // before touching any stream again.
        self.tick_leases().await?;
        tracing::info!(
            projection = self.projection_name(),
            events = replayed.events,
            applied = replayed.batch.applied,
            dead_lettered = replayed.batch.dead_lettered,
            took_ms = started.elapsed().as_millis() as u64,
            "read model rebuilt"
        );
        Ok(false)
    }

    /// Claims and processes entries of held partitions left pending with *other* consumers
    /// for over a second. The takeover claim covers what the previous owner had when the lease
    /// moved; this covers the rest: an entry an old owner read just after that claim (its
    /// apply was fenced, so it never acknowledged it), or one pending with a consumer whose
    /// partition came back to us. Returns how many entries were claimed.
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn claim_stranded(&self) -> Result<usize, StreamError> {
        let mut claimed_total = 0;
        for p in self.held() {
            let stream = self.routing.stream(self.projection.module().name, p);
            let claimed = {
                let mut conn = self.redis.commands.get().await?;
                let mut stranded = Vec::new();
                for c in consumer::consumers(&mut conn, &stream, &self.group).await? {
                    if c.pending > 0 && c.name != self.settings.replica {
                        stranded.extend(
                            consumer::pending(
                                &mut conn,
                                &stream,
                                &self.group,
                                &c.name,
                                STRANDED_AFTER,
                                self.settings.batch_size,
                            )
                            .await?,
                        );
                    }
                }
                consumer::claim(
                    &mut conn,
                    &stream,
                    &self.group,
                    &self.settings.replica,
                    &stranded,
                    STRANDED_AFTER,
                )
                .await?
            };
            if !claimed.is_empty() {
                tracing::info!(
                    projection = self.projection_name(),
                    partition = p,
                    entries = claimed.len(),
                    "claimed entries stranded with another consumer"
                );
                claimed_total += claimed.len();
                // Gathered consumer by consumer: back into stream order, so one aggregate's
                // versions are planned oldest first.
                let mut claimed = claimed;
                claimed.sort_by_key(|d| entry_order(&d.entry_id));
                self.process(claimed).await?;
            }
        }
        Ok(claimed_total)
    }

    /// Removes consumers of held streams that are no longer live replicas and have nothing
    /// pending (their work was claimed by the new owners).
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn remove_dead_consumers(&self) -> Result<usize, StreamError> {
        let mut conn = self.redis.commands.get().await?;
        let live =
            streams::lease::live_members(&mut conn, &self.redis.keys, self.projection_name())
                .await?;
        let mut removed = 0;
        for p in self.held() {
            let stream = self.routing.stream(self.projection.module().name, p);
            for c in consumer::consumers(&mut conn, &stream, &self.group).await? {
                if c.pending == 0 && c.name != self.settings.replica && !live.contains(&c.name) {
                    consumer::delete_consumer(&mut conn, &stream, &self.group, &c.name).await?;
                    tracing::info!(projection = self.projection_name(), consumer = %c.name, stream = %stream, "removed a dead consumer");
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Records `cqrs_consumer_lag_messages` per stream and returns the total lag and pending
    /// count of the group over all partitions (both 0 when the projection is idle).
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn observe_lag(&self) -> Result<(usize, usize), StreamError> {
        let mut conn = self.redis.commands.get().await?;
        let (mut lag, mut pending) = (0, 0);
        for stream in self.routing.streams(self.projection.module().name) {
            let groups = consumer::groups(&mut conn, &stream).await?;
            let g = groups
                .iter()
                .find(|g| g.name == self.group)
                .ok_or(StreamError::NoGroup)?;
            let l = g.lag.unwrap_or(0);
            metrics::gauge!(m::CONSUMER_LAG_MESSAGES, "projection" => self.projection_name(), "stream" => stream.clone())
                .set(l as f64);
            lag += l;
            pending += g.pending;
        }
        Ok((lag, pending))
    }

    /// Writes this replica's heartbeat (best effort: a failure is logged at debug).
    pub async fn heartbeat(&self, status: Status) {
        let Some(pool) = &self.pg else { return };
        let h = {
            let s = self.lock();
            Heartbeat {
                projection: self.projection_name().to_owned(),
                worker: self.settings.replica.clone(),
                status: status.as_str().to_owned(),
                partitions: s
                    .held
                    .iter()
                    .filter_map(|p| i32::try_from(*p).ok())
                    .collect(),
                events_applied: s.applied_total,
                last_event_id: s.last_event.map(|(id, _)| id),
                last_applied_at: s.last_event.map(|(_, t)| t),
                last_error: s.last_error.clone(),
                heartbeat_at: None,
            }
        };
        if let Err(e) = ControlStore::new(pool.clone()).heartbeat(&h).await {
            tracing::debug!(error = %resilience::error_chain(&e), "heartbeat failed");
        }
    }

    /// Consumes until `shutdown`, obeying `desired` (running/paused). Redis outages are
    /// retried with backoff (first failure and recovery logged); a lost group or read model is
    /// recreated. On shutdown the batch being applied is finished, the leases are released so
    /// a peer takes over at once (entries read ahead but not applied stay pending, and the
    /// peer's takeover claims them), and a final heartbeat says `stopped`.
    pub async fn run(
        &self,
        mut desired: watch::Receiver<DesiredState>,
        shutdown: CancellationToken,
    ) {
        let name = self.projection_name();
        let mut outage = Outage::new("redis", "projector");
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let tick_every = self.settings.lease_ttl / 3;
        let mut lease_due = Instant::now();
        let mut retry_due = Instant::now();
        let mut slow_due = Instant::now();
        let mut heartbeat_due = Instant::now();
        let mut groups_ready = false;
        let mut nogroup_logged = false;
        let mut status = Status::Running;
        tracing::info!(projection = name, replica = %self.settings.replica, partitions = self.settings.partitions, "projector started");
        while !shutdown.is_cancelled() {
            let paused = *desired.borrow_and_update() == DesiredState::Paused;
            let step: Result<Status, ReplayError> = async {
                if !groups_ready {
                    self.ensure_groups().await?;
                    groups_ready = true;
                }
                if Instant::now() >= lease_due {
                    lease_due = Instant::now() + tick_every;
                    // Leases are kept while paused: nobody else applies either.
                    if paused {
                        let mut conn =
                            self.redis.commands.get().await.map_err(StreamError::from)?;
                        let held = self.leases.tick(&mut conn).await?;
                        self.lock().held = held.partitions;
                    } else {
                        self.tick_leases().await?;
                    }
                }
                if paused {
                    tokio::select! {
                        _ = desired.changed() => {}
                        () = tokio::time::sleep(self.settings.block) => {}
                        () = shutdown.cancelled() => {}
                    }
                    return Ok(Status::Paused);
                }
                let heal_due = std::mem::take(&mut self.lock().heal_due);
                if heal_due || Instant::now() >= slow_due {
                    slow_due = Instant::now() + Duration::from_secs(2);
                    if self.heal_if_needed().await? {
                        // A peer is rebuilding: check again next round, consume nothing meanwhile.
                        slow_due = Instant::now();
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        return Ok(Status::Rebuilding);
                    }
                    self.observe_lag().await?;
                    self.remove_dead_consumers().await?;
                }
                if Instant::now() >= retry_due {
                    retry_due = Instant::now() + self.settings.retry_base;
                    // Stranded entries first: a follower's retries of a gap must not run out
                    // while its predecessor sits with another consumer.
                    self.claim_stranded().await?;
                    self.retry_due().await?;
                }
                // Reads are never cancelled mid-way (a batch in hand is always finished); the
                // bounded block keeps shutdown and control changes prompt.
                let block = self
                    .settings
                    .block
                    .min(self.settings.retry_base.max(Duration::from_millis(50)) * 5);
                self.consume_once(Some(block)).await?;
                Ok(Status::Running)
            }
            .await;
            match step {
                Ok(s) => {
                    status = s;
                    outage.succeeded();
                    backoff.reset();
                    nogroup_logged = false;
                }
                Err(ReplayError::Streams(StreamError::NoGroup)) => {
                    if !nogroup_logged {
                        tracing::warn!(
                            projection = name,
                            "consumer group missing (Redis lost its data); recreating"
                        );
                        nogroup_logged = true;
                    }
                    groups_ready = false;
                    // Forget the held set so every partition is taken over afresh, and what
                    // was read ahead from the lost group (it is redelivered or replayed).
                    let mut state = self.lock();
                    state.held.clear();
                    state.prefetched.clear();
                }
                Err(e) => {
                    status = Status::Error;
                    outage.failed(&e);
                    groups_ready = false;
                    self.lock().last_error = Some(resilience::error_chain(&e));
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_delay_jittered()) => {}
                        () = shutdown.cancelled() => {}
                    }
                }
            }
            if Instant::now() >= heartbeat_due {
                heartbeat_due = Instant::now() + Duration::from_secs(1);
                self.heartbeat(status).await;
            }
        }
        if let Ok(mut conn) = self.redis.commands.get().await {
            match self.leases.release_all(&mut conn).await {
                Ok(()) => tracing::info!(projection = name, "partition leases released"),
                Err(e) => {
                    tracing::warn!(projection = name, error = %resilience::error_chain(&e), "cannot release leases; they expire by themselves")
                }
            }
        }
        self.lock().held.clear();
        self.heartbeat(Status::Stopped).await;
        tracing::info!(projection = name, "projector stopped");
    }
}

/// Why a replay (or a step that may replay) failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Redis failed.
    #[error(transparent)]
    Streams(#[from] StreamError),
    /// PostgreSQL failed.
    #[error(transparent)]
    Outbox(#[from] outbox::OutboxError),
    /// The projector was built without a database.
    #[error("replay needs the event store: the projector has no database")]
    NoDatabase,
}

/// One reply of a pipeline, typed; a missing or misshapen reply is [`StreamError::Malformed`].
fn parse_reply<T: redis::FromRedisValue>(v: Option<redis::Value>) -> Result<T, StreamError> {
    streams::error::from_reply(v.unwrap_or(redis::Value::Nil), "read-model load")
}

/// Reads, in one `MULTI` (so all of it describes the same instant): the keys the batch's
/// events read, the applied versions of its aggregates, which of them are parked (when
/// `parked_key` is given), and whether `require` (the read model's marker) exists. `None`
/// when it does not: the read model is gone and must be rebuilt first.
pub(crate) async fn load(
    pools: &RedisPools,
    projection: &dyn Projection,
    rm: &ReadModelKeys,
    events: &[&EventEnvelope],
    require: Option<&str>,
    parked_key: Option<&str>,
) -> Result<Option<Loaded>, StreamError> {
    let reads: BTreeSet<String> = events
        .iter()
        .flat_map(|e| projection.reads(e, rm))
        .collect();
    let ids: BTreeSet<Uuid> = events.iter().map(|e| e.aggregate_id).collect();
    if ids.is_empty() {
        return Ok(Some(Loaded::default()));
    }
    let reads: Vec<String> = reads.into_iter().collect();
    let ids: Vec<Uuid> = ids.into_iter().collect();
    let id_args: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    let mut pipe = redis::pipe();
    pipe.atomic();
    if !reads.is_empty() {
        pipe.cmd("MGET").arg(&reads);
    }
    pipe.cmd("HMGET").arg(rm.versions()).arg(&id_args);
    if let Some(key) = parked_key {
        pipe.cmd("HMGET").arg(key).arg(&id_args);
    }
    if let Some(key) = require {
        pipe.cmd("EXISTS").arg(key);
    }
    let mut conn = pools.commands.get().await?;
    let mut replies: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
    if require.is_some() {
        let exists: bool = parse_reply(replies.pop())?;
        if !exists {
            return Ok(None);
        }
    }
    let parked_flags: Vec<Option<String>> = if parked_key.is_some() {
        parse_reply(replies.pop())?
    } else {
        vec![]
    };
    let mut replies = replies.into_iter();
    let values: Vec<Option<String>> = if reads.is_empty() {
        vec![]
    } else {
        parse_reply(replies.next())?
    };
    let versions: Vec<Option<i64>> = parse_reply(replies.next())?;
    let parked = ids
        .iter()
        .zip(parked_flags)
        .filter(|(_, head)| head.is_some())
        .map(|(id, _)| *id)
        .collect();
    let versions = ids
        .into_iter()
        .zip(versions)
        .map(|(id, v)| (id, v.unwrap_or(0)))
        .collect();
    Ok(Some(Loaded {
        versions,
        view: ViewState::from_pairs(reads.into_iter().zip(values)),
        parked,
    }))
}

/// What planning a batch needs, read in one round trip.
#[derive(Default)]
pub(crate) struct Loaded {
    /// Applied version per aggregate (0: none).
    pub(crate) versions: HashMap<Uuid, i64>,
    /// The string keys the projection reads.
    pub(crate) view: ViewState,
    /// Aggregates parked in the dead letters.
    pub(crate) parked: BTreeSet<Uuid>,
}
