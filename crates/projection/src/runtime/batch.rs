//! One batch, phase by phase: set unreadable entries aside, read what planning needs of every
//! target generation in one round trip, let parked aggregates' events follow their head, plan,
//! repair the gaps from `event_store`, apply in one round trip, then settle each event's fate in
//! order.

use std::time::{Duration, Instant};

use events::EventEnvelope;
use streams::consumer::{self, Delivery};
use streams::dlq::Mode;
use streams::{ApplyItem, ApplyOutcome, StreamError, redis};
use time::OffsetDateTime;

use super::dead_letter::Verdict;
use super::fate::{self, Facts, Fate, Hold, Unsent};
use super::targets::{Skipping, Source, Step, Targets, apply_targets, load, plan_targets};
use super::{BatchReport, Projector};
use crate::metrics as m;

/// An entry's content.
pub(super) enum Decoded {
    /// A readable event of this projection's module.
    Event(EventEnvelope),
    /// Anything else: `(error type, reason)`.
    Bad(&'static str, String),
}

/// One input of a batch: a stream delivery, or (`delivery: None`) an event replayed from
/// history.
pub(super) struct Input {
    pub(super) delivery: Option<Delivery>,
    pub(super) decoded: Decoded,
}

/// A readable event of a batch, with the delivery it came in (none when replayed).
pub(super) type Entry<'a> = (Option<&'a Delivery>, &'a EventEnvelope);

/// How many times a batch is planned again because the generations changed under it (a
/// rebuild starting or switching) before its entries are left for the next round.
const MAX_REPLANS: usize = 3;

impl Projector {
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
        let streams = self.held_streams();
        if streams.is_empty() {
            if let Some(b) = block {
                tokio::time::sleep(b).await;
            }
            return Ok(BatchReport::default());
        }
        // The blocking read keeps its connection from round to round: a checkout from the
        // pool costs a round trip of `UNWATCH` + `PING` before the read, once per wake-up,
        // which at low rates is once per event. A failed read drops it (the pool's check-out
        // then finds out whether it is broken).
        let held = block.and_then(|_| {
            self.reader
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
        });
        let mut conn = match (held, block) {
            (Some(conn), _) => conn,
            (None, Some(_)) => self.redis.blocking.get().await?,
            (None, None) => self.redis.commands.get().await?,
        };
        let deliveries = consumer::read_group(
            &mut conn,
            &self.group,
            &self.settings.replica,
            &streams,
            consumer::ReadFrom::New,
            self.settings.batch_size,
            block,
        )
        .await?;
        if block.is_some() {
            *self
                .reader
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(conn);
        }
        self.process_deliveries(deliveries, true).await
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
        let inputs = deliveries
            .into_iter()
            .map(|d| Input {
                decoded: self.decode(&d),
                delivery: Some(d),
            })
            .collect();
        self.process_inputs(inputs, Source::Stream { prefetch })
            .await
    }

