//! The galaxy routes, each registered with its OpenAPI operation. command-api mounts
//! [`command_routes`], query-api [`query_routes`] (both through the module's registry entry);
//! each expects its app data (listed on the function).

use actix_web::{HttpRequest, HttpResponse, web};
use module_kit::paging::{MAX_LIMIT, Page};
use serde::{Deserialize, Serialize};
use service_kit::command::{CommandAccepted, CommandMeta, CommandRunner, IfMatch, if_match};
use service_kit::consistency::ConsistencyWait;
use service_kit::http::auth::AuthUser;
use service_kit::http::extract::{JsonBody, parse_uuid, query_config};
use service_kit::http::responses::{BodyErrors, CommandErrors, QueryErrors};
use service_kit::http::{ApiError, ErrorBody, Routes};
use service_kit::read_side::ReadSide;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::domain::{GalaxyError, NodeView, UserNode, UserNodeCommand};
use crate::input::{CreateNodeBody, CreateRelationBody, StudyBody};
use crate::projection::{GalaxyStats, RelationsView, STUDIES_KEPT, StudyRecordView};
use crate::{queries, store};

impl From<GalaxyError> for ApiError {
    fn from(e: GalaxyError) -> Self {
        match e {
            GalaxyError::Invalid { field, message } => ApiError::Validation {
                message,
                field: Some(field.into()),
            },
            GalaxyError::NotFound => ApiError::NotFound,
            e @ GalaxyError::NotUnlocked { .. } => ApiError::InvalidTransition(e.to_string()),
            e @ GalaxyError::RelationExists { .. } => ApiError::Conflict(e.to_string()),
            GalaxyError::VersionMismatch { expected, current } => {
                ApiError::VersionMismatch { expected, current }
            }
            GalaxyError::Store(e) => e.into(),
            e @ GalaxyError::MalformedEvent { .. } => ApiError::Internal(Box::new(e)),
        }
    }
}

/// Registers the galaxy commands, each with its operation. App data:
/// `web::Data<CommandRunner>`, `web::Data<service_kit::http::auth::JwtKeys>`.
pub fn command_routes(routes: &mut Routes) {
    routes
        .add(__path_create_node, create_node)
        .add(__path_create_relation, create_relation)
        .add(__path_unlock, unlock)
        .add(__path_expand, expand)
        .add(__path_study, study);
}

/// Registers the galaxy queries, each with its operation, reading through `reads`. App data:
/// `web::Data<service_kit::http::auth::JwtKeys>`.
pub fn query_routes(routes: &mut Routes, reads: &ReadSide) {
    routes
        .with_data(web::Data::new(reads.clone()))
        .with_data(query_config())
        .add(__path_get_node, get_node)
        .add(__path_get_relations, get_relations)
        .add(__path_my_galaxy, my_galaxy)
        .add(__path_my_studies, my_studies);
}

