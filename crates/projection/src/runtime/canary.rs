//! Noticing that Redis went back in time.
//!
//! A failover to a replica that lagged (Redis replication is asynchronous), or a restore of an
//! older snapshot, silently loses the last writes: stream entries whose outbox rows are gone,
//! and applies already acknowledged. Nothing in Redis tells. So the projectors keep a canary:
//! an epoch advanced in Redis, then in PostgreSQL, every [`CANARY_PERIOD`]. Redis answering an
//! older epoch than PostgreSQL means it went back to about the time its epoch was written; the
//! events recorded since then (and a margin) are replayed from `event_store` into the read
//! model, version-guarded, so what Redis kept is a duplicate and what it lost is applied.
//!
//! A rollback shorter than one period can go unnoticed; what it lost is then mended by the
//! next event of each aggregate it touched (a gap, repaired), or by the next rebuild.

use std::time::Duration;

use outbox::control::ControlStore;
use streams::StreamError;
use streams::read_model::{self, RebuildLock};
use time::OffsetDateTime;

use super::{Projector, ReplayError};
use crate::metrics as m;

/// How often the canary advances.
pub const CANARY_PERIOD: Duration = Duration::from_millis(500);

/// How long one replica may hold the repair after a rollback before another may take it.
const REPAIR_LOCK_TTL: Duration = Duration::from_secs(120);

fn now_ms() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// What a canary check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanaryCheck {
    /// Redis is where it was: the canary advanced (or another replica advanced it).
    Healthy,
    /// Redis went back in time; what it lost was replayed (by this replica, or another
    /// holds the repair).
    RolledBack,
    /// Redis lost the canary itself, with whatever else: a rebuild is due.
    Lost,
}

impl Projector {
    /// Checks the canary and advances it; on finding Redis went back in time, replays what it
    /// lost (one replica does). Without a database it does nothing.
    ///
    /// # Errors
    /// [`ReplayError`] when PostgreSQL or Redis fails.
    pub async fn check_canary(&self) -> Result<CanaryCheck, ReplayError> {
        let Some(pool) = &self.pg else {
            return Ok(CanaryCheck::Healthy);
        };
        let name = self.projection_name();
        let control = ControlStore::new(pool.clone());
        let key = self.redis.keys.canary(name);
        let recorded = control.canary(name).await?;
        let mut conn = self.redis.commands.get().await.map_err(StreamError::from)?;
        match read_model::canary(&mut conn, &key).await? {
            None if recorded.epoch == 0 => {
                if read_model::advance_canary(&mut conn, &key, None, 1, now_ms()).await? {
                    control.advance_canary(name, 0, 1).await?;
                }
                Ok(CanaryCheck::Healthy)
            }
            None => {
                // Redis lost the canary: everything, or a part of it. With nothing served or
                // built the first start's path rebuilds; a read model still served (or being
                // built) may be missing any of its keys, so it is rebuilt beside (zero
                // downtime). The request is kept in PostgreSQL: the canary is recreated below,
                // and nothing would show the loss again were this replica to die now.
                let state = self.generation_state();
                if state.active.is_some() || state.building.is_some() {
                    control
                        .request_rebuild(name, "the canary is gone: Redis lost data")
                        .await?;
                }
                read_model::advance_canary(&mut conn, &key, None, recorded.epoch, now_ms()).await?;
                Ok(CanaryCheck::Lost)
            }
            Some((epoch, at_ms)) if epoch < recorded.epoch => {
                let lock = RebuildLock::new(
                    &self.redis.keys,
                    &format!("{name}:repair"),
                    self.settings.replica.clone(),
                    REPAIR_LOCK_TTL,
                );
                if !lock.try_acquire(&mut conn).await? {
                    return Ok(CanaryCheck::RolledBack);
                }
                drop(conn);
                let margin =
                    i64::try_from(self.settings.rollback_margin.as_millis()).unwrap_or(i64::MAX);
                let since = OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(at_ms.saturating_sub(margin)) * 1_000_000,
                )
                .unwrap_or(OffsetDateTime::UNIX_EPOCH);
                metrics::counter!(m::REDIS_ROLLBACKS_TOTAL, "projection" => name).increment(1);
                tracing::warn!(projection = name, redis_epoch = epoch, recorded_epoch = recorded.epoch,
                    since = %super::rfc3339(since),
                    "Redis went back in time (a failover to a lagging replica, or an older snapshot restored); replaying what it lost from event_store");
                let replayed = self.replay_since(since).await;
                let mut conn = self.redis.commands.get().await.map_err(StreamError::from)?;
                if let Ok(report) = &replayed {
                    read_model::advance_canary(
                        &mut conn,
                        &key,
                        Some(epoch),
                        recorded.epoch,
                        now_ms(),
                    )
                    .await?;
                    tracing::info!(
                        projection = name,
                        events = report.events,
                        applied = report.batch.applied,
                        "replayed what Redis lost"
                    );
                }
                let _ = lock.release(&mut conn).await;
                replayed.map(|_| CanaryCheck::RolledBack)
            }
            Some((epoch, _)) => {
                // Redis first: were it to go back between the two, it would show behind.
                if read_model::advance_canary(&mut conn, &key, Some(epoch), epoch + 1, now_ms())
                    .await?
                {
                    control
                        .advance_canary(name, recorded.epoch, epoch + 1)
                        .await?;
                }
                Ok(CanaryCheck::Healthy)
            }
        }
    }
}
