//! Taking a snapshot of a projection's served read model.
//!
//! A snapshot must be a state the projection was really in: its keys and its applied versions
//! copied at one instant, or shared keys (a user's counters, fed by many aggregates) would
//! disagree with the versions and a rebuild from it would count some events twice. Redis has
//! no cheap atomic copy of a key range, so the projection is **held**: every replica pauses
//! (a hold expires by itself, so a taker that dies never leaves it paused), the copy is read at
//! leisure in bounded chunks into PostgreSQL, and the hold ends. Live events wait meanwhile and
//! are caught up after (the snapshot of a 250k-task read model holds them a few seconds).
//!
//! Its position is then worked out from the versions it holds
//! ([`outbox::snapshots::covered_position`]), so a rebuild from it replays only what follows.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use events::ModuleSpec;
use outbox::control::ControlStore;
use outbox::operations::OperationStore;
use outbox::snapshots::{Snapshot, SnapshotStore, covered_position};
use streams::snapshot::{Copier, Data};
use streams::{Generations, RedisPools, StreamError};
use uuid::Uuid;

/// How a snapshot is taken.
#[derive(Debug, Clone)]
pub struct SnapshotSettings {
    /// Who takes it (recorded as the holder).
    pub taker: String,
    /// How long a hold lasts unless renewed (a dead taker's hold ends after this).
    pub hold_ttl: Duration,
    /// How long to wait for every live replica to report it paused.
    pub pause_wait: Duration,
    /// A replica whose last report is older than this is gone (not waited for).
    pub stale_after: Duration,
    /// Snapshots kept per projection (older ones are deleted after a new one).
    pub keep: i64,
    /// The build taking it.
    pub app_version: String,
}

impl SnapshotSettings {
    /// Defaults for `taker`: holds of 15 s renewed as the copy goes, 10 s for replicas to
    /// pause, replicas silent for 5 s counted gone, 3 snapshots kept.
    #[must_use]
    pub fn new(taker: impl Into<String>, app_version: impl Into<String>) -> Self {
        Self {
            taker: taker.into(),
            hold_ttl: Duration::from_secs(15),
            pause_wait: Duration::from_secs(10),
            stale_after: Duration::from_secs(5),
            keep: 3,
            app_version: app_version.into(),
        }
    }
}

