//! The community routes, each registered with its OpenAPI operation. command-api mounts
//! [`command_routes`], query-api [`query_routes`] (both through the module's registry entry);
//! each expects its app data (listed on the function).

use actix_web::{HttpRequest, HttpResponse, web};
use module_kit::paging::{Page, PageRequest};
use serde::Deserialize;
use service_kit::command::{CommandAccepted, CommandMeta, CommandRunner, IfMatch, if_match};
use service_kit::consistency::ConsistencyWait;
use service_kit::http::auth::AuthUser;
use service_kit::http::extract::{JsonBody, parse_uuid, query_config};
use service_kit::http::responses::{BodyErrors, CommandErrors, QueryErrors};
use service_kit::http::{ApiError, ErrorBody, Routes};
use service_kit::read_side::ReadSide;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::domain::{PostCommand, PostError, PostView};
use crate::input::{CreatePostBody, UpdatePostBody};
use crate::queries::{self, PostList};
use crate::store;

impl From<PostError> for ApiError {
    fn from(e: PostError) -> Self {
        match e {
            PostError::Invalid { field, message } => ApiError::Validation {
                message,
                field: Some(field.into()),
            },
            PostError::NotFound => ApiError::NotFound,
            e @ PostError::Forbidden(_) => ApiError::Forbidden(e.to_string()),
            PostError::VersionMismatch { expected, current } => {
                ApiError::VersionMismatch { expected, current }
            }
            PostError::Store(e) => e.into(),
            e @ PostError::MalformedEvent { .. } => ApiError::Internal(Box::new(e)),
        }
    }
}

/// Registers the post commands, each with its operation. App data:
/// `web::Data<CommandRunner>`, `web::Data<service_kit::http::auth::JwtKeys>`.
pub fn command_routes(routes: &mut Routes) {
    routes
        .add(__path_create, create)
        .add(__path_update, update)
        .add(__path_delete, delete)
        .add(__path_like, like)
        .add(__path_unlike, unlike);
}

/// Registers the post queries, each with its operation, reading through `reads`. App data:
/// `web::Data<service_kit::http::auth::JwtKeys>`.
pub fn query_routes(routes: &mut Routes, reads: &ReadSide) {
    routes
        .with_data(web::Data::new(reads.clone()))
        .with_data(query_config())
        .add(__path_get_post, get_post)
        .add(__path_feed, feed)
        .add(__path_user_posts, user_posts);
}

