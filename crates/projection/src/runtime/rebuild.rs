//! Building a generation from history and switching to it.
//!
//! A rebuild is an **operation** (a row in `operations`): one replica at a time runs it (the
//! rebuild lock), recording how far its replay went after every page, so that if it dies
//! another replica (or the same one, restarted) carries on from there, or starts over when
//! Redis lost the partial generation. It goes:
//!
//! 1. mark the new generation as *building*: from then on every live apply writes it too (the
//!    apply's generation guard refuses one planned without it), so it misses nothing;
//! 2. replay `event_store` into it, in one snapshot taken after step 1: whatever commits later
//!    reaches it through the live path. The replay writes runs of each aggregate's events,
//!    guarded by its applied version (`bulk`), and falls back to the apply script for what a
//!    run cannot take;
//! 3. switch, atomically: it becomes the active generation, the old one is retired (deleted
//!    later, in bounded steps), readers move over on their next read. Never before the replay
//!    is complete, so no reader ever sees a partial generation; and since every event the old
//!    generation holds is in the new one, no value ever goes backwards.
//!
//! Parked aggregates are re-evaluated on the way: the replay applies their events to the new
//! generation, and those it could apply whole leave the parking at the switch.

use std::time::Instant;

use outbox::control::ControlStore;
use outbox::history;
use outbox::operations::{NewOperation, OperationKind, OperationStore, Progress, Started};
use outbox::snapshots::SnapshotStore;
use streams::read_model::{self, RebuildLock};
use streams::{ReadModelKeys, StreamError, redis};
use time::OffsetDateTime;
use uuid::Uuid;

use super::targets::Source;
use super::{Projector, ReplayReport, rfc3339};
use crate::metrics as m;

/// How often a rebuild records its progress and renews its lock.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

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
    /// The generation being built stopped being the one being built (Redis lost it, or the
    /// build was abandoned): the operation is resumed from the start.
    #[error("the rebuild was interrupted: {0}")]
    Interrupted(String),
}

/// Why a snapshot could not be loaded.
enum SnapshotLoadError {
    /// It no longer exists or cannot be read: the operation fails (retrying cannot help).
    Gone(String),
    /// PostgreSQL or Redis failed: the operation is retried.
    Replay(ReplayError),
}

impl From<ReplayError> for SnapshotLoadError {
    fn from(e: ReplayError) -> Self {
        Self::Replay(e)
    }
}

/// What a call to [`Projector::rebuild`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebuildOutcome {
    /// A new generation is active.
    Switched {
        /// The generation.
        generation: i64,
        /// Events its replay read.
        events: i64,
    },
    /// Another replica holds the rebuild lock: it does the work.
    Busy,
}

impl Projector {
    /// Applies `event_store` (from `after`, exclusive) to the generations live applies write:
    /// the primitive under repairs. Version-guarded, so what is there already is a duplicate;
    /// parked aggregates are left alone; what the projection refuses is dead-lettered.
    /// `progress` is called after every page.
    ///
    /// # Errors
    /// [`ReplayError`] when PostgreSQL or Redis fails.
    pub async fn replay(
        &self,
        after: i64,
        progress: impl FnMut(&ReplayReport),
    ) -> Result<ReplayReport, ReplayError> {
        self.replay_into(after, Source::Repair, progress).await
    }

    /// Resolves the generations and makes sure a usable read model exists, rebuilding here
    /// when one is needed (a first start, a lost or half-lost read model, one that contradicts
    /// itself, an operation left running). Returns `true` while nothing is served and another
    /// replica is building (the caller must not expect reads to work yet).
    ///
    /// # Errors
    /// [`ReplayError`] when PostgreSQL or Redis fails.
    pub async fn heal_if_needed(&self) -> Result<bool, ReplayError> {
        let Some(reason) = self.rebuild_needed().await? else {
            return Ok(false);
        };
        match self.rebuild(&reason).await? {
            RebuildOutcome::Switched { .. } => Ok(false),
            RebuildOutcome::Busy => Ok(self.generation_state().active.is_none()),
        }
    }

