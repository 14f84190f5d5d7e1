//! The consumer loop: read a batch from the projection's consumer group, plan it, apply it with
//! one pipelined round of the atomic apply script, and let the script acknowledge exactly what
//! it applied (or found already applied).
//!
//! Nothing is acknowledged otherwise: an event that failed, or that arrived ahead of its
//! predecessor, stays in this consumer's pending list and is retried from there.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use events::EventEnvelope;
use resilience::{Backoff, Outage};
use streams::consumer::{self, Delivery, ReadFrom};
use streams::redis;
use streams::{ApplyItem, ApplyOutcome, ReadModelKeys, RedisPools, StreamError};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics as m;
use crate::plan::{PlanOutcome, Projection, ViewState, plan};

/// How a projector runs.
#[derive(Debug, Clone)]
pub struct ProjectorSettings {
    /// Stable consumer name within the group (e.g. the pod name), so a restarted process finds
    /// its own pending entries.
    pub consumer: String,
    /// Partitions per module stream.
    pub partitions: u32,
    /// Entries per read, per stream.
    pub batch_size: usize,
    /// How long a read waits for new entries.
    pub block: Duration,
    /// How soon entries left pending (failed or early) are retried.
    pub retry_interval: Duration,
    /// The read-model generation written.
    pub generation: i64,
}

impl ProjectorSettings {
    /// Defaults for `consumer`.
    #[must_use]
    pub fn new(consumer: impl Into<String>) -> Self {
        Self {
            consumer: consumer.into(),
            partitions: 1,
            batch_size: 256,
            block: Duration::from_millis(1000),
            retry_interval: Duration::from_secs(1),
            generation: streams::keys::INITIAL_GENERATION,
        }
    }
}

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Entries delivered.
    pub delivered: usize,
    /// Events applied (and acknowledged).
    pub applied: usize,
    /// Duplicates acknowledged without change.
    pub duplicates: usize,
    /// Events left pending because a predecessor is missing.
    pub waiting: usize,
    /// Events left pending because they could not be applied.
    pub failed: usize,
    /// The last entry id delivered per stream (cursor for pending scans).
    pub last_ids: Vec<(String, String)>,
}

impl BatchReport {
    /// Entries of the batch still pending.
    #[must_use]
    pub fn unfinished(&self) -> usize {
        self.waiting + self.failed
    }
}

/// One projection's consumer.
pub struct Projector {
    pools: RedisPools,
    projection: Arc<dyn Projection>,
    settings: ProjectorSettings,
    streams: Vec<String>,
    group: String,
    keys: ReadModelKeys,
}

impl std::fmt::Debug for Projector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projector")
            .field("projection", &self.projection.module().projection)
            .field("consumer", &self.settings.consumer)
            .finish_non_exhaustive()
    }
}

