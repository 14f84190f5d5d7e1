//! Projection control rows: the desired state operators set, the active generation and the
//! canary projectors record, and the heartbeats workers report.

use deadpool_postgres::Pool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::OutboxError;

/// What operators want a projection to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DesiredState {
    /// Consume and apply.
    Running,
    /// Apply nothing (leases are kept, so nobody else applies either).
    Paused,
}

impl DesiredState {
    /// The stored name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
        }
    }
}

/// The NOTIFY channel of control changes in `schema`.
#[must_use]
pub fn control_channel(schema: &str) -> String {
    format!("cqrs_control_{schema}")
}

/// A worker's report.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    /// The projection.
    pub projection: String,
    /// The worker (replica) name.
    pub worker: String,
    /// `running`, `paused`, `rebuilding`, `stalled`, `error`, `stopped`.
    pub status: String,
    /// Partitions it holds.
    pub partitions: Vec<i32>,
    /// Events it applied since it started.
    pub events_applied: i64,
    /// The last event it applied.
    pub last_event_id: Option<Uuid>,
    /// When it applied that event.
    pub last_applied_at: Option<OffsetDateTime>,
    /// The last error it met, if any.
    pub last_error: Option<String>,
    /// When it reported (set by the database on write).
    pub heartbeat_at: Option<OffsetDateTime>,
    /// The process that wrote it (random per start): two live processes under one worker
    /// name show as two instances taking turns at the row.
    pub instance: Option<String>,
    /// How old it is, by the database's clock (read back only; ignored on write).
    pub age: Option<std::time::Duration>,
}

/// A worker's last report, as [`ControlStore::worker_heartbeat`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerReport {
    /// The process that wrote it.
    pub instance: Option<String>,
    /// Its status then.
    pub status: String,
    /// When it was written.
    pub written_at: OffsetDateTime,
    /// How long ago, by the database's clock.
    pub age: std::time::Duration,
}

/// The canary of a projection: an epoch bumped in Redis and in PostgreSQL together (Redis
/// first), and when. Redis answering an older epoch than PostgreSQL means Redis went back in
/// time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Canary {
    /// The epoch.
    pub epoch: i64,
    /// When it was recorded here (PostgreSQL's clock).
    pub at: Option<OffsetDateTime>,
}

/// A projection's control row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionRow {
    /// The projection.
    pub name: String,
    /// What operators asked for.
    pub desired_state: DesiredState,
    /// The active generation recorded here.
    pub generation: i64,
    /// Until when a hold keeps it paused (past: no hold).
    pub hold_until: Option<OffsetDateTime>,
    /// Who holds it.
    pub hold_by: Option<String>,
    /// Whether a hold is in force now (by the database's clock).
    pub held: bool,
}

/// Access to the `projections` and `projection_workers` tables.
#[derive(Debug, Clone)]
pub struct ControlStore {
    pool: Pool,
}

