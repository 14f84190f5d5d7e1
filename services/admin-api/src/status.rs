//! A projection's status, from what the system really shows: the control row, the workers'
//! heartbeats, the consumer group (`XINFO GROUPS`/`CONSUMERS`), the dead-letter stream, the
//! generation pointer, the running operation, and the outbox rows not yet relayed.

use std::collections::BTreeMap;
use std::time::Duration;

use module_kit::Module;
use outbox::control::{ControlStore, DesiredState};
use outbox::operations::{OperationKind, OperationStore};
use serde::Serialize;
use service_kit::http::ApiError;
use streams::dlq::DeadLetterKeys;
use streams::{GenerationState, Generations, consumer, info, redis};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::admin::Admin;
use crate::views::{OperationView, rfc3339};

/// One consumer of the projection's group, over every partition.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct ConsumerView {
    /// The consumer (a replica's `CONSUMER_NAME`).
    pub name: String,
    /// Entries delivered to it and not yet acknowledged.
    pub pending: u64,
    /// Milliseconds since it last read or acknowledged (the least over partitions).
    pub idle_ms: u64,
}

/// One replica, as its heartbeat says.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct ReplicaView {
    /// Its name.
    pub name: String,
    /// What it reported: `running`, `paused`, `rebuilding`, `error`, `stopped`.
    pub status: String,
    /// Whether its heartbeat is fresh (it is alive).
    pub live: bool,
    /// Seconds since its last heartbeat.
    pub heartbeat_age_seconds: f64,
    /// Partitions it holds.
    pub partitions: Vec<i32>,
    /// Events it applied since it started.
    pub events_applied: i64,
    /// The last error it met.
    pub last_error: Option<String>,
}

/// `ProjectionStatus` of http-api.md.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct ProjectionStatus {
    /// The projection.
    pub name: String,
    /// `running`, `paused`, `resetting`, `rebuilding`, `stalled` or `error`.
    pub status: String,
    /// What operators asked for: `running` or `paused`.
    pub desired_state: String,
    /// The generation served (`null` while none is: a first start, a reset, a total loss).
    pub generation: Option<i64>,
    /// The generation being built, if a rebuild runs.
    pub building_generation: Option<i64>,
    /// Its partition streams.
    pub streams: Vec<String>,
    /// Its consumer group.
    pub consumer_group: String,
    /// Entries not yet delivered to the group, over every partition.
    pub lag_messages: u64,
    /// Age of the oldest event not yet applied (in the outbox, undelivered or pending), in
    /// seconds; 0 when caught up.
    pub lag_seconds: f64,
    /// Entries delivered and not yet acknowledged.
    pub pending_messages: u64,
    /// Entries in its dead-letter stream.
    pub dead_letters: u64,
    /// Events its replicas applied (each since it started).
    pub events_processed: i64,
    /// When an event was last applied.
    pub last_processed_at: Option<String>,
    /// The group's consumers.
    pub consumers: Vec<ConsumerView>,
    /// The last error a live replica reported.
    pub last_error: Option<String>,
    /// Its replicas, by their heartbeats.
    pub replicas: Vec<ReplicaView>,
    /// The operation running on it, if any.
    pub operation: Option<OperationView>,
    /// Why `status` says what it says, for people.
    pub status_reason: String,
}

/// What a status is computed with.
#[derive(Debug, Clone, Copy)]
pub struct StatusSettings {
    /// A replica silent for longer is gone.
    pub heartbeat_stale: Duration,
    /// Lag (oldest unapplied event) and no event applied for longer: stalled.
    pub stall_after: Duration,
}