enum Decoded {
    Event(EventEnvelope),
    Bad(&'static str, String),
}

impl Projector {
    /// A projector of `projection` over the streams of its module.
    #[must_use]
    pub fn new(
        pools: RedisPools,
        projection: Arc<dyn Projection>,
        settings: ProjectorSettings,
    ) -> Self {
        let module = projection.module();
        let streams = pools.keys.routing(settings.partitions).streams(module.name);
        let keys = pools.keys.read_model(module.name, settings.generation);
        Self {
            group: module.consumer_group.to_owned(),
            pools,
            projection,
            settings,
            streams,
            keys,
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

    /// Creates the consumer group on every partition stream (idempotent).
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn ensure_groups(&self) -> Result<(), StreamError> {
        let mut conn = self.pools.commands.get().await?;
        for stream in &self.streams {
            if consumer::ensure_group(&mut conn, stream, &self.group).await? {
                tracing::info!(stream = %stream, group = %self.group, "consumer group created");
            }
        }
        Ok(())
    }

    /// Reads one batch of new entries (waiting up to `block`) and processes it.
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails; nothing unapplied was acknowledged.
    pub async fn consume_once(&self, block: Option<Duration>) -> Result<BatchReport, StreamError> {
        let deliveries = self.read(&self.streams, ReadFrom::New, block).await?;
        self.process(deliveries).await
    }

    /// Retries this consumer's pending entries, oldest first, stream by stream, until every
    /// one was tried once. Returns how many are still pending.
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn retry_pending(&self) -> Result<usize, StreamError> {
        let mut still_pending = 0;
        for stream in &self.streams {
            let mut after = "0".to_owned();
            loop {
                let deliveries = {
                    let mut conn = self.pools.commands.get().await?;
                    consumer::read_group_after(
                        &mut conn,
                        &self.group,
                        &self.settings.consumer,
                        stream,
                        &after,
                        self.settings.batch_size,
                    )
                    .await?
                };
                let Some(last) = deliveries.last().map(|d| d.entry_id.clone()) else {
                    break;
                };
                let report = self.process(deliveries).await?;
                still_pending += report.unfinished();
                after = last;
            }
        }
        Ok(still_pending)
    }

    async fn read(
        &self,
        streams: &[String],
        from: ReadFrom,
        block: Option<Duration>,
    ) -> Result<Vec<Delivery>, StreamError> {
        let pool = if block.is_some() {
            &self.pools.blocking
        } else {
            &self.pools.commands
        };
        let mut conn = pool.get().await?;
        consumer::read_group(
            &mut conn,
            &self.group,
            &self.settings.consumer,
            streams,
            from,
            self.settings.batch_size,
            block,
        )
        .await
    }

    /// Plans and applies `deliveries`.
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails; the version guard makes a redelivery safe.
    pub async fn process(&self, deliveries: Vec<Delivery>) -> Result<BatchReport, StreamError> {
        let started = Instant::now();
        let name = self.projection_name();
        let mut report = BatchReport {
            delivered: deliveries.len(),
            ..BatchReport::default()
        };
        let mut last_ids: Vec<(String, String)> = Vec::new();
        for d in &deliveries {
            match last_ids.iter_mut().find(|(s, _)| *s == d.stream) {
                Some(entry) => entry.1.clone_from(&d.entry_id),
                None => last_ids.push((d.stream.clone(), d.entry_id.clone())),
            }
        }
        report.last_ids = last_ids;
        if deliveries.is_empty() {
            return Ok(report);
        }
        let decoded: Vec<Decoded> = deliveries.iter().map(|d| self.decode(d)).collect();
        let events: Vec<(usize, &EventEnvelope)> = decoded
            .iter()
            .enumerate()
            .filter_map(|(i, d)| match d {
                Decoded::Event(e) => Some((i, e)),
                Decoded::Bad(..) => None,
            })
            .collect();
        for (i, d) in decoded.iter().enumerate() {
            if let Decoded::Bad(error_type, reason) = d {
                report.failed += 1;
                metrics::counter!(m::WORKER_ERRORS_TOTAL, "projection" => name, "error_type" => *error_type)
                    .increment(1);
                tracing::warn!(
                    projection = name,
                    stream = %deliveries[i].stream,
                    entry_id = %deliveries[i].entry_id,
                    error_type,
                    reason = %reason,
                    "cannot decode stream entry; left pending"
                );
            }
        }
        let refs: Vec<&EventEnvelope> = events.iter().map(|(_, e)| *e).collect();
        let (versions, mut state) = self.load(&refs).await?;
        let plans = plan(
            self.projection.as_ref(),
            &self.keys,
            &refs,
            &versions,
            &mut state,
        );

        let mut items = Vec::new();
        let mut item_events = Vec::new();
        for ((i, event), outcome) in events.iter().zip(plans) {
            let ops = match outcome {
                PlanOutcome::Apply(ops) => ops,
                PlanOutcome::Duplicate => vec![],
                PlanOutcome::Gap { expected } => {
                    report.waiting += 1;
                    tracing::debug!(projection = name, aggregate_id = %event.aggregate_id,
                        version = event.aggregate_version, expected, "event ahead of its predecessor; left pending");
                    continue;
                }
                PlanOutcome::Failed(e) => {
                    report.failed += 1;
                    metrics::counter!(m::WORKER_ERRORS_TOTAL, "projection" => name, "error_type" => e.error_type())
                        .increment(1);
                    tracing::warn!(projection = name, event_id = %event.event_id, event_type = %event.event_type,
                        correlation_id = event.metadata.correlation_id.as_deref().unwrap_or(""),
                        error = %e, "projection refused event; left pending");
                    continue;
                }
            };
            let d = &deliveries[*i];
            items.push(ApplyItem {
                versions_key: self.keys.versions(),
                aggregate_id: event.aggregate_id,
                version: event.aggregate_version,
                ops,
                ack: Some((d.stream.clone(), self.group.clone(), d.entry_id.clone())),
            });
            item_events.push(*event);
        }
        let outcomes = {
            let mut conn = self.pools.commands.get().await?;
            streams::apply_batch(&mut conn, &items).await?
        };
        let now = time::OffsetDateTime::now_utc();
        for (event, outcome) in item_events.iter().zip(outcomes) {
            match outcome {
                ApplyOutcome::Applied => {
                    report.applied += 1;
                    metrics::counter!(m::EVENTS_PROCESSED_TOTAL, "event_type" => event.event_type.clone(), "projection" => name)
                        .increment(1);
                    let lag = (now - event.occurred_at).as_seconds_f64().max(0.0);
                    metrics::histogram!(m::PROJECTION_LAG_SECONDS, "projection" => name)
                        .record(lag);
                }
                ApplyOutcome::Duplicate { .. } => {
                    report.duplicates += 1;
                    metrics::counter!(m::DUPLICATE_EVENTS_TOTAL, "projection" => name).increment(1);
                }
                ApplyOutcome::Gap { .. } => report.waiting += 1,
                ApplyOutcome::Rejected(reason) => {
                    report.failed += 1;
                    metrics::counter!(m::WORKER_ERRORS_TOTAL, "projection" => name, "error_type" => "rejected_by_redis")
                        .increment(1);
                    tracing::warn!(projection = name, event_id = %event.event_id, reason = %reason,
                        "Redis refused the change; left pending");
                }
            }
        }
        let per_event = started.elapsed().as_secs_f64() / report.delivered as f64;
        for _ in 0..report.delivered {
            metrics::histogram!(m::EVENT_PROCESSING_DURATION_SECONDS, "projection" => name)
                .record(per_event);
        }
        Ok(report)
    }

    fn decode(&self, d: &Delivery) -> Decoded {
        let Some(bytes) = &d.envelope else {
            return Decoded::Bad(
                "missing_entry",
                "entry has no envelope (deleted from the stream?)".into(),
            );
        };
        match EventEnvelope::from_json(bytes) {
            Ok(e) if e.module() == self.projection.module().name => Decoded::Event(e),
            Ok(e) => Decoded::Bad(
                "unknown_event_type",
                format!("{} does not belong here", e.event_type),
            ),
            Err(e) => Decoded::Bad("malformed_envelope", e.to_string()),
        }
    }

    /// Reads the keys the batch depends on and the applied versions of its aggregates in one
    /// `MULTI`, so state and versions describe the same instant.
    async fn load(
        &self,
        events: &[&EventEnvelope],
    ) -> Result<(HashMap<Uuid, i64>, ViewState), StreamError> {
        let keys: BTreeSet<String> = events
            .iter()
            .flat_map(|e| self.projection.reads(e, &self.keys))
            .collect();
        let ids: BTreeSet<Uuid> = events.iter().map(|e| e.aggregate_id).collect();
        if ids.is_empty() {
            return Ok((HashMap::new(), ViewState::default()));
        }
        let keys: Vec<String> = keys.into_iter().collect();
        let ids: Vec<Uuid> = ids.into_iter().collect();
        let mut pipe = redis::pipe();
        pipe.atomic();
        if !keys.is_empty() {
            pipe.cmd("MGET").arg(&keys);
        }
        pipe.cmd("HMGET")
            .arg(self.keys.versions())
            .arg(ids.iter().map(Uuid::to_string).collect::<Vec<_>>());
        let mut conn = self.pools.commands.get().await?;
        let (values, versions): (Vec<Option<String>>, Vec<Option<i64>>) = if keys.is_empty() {
            let (v,): (Vec<Option<i64>>,) = pipe.query_async(&mut conn).await?;
            (vec![], v)
        } else {
            pipe.query_async(&mut conn).await?
        };
        let versions = ids
            .into_iter()
            .zip(versions)
            .map(|(id, v)| (id, v.unwrap_or(0)))
            .collect();
        Ok((
            versions,
            ViewState::from_pairs(keys.into_iter().zip(values)),
        ))
    }

    /// Records `cqrs_consumer_lag_messages` per stream and returns the total lag and pending
    /// count of the group (both 0 when the projection is idle).
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn observe_lag(&self) -> Result<(usize, usize), StreamError> {
        let mut conn = self.pools.commands.get().await?;
        let (mut lag, mut pending) = (0, 0);
        for stream in &self.streams {
            let groups = consumer::groups(&mut conn, stream).await?;
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

    /// Consumes until `shutdown` is cancelled. Redis outages are retried with backoff (first
    /// failure and recovery logged); a lost group is recreated. On shutdown the batch in hand
    /// is finished and acknowledged before returning.
    pub async fn run(&self, shutdown: CancellationToken) {
        let name = self.projection_name();
        let mut outage = Outage::new("redis", "projector");
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut groups_ready = false;
        let mut retry_due = Some(Instant::now());
        let mut lag_due = Instant::now();
        let mut nogroup_logged = false;
        tracing::info!(projection = name, consumer = %self.settings.consumer, streams = ?self.streams, "projector started");
        while !shutdown.is_cancelled() {
            let step: Result<(), StreamError> = async {
                if !groups_ready {
                    self.ensure_groups().await?;
                    groups_ready = true;
                }
                if retry_due.is_some_and(|t| Instant::now() >= t) {
                    let left = self.retry_pending().await?;
                    retry_due = (left > 0).then(|| Instant::now() + self.settings.retry_interval);
                }
                // Only the wait for new entries is cancellable: dropping a read at worst
                // leaves entries in our pending list, which the next start retries. A batch in
                // hand is always finished.
                let deliveries = tokio::select! {
                    r = self.read(&self.streams, ReadFrom::New, Some(self.settings.block)) => r?,
                    () = shutdown.cancelled() => return Ok(()),
                };
                let report = self.process(deliveries).await?;
                if report.unfinished() > 0 && retry_due.is_none() {
                    retry_due = Some(Instant::now() + self.settings.retry_interval);
                }
                if Instant::now() >= lag_due {
                    lag_due = Instant::now() + Duration::from_secs(5);
                    self.observe_lag().await?;
                }
                Ok(())
            }
            .await;
            match step {
                Ok(()) => {
                    outage.succeeded();
                    backoff.reset();
                    nogroup_logged = false;
                }
                Err(StreamError::NoGroup) => {
                    // Redis lost the group (restart without persistence, flush): recreate it
                    // on the next step. Logged once per loss, not per read.
                    if !nogroup_logged {
                        tracing::warn!(
                            projection = name,
                            "consumer group missing (Redis lost its data); recreating"
                        );
                        nogroup_logged = true;
                    }
                    groups_ready = false;
                }
                Err(e) => {
                    outage.failed(&e);
                    if !e.is_unavailable() {
                        tracing::debug!(projection = name, error = %resilience::error_chain(&e), "projector step failed");
                    }
                    groups_ready = false;
                    let delay = backoff.next_delay_jittered();
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => {}
                    }
                }
            }
        }
        tracing::info!(projection = name, "projector stopped");
    }
}
