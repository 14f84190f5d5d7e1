//! The pipeline's health as Prometheus gauges, for alerting: every few seconds admin-api runs
//! the same check as `GET /health/cqrs` and exports the figures it judged by. They come from
//! PostgreSQL (heartbeats, outbox, leases) and Redis (groups, dead letters), not from the
//! workers' own `/metrics`, so they still tell the truth when every projector or relay is
//! gone (a dead process exports nothing). Every admin-api replica exports the same values:
//! aggregate them with `max`.

use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::health::{self, Level};

/// Gauge: each component's level (`component`: `postgres`, `redis`, `relay`,
/// `projection:<name>`): 0 healthy, 1 degraded, 2 unhealthy.
pub const HEALTH_STATUS: &str = "cqrs_health_status";
/// Gauge: projector replicas with a fresh heartbeat, by `projection`.
pub const PROJECTION_LIVE_REPLICAS: &str = "cqrs_projection_live_replicas";
/// Gauge: stream entries not yet delivered to the projection's group, by `projection`.
pub const PROJECTION_LAG_MESSAGES: &str = "cqrs_projection_lag_messages";
/// Gauge: age of the oldest event not yet applied, seconds, by `projection` (0 when caught up).
pub const PROJECTION_OLDEST_UNAPPLIED_AGE_SECONDS: &str =
    "cqrs_projection_oldest_unapplied_age_seconds";
/// Gauge: dead letters waiting for an operator, by `projection`.
pub const PROJECTION_DEAD_LETTERS: &str = "cqrs_projection_dead_letters";
/// Gauge: relay replicas alive (holding a lease that has not run out).
pub const RELAY_LIVE_REPLICAS: &str = "cqrs_relay_live_replicas";
/// Gauge: outbox partitions no relay replica holds.
pub const RELAY_PARTITIONS_WITHOUT_OWNER: &str = "cqrs_relay_partitions_without_owner";

/// How often the check runs: below every scrape interval we ship (5 s compose, 15 s k8s).
const PERIOD: Duration = Duration::from_secs(5);

/// Describes the gauges (`# HELP`). Call once the recorder is installed.
pub fn describe() {
    use metrics::{Unit, describe_gauge};
    describe_gauge!(
        HEALTH_STATUS,
        "Health of each component as /health/cqrs judges it: 0 healthy, 1 degraded, 2 unhealthy"
    );
    describe_gauge!(
        PROJECTION_LIVE_REPLICAS,
        "Projector replicas whose heartbeat is fresh, by projection"
    );
    describe_gauge!(
        PROJECTION_LAG_MESSAGES,
        "Stream entries not yet delivered to the projection's consumer group, by projection"
    );
    describe_gauge!(
        PROJECTION_OLDEST_UNAPPLIED_AGE_SECONDS,
        Unit::Seconds,
        "Age of the oldest event not yet applied by the projection (0 when caught up)"
    );
    describe_gauge!(
        PROJECTION_DEAD_LETTERS,
        "Dead letters waiting for an operator, by projection"
    );
    describe_gauge!(
        RELAY_LIVE_REPLICAS,
        "Relay replicas alive (holding an unexpired lease)"
    );
    describe_gauge!(
        RELAY_PARTITIONS_WITHOUT_OWNER,
        "Outbox partitions that no relay replica holds"
    );
}

/// Checks and exports until `shutdown`, the first time at once.
pub async fn run(admin: Admin, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => export(&health::check(&admin).await),
        }
    }
}

/// Sets the gauges from one check. A figure the check could not read (its dependency is
/// down) keeps its previous value; the component's level says it is unhealthy.
fn export(h: &health::CqrsHealth) {
    for c in &h.components {
        let level = match c.status {
            Level::Healthy => 0.0,
            Level::Degraded => 1.0,
            Level::Unhealthy => 2.0,
        };
        metrics::gauge!(HEALTH_STATUS, "component" => c.name.clone()).set(level);
        let number = |key: &str| c.details.get(key).and_then(Value::as_f64);
        if let Some(projection) = c.name.strip_prefix("projection:") {
            let p = projection.to_owned();
            for (gauge, key) in [
                (PROJECTION_LIVE_REPLICAS, "live_replicas"),
                (PROJECTION_LAG_MESSAGES, "lag_messages"),
                (PROJECTION_OLDEST_UNAPPLIED_AGE_SECONDS, "lag_seconds"),
                (PROJECTION_DEAD_LETTERS, "dead_letters"),
            ] {
                if let Some(v) = number(key) {
                    metrics::gauge!(gauge, "projection" => p.clone()).set(v);
                }
            }
        } else if c.name == "relay" {
            if let Some(v) = number("live_relays") {
                metrics::gauge!(RELAY_LIVE_REPLICAS).set(v);
            }
            if let Some(unowned) = c
                .details
                .get("partitions_without_owner")
                .and_then(Value::as_array)
            {
                metrics::gauge!(RELAY_PARTITIONS_WITHOUT_OWNER).set(unowned.len() as f64);
            }
        }
    }
}
