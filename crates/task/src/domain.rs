//! The task aggregate and its pure rules.
//!
//! `decide(state, command)` checks a command against the current state and returns the events
//! it causes (none when nothing would change); `evolve(state, event)` folds an event into the
//! state. The command side writes `evolve`'s result as the row; the projection writes it as the
//! view, so row and view are the same function of the same events.

use events::{DomainEvent, PayloadError, decode_payload, encode_payload};
use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};
use uuid::Uuid;

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Created, not started.
    Pending,
    /// Started.
    InProgress,
    /// Done.
    Completed,
    /// Given up.
    Abandoned,
}

impl TaskStatus {
    /// Every status, in life order.
    pub const ALL: [Self; 4] = [
        Self::Pending,
        Self::InProgress,
        Self::Completed,
        Self::Abandoned,
    ];

    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Abandoned => "abandoned",
        }
    }

    /// Parses a wire name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// What kind of study a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskType {
    /// Learning new material.
    Learning,
    /// Training a skill.
    Training,
    /// Fixing a mistake.
    ErrorFix,
    /// Reflecting.
    Reflection,
    /// Studying with others.
    Social,
    /// Planning.
    Planning,
}

impl TaskType {
    /// Every type.
    pub const ALL: [Self; 6] = [
        Self::Learning,
        Self::Training,
        Self::ErrorFix,
        Self::Reflection,
        Self::Social,
        Self::Planning,
    ];

    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Learning => "learning",
            Self::Training => "training",
            Self::ErrorFix => "error_fix",
            Self::Reflection => "reflection",
            Self::Social => "social",
            Self::Planning => "planning",
        }
    }

    /// Parses a wire name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// The task aggregate; serialised, it is also the TaskView of http-api.md, whose field names
/// (and bounds) these are. The command side stores it as the row, the projection as the view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = TaskView)]
#[allow(missing_docs)] // the fields are TaskView's, documented in http-api.md
pub struct Task {
    pub id: Uuid,
    /// The owner: the only user who sees or changes it.
    pub user_id: Uuid,
    /// Trimmed, 1–255 characters.
    #[schema(min_length = 1, max_length = 255)]
    pub title: String,
    #[serde(rename = "type")]
    pub task_type: TaskType,
    /// Up to 20 tags of 1–32 characters.
    #[schema(schema_with = tags_schema)]
    pub tags: Vec<String>,
    #[schema(minimum = 1, maximum = 1440)]
    pub estimated_minutes: i32,
    #[schema(minimum = 1, maximum = 5)]
    pub priority: i16,
    #[schema(minimum = 1, maximum = 5)]
    pub difficulty: i16,
    pub status: TaskStatus,
    #[serde(with = "module_kit::dates::option")]
    pub due_date: Option<Date>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub completed_at: Option<OffsetDateTime>,
    /// Minutes actually spent, set on completion.
    #[schema(minimum = 0, maximum = 1440)]
    pub actual_minutes: Option<i32>,
    /// The completion note.
    pub note: Option<String>,
    pub abandon_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The time of the last event.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Soft-deleted: kept as a row, gone from every read (404).
    #[serde(skip)]
    #[schema(ignore)]
    pub deleted: bool,
    /// The aggregate version: the number of events so far.
    pub version: i64,
}

/// The tags of a task (at most 20 of 1–32 characters), as a schema.
pub(crate) fn tags_schema() -> utoipa::openapi::schema::Array {
    module_kit::input::string_list_schema(20, 1..=32, false)
}

/// Create a task: a `POST /v1/tasks` body once validated ([`crate::input`]), every field
/// within its bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // the fields are the body's, validated
pub struct CreateTask {
    /// The new task's id, chosen by the server (UUIDv7).
    pub id: Uuid,
    pub title: String,
    pub task_type: TaskType,
    pub estimated_minutes: i32,
    pub priority: i16,
    pub difficulty: i16,
    pub due_date: Option<Date>,
    pub tags: Vec<String>,
}

