//! Keeping a replica in its place among its peers: consumer groups, partition leases (and the
//! takeover of a new partition's pending entries), dead consumers, lag, heartbeats (and the
//! refusal to run twice under one name), and the deletion of retired generations.

use std::time::Duration;

use outbox::control::{ControlStore, Heartbeat};
use streams::{StreamError, consumer};

use super::{Projector, ReplayError, Status};
use crate::metrics as m;

/// Keys deleted per step of a retired generation's deletion: bounded, so Redis serves others
/// in between.
const RETIRED_STEP: usize = 1000;

/// Another live process runs under this replica's name.
///
/// # Handling
/// Refuse to start: two processes sharing one name share a consumer and the leases, so each
/// would apply what the other was given.
#[derive(Debug, thiserror::Error)]
#[error(
    "another live projector-worker runs as {worker:?} (it reported {age_ms} ms ago): every \
     replica needs its own CONSUMER_NAME (use the pod name); refusing to start"
)]
pub struct DuplicateReplica {
    /// The shared name.
    pub worker: String,
    /// How long ago the other process reported.
    pub age_ms: u64,
}

impl Projector {
    /// Creates the consumer group on every partition stream (idempotent). A group created
    /// while a read model exists means Redis lost the stream: see [`Self::groups_created`].
    ///
    /// # Errors
    /// [`ReplayError`] when Redis or PostgreSQL fails.
    pub async fn ensure_groups(&self) -> Result<(), ReplayError> {
        let mut created = vec![];
        {
            let mut conn = self.redis.commands.get().await.map_err(StreamError::from)?;
            for stream in self.routing.streams(self.projection.module().name) {
                if consumer::ensure_group(&mut conn, &stream, &self.group).await? {
                    tracing::info!(stream = %stream, group = %self.group, "consumer group created");
                    created.push(stream);
                }
            }
        }
        self.groups_created(&created).await
    }

    /// The groups on `streams` had to be created. With a read model served or being built,
    /// that means Redis lost those streams, and with them the entries nobody had applied yet
    /// (their outbox rows are gone): nothing else tells, as no later entry of those
    /// aggregates may come to show a gap. So a rebuild is requested, in PostgreSQL, where the
    /// request outlives this replica (the group it recreated no longer shows the loss). At a
    /// first start (no generation yet) the first build answers instead.
    async fn groups_created(&self, streams: &[String]) -> Result<(), ReplayError> {
        let Some(pool) = &self.pg else {
            return Ok(());
        };
        if streams.is_empty() {
            return Ok(());
        }
        self.refresh_generations().await?;
        let state = self.generation_state();
        if state.active.is_none() && state.building.is_none() {
            return Ok(());
        }
        let reason = format!(
            "Redis lost {}: entries not yet applied went with it",
            streams.join(", ")
        );
        tracing::warn!(projection = self.projection_name(), reason = %reason,
            "a stream was lost; rebuilding the read model from event_store (the served generation serves meanwhile)");
        ControlStore::new(pool.clone())
            .request_rebuild(self.projection_name(), &reason)
            .await?;
        Ok(())
    }

    /// Renews and rebalances this replica's leases; takes over the pending entries of any
    /// partition newly acquired, and applies them. Returns the partitions held.
    ///
    /// # Errors
    /// [`ReplayError`] when Redis (or PostgreSQL, for a lost stream) fails.
    pub async fn tick_leases(&self) -> Result<Vec<u32>, ReplayError> {
        let held = {
            let mut conn = self.redis.commands.get().await.map_err(StreamError::from)?;
            self.leases.tick(&mut conn).await?
        };
        let previous = std::mem::replace(&mut self.lock().held, held.partitions.clone());
        if previous != held.partitions {
            tracing::info!(projection = self.projection_name(), held = ?held.partitions, live = held.live, "partition leases changed");
        }
        metrics::gauge!(m::PARTITIONS_HELD, "projection" => self.projection_name())
            .set(held.partitions.len() as f64);
        for p in held.partitions.iter().filter(|p| !previous.contains(p)) {
            let stream = self.stream(*p);
            let (created, claimed) = {
                let mut conn = self.redis.commands.get().await.map_err(StreamError::from)?;
                let created = consumer::ensure_group(&mut conn, &stream, &self.group).await?;
                let claimed =
                    consumer::claim_all(&mut conn, &stream, &self.group, &self.settings.replica)
                        .await?;
                (created, claimed)
            };
            if created {
                self.groups_created(std::slice::from_ref(&stream)).await?;
            }
            if !claimed.is_empty() {
                tracing::info!(
                    projection = self.projection_name(),
                    partition = p,
                    entries = claimed.len(),
                    "took over pending entries of the previous owner"
                );
                self.process(claimed).await?;
            }
        }
        Ok(held.partitions)
    }

