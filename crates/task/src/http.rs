//! The task routes, each registered with its OpenAPI operation. command-api mounts
//! [`command_routes`], query-api [`query_routes`] (both through the module's registry entry);
//! each expects its app data (listed on the function).

use actix_web::{HttpRequest, HttpResponse, web};
use module_kit::paging::{Page, PageRequest};
use serde::Deserialize;
use service_kit::command::{CommandAccepted, CommandMeta, CommandRunner, IfMatch, if_match};
use service_kit::consistency::ConsistencyWait;
use service_kit::http::auth::AuthUser;
use service_kit::http::extract::{JsonBody, OptionalJsonBody, parse_uuid, query_config};
use service_kit::http::responses::{BodyErrors, CommandErrors, QueryErrors};
use service_kit::http::{ApiError, ErrorBody, Routes};
use service_kit::read_side::ReadSide;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::domain::{Task as TaskView, TaskCommand, TaskError, TaskStatus};
use crate::input::{AbandonTaskBody, CompleteTaskBody, CreateTaskBody, UpdateTaskBody};
use crate::projection::TaskStats;
use crate::{queries, store};

impl From<TaskError> for ApiError {
    fn from(e: TaskError) -> Self {
        match e {
            TaskError::Invalid { field, message } => ApiError::Validation {
                message,
                field: Some(field.into()),
            },
            TaskError::NotFound => ApiError::NotFound,
            e @ TaskError::InvalidTransition { .. } => ApiError::InvalidTransition(e.to_string()),
            TaskError::VersionMismatch { expected, current } => {
                ApiError::VersionMismatch { expected, current }
            }
            TaskError::Store(e) => e.into(),
            e @ TaskError::MalformedEvent { .. } => ApiError::Internal(Box::new(e)),
        }
    }
}

/// Registers the task commands, each with its operation. App data:
/// `web::Data<CommandRunner>`, `web::Data<service_kit::http::auth::JwtKeys>`.
pub fn command_routes(routes: &mut Routes) {
    routes
        .add(__path_create, create)
        .add(__path_update, update)
        .add(__path_delete, delete)
        .add(__path_start, start)
        .add(__path_complete, complete)
        .add(__path_abandon, abandon);
}

/// Registers the task queries, each with its operation, reading through `reads`. App data:
/// `web::Data<service_kit::http::auth::JwtKeys>`.
pub fn query_routes(routes: &mut Routes, reads: &ReadSide) {
    routes
        .with_data(web::Data::new(reads.clone()))
        .with_data(query_config())
        .add(__path_get_task, get_task)
        .add(__path_list_tasks, list_tasks)
        .add(__path_task_stats, task_stats);
}