/// Edit a task: each `Some` field is a new value, `None` stays as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(missing_docs)] // the fields are [`Task`]'s
pub struct UpdateTask {
    pub title: Option<String>,
    pub estimated_minutes: Option<i32>,
    pub priority: Option<i16>,
    pub difficulty: Option<i16>,
    /// `Some(None)` clears the due date.
    pub due_date: Option<Option<Date>>,
    pub tags: Option<Vec<String>>,
}

/// A command on an existing task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskCommand {
    /// Change fields, in any status but deleted.
    Update(UpdateTask),
    /// pending → in_progress.
    Start,
    /// in_progress → completed.
    Complete {
        /// Minutes spent, 0–1440.
        actual_minutes: i32,
        /// Up to 2000 characters.
        note: Option<String>,
    },
    /// pending/in_progress → abandoned.
    Abandon {
        /// Up to 2000 characters.
        reason: Option<String>,
    },
    /// Soft delete: the task answers 404 everywhere afterwards.
    Delete,
}

impl TaskCommand {
    fn action(&self) -> &'static str {
        match self {
            Self::Update(_) => "update",
            Self::Start => "start",
            Self::Complete { .. } => "complete",
            Self::Abandon { .. } => "abandon",
            Self::Delete => "delete",
        }
    }
}

/// `task.created`: the new task's fields, as on [`Task`]. A shipped payload shape never
/// changes (a new shape is a new `schema_version` with an upcaster).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)] // the fields are [`Task`]'s
pub struct TaskCreated {
    pub user_id: Uuid,
    pub title: String,
    #[serde(rename = "type")]
    pub task_type: TaskType,
    pub tags: Vec<String>,
    pub estimated_minutes: i32,
    pub priority: i16,
    pub difficulty: i16,
    #[serde(with = "module_kit::dates::option")]
    pub due_date: Option<Date>,
}

/// `task.updated`: only the fields that changed, with their new values (absent: unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)] // the fields are [`Task`]'s
pub struct TaskUpdated {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_minutes: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub difficulty: Option<i16>,
    /// New due date; `Some(None)` (JSON `null`) cleared it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "module_kit::dates::patch"
    )]
    pub due_date: Option<Option<Date>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

/// `task.completed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskCompleted {
    /// Minutes actually spent.
    pub actual_minutes: i32,
    /// The completion note.
    pub note: Option<String>,
}

/// `task.abandoned`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskAbandoned {
    /// Why, in the user's words.
    pub reason: Option<String>,
}

/// A task event's payload. `task.started` and `task.deleted` carry nothing beyond the envelope
/// (`occurred_at` is their timestamp).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEvent {
    /// `task.created`.
    Created(TaskCreated),
    /// `task.updated`.
    Updated(TaskUpdated),
    /// `task.started`.
    Started,
    /// `task.completed`.
    Completed(TaskCompleted),
    /// `task.abandoned`.
    Abandoned(TaskAbandoned),
    /// `task.deleted`.
    Deleted,
}

/// Why a task command was refused, or a task event could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// Bad input. # Handling: 400 `validation_failed`.
    #[error("{message}")]
    Invalid {
        /// Field.
        field: &'static str,
        /// Why.
        message: String,
    },
    /// Unknown, deleted, or another user's task. # Handling: 404.
    #[error("task not found")]
    NotFound,
    /// The status does not allow the command. # Handling: 409 `invalid_transition`.
    #[error("cannot {action} a task that is {}", from.as_str())]
    InvalidTransition {
        /// Current status.
        from: TaskStatus,
        /// The refused action.
        action: &'static str,
    },
    /// `If-Match` differs. # Handling: 412.
    #[error("version mismatch")]
    VersionMismatch {
        /// Sent.
        expected: i64,
        /// Current.
        current: i64,
    },
    /// A stored event does not parse. # Handling: dead-letter it.
    #[error("malformed {event_type} payload: {reason}")]
    MalformedEvent {
        /// Its type.
        event_type: String,
        /// Why.
        reason: String,
    },
    /// PostgreSQL failed. # Handling: 503 or 500 by kind.
    #[error(transparent)]
    Store(#[from] outbox::OutboxError),
}

