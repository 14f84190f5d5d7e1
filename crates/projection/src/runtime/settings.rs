//! How a projector runs.

use std::time::Duration;

/// How a projector runs.
#[derive(Debug, Clone)]
pub struct ProjectorSettings {
    /// This replica's name: its consumer name in the groups and its lease owner id. Keep it
    /// stable across restarts (the pod name) and unique among live replicas.
    pub replica: String,
    /// Partitions per module stream.
    pub partitions: u32,
    /// Entries per read, per stream.
    pub batch_size: usize,
    /// How long a read waits for new entries (also bounds how fast control changes are seen).
    pub block: Duration,
    /// Partition lease lifetime; renewed every third of it.
    pub lease_ttl: Duration,
    /// Deliveries before an event is dead-lettered.
    pub max_attempts: u64,
    /// First retry delay; doubles per attempt.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_cap: Duration,
    /// When Redis is found to have gone back in time, how far before the moment it went back
    /// to the replay of `event_store` starts: it must cover how long an event can take from
    /// its commit to its apply (relay and projector lag).
    pub rollback_margin: Duration,
    /// How long a generation stays after it stopped being served before it is deleted:
    /// readers that were reading it at the switch (a list's second round trip) are done by
    /// then.
    pub retired_grace: Duration,
    /// How long the rebuild lock lives without renewal (renewed after every page): a
    /// rebuilder that dies frees it this soon, and another replica resumes its work.
    pub rebuild_lock_ttl: Duration,
}

impl ProjectorSettings {
    /// Defaults for `replica`.
    #[must_use]
    pub fn new(replica: impl Into<String>) -> Self {
        Self {
            replica: replica.into(),
            partitions: 1,
            batch_size: 256,
            block: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(5),
            max_attempts: 5,
            retry_base: Duration::from_millis(100),
            retry_cap: Duration::from_secs(10),
            rollback_margin: Duration::from_secs(120),
            retired_grace: Duration::from_secs(10),
            rebuild_lock_ttl: Duration::from_secs(30),
        }
    }

    /// How long an entry delivered `deliveries` times waits before its next attempt.
    pub(crate) fn backoff(&self, deliveries: u64) -> Duration {
        let exp = u32::try_from(deliveries.saturating_sub(1).min(20)).unwrap_or(20);
        self.retry_base
            .saturating_mul(2u32.saturating_pow(exp))
            .min(self.retry_cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_per_delivery_up_to_the_cap() {
        let s = ProjectorSettings::new("r");
        let ms = |n| s.backoff(n).as_millis();
        assert_eq!((ms(1), ms(2), ms(3), ms(7)), (100, 200, 400, 6400));
        assert_eq!(ms(8), 10_000);
        assert_eq!(ms(u64::MAX), 10_000);
    }
}
