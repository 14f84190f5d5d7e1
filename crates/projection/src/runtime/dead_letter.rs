//! Moving entries to the dead letters: unreadable entries alone, an event that failed for the
//! last time as the head of its aggregate's parked chain, and the live events of a parked
//! aggregate behind it. The move and the acknowledgement are one atomic step
//! ([`streams::dlq::move_to_dead_letters`]), so nothing is acknowledged unless it was written.

use std::collections::BTreeSet;

use events::EventEnvelope;
use streams::StreamError;
use streams::consumer::Delivery;
use streams::dlq::{self, Mode, Moved, NewDeadLetter};
use time::OffsetDateTime;
use uuid::Uuid;

use super::batch::{Decoded, Entry, Input};
use super::{BatchReport, Projector, rfc3339};
use crate::metrics as m;

/// How an entry enters the dead letters, and why.
pub(super) struct Verdict<'a> {
    pub(super) mode: Mode,
    pub(super) error_type: &'a str,
    pub(super) error: &'a str,
}

/// When a stream entry was first delivered: its id's millisecond part.
fn entry_time(entry_id: &str) -> OffsetDateTime {
    let ms: i128 = entry_id
        .split('-')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl Projector {
    /// Moves one entry (`d`, holding `event` when it could be read, as `raw`) to the dead
    /// letters; returns what the move did.
    pub(super) async fn dead_letter(
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
                    self.lock().retries.forget(e.aggregate_id);
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

    /// Phase 1 of a batch: unreadable entries go straight to the dead letters, alone. Returns
    /// the readable events, in order.
    pub(super) async fn divert_unreadable<'a>(
        &self,
        inputs: &'a [Input],
        report: &mut BatchReport,
    ) -> Result<Vec<Entry<'a>>, StreamError> {
        let mut events = Vec::with_capacity(inputs.len());
        for input in inputs {
            let d = input.delivery.as_ref();
            match &input.decoded {
                Decoded::Event(e) => events.push((d, e)),
                Decoded::Bad(error_type, reason) => {
                    let raw = d
                        .and_then(|d| d.envelope.as_deref())
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default();
                    let verdict = Verdict {
                        mode: Mode::Alone,
                        error_type,
                        error: reason,
                    };
                    self.dead_letter(d, None, &raw, verdict, report).await?;
                }
            }
        }
        Ok(events)
    }

    /// Phase 3: events of parked aggregates follow their head into the dead letters. Returns
    /// the rest, in order.
    pub(super) async fn divert_parked<'a>(
        &self,
        events: Vec<Entry<'a>>,
        parked: &BTreeSet<Uuid>,
        report: &mut BatchReport,
    ) -> Result<Vec<Entry<'a>>, StreamError> {
        let mut live = Vec::with_capacity(events.len());
        for (d, e) in events {
            if parked.contains(&e.aggregate_id) {
                let verdict = Verdict {
                    mode: Mode::Follow,
                    error_type: "parked",
                    error: "parked behind an earlier event of the aggregate",
                };
                // Not parked after all (an operator unparked it meanwhile): it goes on.
                if self
                    .dead_letter(d, Some(e), &e.to_json(), verdict, report)
                    .await?
                    != Moved::NotParked
                {
                    continue;
                }
            }
            live.push((d, e));
        }
        Ok(live)
    }
}