impl From<outbox::tokio_postgres::Error> for TaskError {
    fn from(e: outbox::tokio_postgres::Error) -> Self {
        Self::Store(e.into())
    }
}

impl From<module_kit::input::Invalid> for TaskError {
    fn from(e: module_kit::input::Invalid) -> Self {
        Self::Invalid {
            field: e.field,
            message: e.message,
        }
    }
}

impl From<PayloadError> for TaskError {
    fn from(e: PayloadError) -> Self {
        Self::MalformedEvent {
            event_type: e.event_type,
            reason: e.reason,
        }
    }
}

impl DomainEvent for TaskEvent {
    const TYPES: &'static [&'static str] = &[
        "task.created",
        "task.updated",
        "task.started",
        "task.completed",
        "task.abandoned",
        "task.deleted",
    ];

    fn event_type(&self) -> &'static str {
        match self {
            Self::Created(_) => "task.created",
            Self::Updated(_) => "task.updated",
            Self::Started => "task.started",
            Self::Completed(_) => "task.completed",
            Self::Abandoned(_) => "task.abandoned",
            Self::Deleted => "task.deleted",
        }
    }

    fn payload(&self) -> serde_json::Value {
        match self {
            Self::Created(p) => encode_payload(p),
            Self::Updated(p) => encode_payload(p),
            Self::Completed(p) => encode_payload(p),
            Self::Abandoned(p) => encode_payload(p),
            Self::Started | Self::Deleted => serde_json::json!({}),
        }
    }

    fn from_payload(event_type: &str, payload: &serde_json::Value) -> Result<Self, PayloadError> {
        let p = payload;
        Ok(match event_type {
            "task.created" => Self::Created(decode_payload(event_type, p)?),
            "task.updated" => Self::Updated(decode_payload(event_type, p)?),
            "task.started" => Self::Started,
            "task.completed" => Self::Completed(decode_payload(event_type, p)?),
            "task.abandoned" => Self::Abandoned(decode_payload(event_type, p)?),
            "task.deleted" => Self::Deleted,
            other => return Err(PayloadError::unknown(other)),
        })
    }
}

/// The events creating a task causes.
#[must_use]
pub fn decide_create(user_id: Uuid, cmd: &CreateTask) -> Vec<TaskEvent> {
    vec![TaskEvent::Created(TaskCreated {
        user_id,
        title: cmd.title.clone(),
        task_type: cmd.task_type,
        tags: cmd.tags.clone(),
        estimated_minutes: cmd.estimated_minutes,
        priority: cmd.priority,
        difficulty: cmd.difficulty,
        due_date: cmd.due_date,
    })]
}

/// The events `cmd` causes on `task`: empty when nothing would change.
///
/// # Errors
/// [`TaskError::NotFound`] for a deleted task, [`TaskError::InvalidTransition`] when the
/// status does not allow the command.
pub fn decide(task: &Task, cmd: &TaskCommand) -> Result<Vec<TaskEvent>, TaskError> {
    use TaskStatus::{Abandoned, Completed, InProgress, Pending};
    if task.deleted {
        return Err(TaskError::NotFound);
    }
    let refuse = || {
        Err(TaskError::InvalidTransition {
            from: task.status,
            action: cmd.action(),
        })
    };
    Ok(match (task.status, cmd) {
        (_, TaskCommand::Update(u)) => {
            // Only fields that differ go into the event; an edit that changes nothing emits
            // nothing (architecture.md §3).
            let changed = TaskUpdated {
                title: u.title.clone().filter(|t| *t != task.title),
                estimated_minutes: u.estimated_minutes.filter(|m| *m != task.estimated_minutes),
                priority: u.priority.filter(|p| *p != task.priority),
                difficulty: u.difficulty.filter(|d| *d != task.difficulty),
                due_date: u.due_date.filter(|d| *d != task.due_date),
                tags: u.tags.clone().filter(|t| *t != task.tags),
            };
            if changed == TaskUpdated::default() {
                vec![]
            } else {
                vec![TaskEvent::Updated(changed)]
            }
        }
        (Pending, TaskCommand::Start) => vec![TaskEvent::Started],
        (
            InProgress,
            TaskCommand::Complete {
                actual_minutes,
                note,
            },
        ) => {
            vec![TaskEvent::Completed(TaskCompleted {
                actual_minutes: *actual_minutes,
                note: note.clone(),
            })]
        }
        (Pending | InProgress, TaskCommand::Abandon { reason }) => {
            vec![TaskEvent::Abandoned(TaskAbandoned {
                reason: reason.clone(),
            })]
        }
        (_, TaskCommand::Delete) => vec![TaskEvent::Deleted],
        (InProgress | Completed | Abandoned, TaskCommand::Start)
        | (Pending | Completed | Abandoned, TaskCommand::Complete { .. })
        | (Completed | Abandoned, TaskCommand::Abandon { .. }) => return refuse(),
    })
}