/// Computes `module`'s status.
///
/// # Errors
/// [`ApiError`] 503 when PostgreSQL or Redis is unavailable.
pub async fn projection_status(
    admin: &Admin,
    module: &Module,
) -> Result<ProjectionStatus, ApiError> {
    let spec = module.spec;
    let name = spec.projection;
    let control = ControlStore::new(admin.pg.clone());
    let row = control.projection(name).await?;
    let workers = control.workers(name).await?;
    let running = OperationStore::new(admin.pg.clone()).running(name).await?;
    let outbox_age = outbox::stats::oldest_pending_age(&admin.pg, spec.name).await?;

    let routing = admin.redis.keys.routing(admin.partitions);
    let streams = routing.streams(spec.name);
    let mut conn = admin
        .redis
        .commands
        .get()
        .await
        .map_err(streams::StreamError::from)?;
    let generations = Generations::new(
        &admin.redis.keys,
        spec.name,
        name,
        GenerationState::default(),
    );
    let state = generations.refresh(&mut conn).await?;
    let (mut lag, mut pending) = (0u64, 0u64);
    let mut oldest_ms: Option<u64> = None;
    let mut consumers: BTreeMap<String, ConsumerView> = BTreeMap::new();
    for stream in &streams {
        let groups = consumer::groups(&mut conn, stream).await?;
        let Some(group) = groups.iter().find(|g| g.name == spec.consumer_group) else {
            continue;
        };
        pending += group.pending as u64;
        lag += match group.lag {
            Some(l) => l as u64,
            // Redis cannot tell after deletions inside the undelivered range: count them.
            None => count_after(&mut conn, stream, &group.last_delivered_id).await?,
        };
        if let Some(ms) = info::oldest_unfinished_ms(&mut conn, stream, group).await? {
            oldest_ms = Some(oldest_ms.map_or(ms, |o| o.min(ms)));
        }
        for c in consumer::consumers(&mut conn, stream, spec.consumer_group).await? {
            let e = consumers.entry(c.name.clone()).or_insert(ConsumerView {
                name: c.name,
                pending: 0,
                idle_ms: u64::MAX,
            });
            e.pending += c.pending;
            e.idle_ms = e.idle_ms.min(c.idle_ms);
        }
    }
    let dlq = DeadLetterKeys::new(&admin.redis.keys, name);
    let dead_letters: u64 = redis::cmd("XLEN")
        .arg(&dlq.stream)
        .query_async(&mut conn)
        .await
        .map_err(streams::StreamError::from)?;
    drop(conn);

    let now_ms =
        u64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let stream_age = oldest_ms.map_or(0.0, |ms| now_ms.saturating_sub(ms) as f64 / 1000.0);
    let lag_seconds = stream_age.max(outbox_age);

    let settings = admin.status;
    let replicas: Vec<ReplicaView> = workers
        .iter()
        .map(|w| {
            let age = w.age.unwrap_or(Duration::MAX);
            ReplicaView {
                name: w.worker.clone(),
                status: w.status.clone(),
                live: w.status != "stopped" && age < settings.heartbeat_stale,
                heartbeat_age_seconds: age.as_secs_f64(),
                partitions: w.partitions.clone(),
                events_applied: w.events_applied,
                last_error: w.last_error.clone(),
            }
        })
        .collect();
    let last_processed = workers.iter().filter_map(|w| w.last_applied_at).max();
    let since_progress = last_processed.map_or(f64::INFINITY, |t| {
        (OffsetDateTime::now_utc() - t).as_seconds_f64().max(0.0)
    });
    let live: Vec<&ReplicaView> = replicas.iter().filter(|r| r.live).collect();
    let desired = row
        .as_ref()
        .map_or(DesiredState::Running, |r| r.desired_state);
    let held = row.as_ref().is_some_and(|r| r.held);
    let stall = settings.stall_after.as_secs_f64();

    // Nothing consumes without a live replica, whatever else is asked of it: that comes first.
    let (status, reason) = if live.is_empty() {
        let doing = running.as_ref().map_or(String::new(), |op| {
            format!(" ({} {} waits for one)", op.kind.as_str(), op.id)
        });
        (
            "stalled",
            format!("no live replica: every heartbeat is stale{doing}"),
        )
    } else if let Some(op) = &running {
        match op.kind {
            OperationKind::Reset => ("resetting", format!("reset {} under way", op.id)),
            OperationKind::Rebuild => ("rebuilding", format!("rebuild {} under way", op.id)),
        }
    } else if desired == DesiredState::Paused || held {
        let why = if held {
            "held still for a snapshot"
        } else {
            "paused by an operator"
        };
        if live.iter().all(|r| r.status == "paused") {
            ("paused", why.to_owned())
        } else {
            (
                "running",
                format!("{why}; waiting for every replica to stop"),
            )
        }
    } else if lag_seconds > stall && since_progress > stall {
        (
            "stalled",
            format!(
                "events wait for {lag_seconds:.0} s and none was applied for {since_progress:.0} s"
            ),
        )
    } else if live.iter().any(|r| r.status == "error") {
        ("error", "a replica reports an error".to_owned())
    } else {
        ("running", "consuming".to_owned())
    };
    let last_error = live.iter().find_map(|r| r.last_error.clone());
    Ok(ProjectionStatus {
        name: name.to_owned(),
        status: status.to_owned(),
        desired_state: desired.as_str().to_owned(),
        generation: state.active,
        building_generation: state.building,
        streams,
        consumer_group: spec.consumer_group.to_owned(),
        lag_messages: lag,
        lag_seconds: if lag == 0 && pending == 0 && outbox_age == 0.0 {
            0.0
        } else {
            lag_seconds
        },
        pending_messages: pending,
        dead_letters,
        events_processed: workers.iter().map(|w| w.events_applied).sum(),
        last_processed_at: last_processed.map(rfc3339),
        consumers: consumers
            .into_values()
            .map(|mut c| {
                if c.idle_ms == u64::MAX {
                    c.idle_ms = 0;
                }
                c
            })
            .collect(),
        last_error,
        replicas,
        operation: running.as_ref().map(OperationView::from),
        status_reason: reason,
    })
}

/// Entries of `stream` after `id` (capped: an estimate past ten thousand).
async fn count_after(
    conn: &mut impl redis::aio::ConnectionLike,
    stream: &str,
    id: &str,
) -> Result<u64, ApiError> {
    let entries: Vec<redis::Value> = redis::cmd("XRANGE")
        .arg(stream)
        .arg(format!("({id}"))
        .arg("+")
        .arg("COUNT")
        .arg(10_000)
        .query_async(conn)
        .await
        .map_err(streams::StreamError::from)?;
    Ok(entries.len() as u64)
}
