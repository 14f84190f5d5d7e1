//! The task routes. command-api mounts [`command_routes`], query-api [`query_routes`]; each
//! expects its app data (listed on the function).

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use service_kit::command::{CommandMeta, CommandRunner, if_match};
use service_kit::consistency::{ConsistencyWait, mark};
use service_kit::http::auth::AuthUser;
use service_kit::http::extract::{JsonBody, OptionalJsonBody, parse_uuid, query_config};
use service_kit::http::{ApiError, resource};
use streams::RedisPools;
use streams::visibility::AppliedWatch;
use uuid::Uuid;

use crate::domain::{TaskCommand, TaskError, TaskStatus};
use crate::input::{AbandonTaskBody, CompleteTaskBody, CreateTaskBody, UpdateTaskBody};
use crate::queries::{TaskQueries, decode_cursor};
use crate::store;

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
                .route(web::patch().to(update))
                .route(web::delete().to(delete)),
        )
        .service(resource("/v1/tasks/{id}/start").route(web::post().to(start)))
        .service(resource("/v1/tasks/{id}/complete").route(web::post().to(complete)))
        .service(resource("/v1/tasks/{id}/abandon").route(web::post().to(abandon)));
}

/// Registers the task queries. App data: `web::Data<TaskQueries>`, `web::Data<RedisPools>`,
/// `web::Data<service_kit::http::auth::JwtKeys>`.
pub fn query_routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(query_config())
        .service(resource("/v1/tasks/{id}").route(web::get().to(get_task)))
        .service(resource("/v1/me/tasks").route(web::get().to(list_tasks)))
        .service(resource("/v1/me/task-stats").route(web::get().to(task_stats)));
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

async fn run_on(
    req: &HttpRequest,
    user: AuthUser,
    meta: &CommandMeta,
    runner: &CommandRunner,
    id: &str,
    raw: &[u8],
    cmd: TaskCommand,
) -> Result<HttpResponse, ApiError> {
    let id = parse_uuid(id, "id")?;
    let expected = if_match(req)?;
    runner
        .run(meta, user.0, raw, async |tx, ctx| {
            store::execute(tx, ctx, id, expected, &cmd).await
        })
        .await
}

#[tracing::instrument(skip_all, fields(user_id = %user.0, task_id = %id))]
async fn update(
    req: HttpRequest,
    user: AuthUser,
    meta: CommandMeta,
    runner: web::Data<CommandRunner>,
    id: web::Path<String>,
    body: JsonBody<UpdateTaskBody>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_uuid(&id, "id")?.to_string();
    let cmd = body.value.validate()?;
    run_on(&req, user, &meta, &runner, &id, &body.raw, cmd).await
}

#[tracing::instrument(skip_all, fields(user_id = %user.0, task_id = %id))]
async fn start(
    req: HttpRequest,
    user: AuthUser,
    meta: CommandMeta,
    runner: web::Data<CommandRunner>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    run_on(&req, user, &meta, &runner, &id, b"", TaskCommand::Start).await
}

#[tracing::instrument(skip_all, fields(user_id = %user.0, task_id = %id))]
async fn complete(
    req: HttpRequest,
    user: AuthUser,
    meta: CommandMeta,
    runner: web::Data<CommandRunner>,
    id: web::Path<String>,
    body: JsonBody<CompleteTaskBody>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_uuid(&id, "id")?.to_string();
    let cmd = body.value.validate()?;
    run_on(&req, user, &meta, &runner, &id, &body.raw, cmd).await
}

#[tracing::instrument(skip_all, fields(user_id = %user.0, task_id = %id))]
async fn abandon(
    req: HttpRequest,
    user: AuthUser,
    meta: CommandMeta,
    runner: web::Data<CommandRunner>,
    id: web::Path<String>,
    body: OptionalJsonBody<AbandonTaskBody>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_uuid(&id, "id")?.to_string();
    let cmd = body.0.value.validate()?;
    run_on(&req, user, &meta, &runner, &id, &body.0.raw, cmd).await
}

#[tracing::instrument(skip_all, fields(user_id = %user.0, task_id = %id))]
async fn delete(
    req: HttpRequest,
    user: AuthUser,
    meta: CommandMeta,
    runner: web::Data<CommandRunner>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    run_on(&req, user, &meta, &runner, &id, b"", TaskCommand::Delete).await
}

async fn get_task(
    user: AuthUser,
    wait: ConsistencyWait,
    queries: web::Data<TaskQueries>,
    pools: web::Data<RedisPools>,
    watch: web::Data<AppliedWatch>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_uuid(&id, "id")?;
    let (freshness, view) = wait
        .settle_and_read(&pools, &watch, queries.generation(), queries.view_cmd(id))
        .await?;
    let task = TaskQueries::parse_view(id, view)?;
    // Another user's task answers exactly like a missing one. A 404 after a stale wait still
    // says `X-Consistency: stale`: "not visible yet" must not read as "gone".
    let mut response = match task.filter(|t| t.user_id == user.0) {
        Some(task) => HttpResponse::Ok().json(task),
        None => actix_web::ResponseError::error_response(&ApiError::NotFound),
    };
    mark(&mut response, freshness);
    Ok(response)
}

#[derive(Debug, Deserialize)]
struct ListParams {
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

fn limit(raw: Option<&str>) -> Result<usize, ApiError> {
    match raw {
        None => Ok(20),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| ApiError::validation("limit", "limit must be 1 to 100")),
    }
}

async fn list_tasks(
    user: AuthUser,
    wait: ConsistencyWait,
    queries: web::Data<TaskQueries>,
    pools: web::Data<RedisPools>,
    watch: web::Data<AppliedWatch>,
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
    let limit = limit(params.limit.as_deref())?;
    let after = params
        .cursor
        .as_deref()
        .map(|c| {
            decode_cursor(c).map_err(|_| ApiError::validation("cursor", "cursor is malformed"))
        })
        .transpose()?;
    let freshness = wait.settle(&pools, &watch, queries.generation()).await?;
    let page = queries
        .list(user.0, status, limit, after.as_deref())
        .await?;
    let mut response = HttpResponse::Ok()
        .json(serde_json::json!({"items": page.items, "next_cursor": page.next_cursor}));
    mark(&mut response, freshness);
    Ok(response)
}

async fn task_stats(
    user: AuthUser,
    wait: ConsistencyWait,
    queries: web::Data<TaskQueries>,
    pools: web::Data<RedisPools>,
    watch: web::Data<AppliedWatch>,
) -> Result<HttpResponse, ApiError> {
    let (freshness, reply) = wait
        .settle_and_read(
            &pools,
            &watch,
            queries.generation(),
            queries.stats_cmd(user.0),
        )
        .await?;
    let mut response = HttpResponse::Ok().json(TaskQueries::parse_stats(reply)?);
    mark(&mut response, freshness);
    Ok(response)
}
