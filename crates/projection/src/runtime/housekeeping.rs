//! Keeping a replica in its place among its peers: consumer groups, partition leases (and the
//! takeover of a new partition's pending entries), dead consumers, lag, and heartbeats.

use outbox::control::{ControlStore, Heartbeat};
use streams::{StreamError, consumer};

use super::{Projector, Status};
use crate::metrics as m;

impl Projector {
    /// Creates the consumer group on every partition stream (idempotent).
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn ensure_groups(&self) -> Result<(), StreamError> {
        let mut conn = self.redis.commands.get().await?;
        for stream in self.routing.streams(self.projection.module().name) {
            if consumer::ensure_group(&mut conn, &stream, &self.group).await? {
                tracing::info!(stream = %stream, group = %self.group, "consumer group created");
            }
        }
        Ok(())
    }

    /// Renews and rebalances this replica's leases; takes over the pending entries of any
    /// partition newly acquired, and applies them. Returns the partitions held.
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn tick_leases(&self) -> Result<Vec<u32>, StreamError> {
        let held = {
            let mut conn = self.redis.commands.get().await?;
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
            let claimed = {
                let mut conn = self.redis.commands.get().await?;
                consumer::ensure_group(&mut conn, &stream, &self.group).await?;
                consumer::claim_all(&mut conn, &stream, &self.group, &self.settings.replica).await?
            };
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
            }
        };
        if let Err(e) = ControlStore::new(pool.clone()).heartbeat(&h).await {
            tracing::debug!(error = %resilience::error_chain(&e), "heartbeat failed");
        }
    }
}
