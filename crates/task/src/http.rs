//! The task routes. command-api mounts [`command_routes`], query-api [`query_routes`] (both
//! through the module's registry entry); each expects its app data (listed on the function).

use actix_web::{HttpRequest, HttpResponse, web};
use module_kit::paging::PageRequest;
use serde::Deserialize;
use service_kit::command::{CommandMeta, CommandRunner, if_match};
use service_kit::consistency::ConsistencyWait;
use service_kit::http::auth::AuthUser;
use service_kit::http::extract::{JsonBody, OptionalJsonBody, parse_uuid, query_config};
use service_kit::http::{ApiError, resource};
use service_kit::read_side::ReadSide;
use uuid::Uuid;

use crate::domain::{TaskCommand, TaskError, TaskStatus};
use crate::input::{AbandonTaskBody, CompleteTaskBody, CreateTaskBody, UpdateTaskBody};
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

/// Registers the task commands. App data: `web::Data<CommandRunner>`,
/// `web::Data<service_kit::http::auth::JwtKeys>`.
pub fn command_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/tasks").route(web::post().to(create)))
        .service(
            resource("/v1/tasks/{id}")
                .route(web::patch().to(with_body::<JsonBody<UpdateTaskBody>>))
                .route(web::delete().to(delete)),
        )
        .service(resource("/v1/tasks/{id}/start").route(web::post().to(start)))
        .service(
            resource("/v1/tasks/{id}/complete")
                .route(web::post().to(with_body::<JsonBody<CompleteTaskBody>>)),
        )
        .service(
            resource("/v1/tasks/{id}/abandon")
                .route(web::post().to(with_body::<OptionalJsonBody<AbandonTaskBody>>)),
        );
}

/// Registers the task queries, reading through `reads`. App data:
/// `web::Data<service_kit::http::auth::JwtKeys>`.
pub fn query_routes(cfg: &mut web::ServiceConfig, reads: &ReadSide) {
    let reads = web::Data::new(reads.clone());
    let get = |path| {
        resource(path)
            .app_data(reads.clone())
            .app_data(query_config())
    };
    cfg.service(get("/v1/tasks/{id}").route(web::get().to(get_task)))
        .service(get("/v1/me/tasks").route(web::get().to(list_tasks)))
        .service(get("/v1/me/task-stats").route(web::get().to(task_stats)));
}

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

async fn with_body<B: CommandBody + actix_web::FromRequest>(
    req: HttpRequest,
    user: AuthUser,
    meta: CommandMeta,
    runner: web::Data<CommandRunner>,
    id: web::Path<String>,
    body: B,
) -> Result<HttpResponse, ApiError> {
    on_task(&req, user, &meta, &runner, &id, body).await
}

async fn start(
    req: HttpRequest,
    user: AuthUser,
    meta: CommandMeta,
    runner: web::Data<CommandRunner>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    on_task(&req, user, &meta, &runner, &id, TaskCommand::Start).await
}

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

#[derive(Debug, Deserialize)]
struct ListParams {
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

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
        HttpResponse::Ok().json(serde_json::json!({"items": items, "next_cursor": next_cursor})),
    ))
}

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