/// Folds one event into the state. `id`, `version` and `at` come from the envelope.
///
/// # Errors
/// [`TaskError::MalformedEvent`] when a non-creation event arrives for a task that does not
/// exist, or a creation for one that does.
pub fn evolve(
    state: Option<Task>,
    event: &TaskEvent,
    id: Uuid,
    version: i64,
    at: OffsetDateTime,
) -> Result<Task, TaskError> {
    let missing = || TaskError::MalformedEvent {
        event_type: event.event_type().into(),
        reason: format!("task {id} does not exist"),
    };
    let mut task = match (state, event) {
        (None, TaskEvent::Created(c)) => Task {
            id,
            user_id: c.user_id,
            title: c.title.clone(),
            task_type: c.task_type,
            tags: c.tags.clone(),
            estimated_minutes: c.estimated_minutes,
            priority: c.priority,
            difficulty: c.difficulty,
            status: TaskStatus::Pending,
            due_date: c.due_date,
            started_at: None,
            completed_at: None,
            actual_minutes: None,
            note: None,
            abandon_reason: None,
            created_at: at,
            updated_at: at,
            deleted: false,
            version,
        },
        (Some(_), TaskEvent::Created(_)) => {
            return Err(TaskError::MalformedEvent {
                event_type: "task.created".into(),
                reason: format!("task {id} already exists"),
            });
        }
        (None, _) => return Err(missing()),
        (Some(mut t), e) => {
            match e {
                TaskEvent::Created(_) => unreachable!("handled above"),
                TaskEvent::Updated(u) => {
                    if let Some(v) = &u.title {
                        t.title.clone_from(v);
                    }
                    if let Some(v) = u.estimated_minutes {
                        t.estimated_minutes = v;
                    }
                    if let Some(v) = u.priority {
                        t.priority = v;
                    }
                    if let Some(v) = u.difficulty {
                        t.difficulty = v;
                    }
                    if let Some(v) = u.due_date {
                        t.due_date = v;
                    }
                    if let Some(v) = &u.tags {
                        t.tags.clone_from(v);
                    }
                }
                TaskEvent::Started => {
                    t.status = TaskStatus::InProgress;
                    t.started_at = Some(at);
                }
                TaskEvent::Completed(c) => {
                    t.status = TaskStatus::Completed;
                    t.completed_at = Some(at);
                    t.actual_minutes = Some(c.actual_minutes);
                    t.note.clone_from(&c.note);
                }
                TaskEvent::Abandoned(a) => {
                    t.status = TaskStatus::Abandoned;
                    t.abandon_reason.clone_from(&a.reason);
                }
                TaskEvent::Deleted => t.deleted = true,
            }
            t
        }
    };
    task.version = version;
    task.updated_at = at;
    Ok(task)
}

impl events::Aggregate for Task {
    type Event = TaskEvent;
    type Error = TaskError;
    const TYPE: &'static str = crate::AGGREGATE_TYPE;