/// Creates a knowledge node (`galaxy.node.created`).
#[utoipa::path(
    post,
    path = "/v1/galaxy/nodes",
    tag = "galaxy",
    params(CommandMeta),
    request_body = CreateNodeBody,
    responses(
        (status = 201, description = "Created", body = CommandAccepted, headers(
            ("location" = String, description = "The node: `/v1/galaxy/nodes/{id}`"),
            ("idempotency-replayed" = String, description = "`true` on a replayed answer"),
        )),
        (status = 400, description = "Malformed body, a field or header breaks its rule, or `parent_id` is not an existing node", body = ErrorBody),
        (status = 409, description = "`idempotency_key_reused`, or a concurrent write", body = ErrorBody),
        CommandErrors,
        BodyErrors,
    ),
    security(("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(user_id = %user.0))]
async fn create_node(
    user: AuthUser,
    meta: CommandMeta,
    runner: web::Data<CommandRunner>,
    body: JsonBody<CreateNodeBody>,
) -> Result<HttpResponse, ApiError> {
    let cmd = body.value.validate(Uuid::now_v7())?;
    runner
        .run(&meta, user.0, &body.raw, async |tx, ctx| {
            store::create_node(tx, ctx, &cmd).await
        })
        .await
}

/// Relates two existing, different nodes (`galaxy.relation.created`, an event of the source
/// node; `If-Match` is the source node's version).
#[utoipa::path(
    post,
    path = "/v1/galaxy/relations",
    tag = "galaxy",
    params(CommandMeta, IfMatch),
    request_body = CreateRelationBody,
    responses(
        (status = 201, description = "Created", body = CommandAccepted, headers(
            ("location" = String, description = "The source node's relations: `/v1/galaxy/nodes/{id}/relations`"),
            ("idempotency-replayed" = String, description = "`true` on a replayed answer"),
        )),
        (status = 400, description = "Malformed body, a field or header breaks its rule, an end is not an existing node, or both ends are the same node", body = ErrorBody),
        (status = 409, description = "`conflict` (the same source, target and type exist), `idempotency_key_reused`, or a concurrent write", body = ErrorBody),
        (status = 412, description = "`If-Match` differs from the source node's version", body = ErrorBody),
        CommandErrors,
        BodyErrors,
    ),
    security(("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(user_id = %user.0))]
async fn create_relation(
    req: HttpRequest,
    user: AuthUser,
    meta: CommandMeta,
    runner: web::Data<CommandRunner>,
    body: JsonBody<CreateRelationBody>,
) -> Result<HttpResponse, ApiError> {
    let cmd = body.value.validate()?;
    let expected = if_match(&req)?;
    runner
        .run(&meta, user.0, &body.raw, async |tx, ctx| {
            store::create_relation(tx, ctx, expected, &cmd).await
        })
        .await
}

/// Runs a command of the caller on node `id` (already checked: 400 naming `id` comes
/// first), after `If-Match`; the rest happens in the transaction.
#[tracing::instrument(skip_all, fields(user_id = %user.0, node_id = %id))]
async fn on_node(
    req: &HttpRequest,
    user: AuthUser,
    meta: &CommandMeta,
    runner: &CommandRunner,
    id: Uuid,
    cmd: UserNodeCommand,
    raw: &[u8],
) -> Result<HttpResponse, ApiError> {
    let expected = if_match(req)?;
    runner
        .run(meta, user.0, raw, async |tx, ctx| {
            store::on_user_node(tx, ctx, id, expected, cmd).await
        })
        .await
}

/// Unlocks a node for the caller (`galaxy.node.unlocked`; nothing if unlocked already).
#[utoipa::path(
    post,
    path = "/v1/galaxy/nodes/{id}/unlock",
    tag = "galaxy",
    params(("id" = Uuid, Path, description = "The node"), CommandMeta, IfMatch),
    responses(
        (status = 200, description = "Done (`changed: false` when unlocked already); `id` is the caller's progress on the node", body = CommandAccepted, headers(
            ("idempotency-replayed" = String, description = "`true` on a replayed answer"),
        )),
        (status = 400, description = "Bad id, or a header breaks its rule", body = ErrorBody),
        (status = 404, description = "No such node", body = ErrorBody),
        (status = 409, description = "`idempotency_key_reused`, or a concurrent write", body = ErrorBody),
        (status = 412, description = "`If-Match` differs from the version of the caller's progress on the node (0 before the unlock)", body = ErrorBody),
        CommandErrors,
    ),
    security(("bearer" = [])),
)]
async fn unlock(
    req: HttpRequest,
    user: AuthUser,
    meta: CommandMeta,
    runner: web::Data<CommandRunner>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_uuid(&id, "id")?;
    on_node(&req, user, &meta, &runner, id, UserNodeCommand::Unlock, &[]).await
}

/// Expands a node the caller unlocked (`galaxy.node.expanded`; nothing if expanded already).
#[utoipa::path(
    post,
    path = "/v1/galaxy/nodes/{id}/expand",
    tag = "galaxy",
    params(("id" = Uuid, Path, description = "The node"), CommandMeta, IfMatch),
    responses(
        (status = 200, description = "Done (`changed: false` when expanded already)", body = CommandAccepted, headers(
            ("idempotency-replayed" = String, description = "`true` on a replayed answer"),
        )),
        (status = 400, description = "Bad id, or a header breaks its rule", body = ErrorBody),
        (status = 404, description = "No such node", body = ErrorBody),
        (status = 409, description = "`invalid_transition` (not unlocked by the caller), `idempotency_key_reused`, or a concurrent write", body = ErrorBody),
        (status = 412, description = "`If-Match` differs from the version of the caller's progress on the node", body = ErrorBody),
        CommandErrors,
    ),
    security(("bearer" = [])),
)]
async fn expand(
    req: HttpRequest,
    user: AuthUser,
    meta: CommandMeta,
    runner: web::Data<CommandRunner>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_uuid(&id, "id")?;
    on_node(&req, user, &meta, &runner, id, UserNodeCommand::Expand, &[]).await
}

