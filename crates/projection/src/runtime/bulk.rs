//! A rebuild's share of a page, written in runs ([`streams::bulk`]): the aggregate's events
//! planned in memory one after the other, each aggregate's writes sent as one guarded run.
//!
//! Whatever the fast path cannot take goes the careful way ([`Projector::process_inputs`], the
//! apply script), in order and after the runs, so nothing about it changes: events the
//! projection refuses (dead-lettered as ever, parked aggregates re-evaluated), gaps, an
//! inconsistency, and the aggregates a live apply moved on between the read and the write.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use streams::StreamError;
use streams::bulk::{self, Run, Written};
use uuid::Uuid;

use super::batch::{Decoded, Input};
use super::targets::{Skipping, Source, load};
use super::{BatchReport, Projector};
use crate::metrics as m;
use crate::plan::{PlanOutcome, plan};

/// How an event of the share is handled.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    /// In its aggregate's run.
    Run,
    /// A duplicate (the generation has it already).
    Duplicate,
    /// The careful way.
    Careful,
}

impl Projector {
    /// Writes `inputs` (history, in position order) into generation `building`.
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails. When a run failed half-way (see
    /// [`streams::bulk::write_runs`]), the build record is removed first, so the rebuild
    /// starts over in a fresh generation rather than resume on top of it, and this replica
    /// builds the careful way from then on.
    pub(super) async fn bulk_share(
        &self,
        inputs: Vec<Input>,
        building: i64,
    ) -> Result<BatchReport, StreamError> {
        let started = Instant::now();
        let delivered = inputs.len();
        let keys = self.generations.keys_of(building);
        let skipping = Skipping {
            inner: self.projection.clone(),
            skip: self.lock().discarded.clone(),
        };
        let events: Vec<_> = inputs
            .iter()
            .filter_map(|i| match &i.decoded {
                Decoded::Event(e) => Some(e),
                Decoded::Bad(..) => None,
            })
            .collect();
        let mut ways = Vec::with_capacity(events.len());
        let mut runs: Vec<Run> = Vec::new();
        let mut run_of: HashMap<Uuid, usize> = HashMap::new();
        let mut careful: HashSet<Uuid> = HashSet::new();
        if !events.is_empty() {
            // No marker is asked for (a generation being built has none), so it always loads.
            let loaded = load(&self.redis, &skipping, &[&keys], &events, None, None)
                .await?
                .ok_or_else(|| StreamError::Malformed("no state for a bulk write".into()))?;
            let (versions, mut view) = loaded.models.into_iter().next().unwrap_or_default();
            let plans = plan(&skipping, &keys, &events, &versions, &mut view);
            for (e, outcome) in events.iter().zip(plans) {
                let aggregate = e.aggregate_id;
                let way = match outcome {
                    _ if careful.contains(&aggregate) => Way::Careful,
                    PlanOutcome::Apply(ops) => {
                        let i = *run_of.entry(aggregate).or_insert_with(|| {
                            runs.push(Run::new(
                                aggregate,
                                versions.get(&aggregate).copied().unwrap_or(0),
                            ));
                            runs.len() - 1
                        });
                        runs[i].push(e.aggregate_version, ops);
                        Way::Run
                    }
                    PlanOutcome::Duplicate => Way::Duplicate,
                    _ => {
                        careful.insert(aggregate);
                        Way::Careful
                    }
                };
                ways.push(way);
            }
        }
        let written = if runs.is_empty() {
            vec![]
        } else {
            let mut conn = self.redis.commands.get().await?;
            match bulk::write_runs(
                &mut conn,
                self.generations.pointer(),
                &keys.versions(),
                building,
                &runs,
            )
            .await
            {
                Ok(Written::Runs(flags)) => flags,
                Ok(Written::Moved) => {
                    // The generation is no longer being built: the replay stops there.
                    return Ok(BatchReport {
                        delivered,
                        not_ready: delivered,
                        ..BatchReport::default()
                    });
                }
                Err(e @ StreamError::Redis(_)) => {
                    self.lock().bulk_off = true;
                    let _: Result<i64, _> = streams::redis::cmd("DEL")
                        .arg(keys.build_record())
                        .query_async(&mut conn)
                        .await;
                    tracing::error!(projection = self.projection_name(), generation = building,
                        error = %e, "a bulk write failed half-way: the rebuild starts over, the careful way");
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        };
        // Aggregates whose run was not written go the careful way, from their first event of
        // the share on.
        let unwritten: HashSet<Uuid> = runs
            .iter()
            .zip(&written)
            .filter(|(_, ok)| !**ok)
            .map(|(run, _)| run.aggregate_id)
            .collect();
        let mut report = BatchReport::default();
        let mut applied_types: HashMap<String, u64> = HashMap::new();
        let mut goes_later = Vec::with_capacity(inputs.len());
        let mut way_of = ways.iter();
        for input in &inputs {
            let Decoded::Event(e) = &input.decoded else {
                goes_later.push(true);
                continue;
            };
            let way = way_of.next().copied().unwrap_or(Way::Careful);
            let careful = way == Way::Careful || unwritten.contains(&e.aggregate_id);
            if !careful && way == Way::Run {
                report.applied += 1;
                *applied_types.entry(e.event_type.clone()).or_default() += 1;
            } else if !careful {
                report.duplicates += 1;
            }
            goes_later.push(careful);
        }
        let later: Vec<Input> = inputs
            .into_iter()
            .zip(goes_later)
            .filter_map(|(input, later)| later.then_some(input))
            .collect();
        let name = self.projection_name();
        for (event_type, n) in applied_types {
            metrics::counter!(m::EVENTS_PROCESSED_TOTAL, "event_type" => event_type, "projection" => name).increment(n);
        }
        metrics::counter!(m::DUPLICATE_EVENTS_TOTAL, "projection" => name)
            .increment(report.duplicates as u64);
        self.lock().applied_total += i64::try_from(report.applied).unwrap_or(i64::MAX);
        let per_event = started.elapsed().as_secs_f64() / delivered.max(1) as f64;
        let histogram =
            metrics::histogram!(m::EVENT_PROCESSING_DURATION_SECONDS, "projection" => name);
        for _ in 0..(report.applied + report.duplicates) {
            histogram.record(per_event);
        }
        report.delivered = report.applied + report.duplicates;
        debug_assert!(report.delivered + later.len() == delivered);
        if !later.is_empty() {
            let rest = self
                .process_inputs(later, Source::Rebuild(building))
                .await?;
            report.add(&rest);
        }
        Ok(report)
    }
}