/// Creates a task (status `pending`, event `task.created`).
#[utoipa::path(
    post,
    path = "/v1/tasks",
    tag = "tasks",
    params(CommandMeta),
    request_body = CreateTaskBody,
    responses(
        (status = 201, description = "Created", body = CommandAccepted, headers(
            ("location" = String, description = "The task: `/v1/tasks/{id}`"),
            ("idempotency-replayed" = String, description = "`true` on a replayed answer"),
        )),
        (status = 400, description = "Malformed body, or a field or header breaks its rule", body = ErrorBody),
        (status = 409, description = "`idempotency_key_reused`, or a concurrent write", body = ErrorBody),
        CommandErrors,
        BodyErrors,
    ),
    security(("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(user_id = %user.0))]
async fn create(
    user: AuthUser,
    meta: CommandMeta,
    runner: web::Data<CommandRunner>,
    body: JsonBody<CreateTaskBody>,
) -> Result<HttpResponse, ApiError> {
    let cmd = body.value.validate(Uuid::now_v7())?;
    runner
        .run(&meta, user.0, &body.raw, async |tx, ctx| {
            store::create(tx, ctx, &cmd).await
        })
        .await
}

/// What a command on an existing task carries: its command, validated, and the raw body
/// (part of the `Idempotency-Key` fingerprint; empty for body-less commands).
trait CommandBody {
    fn into_command(self) -> Result<(TaskCommand, web::Bytes), TaskError>;
}

impl CommandBody for JsonBody<UpdateTaskBody> {
    fn into_command(self) -> Result<(TaskCommand, web::Bytes), TaskError> {
        Ok((self.value.validate()?, self.raw))
    }
}

impl CommandBody for JsonBody<CompleteTaskBody> {
    fn into_command(self) -> Result<(TaskCommand, web::Bytes), TaskError> {
        Ok((self.value.validate()?, self.raw))
    }
}

impl CommandBody for OptionalJsonBody<AbandonTaskBody> {
    fn into_command(self) -> Result<(TaskCommand, web::Bytes), TaskError> {
        Ok((self.0.value.validate()?, self.0.raw))
    }
}

impl CommandBody for TaskCommand {
    fn into_command(self) -> Result<(TaskCommand, web::Bytes), TaskError> {
        Ok((self, web::Bytes::new()))
    }
}

/// Runs a command on task `id`. The id is checked first (400 naming `id`), then the body's
/// command (400 naming its field), then `If-Match`; the rest happens in the transaction.
#[tracing::instrument(skip_all, fields(user_id = %user.0, task_id = %id))]
async fn on_task(
    req: &HttpRequest,
    user: AuthUser,
    meta: &CommandMeta,
    runner: &CommandRunner,
    id: &str,
    body: impl CommandBody,
) -> Result<HttpResponse, ApiError> {
    let id = parse_uuid(id, "id")?;
    let (cmd, raw) = body.into_command()?;
    let expected = if_match(req)?;
    runner
        .run(meta, user.0, &raw, async |tx, ctx| {
            store::execute(tx, ctx, id, expected, &cmd).await
        })
        .await
}

/// Edits a task: only changed fields produce `task.updated`; `null` clears the due date.
#[utoipa::path(
    patch,
    path = "/v1/tasks/{id}",
    tag = "tasks",
    params(("id" = Uuid, Path, description = "The task"), CommandMeta, IfMatch),
    request_body = UpdateTaskBody,
    responses(
        (status = 200, description = "Done (`changed: false` when nothing changed)", body = CommandAccepted, headers(
            ("idempotency-replayed" = String, description = "`true` on a replayed answer"),
        )),
        (status = 400, description = "Bad id, malformed body, or a field or header breaks its rule", body = ErrorBody),
        (status = 404, description = "No such task of the caller's (unknown, deleted, or another user's)", body = ErrorBody),
        (status = 409, description = "`idempotency_key_reused`, or a concurrent write", body = ErrorBody),
        (status = 412, description = "`If-Match` differs from the current version", body = ErrorBody),
        CommandErrors,
        BodyErrors,
    ),
    security(("bearer" = [])),
)]
async fn update(
    req: HttpRequest,
    user: AuthUser,
    meta: CommandMeta,
    runner: web::Data<CommandRunner>,
    id: web::Path<String>,
    body: JsonBody<UpdateTaskBody>,
) -> Result<HttpResponse, ApiError> {
    on_task(&req, user, &meta, &runner, &id, body).await
}

/// Completes a task in progress (`task.completed`).
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/complete",
    tag = "tasks",
    params(("id" = Uuid, Path, description = "The task"), CommandMeta, IfMatch),
    request_body = CompleteTaskBody,
    responses(
        (status = 200, description = "Done (`changed: false` when nothing changed)", body = CommandAccepted, headers(
            ("idempotency-replayed" = String, description = "`true` on a replayed answer"),
        )),
        (status = 400, description = "Bad id, malformed body, or a field or header breaks its rule", body = ErrorBody),
        (status = 404, description = "No such task of the caller's (unknown, deleted, or another user's)", body = ErrorBody),
        (status = 409, description = "`invalid_transition` (not in progress), `idempotency_key_reused`, or a concurrent write", body = ErrorBody),
        (status = 412, description = "`If-Match` differs from the current version", body = ErrorBody),
        CommandErrors,
        BodyErrors,
    ),
    security(("bearer" = [])),
)]
async fn complete(
    req: HttpRequest,
    user: AuthUser,
    meta: CommandMeta,
    runner: web::Data<CommandRunner>,
    id: web::Path<String>,
    body: JsonBody<CompleteTaskBody>,
) -> Result<HttpResponse, ApiError> {
    on_task(&req, user, &meta, &runner, &id, body).await
}