/// The answer to a study: the command answer plus the mastery after it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StudyAccepted {
    /// The command answer.
    #[serde(flatten)]
    pub accepted: CommandAccepted,
    /// The caller's mastery of the node after the session, 0–100.
    #[schema(minimum = 0, maximum = 100)]
    pub mastery_score: f64,
}

/// Records a study session on a node the caller unlocked: `galaxy.study.recorded` and
/// `galaxy.mastery.updated` in one transaction (two `event_ids`); mastery rises by
/// `performance_score × 10`, at most to 100.
#[utoipa::path(
    post,
    path = "/v1/galaxy/nodes/{id}/study",
    tag = "galaxy",
    params(("id" = Uuid, Path, description = "The node"), CommandMeta, IfMatch),
    request_body = StudyBody,
    responses(
        (status = 200, description = "Recorded", body = StudyAccepted, headers(
            ("idempotency-replayed" = String, description = "`true` on a replayed answer"),
        )),
        (status = 400, description = "Bad id, malformed body, or a field or header breaks its rule", body = ErrorBody),
        (status = 404, description = "No such node", body = ErrorBody),
        (status = 409, description = "`invalid_transition` (not unlocked by the caller), `idempotency_key_reused`, or a concurrent write", body = ErrorBody),
        (status = 412, description = "`If-Match` differs from the version of the caller's progress on the node", body = ErrorBody),
        CommandErrors,
        BodyErrors,
    ),
    security(("bearer" = [])),
)]
async fn study(
    req: HttpRequest,
    user: AuthUser,
    meta: CommandMeta,
    runner: web::Data<CommandRunner>,
    id: web::Path<String>,
    body: JsonBody<StudyBody>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_uuid(&id, "id")?;
    let cmd = UserNodeCommand::Study(body.value.validate()?);
    on_node(&req, user, &meta, &runner, id, cmd, &body.raw).await
}

/// The read side of a query route.
type Reads = web::Data<ReadSide>;

/// One knowledge node, with its child count (every node is visible to every user).
#[utoipa::path(
    get,
    path = "/v1/galaxy/nodes/{id}",
    tag = "galaxy",
    params(("id" = Uuid, Path, description = "The node"), ConsistencyWait),
    responses(
        (status = 200, description = "The answer", body = NodeView, headers(
            ("x-consistency" = String, description = "`fresh` or `stale`: sent when `X-Consistency-Token` was"),
        )),
        (status = 400, description = "Bad id, `X-Consistency-Token` or `wait_ms`", body = ErrorBody),
        (status = 404, description = "No such node (or not visible yet: then `X-Consistency: stale`)", body = ErrorBody, headers(
            ("x-consistency" = String, description = "`fresh` or `stale`: sent when `X-Consistency-Token` was"),
        )),
        QueryErrors,
    ),
    security(("bearer" = [])),
)]
async fn get_node(
    _user: AuthUser,
    wait: ConsistencyWait,
    reads: Reads,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_uuid(&id, "id")?;
    let mut read = reads
        .read(&wait, |keys| queries::node_cmds(keys, id))
        .await?;
    let (view, count) = (read.reply(0)?, read.reply(1)?);
    Ok(read.answer(match queries::parse_node(id, view, count)? {
        // Through a `Value`: sorted keys, as every view is written.
        Some(node) => HttpResponse::Ok().json(serde_json::json!(node)),
        None => actix_web::ResponseError::error_response(&ApiError::NotFound),
    }))
}