    /// Why the read model needs a rebuild now, if it does. Reads the generations, adopts a
    /// generation built before any pointer existed, and takes a pending inconsistency report.
    ///
    /// # Errors
    /// [`ReplayError`] when PostgreSQL or Redis fails.
    pub async fn rebuild_needed(&self) -> Result<Option<String>, ReplayError> {
        self.refresh_generations().await?;
        let Some(pool) = &self.pg else {
            return Ok(None);
        };
        self.refresh_discarded().await?;
        if let Some(op) = OperationStore::new(pool.clone())
            .running(self.projection_name())
            .await?
        {
            return Ok(Some(op.reason));
        }
        let state = self.generations.state();
        let mut conn = self.redis.commands.get().await.map_err(StreamError::from)?;
        let reason = match state.active {
            None => {
                // A read model built before generations were recorded (or whose pointer alone
                // was lost) is adopted if it is whole, instead of being built again.
                let recorded = ControlStore::new(pool.clone())
                    .generation(self.projection_name())
                    .await?;
                let model = self.generations.keys_of(recorded);
                if read_model::is_built(&mut conn, &model).await? {
                    self.generations.activate(&mut conn, recorded).await?;
                    tracing::info!(
                        projection = self.projection_name(),
                        generation = recorded,
                        "adopted the built read model"
                    );
                    None
                } else {
                    Some("no read model: a first start, or Redis lost it".to_owned())
                }
            }
            Some(g) => {
                if read_model::is_built(&mut conn, &self.generations.keys_of(g)).await? {
                    None
                } else {
                    Some(format!(
                        "the marker of generation {g} is missing: Redis lost some of the read model"
                    ))
                }
            }
        };
        let due = self.lock().rebuild_due.take();
        let requested = match (&reason, &due) {
            (None, None) => {
                ControlStore::new(pool.clone())
                    .rebuild_requested(self.projection_name())
                    .await?
            }
            _ => None,
        };
        Ok(reason.or(due).or(requested))
    }

    /// Starts (or resumes) the rebuild operation of this projection and runs it to the end
    /// here: a new generation is built from `event_store` beside the served one and switched
    /// in. One replica at a time.
    ///
    /// # Errors
    /// [`ReplayError`] when PostgreSQL or Redis fails, or the build was interrupted; the
    /// operation then stays running, and whoever calls this next resumes it.
    pub async fn rebuild(&self, reason: &str) -> Result<RebuildOutcome, ReplayError> {
        if self.pg.is_none() {
            return Err(ReplayError::NoDatabase);
        }
        let lock = RebuildLock::new(
            &self.redis.keys,
            self.projection_name(),
            self.settings.replica.clone(),
            self.settings.rebuild_lock_ttl,
        );
        {
            let mut conn = self.redis.commands.get().await.map_err(StreamError::from)?;
            if !lock.try_acquire(&mut conn).await? {
                return Ok(RebuildOutcome::Busy);
            }
        }
        // Whatever asked for a rebuild is answered by this one.
        self.lock().rebuild_due = None;
        let outcome = self.run_rebuild(reason, &lock).await;
        if let Ok(mut conn) = self.redis.commands.get().await {
            let _ = lock.release(&mut conn).await;
        }
        outcome
    }

