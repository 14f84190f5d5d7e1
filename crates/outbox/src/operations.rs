//! Long-running operations on a projection (a rebuild, a reset): one row each, written by the
//! replica doing the work as it goes, so that another replica can resume it and anyone can
//! show its progress.

use deadpool_postgres::Pool;
use time::OffsetDateTime;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::OutboxError;

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationKind {
    /// Build a new generation beside the served one and switch to it.
    Rebuild,
    /// Wipe the read model and build it again.
    Reset,
}

impl OperationKind {
    /// The stored name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rebuild => "rebuild",
            Self::Reset => "reset",
        }
    }

    fn parse(s: &str) -> Self {
        if s == "reset" {
            Self::Reset
        } else {
            Self::Rebuild
        }
    }
}

/// Where an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationState {
    /// Under way (or waiting for a replica to resume it).
    Running,
    /// Done.
    Succeeded,
    /// Given up, with an error.
    Failed,
}

impl OperationState {
    /// The stored name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            _ => Self::Running,
        }
    }
}

/// One operation, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    /// Its id (what admin-api answers to the caller).
    pub id: Uuid,
    /// What it does.
    pub kind: OperationKind,
    /// On which projection.
    pub projection: String,
    /// Where it is.
    pub state: OperationState,
    /// Why it started (an operator's call, or what a projector found).
    pub reason: String,
    /// The generation it builds.
    pub generation: i64,
    /// How far its replay of `event_store` went (a position; 0 before the first page).
    pub position: i64,
    /// Events replayed so far.
    pub events_applied: i64,
    /// Events to replay in all (as counted when the replay began).
    pub events_total: i64,
    /// Replay speed over the last page, events per second.
    pub rate: f64,
    /// The replica doing it.
    pub owner: Option<String>,
    /// Started.
    pub started_at: OffsetDateTime,
    /// Last written.
    pub updated_at: OffsetDateTime,
    /// Ended, if it has.
    pub finished_at: Option<OffsetDateTime>,
    /// Why it failed.
    pub error: Option<String>,
    /// The snapshot a rebuild starts from (`None`: from the first event).
    pub snapshot_id: Option<Uuid>,
}

impl Operation {
    /// Seconds until it ends at its current rate, while it runs and the rate is known.
    #[must_use]
    pub fn eta_seconds(&self) -> Option<f64> {
        (self.state == OperationState::Running && self.rate > 0.0 && self.events_total > 0)
            .then(|| (self.events_total - self.events_applied).max(0) as f64 / self.rate)
    }
}

const COLUMNS: &str = "id, kind, projection, state, reason, generation, position, events_applied, \
    events_total, rate, owner, started_at, updated_at, finished_at, error, snapshot_id";

fn from_row(r: &Row) -> Operation {
    Operation {
        id: r.get(0),
        kind: OperationKind::parse(r.get(1)),
        projection: r.get(2),
        state: OperationState::parse(r.get(3)),
        reason: r.get(4),
        generation: r.get(5),
        position: r.get(6),
        events_applied: r.get(7),
        events_total: r.get(8),
        rate: r.get(9),
        owner: r.get(10),
        started_at: r.get(11),
        updated_at: r.get(12),
        finished_at: r.get(13),
        error: r.get(14),
        snapshot_id: r.get(15),
    }
}

/// What [`OperationStore::start`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Started {
    /// A new operation.
    New(Operation),
    /// One was already running on the projection (at most one runs at a time).
    AlreadyRunning(Operation),
}

/// An operation to start.
#[derive(Debug, Clone, Copy)]
pub struct NewOperation<'a> {
    /// What it does.
    pub kind: OperationKind,
    /// On which projection.
    pub projection: &'a str,
    /// Why (an operator's call, or what a projector found).
    pub reason: &'a str,
    /// The generation to build; 0 leaves the choice to the replica that runs it.
    pub generation: i64,
    /// The replica starting it, when a replica does.
    pub owner: Option<&'a str>,
    /// The snapshot a rebuild starts from.
    pub snapshot_id: Option<Uuid>,
}

