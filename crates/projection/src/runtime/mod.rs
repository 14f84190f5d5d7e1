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
//! - **Generations.** Live applies write the active generation ([`streams::generation`]) and,
//!   while a rebuild runs, the generation being built, all or nothing; a rebuild replays
//!   `event_store` into the new generation and switches to it atomically once caught up.
//! - **Redis is disposable.** A version gap (entries lost between PostgreSQL and Redis) is
//!   repaired from `event_store`, never dead-lettered; a read model that contradicts its
//!   version record, or has lost its marker, is rebuilt (zero downtime, one replica, resumable);
//!   no usable generation at all (first start, total loss) is rebuilt from scratch; Redis going
//!   back in time (a failover to a lagging replica, a restored snapshot) is caught by the canary
//!   and what it lost is replayed.
//!
//! Memory is bounded: the only per-aggregate state kept is for aggregates with an event
//! currently failing, which the pending list bounds.
//!
//! The files of this folder are its concerns: [`settings`] and [`report`] (what goes in and
//! out), `targets` (which generations a batch writes, and what planning needs of them),
//! `batch` (one batch, phase by phase), `fate` (what becomes of one event), `retry` (the
//! bookkeeping of failing aggregates, retries and stranded entries), `dead_letter`, `repair`
//! (gaps and lost tails, from `event_store`), `rebuild` (replay, the rebuild operation and the
//! switch), `canary` (noticing Redis went back in time), `housekeeping` (leases, lag, consumers,
//! heartbeats, retired generations) and `run` (the loop that strings them together).

mod batch;
mod bulk;
mod canary;
mod dead_letter;
pub(crate) mod fate;
mod housekeeping;
mod rebuild;
mod repair;
mod replay;
pub mod report;
mod retry;
mod run;
pub mod settings;
mod targets;

use std::sync::{Arc, Mutex};

use events::{EventEnvelope, StreamRouting};
use streams::consumer::Delivery;
use streams::dlq::DeadLetterKeys;
use streams::keys::INITIAL_GENERATION;
use streams::lease::PartitionLeases;
use streams::{GenerationState, Generations, ReadModelKeys, RedisPools};
use time::OffsetDateTime;
use tokio::sync::watch;
use uuid::Uuid;

use crate::plan::Projection;

pub use canary::CanaryCheck;
pub(crate) use fate::Unsent;
pub use housekeeping::DuplicateReplica;
pub use rebuild::{RebuildOutcome, ReplayError};
pub use report::{BatchReport, ReplayReport, Status};
pub use settings::ProjectorSettings;
pub(crate) use targets::{Step, Targets, apply_targets, load, plan_targets};

/// What a replica keeps between batches.
#[derive(Default)]
struct State {
    held: Vec<u32>,
    retries: retry::Retries,
    applied_total: i64,
    /// Set when a batch found the read model missing: the run loop heals at once.
    heal_due: bool,
    /// Why a batch found the read model contradicting itself, if one did: the run loop starts
    /// a rebuild.
    rebuild_due: Option<String>,
    /// New entries read ahead in the last apply's round trip, processed next.
    prefetched: Vec<Delivery>,
    last_event: Option<(Uuid, OffsetDateTime)>,
    last_error: Option<String>,
    /// Events operators discarded from the dead letters (refreshed with the generations).
    discarded: Arc<std::collections::HashSet<Uuid>>,
    /// Set when a bulk write failed half-way: rebuilds here go the careful way from then on.
    bulk_off: bool,
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
    generations: Generations,
    dlq: DeadLetterKeys,
    routing: StreamRouting,
    leases: PartitionLeases,
    state: Mutex<State>,
    rounds: watch::Sender<Rounds>,
    /// This process's identity in heartbeats (random per start).
    instance: String,
    /// The blocking read's connection, kept between rounds (see [`Projector::consume_once`]).
    reader: Mutex<Option<streams::deadpool_redis::Connection>>,
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
        crate::metrics::register(module);
        let routing = redis.keys.routing(settings.partitions);
        for stream in routing.streams(module.name) {
            metrics::gauge!(crate::metrics::CONSUMER_LAG_MESSAGES, "projection" => module.projection, "stream" => stream)
                .set(0.0);
        }
        // Without a database (tests of the stream side) there is no rebuild: the initial
        // generation is the active one until a pointer says otherwise.
        let initial = if pg.is_none() {
            GenerationState {
                active: Some(INITIAL_GENERATION),
                building: None,
            }
        } else {
            GenerationState::default()
        };
        let generations = Generations::new(&redis.keys, module.name, module.projection, initial);
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
            generations,
            dlq,
            routing,
            leases,
            state: Mutex::new(State::default()),
            rounds: watch::Sender::new(Rounds {
                status: Status::Running,
                count: 0,
            }),
            instance: format!("{:016x}", rand_u64()),
            reader: Mutex::new(None),
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

    /// The keys of the active generation, as last resolved (the initial generation's when
    /// there is none: what a test reads after building one).
    #[must_use]
    pub fn keys(&self) -> ReadModelKeys {
        self.generations
            .keys_of(self.generation_state().active.unwrap_or(INITIAL_GENERATION))
    }

    /// The generations as last resolved.
    #[must_use]
    pub fn generation_state(&self) -> GenerationState {
        let state = self.generations.state();
        if self.pg.is_none() && state.active.is_none() {
            // No rebuild without a database: the initial generation serves until a pointer
            // names another.
            return GenerationState {
                active: Some(INITIAL_GENERATION),
                ..state
            };
        }
        state
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

/// A random number from the clock and the process id: enough to tell two processes apart.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