/// A node's relations from both ends, each list oldest first.
#[utoipa::path(
    get,
    path = "/v1/galaxy/nodes/{id}/relations",
    tag = "galaxy",
    params(("id" = Uuid, Path, description = "The node"), ConsistencyWait),
    responses(
        (status = 200, description = "The answer", body = RelationsView, headers(
            ("x-consistency" = String, description = "`fresh` or `stale`: sent when `X-Consistency-Token` was"),
        )),
        (status = 400, description = "Bad id, `X-Consistency-Token` or `wait_ms`", body = ErrorBody),
        (status = 404, description = "No such node (or not visible yet: then `X-Consistency: stale`)", body = ErrorBody, headers(
            ("x-consistency" = String, description = "`fresh` or `stale`: sent when `X-Consistency-Token` was"),
        )),
        QueryErrors,
    ),
    security(("bearer" = [])),
)]
async fn get_relations(
    _user: AuthUser,
    wait: ConsistencyWait,
    reads: Reads,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_uuid(&id, "id")?;
    let mut read = reads
        .read(&wait, |keys| queries::relations_cmds(keys, id))
        .await?;
    let (exists, out, inc) = (read.reply(0)?, read.reply(1)?, read.reply(2)?);
    Ok(
        read.answer(match queries::parse_relations(exists, out, inc)? {
            Some(relations) => HttpResponse::Ok().json(relations),
            None => actix_web::ResponseError::error_response(&ApiError::NotFound),
        }),
    )
}

/// The caller's galaxy: progress on every unlocked node, and the totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MyGalaxy {
    /// Progress on each unlocked node, most recently unlocked first.
    pub nodes: Vec<UserNode>,
    /// The totals over them.
    pub stats: GalaxyStats,
}

/// The caller's progress on every node they unlocked, most recently unlocked first, and the
/// totals.
#[utoipa::path(
    get,
    path = "/v1/me/galaxy",
    tag = "galaxy",
    params(ConsistencyWait),
    responses(
        (status = 200, description = "The answer", body = MyGalaxy, headers(
            ("x-consistency" = String, description = "`fresh` or `stale`: sent when `X-Consistency-Token` was"),
        )),
        (status = 400, description = "Bad `X-Consistency-Token` or `wait_ms`", body = ErrorBody),
        QueryErrors,
    ),
    security(("bearer" = [])),
)]
async fn my_galaxy(
    user: AuthUser,
    wait: ConsistencyWait,
    reads: Reads,
) -> Result<HttpResponse, ApiError> {
    let mut read = reads
        .read(&wait, |keys| queries::me_cmds(keys, user.0))
        .await?;
    let ids = queries::parse_node_ids(read.reply(0)?)?;
    let stats = queries::parse_stats(read.reply(1)?)?;
    let nodes = if ids.is_empty() {
        vec![]
    } else {
        queries::parse_progress(
            reads
                .fetch(queries::progress_cmd(&read.keys, user.0, &ids))
                .await?,
        )?
    };
    Ok(read.answer(HttpResponse::Ok().json(serde_json::json!(MyGalaxy { nodes, stats }))))
}

/// The query of the study list. Read as a string so that a bad value answers 400 naming it.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StudiesParams {
    /// How many records, 1–100 (default 20); at most the newest 50 are kept.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
}

/// The caller's most recent study records, newest first. Only the newest 50 are kept, so one
/// page holds them all (`next_cursor` is always `null`).
#[utoipa::path(
    get,
    path = "/v1/me/galaxy/studies",
    tag = "galaxy",
    params(StudiesParams, ConsistencyWait),
    responses(
        (status = 200, description = "The answer", body = Page<StudyRecordView>, headers(
            ("x-consistency" = String, description = "`fresh` or `stale`: sent when `X-Consistency-Token` was"),
        )),
        (status = 400, description = "Bad `limit`, `X-Consistency-Token` or `wait_ms`", body = ErrorBody),
        QueryErrors,
    ),
    security(("bearer" = [])),
)]
async fn my_studies(
    user: AuthUser,
    wait: ConsistencyWait,
    reads: Reads,
    params: web::Query<StudiesParams>,
) -> Result<HttpResponse, ApiError> {
    let limit = match params.limit.as_deref() {
        None => module_kit::paging::DEFAULT_LIMIT,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::validation("limit", format!("limit must be 1 to {MAX_LIMIT}"))
            })?,
    };
    let limit = limit.min(STUDIES_KEPT as usize);
    let mut read = reads
        .read(&wait, |keys| {
            vec![queries::studies_cmd(keys, user.0, limit)]
        })
        .await?;
    let items = queries::parse_studies(read.reply(0)?)?;
    Ok(read.answer(HttpResponse::Ok().json(serde_json::json!(Page {
        items,
        next_cursor: None
    }))))
}