/// Creates a post (`community.post.created`), public unless `visibility` says otherwise.
#[utoipa::path(
    post,
    path = "/v1/posts",
    tag = "posts",
    params(CommandMeta),
    request_body = CreatePostBody,
    responses(
        (status = 201, description = "Created", body = CommandAccepted, headers(
            ("location" = String, description = "The post: `/v1/posts/{id}`"),
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
    body: JsonBody<CreatePostBody>,
) -> Result<HttpResponse, ApiError> {
    let cmd = body.value.validate(Uuid::now_v7())?;
    runner
        .run(&meta, user.0, &body.raw, async |tx, ctx| {
            store::create(tx, ctx, &cmd).await
        })
        .await
}

/// Runs a command on post `id`. The id is checked first (400 naming `id`), then the body's
/// command (400 naming its field), then `If-Match`'s syntax; the rest happens in the
/// transaction. `raw` is the body (part of the `Idempotency-Key` fingerprint; empty for
/// body-less commands).
#[tracing::instrument(skip_all, fields(user_id = %user.0, post_id = %id))]
async fn on_post(
    req: &HttpRequest,
    user: AuthUser,
    meta: &CommandMeta,
    runner: &CommandRunner,
    id: &str,
    cmd: Result<PostCommand, PostError>,
    raw: &[u8],
) -> Result<HttpResponse, ApiError> {
    let id = parse_uuid(id, "id")?;
    let cmd = cmd?;
    let expected = if_match(req)?;
    runner
        .run(meta, user.0, raw, async |tx, ctx| {
            store::execute(tx, ctx, id, expected, &cmd).await
        })
        .await
}

/// Edits a post (author only): only changed fields produce `community.post.updated`; `null`
/// clears the topic.
#[utoipa::path(
    patch,
    path = "/v1/posts/{id}",
    tag = "posts",
    params(("id" = Uuid, Path, description = "The post"), CommandMeta, IfMatch),
    request_body = UpdatePostBody,
    responses(
        (status = 200, description = "Done (`changed: false` when nothing changed)", body = CommandAccepted, headers(
            ("idempotency-replayed" = String, description = "`true` on a replayed answer"),
        )),
        (status = 400, description = "Bad id, malformed body, or a field or header breaks its rule", body = ErrorBody),
        (status = 403, description = "Another user's post", body = ErrorBody),
        (status = 404, description = "No such post the caller can see (unknown, deleted, or another user's non-public post)", body = ErrorBody),
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
    body: JsonBody<UpdatePostBody>,
) -> Result<HttpResponse, ApiError> {
    let JsonBody { value, raw } = body;
    on_post(&req, user, &meta, &runner, &id, value.validate(), &raw).await
}

/// Deletes a post (author only; soft, `community.post.deleted`): it answers 404 everywhere
/// afterwards.
#[utoipa::path(
    delete,
    path = "/v1/posts/{id}",
    tag = "posts",
    params(("id" = Uuid, Path, description = "The post"), CommandMeta, IfMatch),
    responses(
        (status = 200, description = "Done", body = CommandAccepted, headers(
            ("idempotency-replayed" = String, description = "`true` on a replayed answer"),
        )),
        (status = 400, description = "Bad id, or a header breaks its rule", body = ErrorBody),
        (status = 403, description = "Another user's post", body = ErrorBody),
        (status = 404, description = "No such post the caller can see (unknown, deleted, or another user's non-public post)", body = ErrorBody),
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
    on_post(
        &req,
        user,
        &meta,
        &runner,
        &id,
        Ok(PostCommand::Delete),
        &[],
    )
    .await
}

/// Likes a post the caller can see (`community.post.liked`); liking it again changes nothing
/// (200, `changed: false`, no event).
#[utoipa::path(
    put,
    path = "/v1/posts/{id}/like",
    tag = "posts",
    params(("id" = Uuid, Path, description = "The post"), CommandMeta, IfMatch),
    responses(
        (status = 200, description = "Done (`changed: false` when already liked)", body = CommandAccepted, headers(
            ("idempotency-replayed" = String, description = "`true` on a replayed answer"),
        )),
        (status = 400, description = "Bad id, or a header breaks its rule", body = ErrorBody),
        (status = 404, description = "No such post the caller can see (unknown, deleted, or another user's non-public post)", body = ErrorBody),
        (status = 409, description = "`idempotency_key_reused`, or a concurrent write", body = ErrorBody),
        (status = 412, description = "`If-Match` differs from the current version", body = ErrorBody),
        CommandErrors,
    ),
    security(("bearer" = [])),
)]
async fn like(
    req: HttpRequest,
    user: AuthUser,
    meta: CommandMeta,
    runner: web::Data<CommandRunner>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    on_post(&req, user, &meta, &runner, &id, Ok(PostCommand::Like), &[]).await
}

/// Takes back the caller's like (`community.post.unliked`); without a like it changes nothing
/// (200, `changed: false`, no event).
#[utoipa::path(
    delete,
    path = "/v1/posts/{id}/like",
    tag = "posts",
    params(("id" = Uuid, Path, description = "The post"), CommandMeta, IfMatch),
    responses(
        (status = 200, description = "Done (`changed: false` when not liked)", body = CommandAccepted, headers(
            ("idempotency-replayed" = String, description = "`true` on a replayed answer"),
        )),
        (status = 400, description = "Bad id, or a header breaks its rule", body = ErrorBody),
        (status = 404, description = "No such post the caller can see (unknown, deleted, or another user's non-public post)", body = ErrorBody),
        (status = 409, description = "`idempotency_key_reused`, or a concurrent write", body = ErrorBody),
        (status = 412, description = "`If-Match` differs from the current version", body = ErrorBody),
        CommandErrors,
    ),
    security(("bearer" = [])),
)]
async fn unlike(
    req: HttpRequest,
    user: AuthUser,
    meta: CommandMeta,
    runner: web::Data<CommandRunner>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    on_post(
        &req,
        user,
        &meta,
        &runner,
        &id,
        Ok(PostCommand::Unlike),
        &[],
    )
    .await
}

/// The read side of a query route.
type Reads = web::Data<ReadSide>;

