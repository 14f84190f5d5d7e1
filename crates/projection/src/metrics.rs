//! Metric names of the projector (architecture.md §9). Labels are bounded sets: projection,
//! event type, error type; never ids.

/// Events applied: `event_type`, `projection`.
pub const EVENTS_PROCESSED_TOTAL: &str = "cqrs_events_processed_total";
/// Seconds to plan and apply a batch, per event: `projection`.
pub const EVENT_PROCESSING_DURATION_SECONDS: &str = "cqrs_event_processing_duration_seconds";
/// Events whose version was already applied: `projection`.
pub const DUPLICATE_EVENTS_TOTAL: &str = "cqrs_duplicate_events_total";
/// Events that could not be applied: `projection`, `error_type`.
pub const WORKER_ERRORS_TOTAL: &str = "cqrs_worker_errors_total";
/// Seconds from an event's `occurred_at` to its application: `projection`.
pub const PROJECTION_LAG_SECONDS: &str = "cqrs_projection_lag_seconds";
/// Entries not yet delivered to the group (`XINFO GROUPS` lag): `projection`, `stream`.
pub const CONSUMER_LAG_MESSAGES: &str = "cqrs_consumer_lag_messages";
/// Redeliveries of failed events: `projection`.
pub const RETRY_ATTEMPTS_TOTAL: &str = "cqrs_retry_attempts_total";
/// Entries moved to the dead letters (successful moves only): `projection`, `error_type`.
pub const DLQ_MESSAGES_TOTAL: &str = "cqrs_dlq_messages_total";
/// Partitions whose lease this replica holds: `projection`.
pub const PARTITIONS_HELD: &str = "cqrs_projector_partitions_held";
/// Events a read model missed (lost between PostgreSQL and Redis), read back from
/// `event_store` and applied: `projection`.
pub const GAP_REPAIRS_TOTAL: &str = "cqrs_gap_repairs_total";
/// Rebuilds finished (a new generation switched in): `projection`, `reason`.
pub const REBUILDS_TOTAL: &str = "cqrs_rebuilds_total";
/// Times Redis was found to have gone back in time (the canary): `projection`.
pub const REDIS_ROLLBACKS_TOTAL: &str = "cqrs_redis_rollbacks_total";

/// Every `error_type` label an event's failure can carry (an entry that cannot be decoded,
/// `ProjectionError::error_type`, the runtime's own failures, and events parked behind a dead
/// letter), so the error counters can be registered at 0 up front.
pub const ERROR_TYPES: &[&str] = &[
    "missing_entry",
    "malformed_envelope",
    "version_gap",
    "rejected_by_redis",
    "unknown_event_type",
    "malformed_payload",
    "missing_state",
    "parked",
];

/// Describes the projector's metrics (`# HELP`). Call once the recorder is installed.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        EVENTS_PROCESSED_TOTAL,
        "Events applied to a read model, by projection and event type"
    );
    describe_histogram!(
        EVENT_PROCESSING_DURATION_SECONDS,
        Unit::Seconds,
        "Time to plan and apply a batch, per event, by projection"
    );
    describe_counter!(
        DUPLICATE_EVENTS_TOTAL,
        "Events delivered again whose version was already applied (changed nothing), by projection"
    );
    describe_counter!(
        WORKER_ERRORS_TOTAL,
        "Events that could not be applied, by projection and error type"
    );
    describe_histogram!(
        PROJECTION_LAG_SECONDS,
        Unit::Seconds,
        "Time from an event's occurred_at to its application, by projection"
    );
    describe_gauge!(
        CONSUMER_LAG_MESSAGES,
        "Stream entries not yet delivered to the projection's consumer group (XINFO GROUPS lag), by projection and stream"
    );
    describe_counter!(
        RETRY_ATTEMPTS_TOTAL,
        "Redeliveries of failed events, by projection"
    );
    describe_counter!(
        DLQ_MESSAGES_TOTAL,
        "Events moved to the dead letters, by projection and error type"
    );
    describe_gauge!(
        PARTITIONS_HELD,
        "Stream partitions whose lease this replica holds, by projection"
    );
    describe_counter!(
        GAP_REPAIRS_TOTAL,
        "Events a read model missed, read back from event_store and applied, by projection"
    );
    describe_counter!(
        REBUILDS_TOTAL,
        "Rebuilds finished (a new generation switched in), by projection"
    );
    describe_counter!(
        REDIS_ROLLBACKS_TOTAL,
        "Times Redis was found to have gone back in time (canary epoch behind), by projection"
    );
}

/// Registers every series of `module`'s projection at 0 (counters, histograms, gauges), so
/// `/metrics` shows them and `rate()` works before the first event. Called by
/// [`crate::Projector::new`].
pub fn register(module: &events::ModuleSpec) {
    let p = module.projection;
    for event_type in module.event_types {
        metrics::counter!(EVENTS_PROCESSED_TOTAL, "event_type" => *event_type, "projection" => p)
            .increment(0);
    }
    for error_type in ERROR_TYPES {
        metrics::counter!(WORKER_ERRORS_TOTAL, "projection" => p, "error_type" => *error_type)
            .increment(0);
        metrics::counter!(DLQ_MESSAGES_TOTAL, "projection" => p, "error_type" => *error_type)
            .increment(0);
    }
    for counter in [
        DUPLICATE_EVENTS_TOTAL,
        RETRY_ATTEMPTS_TOTAL,
        GAP_REPAIRS_TOTAL,
        REBUILDS_TOTAL,
        REDIS_ROLLBACKS_TOTAL,
    ] {
        metrics::counter!(counter, "projection" => p).increment(0);
    }
    // Registering is the point: the handle is not needed.
    let _ = metrics::histogram!(EVENT_PROCESSING_DURATION_SECONDS, "projection" => p);
    let _ = metrics::histogram!(PROJECTION_LAG_SECONDS, "projection" => p);
    metrics::gauge!(PARTITIONS_HELD, "projection" => p).set(0.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error types registered up front are exactly those failures report.
    #[test]
    fn error_types_cover_every_failure() {
        use crate::plan::ProjectionError;
        for e in [
            ProjectionError::UnknownEventType(String::new()),
            ProjectionError::MalformedPayload(String::new()),
            ProjectionError::MissingState(String::new()),
        ] {
            assert!(ERROR_TYPES.contains(&e.error_type()), "{}", e.error_type());
        }
    }
}