    fn evolve(
        state: Option<Self>,
        event: &TaskEvent,
        id: Uuid,
        version: i64,
        at: OffsetDateTime,
    ) -> Result<Self, TaskError> {
        evolve(state, event, id, version, at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    const T0: OffsetDateTime = datetime!(2026-11-24 10:00:00 UTC);
    const T1: OffsetDateTime = datetime!(2026-11-24 11:00:00 UTC);

    fn create_cmd() -> CreateTask {
        CreateTask {
            id: Uuid::now_v7(),
            title: "Read chapter 3".into(),
            task_type: TaskType::Learning,
            estimated_minutes: 45,
            priority: 3,
            difficulty: 2,
            due_date: Some(date!(2026 - 12 - 01)),
            tags: vec!["rust".into()],
        }
    }

    fn task_in(status: TaskStatus) -> Task {
        let cmd = create_cmd();
        let [created] = decide_create(Uuid::nil(), &cmd)
            .try_into()
            .expect("one event");
        let mut t = evolve(None, &created, cmd.id, 1, T0).expect("created");
        t.status = status;
        t
    }

    fn complete() -> TaskCommand {
        TaskCommand::Complete {
            actual_minutes: 30,
            note: Some("done".into()),
        }
    }

    fn abandon() -> TaskCommand {
        TaskCommand::Abandon { reason: None }
    }

    #[test]
    fn creation_starts_pending_with_all_fields() {
        let t = task_in(TaskStatus::Pending);
        assert_eq!(t.status, TaskStatus::Pending);
        assert_eq!((t.version, t.created_at, t.updated_at), (1, T0, T0));
        assert_eq!(t.due_date, Some(date!(2026 - 12 - 01)));
        assert_eq!(t.tags, vec!["rust".to_owned()]);
    }

    #[test]
    fn every_valid_transition_emits_its_event_and_evolves() {
        use TaskStatus::*;
        let cases = [
            (Pending, TaskCommand::Start, "task.started", InProgress),
            (InProgress, complete(), "task.completed", Completed),
            (Pending, abandon(), "task.abandoned", Abandoned),
            (InProgress, abandon(), "task.abandoned", Abandoned),
        ];
        for (from, cmd, event_type, to) in cases {
            let t = task_in(from);
            let events = decide(&t, &cmd).expect("allowed");
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].event_type(), event_type);
            let after = evolve(Some(t), &events[0], Uuid::nil(), 2, T1).expect("evolve");
            assert_eq!(after.status, to, "{from:?} {cmd:?}");
            assert_eq!((after.version, after.updated_at), (2, T1));
        }
    }

    #[test]
    fn every_invalid_transition_is_refused() {
        use TaskStatus::*;
        let refused = [
            (InProgress, TaskCommand::Start),
            (Completed, TaskCommand::Start),
            (Abandoned, TaskCommand::Start),
            (Pending, complete()),
            (Completed, complete()),
            (Abandoned, complete()),
            (Completed, abandon()),
            (Abandoned, abandon()),
        ];
        for (from, cmd) in refused {
            let err = decide(&task_in(from), &cmd).expect_err("refused");
            assert!(
                matches!(err, TaskError::InvalidTransition { from: f, .. } if f == from),
                "{from:?} {cmd:?}: {err}"
            );
        }
    }

    #[test]
    fn delete_and_update_work_in_every_status_but_not_after_delete() {
        for status in TaskStatus::ALL {
            let t = task_in(status);
            assert_eq!(
                decide(&t, &TaskCommand::Delete).expect("delete"),
                vec![TaskEvent::Deleted]
            );
            let upd = TaskCommand::Update(UpdateTask {
                priority: Some(5),
                ..UpdateTask::default()
            });
            assert_eq!(decide(&t, &upd).expect("update").len(), 1);
            let deleted = evolve(Some(t), &TaskEvent::Deleted, Uuid::nil(), 2, T1).expect("evolve");
            for cmd in [
                TaskCommand::Delete,
                TaskCommand::Start,
                complete(),
                abandon(),
                upd.clone(),
            ] {
                assert!(
                    matches!(decide(&deleted, &cmd), Err(TaskError::NotFound)),
                    "{cmd:?}"
                );
            }
        }
    }

