//! Building the read model from history: [`Projector::replay`] applies `event_store` through the
//! same planning and guarded apply as live events, and [`Projector::heal_if_needed`] rebuilds a
//! read model that is missing, one replica at a time.

use std::time::{Duration, Instant};

use streams::StreamError;
use streams::read_model::{self, RebuildLock};
use time::OffsetDateTime;

use super::batch::{Decoded, Input};
use super::{Projector, ReplayReport, Status, rfc3339};

/// How long the rebuild lock lives without renewal: a rebuilder that dies frees it this soon.
const REBUILD_LOCK_TTL: Duration = Duration::from_secs(30);

/// Events read from `event_store` per page of a replay.
const REPLAY_PAGE: i64 = 1000;

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

impl Projector {
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
            let page =
                outbox::history::page(&snapshot, &types, report.position, REPLAY_PAGE).await?;
            let Some(last) = page.last().map(|(p, _)| *p) else {
                break;
            };
            report.events += page.len() as u64;
            let inputs = page
                .into_iter()
                .map(|(_, e)| Input {
                    delivery: None,
                    decoded: Decoded::Event(e),
                })
                .collect();
            report.batch.add(&self.process_inputs(inputs, false).await?);
            report.position = last;
            progress(&report);
        }
        Ok(report)
    }

    /// Resolves the active generation, then, if its read model is missing (no marker: Redis
    /// lost its data, or this is a first start), rebuilds it from `event_store`, one replica at
    /// a time; the others wait. Returns `true` while the read model is not ready (the caller
    /// must not consume).
    ///
    /// # Errors
    /// [`ReplayError`] when PostgreSQL or Redis fails.
    pub async fn heal_if_needed(&self) -> Result<bool, ReplayError> {
        let lock = RebuildLock::new(
            &self.redis.keys,
            self.projection_name(),
            self.settings.replica.clone(),
            REBUILD_LOCK_TTL,
        );
        let model = {
            let mut conn = self.redis.commands.get().await.map_err(StreamError::from)?;
            let before = self.generation.get();
            let now = self.generation.refresh(&mut conn).await?;
            if now != before {
                tracing::info!(
                    projection = self.projection_name(),
                    from = before,
                    to = now,
                    "active generation changed"
                );
            }
            let model = self.generation.keys();
            if self.pg.is_none() || read_model::is_built(&mut conn, &model).await? {
                return Ok(false);
            }
            if !lock.try_acquire(&mut conn).await? {
                return Ok(true);
            }
            model
        };
        tracing::warn!(
            projection = self.projection_name(),
            "read model missing (first start, or Redis lost its data); rebuilding from event_store"
        );
        self.heartbeat(Status::Rebuilding).await;
        self.ensure_groups().await?;
        let started = Instant::now();
        let pools = self.redis.clone();
        let replayed = self
            .replay(0, |_| {
                // Keep the rebuild lock while working; best effort, the next page renews again.
                let (pools, lock) = (pools.clone(), lock.clone());
                tokio::spawn(async move {
                    if let Ok(mut c) = pools.commands.get().await {
                        let _ = lock.renew(&mut c).await;
                    }
                });
            })
            .await?;
        // Versions were rebuilt: whatever was failing here is settled or will be re-judged
        // against the new read model.
        self.lock().retries.clear();
        {
            let mut conn = self.redis.commands.get().await.map_err(StreamError::from)?;
            let info = serde_json::json!({"generation": model.generation(),
                "built_at": rfc3339(OffsetDateTime::now_utc()), "events": replayed.events});
            read_model::mark_built(&mut conn, &model, &info.to_string()).await?;
            lock.release(&mut conn).await?;
        }
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
}
