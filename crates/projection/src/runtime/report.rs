//! What the runtime reports: per batch, per replay, and the status in a replica's heartbeat.

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Entries handled.
    pub delivered: usize,
    /// Events applied.
    pub applied: usize,
    /// Duplicates acknowledged without change.
    pub duplicates: usize,
    /// Events waiting behind a failing predecessor (not counted as attempts).
    pub waiting: usize,
    /// Events that failed and will be retried.
    pub retrying: usize,
    /// Entries moved to the dead letters.
    pub dead_lettered: usize,
    /// Entries left alone because this replica lost the partition's lease.
    pub fenced: usize,
    /// Entries left pending because the read model is missing or contradicts itself (Redis
    /// lost some of it): they wait for the rebuild instead of using up attempts.
    pub not_ready: usize,
    /// Events the read model missed, read back from `event_store` and applied first.
    pub repaired: usize,
}

impl BatchReport {
    pub(crate) fn add(&mut self, o: &Self) {
        self.delivered += o.delivered;
        self.applied += o.applied;
        self.duplicates += o.duplicates;
        self.waiting += o.waiting;
        self.retrying += o.retrying;
        self.dead_lettered += o.dead_lettered;
        self.fenced += o.fenced;
        self.not_ready += o.not_ready;
        self.repaired += o.repaired;
    }
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Events read from `event_store`.
    pub events: u64,
    /// What became of them.
    pub batch: BatchReport,
    /// The last `event_store` position replayed.
    pub position: i64,
}

/// The status a replica reports in its heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Consuming.
    Running,
    /// Obeying a pause.
    Paused,
    /// Rebuilding the read model (or waiting for a peer to finish doing so).
    Rebuilding,
    /// A dependency is failing.
    Error,
    /// Stopped.
    Stopped,
}

impl Status {
    /// The name stored in heartbeats.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Rebuilding => "rebuilding",
            Self::Error => "error",
            Self::Stopped => "stopped",
        }
    }
}
