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

/// Describes the relay's metrics (`# HELP`) and registers every series at 0 (per event type of
/// the registry's modules, per module and partition), so `/metrics` shows them and `rate()`
/// works before the first event. Called once the recorder is installed.
pub fn register(partitions: u32) {
    use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
    describe_gauge!(OUTBOX_PENDING_COUNT, "Rows waiting in the outbox");
    describe_gauge!(
        OUTBOX_OLDEST_PENDING_AGE_SECONDS,
        Unit::Seconds,
        "Age of the oldest row waiting in the outbox"
    );
    describe_histogram!(
        PUBLISH_LAG_SECONDS,
        Unit::Seconds,
        "Time from an event's outbox insert (its commit) to its XADD"
    );
    describe_counter!(
        EVENTS_PUBLISHED_TOTAL,
        "Events published to Redis Streams, by event type"
    );
    describe_gauge!(
        PARTITIONS_HELD,
        "Outbox partitions whose lease this relay replica holds"
    );
    describe_counter!(
        STREAM_TRIMMED_TOTAL,
        "Stream entries removed by retention (every group had them), by module"
    );
    describe_gauge!(
        STREAM_LENGTH,
        "Stream length after the last trim, by module and partition"
    );
    describe_gauge!(
        OUTBOX_DEAD_TUPLES,
        "Dead tuples in the outbox table at the last cleaning check"
    );
    for spec in modules::specs() {
        for event_type in spec.event_types {
            counter!(EVENTS_PUBLISHED_TOTAL, "event_type" => *event_type).increment(0);
        }
        counter!(STREAM_TRIMMED_TOTAL, "module" => spec.name).increment(0);
        for p in 0..partitions {
            gauge!(STREAM_LENGTH, "module" => spec.name, "partition" => p.to_string()).set(0.0);
        }
    }
    let _ = metrics::histogram!(PUBLISH_LAG_SECONDS);
    for g in [
        OUTBOX_PENDING_COUNT,
        OUTBOX_OLDEST_PENDING_AGE_SECONDS,
        PARTITIONS_HELD,
        OUTBOX_DEAD_TUPLES,
    ] {
        gauge!(g).set(0.0);
    }
}