    /// The next generation number: above every one that exists, existed or is recorded, so a
    /// build never writes over the leftovers of another.
    async fn next_generation(&self) -> Result<i64, ReplayError> {
        let recorded = match &self.pg {
            Some(pool) => {
                ControlStore::new(pool.clone())
                    .generation(self.projection_name())
                    .await?
            }
            None => 0,
        };
        let mut conn = self.redis.commands.get().await.map_err(StreamError::from)?;
        let state = self.generations.refresh(&mut conn).await?;
        let retired: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.redis.keys.retired(self.projection_name()))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(StreamError::from)?;
        let highest = retired
            .iter()
            .filter_map(|g| g.parse::<i64>().ok())
            .chain(state.active)
            .chain(state.building)
            .chain([recorded])
            .max()
            .unwrap_or(0);
        Ok(highest + 1)
    }

    /// Re-reads the events operators discarded (what replays and repairs skip).
    async fn refresh_discarded(&self) -> Result<(), ReplayError> {
        if let Some(pool) = &self.pg {
            let discarded = ControlStore::new(pool.clone())
                .discarded(self.projection_name())
                .await?;
            self.lock().discarded = std::sync::Arc::new(discarded);
        }
        Ok(())
    }

    async fn run_rebuild(
        &self,
        reason: &str,
        lock: &RebuildLock,
    ) -> Result<RebuildOutcome, ReplayError> {
        let pool = self.pg.as_ref().ok_or(ReplayError::NoDatabase)?;
        let name = self.projection_name();
        self.refresh_discarded().await?;
        let store = OperationStore::new(pool.clone());
        let op = match store.running(name).await? {
            Some(op) => op,
            None => {
                let new = NewOperation {
                    owner: Some(&self.settings.replica),
                    ..NewOperation::new(OperationKind::Rebuild, name, reason)
                };
                match store.start(new).await? {
                    Started::New(op) | Started::AlreadyRunning(op) => op,
                }
            }
        };
        let retired = self.redis.keys.retired(name);
        // Carry on where the operation stopped if its generation is still the one it built
        // (its build record names the operation); otherwise start over in a fresh generation,
        // never on top of the leftovers of a build Redis half lost.
        let resume = op.generation > 0 && op.position > 0 && {
            let mut conn = self.redis.commands.get().await.map_err(StreamError::from)?;
            let record: Option<String> = redis::cmd("GET")
                .arg(self.generations.keys_of(op.generation).build_record())
                .query_async(&mut conn)
                .await
                .map_err(StreamError::from)?;
            record.as_deref() == Some(op.id.to_string().as_str())
        };
        let b = if resume {
            op.generation
        } else {
            self.next_generation().await?
        };
        let model = self.generations.keys_of(b);
        if op.kind == OperationKind::Reset && !resume {
            // A reset serves nothing until the new generation is whole: readers answer 503.
            let mut conn = self.redis.commands.get().await.map_err(StreamError::from)?;
            let state = self.generations.refresh(&mut conn).await?;
            if let Some(active) = state.active {
                read_model::withdraw(&mut conn, &self.generations, &retired, active).await?;
                tracing::info!(projection = name, generation = active, operation = %op.id,
                    "reset: the served read model is withdrawn");
            }
        }
        // A rebuild from a snapshot loads it before `b` is written by anyone else, then
        // replays what follows its position.
        let (position, mut applied) = if resume {
            (op.position, op.events_applied)
        } else if let Some(snapshot) = op.snapshot_id {
            match self.load_snapshot(snapshot, &model).await {
                Ok(position) => (position, 0),
                Err(SnapshotLoadError::Gone(why)) => {
                    store.finish(op.id, Some(&why)).await?;
                    tracing::warn!(projection = name, operation = %op.id, error = %why, "rebuild failed");
                    return Err(ReplayError::Interrupted(why));
                }
                Err(SnapshotLoadError::Replay(e)) => return Err(e),
            }
        } else {
            (0, 0)
        };
        {
            let mut conn = self.redis.commands.get().await.map_err(StreamError::from)?;
            let () = redis::cmd("SET")
                .arg(model.build_record())
                .arg(op.id.to_string())
                .query_async(&mut conn)
                .await
                .map_err(StreamError::from)?;
            let state = self.generations.refresh(&mut conn).await?;
            if let Some(other) = state.building.filter(|c| *c != b) {
                read_model::abandon(&mut conn, &self.generations, &retired, other).await?;
            }
            // From here every live apply writes `b` too.
            self.generations.start_building(&mut conn, b).await?;
        }
        store
            .claim(op.id, &self.settings.replica, b, position)
            .await?;
        tracing::info!(projection = name, generation = b, operation = %op.id, reason = %op.reason,
            resumed_at = position, "rebuilding the read model into a new generation");
        let started = Instant::now();
        let types = self.aggregate_types();
        {
            // One snapshot for every page (see `outbox::history`), taken after `b` became a
            // written generation: what commits later reaches `b` through the live path.
            let mut client = pool.get().await.map_err(outbox::OutboxError::from)?;
            let snapshot = history::snapshot(&mut client).await?;
            let total = applied + history::count_after(&snapshot, &types, position).await?;
            let resumed_at = applied;
            // Progress is recorded (and the lock renewed) a few times a second, not per page:
            // two round trips per page would cost the replay a fifth of its speed.
            let mut recorded = Instant::now();
            let mut since = (0u64, Instant::now());
            let commands = self.redis.commands.clone();
            let report = self
                .replay_pages(&snapshot, position, Source::Rebuild(b), |r| {
                    let done = resumed_at + i64::try_from(r.events).unwrap_or(i64::MAX);
                    if recorded.elapsed() < PROGRESS_EVERY && done < total {
                        return Box::pin(std::future::ready(Ok(())));
                    }
                    let fresh = r.events - since.0;
                    let rate = fresh as f64 / since.1.elapsed().as_secs_f64().max(1e-6);
                    since = (r.events, Instant::now());
                    recorded = Instant::now();
                    let progress = Progress {
                        position: r.position,
                        events_applied: done,
                        events_total: total.max(done),
                        rate,
                    };
                    let (store, lock, commands, id) =
                        (store.clone(), lock.clone(), commands.clone(), op.id);
                    Box::pin(async move {
                        store.progress(id, progress).await?;
                        let mut conn = commands.get().await.map_err(StreamError::from)?;
                        lock.renew(&mut conn).await?;
                        Ok(())
                    })
                })
                .await?;
            if report.batch.not_ready > 0 {
                return Err(ReplayError::Interrupted(format!(
                    "generation {b} is no longer the one being built"
                )));
            }
            applied = resumed_at + i64::try_from(report.events).unwrap_or(i64::MAX);
        }
        let info = serde_json::json!({"generation": b, "built_at": rfc3339(OffsetDateTime::now_utc()),
            "events": applied, "operation": op.id.to_string()});
        {
            let mut conn = self.redis.commands.get().await.map_err(StreamError::from)?;
            if !read_model::switch(&mut conn, &self.generations, &retired, b, &info.to_string())
                .await?
            {
                return Err(ReplayError::Interrupted(format!(
                    "generation {b} was no longer the one being built at the switch"
                )));
            }
            let _: i64 = redis::cmd("DEL")
                .arg(model.build_record())
                .query_async(&mut conn)
                .await
                .map_err(StreamError::from)?;
        }
        self.refresh_generations().await?;
        let control = ControlStore::new(pool.clone());
        control.set_generation(name, b).await?;
        // A loss reported before this operation started is in its snapshot; one reported
        // since may have taken events committed after it, so its request stays for the next.
        control.answer_rebuild(name, op.started_at).await?;
        store.finish(op.id, None).await?;
        // Versions were rebuilt: whatever was failing here is settled or will be re-judged
        // against the new read model.
        self.lock().retries.clear();
        let unparked = self.unpark_rebuilt(&model).await?;
        metrics::counter!(m::REBUILDS_TOTAL, "projection" => name).increment(1);
        tracing::info!(
            projection = name,
            generation = b,
            events = applied,
            unparked,
            took_ms = started.elapsed().as_millis() as u64,
            "read model rebuilt; the new generation is served"
        );
        Ok(RebuildOutcome::Switched {
            generation: b,
            events: applied,
        })
    }

    /// Loads snapshot `id` into `model` (a generation nobody writes yet); returns the position
    /// its replay carries on from.
    async fn load_snapshot(
        &self,
        id: Uuid,
        model: &ReadModelKeys,
    ) -> Result<i64, SnapshotLoadError> {
        let pool = self.pg.as_ref().ok_or(ReplayError::NoDatabase)?;
        let store = SnapshotStore::new(pool.clone());
        let snapshot = store
            .get(id)
            .await
            .map_err(ReplayError::from)?
            .filter(|s| s.complete && s.projection == self.projection_name())
            .ok_or_else(|| {
                SnapshotLoadError::Gone(format!("snapshot {id} of this projection does not exist"))
            })?;
        let mut seq = 0;
        let mut conn = self
            .redis
            .commands
            .get()
            .await
            .map_err(|e| ReplayError::from(StreamError::from(e)))?;
        while let Some(bytes) = store.chunk(id, seq).await.map_err(ReplayError::from)? {
            let chunk = streams::snapshot::Chunk::decode(&bytes).map_err(|e| {
                SnapshotLoadError::Gone(format!("snapshot {id} is unreadable: {e}"))
            })?;
            streams::snapshot::load(&mut conn, model, &chunk)
                .await
                .map_err(ReplayError::from)?;
            seq += 1;
        }
        tracing::info!(projection = self.projection_name(), snapshot = %id, position = snapshot.position,
            keys = snapshot.keys, generation = model.generation(), "snapshot loaded; replaying what follows it");
        Ok(snapshot.position)
    }

    /// Lets parked aggregates whose every dead-lettered event now applied in `model` (a
    /// rebuilt generation: the projection code was fixed, say) leave the parking, their dead
    /// letters removed. Returns how many left.
    async fn unpark_rebuilt(&self, model: &ReadModelKeys) -> Result<usize, StreamError> {
        use streams::dlq;
        let mut conn = self.redis.commands.get().await?;
        let parked = dlq::parked(&mut conn, &self.dlq).await?;
        let mut unparked = 0;
        for aggregate in parked.keys().filter_map(|a| uuid::Uuid::parse_str(a).ok()) {
            let chain = dlq::chain(&mut conn, &self.dlq, aggregate).await?;
            let mut last = 0;
            for id in &chain {
                if let Some(entry) = dlq::get(&mut conn, &self.dlq, id).await? {
                    let version = events::EventEnvelope::from_json(entry.field("event").as_bytes())
                        .map_or(i64::MAX, |e| e.aggregate_version);
                    last = last.max(version);
                }
            }
            let applied =
                streams::apply::applied_version(&mut conn, &model.versions(), aggregate).await?;
            if applied < last {
                continue;
            }
            for id in &chain {
                dlq::remove(&mut conn, &self.dlq, id, Some(aggregate)).await?;
            }
            if dlq::unpark_if_empty(&mut conn, &self.dlq, aggregate).await? {
                unparked += 1;
            }
        }
        Ok(unparked)
    }
}
