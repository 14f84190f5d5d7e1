//! Repairs from `event_store`: the versions a read model missed (a gap: entries lost between
//! PostgreSQL and Redis), and everything Redis may have lost when it went back in time. Both
//! go through the same planning and guarded apply as live events, so a repair racing the live
//! path or another repair applies each event once.

use std::collections::BTreeMap;

use outbox::history::{self, VersionRange};
use streams::StreamError;
use time::OffsetDateTime;

use super::batch::{Decoded, Input};
use super::targets::{Missing, Source};
use super::{BatchReport, Projector, ReplayError, ReplayReport};
use crate::metrics as m;

impl Projector {
    /// Reads the versions `missing` names from `event_store` (one statement for the whole
    /// batch's gaps) and applies them to the written generations. Returns how many events it
    /// read; 0 when there is no database, nothing was found, or PostgreSQL failed (the gapped
    /// events then wait and are retried: a gap is never poison).
    pub(super) async fn repair(
        &self,
        missing: &[Missing],
        report: &mut BatchReport,
    ) -> Result<usize, StreamError> {
        let Some(pool) = &self.pg else {
            return Ok(0);
        };
        let mut ranges: BTreeMap<uuid::Uuid, (i64, i64)> = BTreeMap::new();
        for m in missing.iter().filter(|m| m.from <= m.to) {
            let r = ranges.entry(m.aggregate).or_insert((m.from, m.to));
            *r = (r.0.min(m.from), r.1.max(m.to));
        }
        let ranges: Vec<VersionRange> = ranges
            .into_iter()
            .map(|(aggregate_id, (from, to))| VersionRange {
                aggregate_id,
                from,
                to,
            })
            .collect();
        if ranges.is_empty() {
            return Ok(0);
        }
        let found = match pool.get().await {
            Ok(client) => history::versions(&**client, &ranges).await,
            Err(e) => Err(e.into()),
        };
        let events = match found {
            Ok(events) => events,
            Err(e) => {
                tracing::debug!(projection = self.projection_name(), error = %resilience::error_chain(&e),
                    "cannot read missing versions from event_store; the gapped events wait");
                return Ok(0);
            }
        };
        let read = events.len();
        if read == 0 {
            return Ok(0);
        }
        let inputs = events
            .into_iter()
            .map(|e| Input {
                delivery: None,
                decoded: Decoded::Event(e),
            })
            .collect();
        let done = Box::pin(self.process_inputs(inputs, Source::Repair)).await?;
        metrics::counter!(m::GAP_REPAIRS_TOTAL, "projection" => self.projection_name())
            .increment(done.applied as u64);
        if done.applied > 0 {
            tracing::info!(
                projection = self.projection_name(),
                aggregates = ranges.len(),
                events = done.applied,
                "repaired versions the read model missed, from event_store"
            );
        }
        report.repaired += done.applied;
        report.dead_lettered += done.dead_lettered;
        Ok(read)
    }

    /// Replays every event recorded since `since` into the written generations: what Redis
    /// lost when it went back in time (the canary tells from when). Version-guarded, so what
    /// Redis kept is a duplicate.
    ///
    /// # Errors
    /// [`ReplayError`] when PostgreSQL or Redis fails.
    pub async fn replay_since(&self, since: OffsetDateTime) -> Result<ReplayReport, ReplayError> {
        let pool = self.pg.as_ref().ok_or(ReplayError::NoDatabase)?;
        let from = {
            let client = pool.get().await.map_err(outbox::OutboxError::from)?;
            history::position_before(&**client, since).await?
        };
        self.replay_into(from, Source::Repair, |_| {}).await
    }

    /// Replays `event_store` after position `after` as `source`, page by page in one snapshot,
    /// calling `progress` after each page.
    pub(super) async fn replay_into(
        &self,
        after: i64,
        source: Source,
        mut progress: impl FnMut(&ReplayReport),
    ) -> Result<ReplayReport, ReplayError> {
        let pool = self.pg.as_ref().ok_or(ReplayError::NoDatabase)?;
        self.refresh_generations().await?;
        // One snapshot for every page: see `outbox::history` for the gap it prevents.
        let mut client = pool.get().await.map_err(outbox::OutboxError::from)?;
        let snapshot = history::snapshot(&mut client).await?;
        self.replay_pages(&snapshot, after, source, |r| {
            progress(r);
            Box::pin(std::future::ready(Ok(())))
        })
        .await
    }

    /// The aggregate types of this projection's events.
    pub(super) fn aggregate_types(&self) -> Vec<String> {
        self.projection
            .module()
            .aggregate_types
            .iter()
            .map(|t| (*t).to_owned())
            .collect()
    }
}
