//! The JSON answers of admin-api (http-api.md's admin section), built from the stores' types.

use outbox::operations::Operation;
use outbox::snapshots::Snapshot;
use serde::Serialize;
use serde_json::Value;
use streams::dlq::DeadLetter;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;

/// RFC 3339 UTC.
#[must_use]
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// An operation: `GET /admin/cqrs/operations/{id}`.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct OperationView {
    /// Its id.
    pub id: String,
    /// `rebuild` or `reset`.
    pub kind: String,
    /// The projection.
    pub projection: String,
    /// `running`, `succeeded` or `failed`.
    pub state: String,
    /// Why it started.
    pub reason: String,
    /// The generation it builds (0 until a replica picked it up).
    pub generation: i64,
    /// Events replayed so far.
    pub events_applied: i64,
    /// Events to replay in all (known once the replay began).
    pub events_total: i64,
    /// Replay speed, events per second, lately.
    pub rate: f64,
    /// Seconds until done at that rate, while it runs.
    pub eta_seconds: Option<f64>,
    /// The replica doing it.
    pub owner: Option<String>,
    /// The snapshot it started from.
    pub snapshot_id: Option<String>,
    /// Started.
    pub started_at: String,
    /// Last progress.
    pub updated_at: String,
    /// Ended.
    pub finished_at: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

impl From<&Operation> for OperationView {
    fn from(op: &Operation) -> Self {
        Self {
            id: op.id.to_string(),
            kind: op.kind.as_str().to_owned(),
            projection: op.projection.clone(),
            state: op.state.as_str().to_owned(),
            reason: op.reason.clone(),
            generation: op.generation,
            events_applied: op.events_applied,
            events_total: op.events_total,
            rate: op.rate,
            eta_seconds: op.eta_seconds(),
            owner: op.owner.clone(),
            snapshot_id: op.snapshot_id.map(|s| s.to_string()),
            started_at: rfc3339(op.started_at),
            updated_at: rfc3339(op.updated_at),
            finished_at: op.finished_at.map(rfc3339),
            error: op.error.clone(),
        }
    }
}

/// A snapshot just taken: `POST /admin/cqrs/projections/{name}/snapshot`.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct SnapshotView {
    /// Its id.
    pub snapshot_id: String,
    /// Every event up to this `event_store` position is in it.
    pub position: i64,
    /// When.
    pub created_at: String,
    /// The generation copied.
    pub generation: i64,
    /// Keys copied.
    pub keys: i64,
    /// Bytes stored.
    pub bytes: i64,
}

impl From<&Snapshot> for SnapshotView {
    fn from(s: &Snapshot) -> Self {
        Self {
            snapshot_id: s.id.to_string(),
            position: s.position,
            created_at: rfc3339(s.created_at),
            generation: s.generation,
            keys: s.keys,
            bytes: s.bytes,
        }
    }
}

/// A dead letter: `GET /admin/cqrs/dlq`.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct DeadLetterView {
    /// `<projection>:<entry id>`: what retry and discard take.
    pub id: String,
    /// The projection that refused it.
    pub projection: String,
    /// The event envelope (the raw text when it was not JSON).
    pub event: Value,
    /// What went wrong.
    pub error: String,
    /// A bounded label: `malformed_payload`, `unknown_event_type`, `parked`, ….
    pub error_type: String,
    /// Deliveries before it was dead-lettered.
    pub attempts: u64,
    /// First failure.
    pub first_failed_at: String,
    /// Last failure.
    pub last_failed_at: String,
    /// The event it waits behind (the head of its aggregate's chain), or `null` for a head.
    pub parked_behind: Option<String>,
}

impl DeadLetterView {
    /// The view of `entry` of `projection`.
    #[must_use]
    pub fn new(projection: &str, entry: &DeadLetter) -> Self {
        let raw = entry.field("event");
        Self {
            id: format!("{projection}:{}", entry.id),
            projection: projection.to_owned(),
            event: serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned())),
            error: entry.field("error").to_owned(),
            error_type: entry.field("error_type").to_owned(),
            attempts: entry.field("attempts").parse().unwrap_or(0),
            first_failed_at: entry.field("first_failed_at").to_owned(),
            last_failed_at: entry.field("last_failed_at").to_owned(),
            parked_behind: Some(entry.field("parked_behind"))
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        }
    }
}

/// An audit entry: `GET /admin/cqrs/audit`.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct AuditView {
    /// When.
    pub at: String,
    /// Who: the token's name or fingerprint.
    pub actor: String,
    /// What, e.g. `projection.pause`.
    pub action: String,
    /// On what.
    pub target: String,
    /// `accepted`, `refused` or `failed`.
    pub outcome: String,
    /// The reason given, or why it was refused.
    pub reason: Option<String>,
    /// The rest (an operation id, what a re-drive did).
    pub details: Value,
}

