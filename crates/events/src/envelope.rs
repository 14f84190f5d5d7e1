//! The event envelope (architecture.md §3). Field names are the wire format.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// Who and what caused an event. Carried unchanged from the HTTP request to every consumer so
/// that one `correlation_id` ties a request to all of its effects in the logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// The authenticated user who issued the command, if any.
    pub user_id: Option<Uuid>,
    /// The request's `X-Request-Id`.
    pub correlation_id: Option<String>,
    /// The event or command id this event is a consequence of, if any.
    pub causation_id: Option<Uuid>,
    /// The process that wrote the event, e.g. `command-api`.
    pub source: String,
}

/// One domain event, as stored in `event_store`, carried by the outbox and published to Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// Unique forever; UUIDv7 so ids sort by creation time. Consumers dedupe on
    /// `(aggregate_id, aggregate_version)`, never on a stream entry id.
    pub event_id: Uuid,
    /// e.g. `task.completed`; past tense, never renamed.
    pub event_type: String,
    /// Shape version of `payload`, starting at 1.
    pub schema_version: i32,
    /// The consistency boundary, e.g. `Task`.
    pub aggregate_type: String,
    /// The aggregate instance.
    pub aggregate_id: Uuid,
    /// 1, 2, 3 … per aggregate with no gaps: the ordering and dedupe key.
    pub aggregate_version: i64,
    /// When the command that produced the event ran (UTC, microsecond precision, like
    /// PostgreSQL's `timestamptz`, so read models and rows compare equal).
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// The event's own fields.
    pub payload: serde_json::Value,
    /// Causal metadata.
    pub metadata: EventMetadata,
}

/// Why bytes could not be read as an [`EventEnvelope`].
///
/// # Handling
/// The event is malformed and will never become valid by retrying: dead-letter it.
#[derive(Debug, thiserror::Error)]
#[error("malformed event envelope: {0}")]
pub struct EnvelopeError(#[from] serde_json::Error);

impl EventEnvelope {
    /// Serialises the envelope to its JSON wire form.
    #[must_use]
    pub fn to_json(&self) -> String {
        // Serialising these plain structs cannot fail: every map key is a string and
        // `payload` is already a `serde_json::Value`.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }

    /// Parses the JSON wire form.
    ///
    /// # Errors
    /// [`EnvelopeError`] when the bytes are not a complete envelope.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// The module the event belongs to: the part of `event_type` before the first dot.
    #[must_use]
    pub fn module(&self) -> &str {
        self.event_type.split('.').next().unwrap_or_default()
    }
}

/// Who is acting and when: everything a command needs to stamp the events it emits. Built once
/// per command so that every row and event it writes carries the same timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventContext {
    /// The authenticated user.
    pub user_id: Option<Uuid>,
    /// The request id, carried as `correlation_id`.
    pub correlation_id: Option<String>,
    /// The writing process, e.g. `command-api`.
    pub source: String,
    /// The command's timestamp, at PostgreSQL precision.
    pub now: OffsetDateTime,
}

impl EventContext {
    /// A context stamped with the current time.
    #[must_use]
    pub fn new(
        user_id: Option<Uuid>,
        correlation_id: Option<String>,
        source: impl Into<String>,
    ) -> Self {
        Self {
            user_id,
            correlation_id,
            source: source.into(),
            now: truncate_to_micros(OffsetDateTime::now_utc()),
        }
    }

    /// An envelope for one event of this command, with a fresh UUIDv7 id.
    #[must_use]
    pub fn envelope(
        &self,
        aggregate_type: &str,
        aggregate_id: Uuid,
        aggregate_version: i64,
        event_type: &str,
        payload: serde_json::Value,
    ) -> EventEnvelope {
        EventEnvelope {
            event_id: Uuid::now_v7(),
            event_type: event_type.to_owned(),
            schema_version: 1,
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id,
            aggregate_version,
            occurred_at: self.now,
            payload,
            metadata: EventMetadata {
                user_id: self.user_id,
                correlation_id: self.correlation_id.clone(),
                causation_id: None,
                source: self.source.clone(),
            },
        }
    }
}

/// Truncates a timestamp to whole microseconds, the precision PostgreSQL keeps, so a value
/// written to a row and the same value carried in an event compare equal after a round trip.
#[must_use]
pub fn truncate_to_micros(t: OffsetDateTime) -> OffsetDateTime {
    let micros = t.microsecond();
    t.replace_microsecond(micros).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn sample() -> EventEnvelope {
        EventEnvelope {
            event_id: Uuid::now_v7(),
            event_type: "task.created".into(),
            schema_version: 1,
            aggregate_type: "Task".into(),
            aggregate_id: Uuid::now_v7(),
            aggregate_version: 1,
            occurred_at: datetime!(2026-11-24 10:00:00.123456 UTC),
            payload: serde_json::json!({"title": "Read"}),
            metadata: EventMetadata {
                user_id: Some(Uuid::nil()),
                correlation_id: Some("req-1".into()),
                causation_id: None,
                source: "command-api".into(),
            },
        }
    }

    #[test]
    fn envelope_round_trips_through_json_with_fixed_field_names() {
        let e = sample();
        let json = e.to_json();
        let v: serde_json::Value = serde_json::from_str(&json).expect("json");
        for field in [
            "event_id",
            "event_type",
            "schema_version",
            "aggregate_type",
            "aggregate_id",
            "aggregate_version",
            "occurred_at",
            "payload",
            "metadata",
        ] {
            assert!(v.get(field).is_some(), "missing {field}");
        }
        assert_eq!(v["occurred_at"], "2026-11-24T10:00:00.123456Z");
        assert_eq!(EventEnvelope::from_json(json.as_bytes()).expect("parse"), e);
        assert_eq!(e.module(), "task");
    }

    #[test]
    fn malformed_bytes_are_an_envelope_error() {
        assert!(EventEnvelope::from_json(b"{\"event_id\": 1}").is_err());
        assert!(EventEnvelope::from_json(b"not json").is_err());
    }

    #[test]
    fn truncation_drops_nanoseconds_only() {
        let t = datetime!(2026-01-01 00:00:00.123456789 UTC);
        assert_eq!(
            truncate_to_micros(t),
            datetime!(2026-01-01 00:00:00.123456 UTC)
        );
    }
}