/// Why no snapshot was taken. Nothing is left behind in any case.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// An operation (a rebuild, a reset, another snapshot's hold) is under way.
    /// # Handling: 409 `conflict`.
    #[error("{0}")]
    Busy(String),
    /// Nothing is served to copy (a first start, a reset under way).
    /// # Handling: 409 `conflict`.
    #[error("the projection has no served read model to copy")]
    NothingServed,
    /// A replica did not pause in time (it is stuck in a long batch, or cut off from
    /// PostgreSQL). # Handling: 503, retry.
    #[error("replica {0} did not pause within the wait")]
    NotPaused(String),
    /// PostgreSQL failed. # Handling: 503 when unavailable, else 500.
    #[error(transparent)]
    Outbox(#[from] outbox::OutboxError),
    /// Redis failed. # Handling: 503 when unavailable, else 500.
    #[error(transparent)]
    Streams(#[from] StreamError),
}

/// Takes a snapshot of `spec`'s served read model; see the module's documentation.
///
/// # Errors
/// [`SnapshotError`].
pub async fn take(
    pg: &outbox::Pool,
    redis: &RedisPools,
    spec: &ModuleSpec,
    settings: &SnapshotSettings,
) -> Result<Snapshot, SnapshotError> {
    let name = spec.projection;
    if let Some(op) = OperationStore::new(pg.clone()).running(name).await? {
        return Err(SnapshotError::Busy(format!(
            "operation {} ({}) is running on {name}",
            op.id,
            op.kind.as_str()
        )));
    }
    // One holder per call: two snapshots asked of one admin-api must not share a hold.
    let settings = &SnapshotSettings {
        taker: format!("{}/{}", settings.taker, Uuid::now_v7()),
        ..settings.clone()
    };
    let control = ControlStore::new(pg.clone());
    let Some(since) = control
        .hold(name, &settings.taker, settings.hold_ttl)
        .await?
    else {
        return Err(SnapshotError::Busy(format!(
            "{name} is held by another snapshot"
        )));
    };
    let outcome = copy_held(pg, redis, spec, settings, since).await;
    // The hold ends whatever happened; if this fails it expires by itself.
    if let Err(e) = control.release(name, &settings.taker).await {
        tracing::warn!(projection = name, error = %resilience::error_chain(&e), "cannot end the snapshot's hold; it expires by itself");
    }
    let (id, versions, keys) = outcome?;
    let store = SnapshotStore::new(pg.clone());
    let types: Vec<String> = spec
        .aggregate_types
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let finished = async {
        let position = covered_position(pg, &types, &versions, Duration::from_secs(10)).await?;
        store.complete(id, position, keys).await
    }
    .await;
    match finished {
        Ok(snapshot) => {
            let pruned = store.prune(name, settings.keep).await.unwrap_or(0);
            tracing::info!(projection = name, snapshot = %snapshot.id, position = snapshot.position,
                keys = snapshot.keys, bytes = snapshot.bytes, pruned, "snapshot taken");
            Ok(snapshot)
        }
        Err(e) => {
            let _ = store.delete(id).await;
            Err(e.into())
        }
    }
}

/// Waits for the replicas to pause, then copies the active generation into a new (still
/// incomplete) snapshot; returns it with the versions it holds and its number of keys.
async fn copy_held(
    pg: &outbox::Pool,
    redis: &RedisPools,
    spec: &ModuleSpec,
    settings: &SnapshotSettings,
    since: time::OffsetDateTime,
) -> Result<(Uuid, HashMap<Uuid, i64>, i64), SnapshotError> {
    let name = spec.projection;
    wait_paused(pg, name, settings, since).await?;
    let generations = Generations::new(
        &redis.keys,
        spec.name,
        spec.projection,
        streams::GenerationState::default(),
    );
    let mut conn = redis.commands.get().await.map_err(StreamError::from)?;
    let Some(active) = generations.refresh(&mut conn).await?.active else {
        return Err(SnapshotError::NothingServed);
    };
    let store = SnapshotStore::new(pg.clone());
    let id = store.begin(name, active, &settings.app_version).await?;
    let copied = async {
        let control = ControlStore::new(pg.clone());
        let mut copier = Copier::new(&generations.keys_of(active));
        let mut versions = HashMap::new();
        let (mut seq, mut keys) = (0i32, 0i64);
        let mut renewed = Instant::now();
        while let Some(chunk) = copier.next_chunk(&mut conn).await? {
            for piece in &chunk.pieces {
                keys += i64::from(piece.first);
                if let ("versions", Data::Hash(fields)) = (piece.key.as_str(), &piece.data) {
                    versions.extend(fields.iter().filter_map(|(a, v)| {
                        Some((Uuid::parse_str(a).ok()?, v.parse::<i64>().ok()?))
                    }));
                }
            }
            store.put_chunk(id, seq, &chunk.encode()).await?;
            seq += 1;
            if renewed.elapsed() >= settings.hold_ttl / 3 {
                renewed = Instant::now();
                control
                    .hold(name, &settings.taker, settings.hold_ttl)
                    .await?;
            }
        }
        // A switch cannot happen while no operation runs, but a hold that lapsed (a copy
        // slower than its renewals) must not pass for a consistent copy.
        let still = control.projection(name).await?;
        if !still.is_some_and(|p| p.held && p.hold_by.as_deref() == Some(settings.taker.as_str())) {
            return Err(SnapshotError::NotPaused(
                "(the hold lapsed during the copy)".to_owned(),
            ));
        }
        Ok((versions, keys))
    }
    .await;
    match copied {
        Ok((versions, keys)) => Ok((id, versions, keys)),
        Err(e) => {
            let _ = store.delete(id).await;
            Err(e)
        }
    }
}

/// Waits until every live replica of `projection` reported `paused` (or `stopped`) after
/// `since`.
async fn wait_paused(
    pg: &outbox::Pool,
    projection: &str,
    settings: &SnapshotSettings,
    since: time::OffsetDateTime,
) -> Result<(), SnapshotError> {
    let control = ControlStore::new(pg.clone());
    let deadline = Instant::now() + settings.pause_wait;
    loop {
        let workers = control.workers(projection).await?;
        let waiting: Vec<&str> = workers
            .iter()
            .filter(|w| w.status != "stopped")
            .filter(|w| w.age.is_some_and(|age| age < settings.stale_after))
            .filter(|w| !(w.status == "paused" && w.heartbeat_at.is_some_and(|at| at >= since)))
            .map(|w| w.worker.as_str())
            .collect();
        let Some(first) = waiting.first() else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(SnapshotError::NotPaused((*first).to_owned()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