    /// The read of new entries of the held partitions, without blocking.
    fn next_read(&self) -> Option<redis::Cmd> {
        let streams = self.held_streams();
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

    /// Runs one batch through its phases.
    pub(super) async fn process_inputs(
        &self,
        inputs: Vec<Input>,
        source: Source,
    ) -> Result<BatchReport, StreamError> {
        let started = Instant::now();
        let mut report = BatchReport {
            delivered: inputs.len(),
            ..BatchReport::default()
        };
        if inputs.is_empty() {
            return Ok(report);
        }
        let mut events = self.divert_unreadable(&inputs, &mut report).await?;
        let mut first_pass = true;
        let mut repaired = false;
        let mut prefetch = matches!(source, Source::Stream { prefetch: true });
        let mut replans = 0;
        loop {
            // The generations of this pass: one state for the whole batch.
            let Some(targets) = self.targets(source) else {
                // Nothing to write to, as last seen: look again once before waiting.
                if replans < MAX_REPLANS {
                    replans += 1;
                    self.refresh_generations().await?;
                    continue;
                }
                report.not_ready += events.len();
                self.lock().heal_due = true;
                break;
            };
            // A replay builds the read model, so only live entries need the served one whole.
            let require_marker = targets
                .list
                .iter()
                .find(|t| t.marker)
                .map(|t| &t.keys)
                .filter(|_| matches!(source, Source::Stream { .. } | Source::Repair));
            let all: Vec<&EventEnvelope> = events.iter().map(|(_, e)| *e).collect();
            let models: Vec<_> = targets.list.iter().map(|t| &t.keys).collect();
            // A rebuild re-evaluates parked aggregates instead of setting them aside: it has
            // no use for the parking.
            let parked =
                (!matches!(source, Source::Rebuild(_))).then_some(self.dlq.parked.as_str());
            let Some(loaded) = load(
                &self.redis,
                self.projection.as_ref(),
                &models,
                &all,
                parked,
                require_marker,
            )
            .await?
            else {
                report.not_ready += events.len();
                self.lock().heal_due = true;
                break;
            };
            if first_pass {
                first_pass = false;
                events = match source {
                    // Events of parked aggregates follow their head into the dead letters.
                    Source::Stream { .. } => {
                        self.divert_parked(events, &loaded.parked, &mut report)
                            .await?
                    }
                    // A repair leaves parked aggregates to their operator.
                    Source::Repair => events
                        .into_iter()
                        .filter(|(_, e)| !loaded.parked.contains(&e.aggregate_id))
                        .collect(),
                    // A rebuild re-evaluates them: what applies now leaves the parking.
                    Source::Rebuild(_) => events,
                };
                if events.is_empty() {
                    break;
                }
            }
            let refs: Vec<&EventEnvelope> = events.iter().map(|(_, e)| *e).collect();
            let skipping = Skipping {
                inner: self.projection.clone(),
                skip: self.lock().discarded.clone(),
            };
            let (steps, missing) = plan_targets(&skipping, &targets, &refs, loaded);
            // Versions missing here that no failing predecessor explains were lost on the way:
            // read them from event_store and apply them first, then plan again.
            if !repaired && !matches!(source, Source::Rebuild(_)) {
                let missing: Vec<_> = {
                    let state = self.lock();
                    missing
                        .into_iter()
                        .filter(|m| !state.retries.is_behind_failing(m.aggregate, m.to + 1))
                        .collect()
                };
                if !missing.is_empty() {
                    repaired = true;
                    if self.repair(&missing, &mut report).await? > 0 {
                        continue;
                    }
                }
            }
            let answers = self
                .apply_steps(&targets, &events, steps, prefetch, source)
                .await?;
            prefetch = false;
            if replans < MAX_REPLANS && answers.iter().any(|a| matches!(a, Ok(ApplyOutcome::Moved)))
            {
                replans += 1;
                self.refresh_generations().await?;
                continue;
            }
            self.settle(&events, answers, source, &mut report).await?;
            break;
        }
        let per_event = started.elapsed().as_secs_f64() / report.delivered.max(1) as f64;
        let histogram = metrics::histogram!(m::EVENT_PROCESSING_DURATION_SECONDS, "projection" => self.projection_name());
        for _ in 0..report.delivered {
            histogram.record(per_event);
        }
        Ok(report)
    }

    /// Phase 4: sends the events to apply (or found duplicates) to Redis in one round trip,
    /// which also wakes the readers waiting for them and, when consuming, reads the next batch
    /// (after the applies, so in order). Returns each event's answer, in order: the script's
    /// outcome, or why it was not sent.
    async fn apply_steps(
        &self,
        targets: &Targets,
        events: &[super::batch::Entry<'_>],
        steps: Vec<Step>,
        prefetch: bool,
        source: Source,
    ) -> Result<Vec<Result<ApplyOutcome, Unsent>>, StreamError> {
        let mut held: Vec<Option<Unsent>> = Vec::with_capacity(steps.len());
        let mut items = Vec::new();
        for ((d, e), step) in events.iter().zip(steps) {
            match step {
                Step::Hold(unsent) => held.push(Some(unsent)),
                Step::Send(ops) => {
                    held.push(None);
                    items.push(ApplyItem {
                        aggregate_id: e.aggregate_id,
                        version: e.aggregate_version,
                        targets: apply_targets(targets, ops),
                        ack: d.map(|d| (d.stream.clone(), self.group.clone(), d.entry_id.clone())),
                        fence: d.and_then(|d| self.fence(&d.stream)),
                        guard: Some(targets.guard.clone()),
                    });
                }
            }
        }
        let outcomes = if items.is_empty() {
            vec![]
        } else {
            let next = if prefetch { self.next_read() } else { None };
            // The multiplexed connection: a pooled one costs a round trip of `UNWATCH` +
            // `PING` at every checkout, once per batch.
            let mut conn = self.redis.shared.get()?;
            // Readers wait on live writes (and re-drives); a replay building a generation
            // nobody reads yet has nobody to wake.
            let announce = (!matches!(source, Source::Rebuild(_))).then_some(&self.redis.keys);
            let (outcomes, after) = streams::apply::apply_batch_then(
                &mut conn,
                &items,
                announce,
                next.into_iter().collect(),
            )
            .await
            .inspect_err(|e| self.redis.shared.forget_if_unavailable(&conn, e))?;
            if let Some(reply) = after.into_iter().next() {
                match consumer::parse_read_reply(reply) {
                    Ok(next) => self.lock().prefetched = next,
                    // The next plain read meets the same condition and handles it.
                    Err(e) => tracing::debug!(error = %e, "read-ahead failed"),
                }
            }
            outcomes
        };
        // The items went in the order of the events, skipping the held ones: zip them back.
        let mut outcomes = outcomes.into_iter();
        Ok(held
            .into_iter()
            .map(|held| match held {
                Some(unsent) => Err(unsent),
                None => Ok(outcomes
                    .next()
                    .unwrap_or_else(|| ApplyOutcome::Rejected("no reply".into()))),
            })
            .collect())
    }

    /// Phase 5: settles each event's fate, in order, so a head's failure is known before its
    /// followers are judged. History (a rebuild, a repair) is never retried: what fails there
    /// is left to the live path, but for what the projection refuses, which is poison.
    async fn settle(
        &self,
        events: &[Entry<'_>],
        answers: Vec<Result<ApplyOutcome, Unsent>>,
        source: Source,
        report: &mut BatchReport,
    ) -> Result<(), StreamError> {
        let name = self.projection_name();
        let now = OffsetDateTime::now_utc();
        for ((d, e), answer) in events.iter().zip(answers) {
            let facts = Facts {
                answer: answer.as_ref().map_err(Clone::clone),
                behind_failing: self
                    .lock()
                    .retries
                    .is_behind_failing(e.aggregate_id, e.aggregate_version),
                attempts: d.map_or(u64::MAX, |d| d.deliveries),
                max_attempts: self.settings.max_attempts,
            };
            match fate::decide(facts) {
                Fate::Applied => {
                    report.applied += 1;
                    metrics::counter!(m::EVENTS_PROCESSED_TOTAL, "event_type" => e.event_type.clone(), "projection" => name).increment(1);
                    if d.is_some() {
                        metrics::histogram!(m::PROJECTION_LAG_SECONDS, "projection" => name)
                            .record((now - e.occurred_at).as_seconds_f64().max(0.0));
                    }
                    let mut state = self.lock();
                    state.applied_total += 1;
                    state.last_event = Some((e.event_id, now));
                    state.retries.settled(e.aggregate_id, e.aggregate_version);
                }
                Fate::Duplicate => {
                    report.duplicates += 1;
                    metrics::counter!(m::DUPLICATE_EVENTS_TOTAL, "projection" => name).increment(1);
                    // A failing head can become a duplicate (a rebuild applied it meanwhile):
                    // it is settled, so its followers are free to go.
                    self.note_settled(e);
                }
                Fate::Fenced => report.fenced += 1,
                Fate::Waiting => {
                    report.waiting += 1;
                    if let Some(d) = d {
                        self.lock()
                            .retries
                            .wait(&d.stream, &d.entry_id, e.aggregate_id);
                    }
                }
                Fate::Held(hold) => {
                    report.not_ready += 1;
                    match hold {
                        Hold::NotReady => self.lock().heal_due = true,
                        Hold::Inconsistent(reason) => self.inconsistent(e, &reason),
                        // Planned again MAX_REPLANS times; the entries come back next round.
                        Hold::Moved => {}
                    }
                }
                Fate::Retry(failure) if d.is_some() => {
                    let (error_type, reason) =
                        (failure.error_type(), failure.reason(e.aggregate_version));
                    metrics::counter!(m::WORKER_ERRORS_TOTAL, "projection" => name, "error_type" => error_type).increment(1);
                    report.retrying += 1;
                    let mut state = self.lock();
                    state.retries.failing(e.aggregate_id, e.aggregate_version);
                    tracing::debug!(projection = name, event_id = %e.event_id, attempts = d.map_or(0, |d| d.deliveries),
                        error_type, reason = %reason, "event failed; will retry");
                    state.last_error = Some(format!("{error_type}: {reason}"));
                }
                // History that cannot apply yet (a gap in a generation being built, say) is
                // left to the live path or the rest of the replay.
                Fate::Retry(_) => report.waiting += 1,
                Fate::DeadLetter(failure) => {
                    let parked = matches!(source, Source::Rebuild(_))
                        && self.is_parked(e.aggregate_id).await?;
                    if parked {
                        // Still refused, as when it was parked: it stays parked, once.
                        report.waiting += 1;
                        continue;
                    }
                    let (error_type, reason) =
                        (failure.error_type(), failure.reason(e.aggregate_version));
                    metrics::counter!(m::WORKER_ERRORS_TOTAL, "projection" => name, "error_type" => error_type).increment(1);
                    let verdict = Verdict {
                        mode: Mode::Park,
                        error_type,
                        error: &reason,
                    };
                    self.dead_letter(*d, Some(e), &e.to_json(), verdict, report)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Records that the read model contradicts itself for `e`'s aggregate: the run loop starts
    /// a rebuild (one per projection). Logged once per incident.
    fn inconsistent(&self, e: &EventEnvelope, reason: &str) {
        let mut state = self.lock();
        if state.rebuild_due.is_none() {
            tracing::warn!(projection = self.projection_name(), aggregate_id = %e.aggregate_id,
                version = e.aggregate_version, reason,
                "the read model contradicts its version record; rebuilding it (the old generation serves meanwhile)");
            state.rebuild_due = Some(format!(
                "read model inconsistent for aggregate {}: {reason}",
                e.aggregate_id
            ));
        }
    }

    async fn is_parked(&self, aggregate: uuid::Uuid) -> Result<bool, StreamError> {
        let mut conn = self.redis.commands.get().await?;
        Ok(streams::dlq::are_parked(&mut conn, &self.dlq, &[aggregate])
            .await?
            .first()
            .copied()
            .unwrap_or(false))
    }

    /// Reads the generations again (after an apply found them changed).
    pub(super) async fn refresh_generations(&self) -> Result<(), StreamError> {
        let mut conn = self.redis.commands.get().await?;
        let before = self.generations.state();
        let now = self.generations.refresh(&mut conn).await?;
        if now != before {
            tracing::info!(projection = self.projection_name(), active = ?now.active,
                building = ?now.building, "generations changed");
        }
        Ok(())
    }
}
