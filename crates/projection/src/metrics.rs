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