    #[test]
    fn an_update_emits_only_changed_fields_and_nothing_when_equal() {
        let t = task_in(TaskStatus::Pending);
        let same = TaskCommand::Update(UpdateTask {
            title: Some(t.title.clone()),
            priority: Some(t.priority),
            due_date: Some(t.due_date),
            ..UpdateTask::default()
        });
        assert!(decide(&t, &same).expect("ok").is_empty());
        let clear = TaskCommand::Update(UpdateTask {
            title: Some(t.title.clone()),
            due_date: Some(None),
            ..UpdateTask::default()
        });
        let events = decide(&t, &clear).expect("ok");
        assert_eq!(
            events,
            vec![TaskEvent::Updated(TaskUpdated {
                due_date: Some(None),
                ..TaskUpdated::default()
            })]
        );
        let after = evolve(Some(t), &events[0], Uuid::nil(), 2, T1).expect("evolve");
        assert_eq!(after.due_date, None);
    }

    #[test]
    fn payloads_round_trip_including_a_cleared_due_date() {
        let events = [
            TaskEvent::Created(TaskCreated {
                user_id: Uuid::nil(),
                title: "x".into(),
                task_type: TaskType::ErrorFix,
                tags: vec![],
                estimated_minutes: 1,
                priority: 1,
                difficulty: 1,
                due_date: None,
            }),
            TaskEvent::Updated(TaskUpdated {
                due_date: Some(None),
                ..TaskUpdated::default()
            }),
            TaskEvent::Updated(TaskUpdated {
                due_date: Some(Some(date!(2027 - 01 - 02))),
                title: Some("y".into()),
                ..TaskUpdated::default()
            }),
            TaskEvent::Started,
            TaskEvent::Completed(TaskCompleted {
                actual_minutes: 0,
                note: None,
            }),
            TaskEvent::Abandoned(TaskAbandoned {
                reason: Some("bored".into()),
            }),
            TaskEvent::Deleted,
        ];
        for e in events {
            let back = TaskEvent::from_payload(e.event_type(), &e.payload()).expect("parse");
            assert_eq!(back, e);
        }
        let cleared = TaskEvent::Updated(TaskUpdated {
            due_date: Some(None),
            ..TaskUpdated::default()
        });
        assert_eq!(cleared.payload(), serde_json::json!({"due_date": null}));
        assert!(TaskEvent::from_payload("task.finished", &serde_json::json!({})).is_err());
        assert!(
            TaskEvent::from_payload(
                "task.completed",
                &serde_json::json!({"actual_minutes": "x"})
            )
            .is_err()
        );
    }

    #[test]
    fn evolve_refuses_impossible_histories() {
        assert!(evolve(None, &TaskEvent::Started, Uuid::nil(), 2, T1).is_err());
        let t = task_in(TaskStatus::Pending);
        let create = decide_create(Uuid::nil(), &create_cmd()).remove(0);
        assert!(evolve(Some(t), &create, Uuid::nil(), 2, T1).is_err());
    }

    #[test]
    fn the_view_has_the_documented_fields_and_hides_deletion() {
        let v = serde_json::to_value(task_in(TaskStatus::Pending)).expect("json");
        let mut fields: Vec<_> = v.as_object().expect("object").keys().cloned().collect();
        fields.sort();
        let mut expected = vec![
            "id",
            "user_id",
            "title",
            "type",
            "tags",
            "estimated_minutes",
            "priority",
            "difficulty",
            "status",
            "due_date",
            "started_at",
            "completed_at",
            "actual_minutes",
            "note",
            "abandon_reason",
            "created_at",
            "updated_at",
            "version",
        ];
        expected.sort_unstable();
        assert_eq!(fields, expected);
        assert_eq!(v["due_date"], "2026-12-01");
        assert_eq!(v["created_at"], "2026-11-24T10:00:00Z");
    }
}
