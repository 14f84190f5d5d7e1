//! The projector runtime: one [`Projector`] per projection per replica.
//!
//! - **Ordered parallelism.** Replicas split the projection's partitions with leases
//!   ([`streams::lease`]); only the lease holder reads a partition's stream, and the apply
//!   script re-checks the lease atomically with each write. A replica taking a partition over
//!   first claims the previous owner's pending entries (`XAUTOCLAIM`).
//! - **Exactly-once effect.** Each event's change commits with the aggregate's applied
//!   version; duplicates change nothing ([`streams::apply`]).
//! - **Retries without head-of-line blocking.** A failing event stays pending and is claimed
//!   again after `retry_base × 2ⁿ` (capped), `n` being Redis's delivery count, so attempts
//!   survive restarts; other aggregates keep flowing. Later events of the same aggregate wait
//!   behind it without using up their own attempts.
//! - **Dead letters, nothing lost.** After the last attempt the event moves to the dead-letter
//!   stream and is acknowledged in the same atomic step ([`streams::dlq`]); its aggregate is
//!   parked and its later events follow it there, in order.
//! - **Control and self-heal.** Operators' desired state is obeyed within a poll interval;
//!   a lost read model (no marker) is rebuilt from `event_store` by one replica while the
//!   others wait. The generation written is the active one, resolved at run time
//!   ([`streams::generation`]).
//!
//! Memory is bounded: the only per-aggregate state kept is for aggregates with an event
//! currently failing, which the pending list bounds.
//!
//! The files of this folder are its concerns: [`settings`] and [`report`] (what goes in and
//! out), `batch` (one batch, phase by phase), `fate` (what becomes of one event), `retry` (the
//! bookkeeping of failing aggregates, retries and stranded entries), `dead_letter`, `rebuild`
//! (replay and self-heal), `housekeeping` (leases, lag, consumers, heartbeats) and `run` (the
//! loop that strings them together).

mod batch;
mod dead_letter;
mod fate;
mod housekeeping;
mod rebuild;
pub mod report;
mod retry;
mod run;
pub mod settings;

use std::sync::{Arc, Mutex};

use events::{EventEnvelope, StreamRouting};
use streams::consumer::Delivery;
use streams::dlq::DeadLetterKeys;
use streams::lease::PartitionLeases;
use streams::{ActiveGeneration, ReadModelKeys, RedisPools};
use time::OffsetDateTime;
use tokio::sync::watch;
use uuid::Uuid;

use crate::plan::Projection;

pub(crate) use batch::load;
pub use rebuild::ReplayError;
pub use report::{BatchReport, ReplayReport, Status};
pub use settings::ProjectorSettings;

/// What a replica keeps between batches.
#[derive(Default)]
struct State {
    held: Vec<u32>,
    retries: retry::Retries,
    applied_total: i64,
    /// Set when a batch found the read model missing: the run loop heals at once.
    heal_due: bool,
    /// New entries read ahead in the last apply's round trip, processed next.
    prefetched: Vec<Delivery>,
    last_event: Option<(Uuid, OffsetDateTime)>,
    last_error: Option<String>,
}

/// Where a replica's run loop is: the status of its last round and how many rounds it made.
/// Watch it ([`Projector::rounds`]) to know the loop went round, e.g. that a paused replica
/// has had several chances to apply and did not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rounds {
    /// The status the last round ended in.
    pub status: Status,
    /// Rounds made since the replica started.
    pub count: u64,
}

/// One projection's consumer.
pub struct Projector {
    redis: RedisPools,
    pg: Option<outbox::Pool>,
    projection: Arc<dyn Projection>,
    settings: ProjectorSettings,
    group: String,
    generation: ActiveGeneration,
    dlq: DeadLetterKeys,
    routing: StreamRouting,
    leases: PartitionLeases,
    state: Mutex<State>,
    rounds: watch::Sender<Rounds>,
}

impl std::fmt::Debug for Projector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projector")
            .field("projection", &self.projection.module().projection)
            .field("replica", &self.settings.replica)
            .finish_non_exhaustive()
    }
}

impl Projector {
    /// A projector of `projection` over the streams of its module. `pg` (the event store and
    /// control rows) is needed for heartbeats, replays and self-healing; without it those are
    /// skipped (tests of the stream side).
    #[must_use]
    pub fn new(
        redis: RedisPools,
        pg: Option<outbox::Pool>,
        projection: Arc<dyn Projection>,
        settings: ProjectorSettings,
    ) -> Self {
        let module = projection.module();
        let routing = redis.keys.routing(settings.partitions);
        let generation = ActiveGeneration::new(&redis.keys, module.name, module.projection);
        let dlq = DeadLetterKeys::new(&redis.keys, module.projection);
        let leases = PartitionLeases::new(
            &redis.keys,
            module.projection,
            settings.partitions,
            settings.replica.clone(),
            settings.lease_ttl,
        );
        Self {
            group: module.consumer_group.to_owned(),
            redis,
            pg,
            projection,
            settings,
            generation,
            dlq,
            routing,
            leases,
            state: Mutex::new(State::default()),
            rounds: watch::Sender::new(Rounds {
                status: Status::Running,
                count: 0,
            }),
        }
    }

    /// The run loop's rounds, as they happen.
    #[must_use]
    pub fn rounds(&self) -> watch::Receiver<Rounds> {
        self.rounds.subscribe()
    }

    /// The projection's name.
    #[must_use]
    pub fn projection_name(&self) -> &'static str {
        self.projection.module().projection
    }

    /// The keys of the generation written now (the active one, as last resolved).
    #[must_use]
    pub fn keys(&self) -> ReadModelKeys {
        self.generation.keys()
    }

    /// Where dead letters of this projection go.
    #[must_use]
    pub fn dead_letter_keys(&self) -> &DeadLetterKeys {
        &self.dlq
    }

    /// Partitions held after the last lease tick.
    #[must_use]
    pub fn held(&self) -> Vec<u32> {
        self.lock().held.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug in this module; recover the data.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The stream of partition `p`.
    fn stream(&self, p: u32) -> String {
        self.routing.stream(self.projection.module().name, p)
    }

    /// The streams of the partitions held.
    fn held_streams(&self) -> Vec<String> {
        self.held().into_iter().map(|p| self.stream(p)).collect()
    }

    /// The lease an apply of an entry of `stream` is fenced by.
    fn fence(&self, stream: &str) -> Option<(String, String)> {
        let p = (0..self.settings.partitions).find(|p| self.stream(*p) == stream)?;
        Some((self.leases.key(p).to_owned(), self.settings.replica.clone()))
    }

    /// Records that `e` was applied (or found applied) here.
    fn note_settled(&self, e: &EventEnvelope) {
        self.lock()
            .retries
            .settled(e.aggregate_id, e.aggregate_version);
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