impl From<&outbox::audit::Entry> for AuditView {
    fn from(e: &outbox::audit::Entry) -> Self {
        Self {
            at: rfc3339(e.at),
            actor: e.actor.clone(),
            action: e.action.clone(),
            target: e.target.clone(),
            outcome: e.outcome.clone(),
            reason: e.reason.clone(),
            details: e.details.clone(),
        }
    }
}

/// What pause and resume answer: the state asked for (the replicas follow within seconds;
/// `GET …/projections/{name}` shows when they did).
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct DesiredStateView {
    /// The projection.
    pub projection: String,
    /// `paused` or `running`.
    pub desired_state: String,
}

/// What reset and rebuild answer: the operation the workers now run.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct OperationStartedView {
    /// Follow it at `GET /admin/cqrs/operations/{id}`.
    pub operation_id: String,
}

/// `GET /admin/cqrs/snapshots/{name}/count`.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct SnapshotCountView {
    /// Snapshots kept of the projection.
    pub count: i64,
}

/// A page of dead letters.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct DeadLetterPage {
    /// Oldest first, projection by projection.
    pub items: Vec<DeadLetterView>,
    /// Pass as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// `GET /admin/cqrs/dlq/stats`.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct DeadLetterStatsView {
    /// Dead letters in all.
    pub total: u64,
    /// Per projection (every projection is listed, 0 included).
    pub by_projection: std::collections::BTreeMap<String, u64>,
    /// Per `error_type`.
    pub by_error_type: std::collections::BTreeMap<String, u64>,
    /// Age of the oldest, in seconds (0 when there is none).
    pub oldest_age_seconds: f64,
}

/// What re-driving one dead letter did.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct RedriveView {
    /// Events applied (the letter and the parked followers it freed).
    pub applied: u64,
    /// Events found already applied.
    pub duplicates: u64,
    /// Followers taken out of the dead letters.
    pub unparked: u64,
}

/// What re-driving every dead letter of a projection did, or would do.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct BulkRedriveView {
    /// Whether nothing was done (`dry_run=true`): then the figures are what would be tried.
    pub dry_run: bool,
    /// Dead letters seen.
    pub entries: u64,
    /// Aggregate chains among them.
    pub chains: u64,
    /// Events applied.
    pub applied: u64,
    /// Events found already applied.
    pub duplicates: u64,
    /// Followers taken out of the dead letters.
    pub unparked: u64,
    /// Chains whose head still fails (left in the dead letters).
    pub still_failing: u64,
    /// Why, for the first few of them.
    pub failures: Vec<String>,
}

/// What discarding a dead letter did.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct DiscardView {
    /// Letters removed (the one named).
    pub discarded: u64,
    /// Parked followers applied once it was gone.
    pub applied: u64,
    /// Followers taken out of the dead letters.
    pub unparked: u64,
}

/// One outbox partition.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct PartitionView {
    /// Its number.
    pub partition: i32,
    /// Rows not yet published.
    pub pending: i64,
    /// Age of its oldest unpublished row, in seconds.
    pub oldest_pending_age_seconds: f64,
    /// The relay holding its lease, if one does.
    pub owner: Option<String>,
}

/// `GET /admin/cqrs/outbox/stats`.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct OutboxStatsView {
    /// Rows not yet published.
    pub pending_count: i64,
    /// Age of the oldest of them, in seconds (0 when none).
    pub oldest_pending_age_seconds: f64,
    /// Relays holding at least one lease.
    pub live_relays: i64,
    /// Every partition.
    pub partitions: Vec<PartitionView>,
}

/// A consumer group of a stream.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct GroupView {
    /// The group.
    pub name: String,
    /// Its consumers.
    pub consumers: u64,
    /// Entries delivered and not acknowledged.
    pub pending: u64,
    /// Entries not yet delivered (`null` when Redis cannot tell).
    pub lag: Option<u64>,
    /// The last entry delivered.
    pub last_delivered_id: String,
}

/// One partition stream: `GET /admin/cqrs/streams`.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct StreamView {
    /// The stream's key.
    pub stream: String,
    /// The module publishing to it.
    pub module: String,
    /// Entries in it.
    pub length: u64,
    /// Its first entry, if any.
    pub first_id: Option<String>,
    /// Its last entry, if any.
    pub last_id: Option<String>,
    /// Its consumer groups.
    pub groups: Vec<GroupView>,
}

/// A page of the audit log, newest first.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct AuditPage {
    /// The entries.
    pub items: Vec<AuditView>,
    /// Pass as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}
