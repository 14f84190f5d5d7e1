//! `GET /health/cqrs`: the pipeline's health, judged from real data and never optimistic.
//!
//! One component per projection (live replicas? events waiting too long with nothing
//! applied? dead letters?), one for the relay (oldest outbox row, partitions nobody holds),
//! and PostgreSQL and Redis themselves. The worst component decides: `healthy` and `degraded`
//! answer 200 (degraded says why: lagging but progressing, paused, dead letters waiting),
//! `unhealthy` 503 (stuck, replicas gone, a dependency down).
//!
//! It does not flap on a burst: lag is judged by the *age* of the oldest unapplied event (a
//! burst of thousands applied within a second never gets old), and "stuck" needs both that
//! age and no progress for the stall time. It never says healthy while nothing consumes: a
//! projection without a live replica is unhealthy whatever its lag.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::admin::Admin;
use crate::status::{ProjectionStatus, projection_status};
use crate::views::rfc3339;

/// Thresholds (settings, with defaults in the binary's flags).
#[derive(Debug, Clone, Copy)]
pub struct HealthSettings {
    /// Oldest unapplied event older than this: degraded.
    pub lag_degraded: Duration,
    /// Undelivered entries above this: degraded.
    pub lag_messages_degraded: u64,
    /// Oldest outbox row older than this: degraded.
    pub outbox_degraded: Duration,
    /// Oldest outbox row older than this: unhealthy (the relay is stuck or gone).
    pub outbox_unhealthy: Duration,
}

/// How one component is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Fine.
    Healthy,
    /// Working, but someone should look.
    Degraded,
    /// Not working.
    Unhealthy,
}

/// One component.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Component {
    /// `projection:<name>`, `relay`, `postgres`, `redis`.
    pub name: String,
    /// Its level.
    pub status: Level,
    /// Why, for people.
    pub message: String,
    /// The figures it was judged by.
    pub details: Value,
}

/// The answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CqrsHealth {
    /// The worst component's level.
    pub status: Level,
    /// Every component.
    pub components: Vec<Component>,
    /// When.
    pub checked_at: String,
}