/// One post, if the caller can see it (public, or theirs).
#[utoipa::path(
    get,
    path = "/v1/posts/{id}",
    tag = "posts",
    params(("id" = Uuid, Path, description = "The post"), ConsistencyWait),
    responses(
        (status = 200, description = "The answer", body = PostView, headers(
            ("x-consistency" = String, description = "`fresh` or `stale`: sent when `X-Consistency-Token` was"),
        )),
        (status = 400, description = "Bad id, `X-Consistency-Token` or `wait_ms`", body = ErrorBody),
        (status = 404, description = "No such post the caller can see (unknown, deleted, another user's non-public post, or not visible yet: then `X-Consistency: stale`)", body = ErrorBody, headers(
            ("x-consistency" = String, description = "`fresh` or `stale`: sent when `X-Consistency-Token` was"),
        )),
        QueryErrors,
    ),
    security(("bearer" = [])),
)]
async fn get_post(
    user: AuthUser,
    wait: ConsistencyWait,
    reads: Reads,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_uuid(&id, "id")?;
    let mut read = reads
        .read(&wait, |keys| {
            vec![
                queries::view_cmd(keys, id),
                queries::liked_cmd(keys, user.0, &[id]),
            ]
        })
        .await?;
    let post = queries::parse_view(id, read.reply(0)?)?;
    let liked = queries::parse_liked(read.reply(1)?)?;
    // A post the caller may not see answers exactly like a missing one. A 404 after a stale
    // wait still says `X-Consistency: stale`: "not visible yet" must not read as "gone".
    Ok(read.answer(match post.filter(|p| p.visible_to(user.0)) {
        Some(post) => HttpResponse::Ok().json(PostView::of(post, liked.first() == Some(&true))),
        None => actix_web::ResponseError::error_response(&ApiError::NotFound),
    }))
}

/// The query of a post list. Read as strings so that a bad value answers 400 naming its
/// field; documented with the types they must parse as.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Page size, 1–100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// The previous page's `next_cursor`.
    cursor: Option<String>,
}

/// Reads one page of `list` as `caller` sees it.
async fn page_of(
    reads: &ReadSide,
    wait: &ConsistencyWait,
    caller: Uuid,
    list: PostList,
    params: &ListParams,
) -> Result<HttpResponse, ApiError> {
    let page = PageRequest::parse(params.limit.as_deref(), params.cursor.as_deref())?;
    let mut read = reads
        .read(wait, |keys| vec![queries::list_cmd(keys, list, &page)])
        .await?;
    let members: Vec<String> = streams::error::from_reply(read.reply(0)?, "post list")?;
    let (ids, next_cursor) = page.page(members);
    let mut items = vec![];
    if !ids.is_empty() {
        // The follow-up reads use the generation of the list read (`read.keys`).
        let posts: Vec<_> =
            queries::parse_views(reads.fetch(queries::views_cmd(&read.keys, &ids)).await?)?
                .into_iter()
                .filter(|p| list.admits(p, caller))
                .collect();
        if !posts.is_empty() {
            let ids: Vec<Uuid> = posts.iter().map(|p| p.id).collect();
            let liked = queries::parse_liked(
                reads
                    .fetch(queries::liked_cmd(&read.keys, caller, &ids))
                    .await?,
            )?;
            items = queries::views_of(posts, &liked);
        }
    }
    Ok(read.answer(
        // Through a `Value` (sorted keys, in the items too), as lists have always been written.
        HttpResponse::Ok().json(serde_json::json!(Page { items, next_cursor })),
    ))
}

/// Every live public post, newest first.
#[utoipa::path(
    get,
    path = "/v1/feed",
    tag = "posts",
    params(ListParams, ConsistencyWait),
    responses(
        (status = 200, description = "The answer", body = Page<PostView>, headers(
            ("x-consistency" = String, description = "`fresh` or `stale`: sent when `X-Consistency-Token` was"),
        )),
        (status = 400, description = "Bad `limit`, `cursor`, `X-Consistency-Token` or `wait_ms`", body = ErrorBody),
        QueryErrors,
    ),
    security(("bearer" = [])),
)]
async fn feed(
    user: AuthUser,
    wait: ConsistencyWait,
    reads: Reads,
    params: web::Query<ListParams>,
) -> Result<HttpResponse, ApiError> {
    page_of(&reads, &wait, user.0, PostList::Feed, &params).await
}

/// A user's live posts the caller can see (all of them for their author, the public ones for
/// everyone else), newest first.
#[utoipa::path(
    get,
    path = "/v1/users/{user_id}/posts",
    tag = "posts",
    params(("user_id" = Uuid, Path, description = "The author"), ListParams, ConsistencyWait),
    responses(
        (status = 200, description = "The answer", body = Page<PostView>, headers(
            ("x-consistency" = String, description = "`fresh` or `stale`: sent when `X-Consistency-Token` was"),
        )),
        (status = 400, description = "Bad `user_id`, `limit`, `cursor`, `X-Consistency-Token` or `wait_ms`", body = ErrorBody),
        QueryErrors,
    ),
    security(("bearer" = [])),
)]
async fn user_posts(
    user: AuthUser,
    wait: ConsistencyWait,
    reads: Reads,
    user_id: web::Path<String>,
    params: web::Query<ListParams>,
) -> Result<HttpResponse, ApiError> {
    let author = parse_uuid(&user_id, "user_id")?;
    page_of(
        &reads,
        &wait,
        user.0,
        PostList::by_user(author, user.0),
        &params,
    )
    .await
}