impl ControlStore {
    /// A store over `pool`.
    #[must_use]
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Creates the control rows of `projections` that do not exist yet (running, generation 1):
    /// every service hosting projections calls this with the registry's list at start, and
    /// `admin-api migrate` after migrating, so no row is ever seeded by hand. Returns how many
    /// rows it created.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn register(&self, projections: &[&str]) -> Result<u64, OutboxError> {
        let client = self.pool.get().await?;
        let names: Vec<&str> = projections.to_vec();
        Ok(client
            .execute(
                "INSERT INTO projections (name) SELECT unnest($1::text[]) ON CONFLICT (name) DO NOTHING",
                &[&names],
            )
            .await?)
    }

    /// The active generation recorded for `projection` (the mirror of the pointer in Redis;
    /// 1, the initial generation, for a projection never rebuilt).
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn generation(&self, projection: &str) -> Result<i64, OutboxError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_opt(
                "SELECT generation FROM projections WHERE name = $1",
                &[&projection],
            )
            .await?
            .map_or(1, |r| r.get(0)))
    }

    /// Records `generation` as `projection`'s active one (after a switch in Redis).
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn set_generation(
        &self,
        projection: &str,
        generation: i64,
    ) -> Result<(), OutboxError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE projections SET generation = $2, updated_at = now()
                 WHERE name = $1 AND generation <> $2",
                &[&projection, &generation],
            )
            .await?;
        Ok(())
    }

    /// `projection`'s canary as recorded here.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn canary(&self, projection: &str) -> Result<Canary, OutboxError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_opt(
                "SELECT canary_epoch, canary_at FROM projections WHERE name = $1",
                &[&projection],
            )
            .await?
            .map_or(Canary { epoch: 0, at: None }, |r| Canary {
                epoch: r.get(0),
                at: r.get(1),
            }))
    }

    /// Moves the canary from `from` to `to` (now), unless another replica moved it first.
    /// Returns the new canary when this call moved it.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn advance_canary(
        &self,
        projection: &str,
        from: i64,
        to: i64,
    ) -> Result<Option<Canary>, OutboxError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_opt(
                "UPDATE projections SET canary_epoch = $3, canary_at = now()
                 WHERE name = $1 AND canary_epoch = $2 RETURNING canary_epoch, canary_at",
                &[&projection, &from, &to],
            )
            .await?
            .map(|r| Canary {
                epoch: r.get(0),
                at: r.get(1),
            }))
    }

    /// Asks for a rebuild of `projection` because of `reason` (a loss only one replica saw).
    /// Kept until a rebuild that started after this call switches ([`Self::answer_rebuild`]).
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn request_rebuild(&self, projection: &str, reason: &str) -> Result<(), OutboxError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE projections SET rebuild_requested = $2, rebuild_requested_at = now()
                 WHERE name = $1",
                &[&projection, &reason],
            )
            .await?;
        Ok(())
    }

    /// The reason of `projection`'s pending rebuild request, if any.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn rebuild_requested(&self, projection: &str) -> Result<Option<String>, OutboxError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_opt(
                "SELECT rebuild_requested FROM projections WHERE name = $1",
                &[&projection],
            )
            .await?
            .and_then(|r| r.get(0)))
    }

    /// Settles `projection`'s rebuild request if it was made before `started` (when the
    /// rebuild that just switched began: its snapshot holds whatever that loss took). A
    /// request made since stays, for the next rebuild. Returns whether one was settled.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn answer_rebuild(
        &self,
        projection: &str,
        started: OffsetDateTime,
    ) -> Result<bool, OutboxError> {
        let client = self.pool.get().await?;
        Ok(client
            .execute(
                "UPDATE projections SET rebuild_requested = NULL, rebuild_requested_at = NULL
                 WHERE name = $1 AND rebuild_requested_at < $2",
                &[&projection, &started],
            )
            .await?
            > 0)
    }

    /// What `projection`'s workers must do now: paused while the operators want it paused or
    /// a hold is in force; running otherwise (and when it has no row).
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn desired_state(&self, projection: &str) -> Result<DesiredState, OutboxError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT CASE WHEN hold_until > now() THEN 'paused' ELSE desired_state END
                 FROM projections WHERE name = $1",
                &[&projection],
            )
            .await?;
        Ok(match row.as_ref().map(|r| r.get::<_, &str>(0)) {
            Some("paused") => DesiredState::Paused,
            _ => DesiredState::Running,
        })
    }

    /// The control row of `projection`.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn projection(&self, projection: &str) -> Result<Option<ProjectionRow>, OutboxError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_opt(
                "SELECT name, desired_state, generation, hold_until, hold_by,
                        hold_until IS NOT NULL AND hold_until > now()
                 FROM projections WHERE name = $1",
                &[&projection],
            )
            .await?
            .map(|r| ProjectionRow {
                name: r.get(0),
                desired_state: if r.get::<_, &str>(1) == "paused" {
                    DesiredState::Paused
                } else {
                    DesiredState::Running
                },
                generation: r.get(2),
                hold_until: r.get(3),
                hold_by: r.get(4),
                held: r.get(5),
            }))
    }

    /// Holds `projection` still (its workers pause) until `ttl` from now, for `by`; renewing
    /// `by`'s own hold is allowed. Returns when the hold was taken (the database's clock: a
    /// worker's report written after it shows the worker saw it), or `None` when another
    /// holder's hold is in force.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn hold(
        &self,
        projection: &str,
        by: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<OffsetDateTime>, OutboxError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_opt(
                "UPDATE projections
                 SET hold_until = now() + make_interval(secs => $3), hold_by = $2
                 WHERE name = $1 AND (hold_until IS NULL OR hold_until <= now() OR hold_by = $2)
                 RETURNING now()",
                &[&projection, &by, &ttl.as_secs_f64()],
            )
            .await?
            .map(|r| r.get(0)))
    }

    /// Ends `by`'s hold on `projection` (the trigger wakes the workers at once).
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn release(&self, projection: &str, by: &str) -> Result<(), OutboxError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE projections SET hold_until = NULL, hold_by = NULL
                 WHERE name = $1 AND hold_by = $2",
                &[&projection, &by],
            )
            .await?;
        Ok(())
    }

    /// Sets the desired state (the trigger notifies the workers). Returns whether the
    /// projection exists.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn set_desired_state(
        &self,
        projection: &str,
        state: DesiredState,
    ) -> Result<bool, OutboxError> {
        let client = self.pool.get().await?;
        let n = client
            .execute(
                "UPDATE projections SET desired_state = $2, updated_at = now() WHERE name = $1",
                &[&projection, &state.as_str()],
            )
            .await?;
        Ok(n == 1)
    }

    /// Records that an operator discarded `event_id` (of `aggregate_id`, version `version`)
    /// from `projection`'s dead letters, so rebuilds and repairs skip it from then on.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn record_discard(
        &self,
        projection: &str,
        event_id: Uuid,
        aggregate: (Uuid, i64),
        actor: &str,
        reason: &str,
    ) -> Result<(), OutboxError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO discarded_events
                     (projection, event_id, aggregate_id, aggregate_version, actor, reason)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[
                    &projection,
                    &event_id,
                    &aggregate.0,
                    &aggregate.1,
                    &actor,
                    &reason,
                ],
            )
            .await?;
        Ok(())
    }

    /// The events discarded from `projection`'s dead letters.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn discarded(
        &self,
        projection: &str,
    ) -> Result<std::collections::HashSet<Uuid>, OutboxError> {
        let client = self.pool.get().await?;
        Ok(client
            .query(
                "SELECT event_id FROM discarded_events WHERE projection = $1",
                &[&projection],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// Records a worker's heartbeat.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn heartbeat(&self, h: &Heartbeat) -> Result<(), OutboxError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO projection_workers (projection, worker, status, partitions, events_applied,
                                                 last_event_id, last_applied_at, last_error, heartbeat_at,
                                                 instance)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now(), $9)
                 ON CONFLICT (projection, worker) DO UPDATE SET
                     status = EXCLUDED.status, partitions = EXCLUDED.partitions,
                     events_applied = EXCLUDED.events_applied,
                     last_event_id = coalesce(EXCLUDED.last_event_id, projection_workers.last_event_id),
                     last_applied_at = coalesce(EXCLUDED.last_applied_at, projection_workers.last_applied_at),
                     last_error = EXCLUDED.last_error, heartbeat_at = now(),
                     instance = EXCLUDED.instance",
            )
            .await?;
        client
            .execute(
                &stmt,
                &[
                    &h.projection,
                    &h.worker,
                    &h.status,
                    &h.partitions,
                    &h.events_applied,
                    &h.last_event_id,
                    &h.last_applied_at,
                    &h.last_error,
                    &h.instance,
                ],
            )
            .await?;
        Ok(())
    }

    /// The last report of `worker` on `projection`, with its age by the database's clock.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn worker_heartbeat(
        &self,
        projection: &str,
        worker: &str,
    ) -> Result<Option<WorkerReport>, OutboxError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_opt(
                "SELECT instance, status, heartbeat_at,
                        greatest(extract(epoch FROM now() - heartbeat_at), 0)::float8
                 FROM projection_workers WHERE projection = $1 AND worker = $2",
                &[&projection, &worker],
            )
            .await?
            .map(|r| WorkerReport {
                instance: r.get(0),
                status: r.get(1),
                written_at: r.get(2),
                age: std::time::Duration::from_secs_f64(r.get::<_, f64>(3)),
            }))
    }

    /// The heartbeats of `projection`'s workers, freshest first.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn workers(&self, projection: &str) -> Result<Vec<Heartbeat>, OutboxError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT projection, worker, status, partitions, events_applied, last_event_id,
                        last_applied_at, last_error, heartbeat_at, instance,
                        greatest(extract(epoch FROM now() - heartbeat_at), 0)::float8
                 FROM projection_workers WHERE projection = $1 ORDER BY heartbeat_at DESC",
                &[&projection],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Heartbeat {
                projection: r.get(0),
                worker: r.get(1),
                status: r.get(2),
                partitions: r.get(3),
                events_applied: r.get(4),
                last_event_id: r.get(5),
                last_applied_at: r.get(6),
                last_error: r.get(7),
                heartbeat_at: r.get(8),
                instance: r.get(9),
                age: Some(std::time::Duration::from_secs_f64(r.get::<_, f64>(10))),
            })
            .collect())
    }
}
