//! The audit log of operator actions: every mutating admin call, refused ones included, with
//! who (a token's name, never the token), what, on what, how it ended and the reason given.

use deadpool_postgres::Pool;
use time::OffsetDateTime;

use crate::OutboxError;

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done (or started, for long-running operations).
    Accepted,
    /// Refused before anything changed: not allowed, a conflict, bad input.
    Refused,
    /// Accepted, then it failed.
    Failed,
    /// Written before the action runs (so no action goes unrecorded); its end was never
    /// recorded if it stays so (the process died, or PostgreSQL went away mid-way).
    Pending,
}

impl Outcome {
    /// The stored name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Refused => "refused",
            Self::Failed => "failed",
            Self::Pending => "pending",
        }
    }
}

/// An entry to write.
#[derive(Debug, Clone)]
pub struct NewEntry<'a> {
    /// Who: the token's name or fingerprint.
    pub actor: &'a str,
    /// What, e.g. `projection.pause`, `dlq.discard`.
    pub action: &'a str,
    /// On what: a projection name, a dead-letter id.
    pub target: &'a str,
    /// How it ended.
    pub outcome: Outcome,
    /// The reason the operator gave, or why it was refused.
    pub reason: Option<&'a str>,
    /// Anything else worth keeping (an operation id, what a re-drive did, a discarded event).
    pub details: serde_json::Value,
}

/// An entry as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its id: entries are listed newest first, and a cursor is the last id seen.
    pub id: i64,
    /// When.
    pub at: OffsetDateTime,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// How it ended (`accepted`, `refused`, `failed`).
    pub outcome: String,
    /// The reason given.
    pub reason: Option<String>,
    /// The rest.
    pub details: serde_json::Value,
}

/// Access to the `audit` table.
#[derive(Debug, Clone)]
pub struct AuditStore {
    pool: Pool,
}

impl AuditStore {
    /// A store over `pool`.
    #[must_use]
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Writes `entry`; returns its id.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn record(&self, entry: &NewEntry<'_>) -> Result<i64, OutboxError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "INSERT INTO audit (actor, action, target, outcome, reason, details)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                &[
                    &storable(entry.actor),
                    &storable(entry.action),
                    &storable(entry.target),
                    &entry.outcome.as_str(),
                    &entry.reason.map(storable),
                    &storable_json(entry.details.clone()),
                ],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Records how entry `id` (written [`Outcome::Pending`]) ended.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn finish(
        &self,
        id: i64,
        outcome: Outcome,
        reason: Option<&str>,
        details: &serde_json::Value,
    ) -> Result<(), OutboxError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE audit SET outcome = $2, reason = coalesce($3, reason),
                        details = details || $4
                 WHERE id = $1",
                &[
                    &id,
                    &outcome.as_str(),
                    &reason.map(storable),
                    &storable_json(details.clone()),
                ],
            )
            .await?;
        Ok(())
    }

    /// Up to `limit` entries older than `before` (an id; `None`: the newest), newest first.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn list(&self, before: Option<i64>, limit: i64) -> Result<Vec<Entry>, OutboxError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id, at, actor, action, target, outcome, reason, details FROM audit
                 WHERE $1::bigint IS NULL OR id < $1 ORDER BY id DESC LIMIT $2",
                &[&before, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Entry {
                id: r.get(0),
                at: r.get(1),
                actor: r.get(2),
                action: r.get(3),
                target: r.get(4),
                outcome: r.get(5),
                reason: r.get(6),
                details: r.get(7),
            })
            .collect())
    }
}

/// `text` as PostgreSQL can store it: a NUL (which `text` and `jsonb` refuse) becomes U+FFFD.
/// A call is audited whatever its input held, the refused ones with such input above all.
fn storable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{fffd}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// [`storable`] for every string and key of `value`.
fn storable_json(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => Value::String(storable(&s).into_owned()),
        Value::Array(items) => Value::Array(items.into_iter().map(storable_json).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (storable(&k).into_owned(), storable_json(v)))
                .collect(),
        ),
        other => other,
    }
}
