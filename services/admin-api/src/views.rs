//! The JSON answers of admin-api (http-api.md's admin section), built from the stores' types.

use outbox::operations::Operation;
use outbox::snapshots::Snapshot;
use serde::Serialize;
use serde_json::Value;
use streams::dlq::DeadLetter;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// RFC 3339 UTC.
#[must_use]
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// An operation: `GET /admin/cqrs/operations/{id}`.
#[derive(Debug, Clone, Serialize, PartialEq)]
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
#[derive(Debug, Clone, Serialize, PartialEq)]
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
#[derive(Debug, Clone, Serialize, PartialEq)]
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
#[derive(Debug, Clone, Serialize, PartialEq)]
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