/// Checks everything, each dependency with a short timeout.
pub async fn check(admin: &Admin) -> CqrsHealth {
    let timeout = Duration::from_secs(3);
    let mut components = Vec::new();
    let pg = tokio::time::timeout(timeout, async {
        let client = admin.pg.get().await.map_err(|e| e.to_string())?;
        client
            .query_one("SELECT 1", &[])
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let pg_up = matches!(pg, Ok(Ok(_)));
    components.push(dependency(
        "postgres",
        pg.map_err(|_| "timed out".to_owned())
            .and_then(|r| r.map(|_| ())),
    ));
    let redis = tokio::time::timeout(timeout, async {
        let mut conn = admin
            .redis
            .commands
            .get()
            .await
            .map_err(|e| e.to_string())?;
        streams::redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let redis_up = matches!(redis, Ok(Ok(_)));
    components.push(dependency(
        "redis",
        redis
            .map_err(|_| "timed out".to_owned())
            .and_then(|r| r.map(|_| ())),
    ));
    if pg_up {
        components.push(relay(admin).await);
    }
    if pg_up && redis_up {
        for module in modules::ALL {
            let c = match tokio::time::timeout(timeout, projection_status(admin, module)).await {
                Ok(Ok(s)) => judge(admin.health, &s),
                Ok(Err(e)) => Component {
                    name: format!("projection:{}", module.spec.projection),
                    status: Level::Unhealthy,
                    message: format!("cannot read its state: {e}"),
                    details: json!({}),
                },
                Err(_) => Component {
                    name: format!("projection:{}", module.spec.projection),
                    status: Level::Unhealthy,
                    message: "reading its state timed out".into(),
                    details: json!({}),
                },
            };
            components.push(c);
        }
    }
    CqrsHealth {
        status: components
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Level::Healthy),
        components,
        checked_at: rfc3339(time::OffsetDateTime::now_utc()),
    }
}

fn dependency(name: &str, result: Result<(), String>) -> Component {
    match result {
        Ok(()) => Component {
            name: name.into(),
            status: Level::Healthy,
            message: "reachable".into(),
            details: json!({}),
        },
        Err(e) => Component {
            name: name.into(),
            status: Level::Unhealthy,
            message: format!("unreachable: {e}"),
            details: json!({}),
        },
    }
}

async fn relay(admin: &Admin) -> Component {
    let stats = match outbox::stats::outbox_stats(&admin.pg, admin.partitions).await {
        Ok(s) => s,
        Err(e) => {
            return Component {
                name: "relay".into(),
                status: Level::Unhealthy,
                message: format!("cannot read the outbox: {e}"),
                details: json!({}),
            };
        }
    };
    let unowned: Vec<i32> = stats
        .partitions
        .iter()
        .filter(|p| p.owner.is_none())
        .map(|p| p.partition)
        .collect();
    let age = stats.oldest_pending_age_seconds;
    let h = admin.health;
    let (status, message) = if age > h.outbox_unhealthy.as_secs_f64() {
        (
            Level::Unhealthy,
            format!("the oldest outbox row waits for {age:.0} s: events are not being relayed"),
        )
    } else if stats.live_relays == 0 {
        (
            Level::Unhealthy,
            "no relay replica is alive: nothing publishes the outbox".to_owned(),
        )
    } else if !unowned.is_empty() {
        (
            Level::Degraded,
            format!("partitions {unowned:?} have no relay holding them"),
        )
    } else if age > h.outbox_degraded.as_secs_f64() {
        (
            Level::Degraded,
            format!("the oldest outbox row waits for {age:.1} s"),
        )
    } else {
        (Level::Healthy, "relaying".to_owned())
    };
    Component {
        name: "relay".into(),
        status,
        message,
        details: json!({
            "pending_count": stats.pending_count,
            "oldest_pending_age_seconds": age,
            "live_relays": stats.live_relays,
            "partitions_without_owner": unowned,
        }),
    }
}

/// Judges one projection.
fn judge(h: HealthSettings, s: &ProjectionStatus) -> Component {
    let live = s.replicas.iter().filter(|r| r.live).count();
    let (status, message) = match s.status.as_str() {
        "stalled" => (Level::Unhealthy, s.status_reason.clone()),
        "error" => (
            Level::Degraded,
            format!(
                "{}: {}",
                s.status_reason,
                s.last_error.clone().unwrap_or_default()
            ),
        ),
        "resetting" => (
            Level::Degraded,
            format!("{}: reads answer 503 until it is rebuilt", s.status_reason),
        ),
        "paused" => (Level::Degraded, s.status_reason.clone()),
        _ if s.lag_seconds > h.lag_degraded.as_secs_f64() => (
            Level::Degraded,
            format!(
                "lagging but progressing: the oldest unapplied event is {:.0} s old",
                s.lag_seconds
            ),
        ),
        _ if s.lag_messages > h.lag_messages_degraded => (
            Level::Degraded,
            format!(
                "lagging but progressing: {} entries not yet delivered",
                s.lag_messages
            ),
        ),
        _ if s.dead_letters > 0 => (
            Level::Degraded,
            format!("{} dead letters wait for an operator", s.dead_letters),
        ),
        _ => (Level::Healthy, s.status_reason.clone()),
    };
    Component {
        name: format!("projection:{}", s.name),
        status,
        message,
        details: json!({
            "status": s.status,
            "live_replicas": live,
            "lag_messages": s.lag_messages,
            "lag_seconds": s.lag_seconds,
            "pending_messages": s.pending_messages,
            "dead_letters": s.dead_letters,
            "generation": s.generation,
            "last_processed_at": s.last_processed_at,
        }),
    }
}
