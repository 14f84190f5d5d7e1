//! One batch, phase by phase: set unreadable entries aside, read what planning needs in one
//! round trip, let parked aggregates' events follow their head, plan, apply in one round trip,
//! then settle each event's fate in order.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use events::EventEnvelope;
use streams::consumer::{self, Delivery};
use streams::dlq::Mode;
use streams::read_model::{self, LoadRequest};
use streams::{ApplyItem, ApplyOutcome, ReadModelKeys, RedisPools, StreamError, redis};
use time::OffsetDateTime;
use uuid::Uuid;

use super::dead_letter::Verdict;
use super::fate::{self, Facts, Failure, Fate};
use super::{BatchReport, Projector};
use crate::metrics as m;
use crate::plan::{PlanOutcome, Projection, ViewState, plan};

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

/// Reads what planning `events` needs ([`streams::read_model::load`]): the keys `projection`
/// reads for them in generation `model`, their aggregates' applied versions, which of those are
/// parked (when `parked` names the parked hash), and whether the marker exists (when required).
/// `None` when the marker was required and is missing.
pub(crate) async fn load(
    pools: &RedisPools,
    projection: &dyn Projection,
    model: &ReadModelKeys,
    events: &[&EventEnvelope],
    parked: Option<&str>,
    require_marker: bool,
) -> Result<Option<Loaded>, StreamError> {
    let reads: Vec<String> = events
        .iter()
        .flat_map(|e| projection.reads(e, model))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let aggregates: Vec<Uuid> = events
        .iter()
        .map(|e| e.aggregate_id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut conn = pools.commands.get().await?;
    let request = LoadRequest {
        model,
        reads: &reads,
        aggregates: &aggregates,
        parked,
        require_marker,
    };
    Ok(read_model::load(&mut conn, request).await?.map(|l| Loaded {
        versions: l.versions,
        view: ViewState::from_pairs(l.values),
        parked: l.parked,
    }))
}

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
        self.process_inputs(inputs, prefetch).await
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
        prefetch: bool,
    ) -> Result<BatchReport, StreamError> {
        let started = Instant::now();
        let mut report = BatchReport {
            delivered: inputs.len(),
            ..BatchReport::default()
        };
        if inputs.is_empty() {
            return Ok(report);
        }
        // One generation for the whole batch.
        let model = self.keys();
        let events = self.divert_unreadable(&inputs, &mut report).await?;
        // A replay is what builds the read model, so only stream entries need its marker.
        let from_stream = self.pg.is_some() && events.iter().any(|(d, _)| d.is_some());
        let all: Vec<&EventEnvelope> = events.iter().map(|(_, e)| *e).collect();
        let Some(Loaded {
            versions,
            mut view,
            parked,
        }) = load(
            &self.redis,
            self.projection.as_ref(),
            &model,
            &all,
            Some(&self.dlq.parked),
            from_stream,
        )
        .await?
        else {
            report.not_ready += events.len();
            self.lock().heal_due = true;
            return Ok(report);
        };
        let live = self.divert_parked(events, &parked, &mut report).await?;
        let refs: Vec<&EventEnvelope> = live.iter().map(|(_, e)| *e).collect();
        let plans = plan(
            self.projection.as_ref(),
            &model,
            &refs,
            &versions,
            &mut view,
        );
        let answers = self.apply_planned(&model, &live, plans, prefetch).await?;
        self.settle(&live, answers, &mut report).await?;

        let per_event = started.elapsed().as_secs_f64() / report.delivered.max(1) as f64;
        let histogram = metrics::histogram!(m::EVENT_PROCESSING_DURATION_SECONDS, "projection" => self.projection_name());
        for _ in 0..report.delivered {
            histogram.record(per_event);
        }
        Ok(report)
    }

    /// Phase 4: sends the events planned to apply (or found duplicates) to Redis in one round
    /// trip, which also wakes the readers waiting for them and, when consuming, reads the next
    /// batch (after the applies, so in order). Returns each event's answer, in order: the
    /// script's outcome, or why it was not sent.
    async fn apply_planned(
        &self,
        model: &ReadModelKeys,
        live: &[Entry<'_>],
        plans: Vec<PlanOutcome>,
        prefetch: bool,
    ) -> Result<Vec<Result<ApplyOutcome, Failure>>, StreamError> {
        let held: Vec<Option<Failure>> = plans.iter().map(Failure::of_plan).collect();
        let items: Vec<ApplyItem> = live
            .iter()
            .zip(plans)
            .filter_map(|((d, e), planned)| {
                let ops = match planned {
                    PlanOutcome::Apply(ops) => ops,
                    PlanOutcome::Duplicate => vec![],
                    PlanOutcome::Gap { .. } | PlanOutcome::Failed(_) => return None,
                };
                Some(ApplyItem {
                    versions_key: model.versions(),
                    aggregate_id: e.aggregate_id,
                    version: e.aggregate_version,
                    ops,
                    ack: d.map(|d| (d.stream.clone(), self.group.clone(), d.entry_id.clone())),
                    fence: d.and_then(|d| self.fence(&d.stream)),
                })
            })
            .collect();
        let outcomes = if items.is_empty() {
            vec![]
        } else {
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
                    Err(e) => tracing::debug!(error = %e, "read-ahead failed"),
                }
            }
            outcomes
        };
        // The items went in the order of `live`, skipping the held ones: zip them back.
        let mut outcomes = outcomes.into_iter();
        Ok(held
            .into_iter()
            .map(|held| match held {
                Some(failure) => Err(failure),
                None => Ok(outcomes
                    .next()
                    .unwrap_or_else(|| ApplyOutcome::Rejected("no reply".into()))),
            })
            .collect())
    }

    /// Phase 5: settles each event's fate, in order, so a head's failure is known before its
    /// followers are judged.
    async fn settle(
        &self,
        live: &[Entry<'_>],
        answers: Vec<Result<ApplyOutcome, Failure>>,
        report: &mut BatchReport,
    ) -> Result<(), StreamError> {
        let name = self.projection_name();
        let now = OffsetDateTime::now_utc();
        for ((d, e), answer) in live.iter().zip(answers) {
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
                    metrics::histogram!(m::PROJECTION_LAG_SECONDS, "projection" => name)
                        .record((now - e.occurred_at).as_seconds_f64().max(0.0));
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
                Fate::Retry(failure) => {
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
                Fate::DeadLetter(failure) => {
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
}