    /// Removes consumers of held streams that are no longer live replicas and have nothing
    /// pending (their work was claimed by the new owners).
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn remove_dead_consumers(&self) -> Result<usize, StreamError> {
        let mut conn = self.redis.commands.get().await?;
        let live =
            streams::lease::live_members(&mut conn, &self.redis.keys, self.projection_name())
                .await?;
        let mut removed = 0;
        for p in self.held() {
            let stream = self.stream(p);
            for c in consumer::consumers(&mut conn, &stream, &self.group).await? {
                if c.pending == 0 && c.name != self.settings.replica && !live.contains(&c.name) {
                    consumer::delete_consumer(&mut conn, &stream, &self.group, &c.name).await?;
                    tracing::info!(projection = self.projection_name(), consumer = %c.name, stream = %stream, "removed a dead consumer");
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Records `cqrs_consumer_lag_messages` per stream and returns the total lag and pending
    /// count of the group over all partitions (both 0 when the projection is idle).
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn observe_lag(&self) -> Result<(usize, usize), StreamError> {
        let mut conn = self.redis.commands.get().await?;
        let (mut lag, mut pending) = (0, 0);
        for stream in self.routing.streams(self.projection.module().name) {
            let groups = consumer::groups(&mut conn, &stream).await?;
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

    /// Writes this replica's heartbeat (best effort: a failure is logged at debug).
    pub async fn heartbeat(&self, status: Status) {
        let Some(pool) = &self.pg else { return };
        let h = {
            let s = self.lock();
            Heartbeat {
                projection: self.projection_name().to_owned(),
                worker: self.settings.replica.clone(),
                status: status.as_str().to_owned(),
                partitions: s
                    .held
                    .iter()
                    .filter_map(|p| i32::try_from(*p).ok())
                    .collect(),
                events_applied: s.applied_total,
                last_event_id: s.last_event.map(|(id, _)| id),
                last_applied_at: s.last_event.map(|(_, t)| t),
                last_error: s.last_error.clone(),
                heartbeat_at: None,
                instance: Some(self.instance.clone()),
                age: None,
            }
        };
        if let Err(e) = ControlStore::new(pool.clone()).heartbeat(&h).await {
            tracing::debug!(error = %resilience::error_chain(&e), "heartbeat failed");
        }
    }

    /// Deletes a bounded step of the oldest retired generation, if one is due.
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn delete_retired(&self) -> Result<usize, StreamError> {
        let mut conn = self.redis.commands.get().await?;
        streams::read_model::delete_retired_step(
            &mut conn,
            &self.generations,
            &self.redis.keys.retired(self.projection_name()),
            self.settings.retired_grace,
            RETIRED_STEP,
        )
        .await
    }

    /// Refuses to run when another live process reports under this replica's name. A report
    /// from another process that is fresh may be this replica's own previous life (killed a
    /// moment ago): it is watched for two heartbeat periods, and only one that goes on being
    /// written means a live twin. Without a database it checks nothing.
    ///
    /// # Errors
    /// [`DuplicateReplica`] naming the setting; PostgreSQL failing lets it start (the leases
    /// still keep two owners from applying at once).
    pub async fn ensure_sole_replica(&self) -> Result<(), DuplicateReplica> {
        let Some(pool) = &self.pg else { return Ok(()) };
        let control = ControlStore::new(pool.clone());
        let look = || async {
            control
                .worker_heartbeat(self.projection_name(), &self.settings.replica)
                .await
                .ok()
                .flatten()
        };
        let Some(first) = look().await else {
            return Ok(());
        };
        let other = first.instance.as_deref() != Some(self.instance.as_str());
        if !other || first.status == "stopped" || first.age > Duration::from_secs(3) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(2500)).await;
        match look().await {
            Some(again)
                if again.instance == first.instance
                    && again.status != "stopped"
                    && again.written_at != first.written_at =>
            {
                Err(DuplicateReplica {
                    worker: self.settings.replica.clone(),
                    age_ms: u64::try_from(again.age.as_millis()).unwrap_or(u64::MAX),
                })
            }
            _ => Ok(()),
        }
    }
}