/// Abandons a pending or in-progress task (`task.abandoned`); the body is optional.
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/abandon",
    tag = "tasks",
    params(("id" = Uuid, Path, description = "The task"), CommandMeta, IfMatch),
    request_body = Option<AbandonTaskBody>,
    responses(
        (status = 200, description = "Done (`changed: false` when nothing changed)", body = CommandAccepted, headers(
            ("idempotency-replayed" = String, description = "`true` on a replayed answer"),
        )),
        (status = 400, description = "Bad id, malformed body, or a field or header breaks its rule", body = ErrorBody),
        (status = 404, description = "No such task of the caller's (unknown, deleted, or another user's)", body = ErrorBody),
        (status = 409, description = "`invalid_transition` (completed or abandoned already), `idempotency_key_reused`, or a concurrent write", body = ErrorBody),
        (status = 412, description = "`If-Match` differs from the current version", body = ErrorBody),
        CommandErrors,
        BodyErrors,
    ),
    security(("bearer" = [])),
)]
async fn abandon(
    req: HttpRequest,
    user: AuthUser,
    meta: CommandMeta,
    runner: web::Data<CommandRunner>,
    id: web::Path<String>,
    body: OptionalJsonBody<AbandonTaskBody>,
) -> Result<HttpResponse, ApiError> {
    on_task(&req, user, &meta, &runner, &id, body).await
}

/// Starts a pending task (`task.started`).
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/start",
    tag = "tasks",
    params(("id" = Uuid, Path, description = "The task"), CommandMeta, IfMatch),
    responses(
        (status = 200, description = "Done (`changed: false` when nothing changed)", body = CommandAccepted, headers(
            ("idempotency-replayed" = String, description = "`true` on a replayed answer"),
        )),
        (status = 400, description = "Bad id, malformed body, or a field or header breaks its rule", body = ErrorBody),
        (status = 404, description = "No such task of the caller's (unknown, deleted, or another user's)", body = ErrorBody),
        (status = 409, description = "`invalid_transition` (not pending), `idempotency_key_reused`, or a concurrent write", body = ErrorBody),
        (status = 412, description = "`If-Match` differs from the current version", body = ErrorBody),
        CommandErrors,
    ),
    security(("bearer" = [])),
)]
async fn start(
    req: HttpRequest,
    user: AuthUser,
    meta: CommandMeta,
    runner: web::Data<CommandRunner>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    on_task(&req, user, &meta, &runner, &id, TaskCommand::Start).await
}

/// Deletes a task (soft, `task.deleted`): it answers 404 everywhere afterwards.
#[utoipa::path(
    delete,
    path = "/v1/tasks/{id}",
    tag = "tasks",
    params(("id" = Uuid, Path, description = "The task"), CommandMeta, IfMatch),
    responses(
        (status = 200, description = "Done (`changed: false` when nothing changed)", body = CommandAccepted, headers(
            ("idempotency-replayed" = String, description = "`true` on a replayed answer"),
        )),
        (status = 400, description = "Bad id, malformed body, or a field or header breaks its rule", body = ErrorBody),
        (status = 404, description = "No such task of the caller's (unknown, deleted, or another user's)", body = ErrorBody),
        (status = 409, description = "`idempotency_key_reused`, or a concurrent write", body = ErrorBody),
        (status = 412, description = "`If-Match` differs from the current version", body = ErrorBody),
        CommandErrors,
    ),
    security(("bearer" = [])),
)]
async fn delete(
    req: HttpRequest,
    user: AuthUser,
    meta: CommandMeta,
    runner: web::Data<CommandRunner>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    on_task(&req, user, &meta, &runner, &id, TaskCommand::Delete).await
}

/// The read side of a query route.
type Reads = web::Data<ReadSide>;

