//! Metric names of the relay (architecture.md §9).

/// Rows waiting in the outbox.
pub const OUTBOX_PENDING_COUNT: &str = "cqrs_outbox_pending_count";
/// Age of the oldest waiting row, seconds.
pub const OUTBOX_OLDEST_PENDING_AGE_SECONDS: &str = "cqrs_outbox_oldest_pending_age_seconds";
/// Seconds from the outbox insert (≈ commit) to the XADD.
pub const PUBLISH_LAG_SECONDS: &str = "cqrs_outbox_publish_lag_seconds";
/// Events published: `event_type`.
pub const EVENTS_PUBLISHED_TOTAL: &str = "cqrs_events_published_total";
/// Partitions whose lease this replica holds.
pub const PARTITIONS_HELD: &str = "cqrs_relay_partitions_held";
/// Stream entries removed by retention: `module`.
pub const STREAM_TRIMMED_TOTAL: &str = "cqrs_stream_trimmed_entries_total";
/// Stream length after the last trim: `module`, `partition`.
pub const STREAM_LENGTH: &str = "cqrs_stream_length";
/// Dead tuples in the outbox table before the last cleaning check.
pub const OUTBOX_DEAD_TUPLES: &str = "cqrs_outbox_dead_tuples";
