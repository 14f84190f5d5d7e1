//! The task commands' SQL. Each function runs inside the command runner's transaction: it
//! locks (or inserts) the task row, applies the pure rules, writes the new row and returns the
//! events for the runner to append.

use events::EventContext;
use outbox::tokio_postgres::Row;
use outbox::{CommandTx, param};
use service_kit::command::CommandOutcome;
use uuid::Uuid;

use events::{Committed, commit};

use crate::SPEC;
use crate::domain::{
    CreateTask, Task, TaskCommand, TaskError, TaskStatus, TaskType, decide, decide_create,
};

const COLUMNS: &str = "id, user_id, title, type, tags, estimated_minutes, priority, difficulty, status, \
    due_date, started_at, completed_at, actual_minutes, note, abandon_reason, created_at, updated_at, \
    deleted_at IS NOT NULL, version";

/// Reads a row selected with [`COLUMNS`].
///
/// # Errors
/// [`TaskError::MalformedEvent`] if a stored enum value is unknown (the CHECK constraints
/// prevent it).
pub fn from_row(row: &Row) -> Result<Task, TaskError> {
    let corrupt = |what: &str| TaskError::MalformedEvent {
        event_type: "row".into(),
        reason: what.into(),
    };
    Ok(Task {
        id: row.get(0),
        user_id: row.get(1),
        title: row.get(2),
        task_type: TaskType::parse(row.get(3)).ok_or_else(|| corrupt("type"))?,
        tags: row.get(4),
        estimated_minutes: row.get(5),
        priority: row.get(6),
        difficulty: row.get(7),
        status: TaskStatus::parse(row.get(8)).ok_or_else(|| corrupt("status"))?,
        due_date: row.get(9),
        started_at: row.get(10),
        completed_at: row.get(11),
        actual_minutes: row.get(12),
        note: row.get(13),
        abandon_reason: row.get(14),
        created_at: row.get(15),
        updated_at: row.get(16),
        deleted: row.get(17),
        version: row.get(18),
    })
}

/// Creates a task owned by the context's user.
///
/// # Errors
/// [`TaskError::Store`] when PostgreSQL fails.
pub async fn create(
    tx: &CommandTx<'_>,
    ctx: &EventContext,
    cmd: &CreateTask,
) -> Result<CommandOutcome, TaskError> {
    let user = ctx.user_id.unwrap_or_default();
    let events = decide_create(user, cmd);
    let Committed {
        state: Some(task),
        envelopes,
    } = commit::<Task>(None, 0, cmd.id, &events, ctx)?
    else {
        return Err(TaskError::NotFound);
    };
    // Sent, not awaited: it rides with the events and the commit, which reports a refusal.
    tx.send(
&tx.prepare_cached("INSERT INTO tasks (id, user_id, title, type, tags, estimated_minutes, priority, difficulty,
                            status, due_date, created_at, updated_at, version)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)").await?,
        vec![
            param(task.id),
            param(task.user_id),
            param(task.title.clone()),
            param(task.task_type.as_str()),
            param(task.tags.clone()),
            param(task.estimated_minutes),
            param(task.priority),
            param(task.difficulty),
            param(task.status.as_str()),
            param(task.due_date),
            param(task.created_at),
            param(task.updated_at),
            param(task.version),
        ],
    )?;
    Ok(
        CommandOutcome::new(SPEC.name, task.id, task.version, envelopes)
            .created_at(format!("/v1/tasks/{}", task.id)),
    )
}

/// Runs `cmd` on task `id` for the context's user.
///
/// Order of checks: the task must exist, be the caller's and not be deleted (else 404, so
/// other users' tasks are indistinguishable from missing ones); then `If-Match` (412); then the
/// transition (409).
///
/// # Errors
/// [`TaskError::NotFound`], [`TaskError::VersionMismatch`], [`TaskError::InvalidTransition`],
/// [`TaskError::Store`].
pub async fn execute(
    tx: &CommandTx<'_>,
    ctx: &EventContext,
    id: Uuid,
    expected_version: Option<i64>,
    cmd: &TaskCommand,
) -> Result<CommandOutcome, TaskError> {
    // FOR UPDATE serialises commands on one task: they commit in version order, so their
    // outbox rows are in version order too.
    let row = tx
        .query_opt(
            &tx.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM tasks WHERE id = $1 FOR UPDATE"
            ))
            .await?,
            &[&id],
        )
        .await?;
    let task = row.as_ref().map(from_row).transpose()?;
    let task = match task {
        Some(t) if Some(t.user_id) == ctx.user_id && !t.deleted => t,
        _ => return Err(TaskError::NotFound),
    };
    if let Some(expected) = expected_version
        && expected != task.version
    {
        return Err(TaskError::VersionMismatch {
            expected,
            current: task.version,
        });
    }
    let events = decide(&task, cmd)?;
    if events.is_empty() {
        return Ok(CommandOutcome::new(SPEC.name, id, task.version, vec![]));
    }
    let version = task.version;
    let Committed {
        state: Some(new),
        envelopes,
    } = commit(Some(task), version, id, &events, ctx)?
    else {
        return Err(TaskError::NotFound);
    };
    // Sent, not awaited, as in `create`.
    tx.send(
&tx.prepare_cached("UPDATE tasks SET title = $2, tags = $3, estimated_minutes = $4, priority = $5, difficulty = $6,
                status = $7, due_date = $8, started_at = $9, completed_at = $10, actual_minutes = $11,
                note = $12, abandon_reason = $13, updated_at = $14::timestamptz, version = $15,
                deleted_at = CASE WHEN $16::boolean THEN $14::timestamptz ELSE NULL END
         WHERE id = $1").await?,
        vec![
            param(id),
            param(new.title.clone()),
            param(new.tags.clone()),
            param(new.estimated_minutes),
            param(new.priority),
            param(new.difficulty),
            param(new.status.as_str()),
            param(new.due_date),
            param(new.started_at),
            param(new.completed_at),
            param(new.actual_minutes),
            param(new.note.clone()),
            param(new.abandon_reason.clone()),
            param(new.updated_at),
            param(new.version),
            param(new.deleted),
        ],
    )?;
    Ok(CommandOutcome::new(SPEC.name, id, new.version, envelopes))
}

/// Loads a task row (deleted ones included): for tests and checks that compare the read model
/// with PostgreSQL.
///
/// # Errors
/// [`TaskError::Store`] when PostgreSQL fails.
pub async fn load(
    client: &impl outbox::tokio_postgres::GenericClient,
    id: Uuid,
) -> Result<Option<Task>, TaskError> {
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM tasks WHERE id = $1"),
            &[&id],
        )
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Every live task of a user, newest first: what the read model's list must equal.
///
/// # Errors
/// [`TaskError::Store`] when PostgreSQL fails.
pub async fn live_tasks_of(
    client: &impl outbox::tokio_postgres::GenericClient,
    user: Uuid,
) -> Result<Vec<Task>, TaskError> {
    let rows = client
        .query(
            &format!("SELECT {COLUMNS} FROM tasks WHERE user_id = $1 AND deleted_at IS NULL ORDER BY created_at DESC, id DESC"),
            &[&user],
        )
        .await?;
    rows.iter().map(from_row).collect()
}