/// One of the caller's tasks.
#[utoipa::path(
    get,
    path = "/v1/tasks/{id}",
    tag = "tasks",
    params(("id" = Uuid, Path, description = "The task"), ConsistencyWait),
    responses(
        (status = 200, description = "The answer", body = TaskView, headers(
            ("x-consistency" = String, description = "`fresh` or `stale`: sent when `X-Consistency-Token` was"),
        )),
        (status = 400, description = "Bad id, `X-Consistency-Token` or `wait_ms`", body = ErrorBody),
        (status = 404, description = "No such task of the caller's (unknown, deleted, another user's, or not visible yet: then `X-Consistency: stale`)", body = ErrorBody, headers(
            ("x-consistency" = String, description = "`fresh` or `stale`: sent when `X-Consistency-Token` was"),
        )),
        QueryErrors,
    ),
    security(("bearer" = [])),
)]
async fn get_task(
    user: AuthUser,
    wait: ConsistencyWait,
    reads: Reads,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_uuid(&id, "id")?;
    let mut read = reads
        .read(&wait, |keys| vec![queries::view_cmd(keys, id)])
        .await?;
    let task = queries::parse_view(id, read.reply(0)?)?;
    // Another user's task answers exactly like a missing one. A 404 after a stale wait still
    // says `X-Consistency: stale`: "not visible yet" must not read as "gone".
    Ok(read.answer(match task.filter(|t| t.user_id == user.0) {
        Some(task) => HttpResponse::Ok().json(task),
        None => actix_web::ResponseError::error_response(&ApiError::NotFound),
    }))
}

/// The query of a task list. Read as strings so that a bad value answers 400 naming its
/// field; documented with the types they must parse as.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Only the tasks in this status.
    #[param(value_type = Option<TaskStatus>)]
    status: Option<String>,
    /// Page size, 1–100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// The previous page's `next_cursor`.
    cursor: Option<String>,
}

/// The caller's live tasks, newest first.
#[utoipa::path(
    get,
    path = "/v1/me/tasks",
    tag = "tasks",
    params(ListParams, ConsistencyWait),
    responses(
        (status = 200, description = "The answer", body = Page<TaskView>, headers(
            ("x-consistency" = String, description = "`fresh` or `stale`: sent when `X-Consistency-Token` was"),
        )),
        (status = 400, description = "Bad `status`, `limit`, `cursor`, `X-Consistency-Token` or `wait_ms`", body = ErrorBody),
        QueryErrors,
    ),
    security(("bearer" = [])),
)]
async fn list_tasks(
    user: AuthUser,
    wait: ConsistencyWait,
    reads: Reads,
    params: web::Query<ListParams>,
) -> Result<HttpResponse, ApiError> {
    let status = params
        .status
        .as_deref()
        .map(|s| {
            TaskStatus::parse(s).ok_or_else(|| {
                ApiError::validation(
                    "status",
                    "status must be pending, in_progress, completed or abandoned",
                )
            })
        })
        .transpose()?;
    let page = PageRequest::parse(params.limit.as_deref(), params.cursor.as_deref())?;
    let mut read = reads
        .read(&wait, |keys| {
            vec![queries::list_cmd(keys, user.0, status, &page)]
        })
        .await?;
    let members: Vec<String> = streams::error::from_reply(read.reply(0)?, "task list")?;
    let (ids, next_cursor) = page.page(members);
    let items = if ids.is_empty() {
        vec![]
    } else {
        queries::parse_views(reads.fetch(queries::views_cmd(&read.keys, &ids)).await?)?
    };
    Ok(read.answer(
        // Through a `Value` (sorted keys, in the items too), as lists have always been written.
        HttpResponse::Ok().json(serde_json::json!(Page { items, next_cursor })),
    ))
}

/// The caller's task statistics over live tasks.
#[utoipa::path(
    get,
    path = "/v1/me/task-stats",
    tag = "tasks",
    params(ConsistencyWait),
    responses(
        (status = 200, description = "The answer", body = TaskStats, headers(
            ("x-consistency" = String, description = "`fresh` or `stale`: sent when `X-Consistency-Token` was"),
        )),
        (status = 400, description = "Bad `X-Consistency-Token` or `wait_ms`", body = ErrorBody),
        QueryErrors,
    ),
    security(("bearer" = [])),
)]
async fn task_stats(
    user: AuthUser,
    wait: ConsistencyWait,
    reads: Reads,
) -> Result<HttpResponse, ApiError> {
    let mut read = reads
        .read(&wait, |keys| vec![queries::stats_cmd(keys, user.0)])
        .await?;
    let stats = queries::parse_stats(read.reply(0)?)?;
    Ok(read.answer(HttpResponse::Ok().json(stats)))
}