impl<'a> NewOperation<'a> {
    /// `kind` on `projection` for `reason`: generation chosen by the runner, no owner yet,
    /// from the first event.
    #[must_use]
    pub fn new(kind: OperationKind, projection: &'a str, reason: &'a str) -> Self {
        Self {
            kind,
            projection,
            reason,
            generation: 0,
            owner: None,
            snapshot_id: None,
        }
    }
}

/// Progress of a running operation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// The last `event_store` position replayed.
    pub position: i64,
    /// Events replayed so far.
    pub events_applied: i64,
    /// Events to replay in all.
    pub events_total: i64,
    /// Events per second over the last page.
    pub rate: f64,
}

/// Access to the `operations` table.
#[derive(Debug, Clone)]
pub struct OperationStore {
    pool: Pool,
}

impl OperationStore {
    /// A store over `pool`.
    #[must_use]
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Starts `new`, unless an operation already runs on its projection (at most one does).
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn start(&self, new: NewOperation<'_>) -> Result<Started, OutboxError> {
        let client = self.pool.get().await?;
        let inserted = client
            .query_opt(
                &format!(
                    "INSERT INTO operations (id, kind, projection, reason, generation, owner, snapshot_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (projection) WHERE state = 'running' DO NOTHING
                     RETURNING {COLUMNS}"
                ),
                &[
                    &Uuid::now_v7(),
                    &new.kind.as_str(),
                    &new.projection,
                    &new.reason,
                    &new.generation,
                    &new.owner,
                    &new.snapshot_id,
                ],
            )
            .await?;
        if let Some(row) = inserted {
            return Ok(Started::New(from_row(&row)));
        }
        match self.running(new.projection).await? {
            Some(op) => Ok(Started::AlreadyRunning(op)),
            // It ended between the two statements: try once more.
            None => Box::pin(self.start(new)).await,
        }
    }

    /// The running operation of `projection`, if any.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn running(&self, projection: &str) -> Result<Option<Operation>, OutboxError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_opt(
                &format!(
                    "SELECT {COLUMNS} FROM operations WHERE projection = $1 AND state = 'running'"
                ),
                &[&projection],
            )
            .await?
            .as_ref()
            .map(from_row))
    }

    /// The operations of `projection`, newest first, at most `limit`.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn recent(
        &self,
        projection: &str,
        limit: i64,
    ) -> Result<Vec<Operation>, OutboxError> {
        let client = self.pool.get().await?;
        Ok(client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM operations WHERE projection = $1
                     ORDER BY started_at DESC LIMIT $2"
                ),
                &[&projection, &limit],
            )
            .await?
            .iter()
            .map(from_row)
            .collect())
    }

    /// One operation.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn get(&self, id: Uuid) -> Result<Option<Operation>, OutboxError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM operations WHERE id = $1"),
                &[&id],
            )
            .await?
            .as_ref()
            .map(from_row))
    }

    /// Records that `owner` does (or resumes) the running operation `id`, building
    /// `generation` from `position` on.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn claim(
        &self,
        id: Uuid,
        owner: &str,
        generation: i64,
        position: i64,
    ) -> Result<(), OutboxError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE operations SET owner = $2, generation = $3, position = $4,
                        updated_at = now()
                 WHERE id = $1 AND state = 'running'",
                &[&id, &owner, &generation, &position],
            )
            .await?;
        Ok(())
    }

    /// Records progress.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn progress(&self, id: Uuid, p: Progress) -> Result<(), OutboxError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE operations SET position = $2, events_applied = $3, events_total = $4,
                        rate = $5, updated_at = now()
                 WHERE id = $1 AND state = 'running'",
                &[
                    &id,
                    &p.position,
                    &p.events_applied,
                    &p.events_total,
                    &p.rate,
                ],
            )
            .await?;
        Ok(())
    }

    /// Ends the operation: succeeded, or failed with `error`.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn finish(&self, id: Uuid, error: Option<&str>) -> Result<(), OutboxError> {
        let state = if error.is_some() {
            OperationState::Failed
        } else {
            OperationState::Succeeded
        };
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE operations SET state = $2, error = $3, finished_at = now(), updated_at = now()
                 WHERE id = $1 AND state = 'running'",
                &[&id, &state.as_str(), &error],
            )
            .await?;
        Ok(())
    }
}
