//! The admin routes of http-api.md. Reads need any valid token; every mutating call needs an
//! operator token and goes through [`Admin::audited`].

use actix_web::{HttpResponse, web};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use outbox::audit::AuditStore;
use outbox::control::{ControlStore, DesiredState};
use outbox::operations::{NewOperation, OperationKind, OperationStore, Started};
use outbox::snapshots::SnapshotStore;
use projection::dead_letters::{DeadLetterError, DeadLetters};
use projection::snapshot::SnapshotError;
use serde::Deserialize;
use serde_json::Value;
use service_kit::http::extract::{parse_uuid, query_config};
use service_kit::http::{ApiError, ErrorBody, Routes};
use streams::dlq::DeadLetterKeys;
use utoipa::IntoParams;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

use crate::admin::Admin;
use crate::auth::Caller;
use crate::health::{self, CqrsHealth};
use crate::status::ProjectionStatus;
use crate::status::projection_status;
use crate::views::{
    AuditPage, AuditView, BulkRedriveView, DeadLetterPage, DeadLetterStatsView, DeadLetterView,
    DesiredStateView, DiscardView, GroupView, OperationStartedView, OperationView, OutboxStatsView,
    PartitionView, RedriveView, SnapshotCountView, SnapshotView, StreamView,
};

type State = web::Data<Admin>;
/// A caller, or why there is none: mutating handlers audit both.
type MaybeCaller = Result<Caller, ApiError>;

/// The name of the admin token scheme in the document.
pub const ADMIN_TOKEN: &str = "admin_token";

/// The bearer scheme of admin-api: an operator or read-only token from `ADMIN_TOKENS` /
/// `ADMIN_READONLY_TOKENS`.
#[must_use]
pub fn admin_token_scheme() -> SecurityScheme {
    let mut http = Http::new(HttpAuthScheme::Bearer);
    http.description = Some(
        "An operator token (ADMIN_TOKENS) or, for reads only, a read-only token \
         (ADMIN_READONLY_TOKENS)"
            .into(),
    );
    SecurityScheme::Http(http)
}

/// Registers the routes, each with its operation. App data: `web::Data<Admin>`,
/// `web::Data<Tokens>`.
pub fn routes(routes: &mut Routes) {
    routes.security_scheme(ADMIN_TOKEN, admin_token_scheme());
    routes
        .with_data(query_config())
        .add(__path_cqrs_health, cqrs_health)
        .add(__path_list_projections, list_projections)
        .add(__path_get_projection, get_projection)
        .add(__path_pause, pause)
        .add(__path_resume, resume)
        .add(__path_reset, reset)
        .add(__path_rebuild, rebuild)
        .add(__path_snapshot, snapshot)
        .add(__path_snapshot_count, snapshot_count)
        .add(__path_get_operation, get_operation)
        .add(__path_list_dead_letters, list_dead_letters)
        .add(__path_dead_letter_stats, dead_letter_stats)
        .add(__path_retry_all, retry_all)
        .add(__path_retry_one, retry_one)
        .add(__path_discard, discard)
        .add(__path_outbox_stats, outbox_stats)
        .add(__path_list_streams, list_streams)
        .add(__path_list_audit, list_audit);
}

/// Health of the pipeline, judged from real data: one component per projection, the relay,
/// PostgreSQL and Redis. No token needed.
#[utoipa::path(
    get,
    path = "/health/cqrs",
    tag = "health",
    responses(
        (status = 200, description = "`healthy`, or `degraded` (working, with the reason)", body = CqrsHealth),
        (status = 503, description = "`unhealthy`: something is stuck, gone or down", body = CqrsHealth),
    ),
)]
async fn cqrs_health(admin: State) -> HttpResponse {
    let report = health::check(&admin).await;
    if report.status == health::Level::Unhealthy {
        HttpResponse::ServiceUnavailable().json(report)
    } else {
        HttpResponse::Ok().json(report)
    }
}

/// The status of every projection.
#[utoipa::path(
    get,
    path = "/admin/cqrs/projections",
    tag = "projections",
    responses(
        (status = 200, description = "Every projection of the registry", body = Vec<ProjectionStatus>),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 503, description = "PostgreSQL or Redis is unavailable", body = ErrorBody),
    ),
    security(("admin_token" = [])),
)]
async fn list_projections(_: Caller, admin: State) -> Result<HttpResponse, ApiError> {
    let mut out = Vec::new();
    for module in modules::ALL {
        out.push(projection_status(&admin, module).await?);
    }
    Ok(HttpResponse::Ok().json(out))
}

/// The status of one projection.
#[utoipa::path(
    get,
    path = "/admin/cqrs/projections/{name}",
    tag = "projections",
    params(("name" = String, Path, description = "The projection, e.g. `task_projection`")),
    responses(
        (status = 200, description = "Its status", body = ProjectionStatus),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 404, description = "No such projection", body = ErrorBody),
        (status = 503, description = "PostgreSQL or Redis is unavailable", body = ErrorBody),
    ),
    security(("admin_token" = [])),
)]
async fn get_projection(
    _: Caller,
    admin: State,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let module = Admin::module(&name)?;
    Ok(HttpResponse::Ok().json(projection_status(&admin, module).await?))
}

/// Pauses a projection: every replica stops applying within 2 s and reports `paused`.
#[utoipa::path(
    post,
    path = "/admin/cqrs/projections/{name}/pause",
    tag = "projections",
    params(("name" = String, Path, description = "The projection")),
    responses(
        (status = 202, description = "Asked; the replicas follow", body = DesiredStateView),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "A read-only token", body = ErrorBody),
        (status = 404, description = "No such projection", body = ErrorBody),
        (status = 503, description = "PostgreSQL is unavailable; nothing changed", body = ErrorBody),
    ),
    security(("admin_token" = [])),
)]
async fn pause(
    caller: MaybeCaller,
    admin: State,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    set_desired(caller, admin, &name, DesiredState::Paused).await
}

/// Resumes a paused projection; it catches up from where it stopped.
#[utoipa::path(
    post,
    path = "/admin/cqrs/projections/{name}/resume",
    tag = "projections",
    params(("name" = String, Path, description = "The projection")),
    responses(
        (status = 202, description = "Asked; the replicas follow", body = DesiredStateView),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "A read-only token", body = ErrorBody),
        (status = 404, description = "No such projection", body = ErrorBody),
        (status = 503, description = "PostgreSQL is unavailable; nothing changed", body = ErrorBody),
    ),
    security(("admin_token" = [])),
)]
async fn resume(
    caller: MaybeCaller,
    admin: State,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    set_desired(caller, admin, &name, DesiredState::Running).await
}

/// The JSON of an answer, for the audit entry's details.
fn details<T: serde::Serialize>(answer: &T) -> Value {
    serde_json::to_value(answer).unwrap_or_default()
}

async fn set_desired(
    caller: MaybeCaller,
    admin: State,
    name: &str,
    state: DesiredState,
) -> Result<HttpResponse, ApiError> {
    let action = match state {
        DesiredState::Paused => "projection.pause",
        DesiredState::Running => "projection.resume",
    };
    admin
        .audited(caller, action, name, None, async {
            Admin::module(name)?;
            if !ControlStore::new(admin.pg.clone())
                .set_desired_state(name, state)
                .await?
            {
                return Err(ApiError::NotFound);
            }
            let body = DesiredStateView {
                projection: name.to_owned(),
                desired_state: state.as_str().to_owned(),
            };
            Ok((HttpResponse::Accepted().json(&body), details(&body)))
        })
        .await
}

/// Resets a projection: its read model is withdrawn (queries answer 503 meanwhile), history
/// replayed into a new generation, then it goes on live.
#[utoipa::path(
    post,
    path = "/admin/cqrs/projections/{name}/reset",
    tag = "projections",
    params(("name" = String, Path, description = "The projection")),
    responses(
        (status = 202, description = "Started; the workers run it", body = OperationStartedView),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "A read-only token", body = ErrorBody),
        (status = 404, description = "No such projection", body = ErrorBody),
        (status = 409, description = "A reset or rebuild of it is running; `details.operation_id` names it", body = ErrorBody),
        (status = 503, description = "PostgreSQL is unavailable; nothing started", body = ErrorBody),
    ),
    security(("admin_token" = [])),
)]
async fn reset(
    caller: MaybeCaller,
    admin: State,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    start_operation(caller, &admin, &name, OperationKind::Reset, false).await
}

/// Where a rebuild starts. Read as a string so that a bad value answers 400 naming it.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct RebuildParams {
    /// `snapshot`: load the newest snapshot and replay only what follows it. Absent (or
    /// `scratch`): replay from the first event.
    #[param(value_type = Option<String>, pattern = "^(snapshot|scratch)$")]
    from: Option<String>,
}

/// Rebuilds a projection with zero downtime: a new generation is built beside the served
/// one, which keeps answering, and replaces it once caught up.
#[utoipa::path(
    post,
    path = "/admin/cqrs/projections/{name}/rebuild",
    tag = "projections",
    params(("name" = String, Path, description = "The projection"), RebuildParams),
    responses(
        (status = 202, description = "Started; the workers run it", body = OperationStartedView),
        (status = 400, description = "Bad `from`", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "A read-only token", body = ErrorBody),
        (status = 404, description = "No such projection", body = ErrorBody),
        (status = 409, description = "A reset or rebuild of it is running (`details.operation_id` names it), or `from=snapshot` and it has none", body = ErrorBody),
        (status = 503, description = "PostgreSQL is unavailable; nothing started", body = ErrorBody),
    ),
    security(("admin_token" = [])),
)]
async fn rebuild(
    caller: MaybeCaller,
    admin: State,
    name: web::Path<String>,
    params: web::Query<RebuildParams>,
) -> Result<HttpResponse, ApiError> {
    let from_snapshot = match params.from.as_deref() {
        None | Some("scratch") => false,
        Some("snapshot") => true,
        Some(_) => {
            return admin
                .audited(caller, "projection.rebuild", &name, None, async {
                    Err::<(HttpResponse, Value), _>(ApiError::validation(
                        "from",
                        "from must be `snapshot` (or absent: from the first event)",
                    ))
                })
                .await;
        }
    };
    start_operation(caller, &admin, &name, OperationKind::Rebuild, from_snapshot).await
}

/// Starts a reset or rebuild; the workers run it (it survives admin-api's restarts).
async fn start_operation(
    caller: MaybeCaller,
    admin: &Admin,
    name: &str,
    kind: OperationKind,
    from_snapshot: bool,
) -> Result<HttpResponse, ApiError> {
    let action = match kind {
        OperationKind::Reset => "projection.reset",
        OperationKind::Rebuild => "projection.rebuild",
    };
    let actor = caller
        .as_ref()
        .map_or_else(|_| "?".to_owned(), |c| c.actor.clone());
    admin
        .audited(caller, action, name, None, async {
            Admin::module(name)?;
            let snapshot_id = if from_snapshot {
                let newest = SnapshotStore::new(admin.pg.clone()).newest(name).await?;
                Some(
                    newest
                        .ok_or_else(|| {
                            ApiError::Conflict(format!(
                                "{name} has no snapshot: take one first (POST .../snapshot)"
                            ))
                        })?
                        .id,
                )
            } else {
                None
            };
            let reason = format!("{} by {actor}", action.trim_start_matches("projection."));
            let new = NewOperation {
                snapshot_id,
                ..NewOperation::new(kind, name, &reason)
            };
            match OperationStore::new(admin.pg.clone()).start(new).await? {
                Started::New(op) => {
                    let body = OperationStartedView {
                        operation_id: op.id.to_string(),
                    };
                    let mut details = details(&body);
                    if let Some(s) = snapshot_id {
                        details["snapshot_id"] = Value::String(s.to_string());
                    }
                    Ok((HttpResponse::Accepted().json(&body), details))
                }
                Started::AlreadyRunning(op) => Err(ApiError::ConflictWith {
                    message: format!(
                        "a {} of {name} is already running: operation {}",
                        op.kind.as_str(),
                        op.id
                    ),
                    details: details(&OperationStartedView {
                        operation_id: op.id.to_string(),
                    }),
                }),
            }
        })
        .await
}

/// Takes a snapshot of the projection's served read model (replicas hold still while it is
/// copied) into PostgreSQL, at a known `event_store` position.
#[utoipa::path(
    post,
    path = "/admin/cqrs/projections/{name}/snapshot",
    tag = "snapshots",
    params(("name" = String, Path, description = "The projection")),
    responses(
        (status = 201, description = "Taken", body = SnapshotView),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "A read-only token", body = ErrorBody),
        (status = 404, description = "No such projection", body = ErrorBody),
        (status = 409, description = "Nothing is served yet, or a snapshot, reset or rebuild of it runs", body = ErrorBody),
        (status = 503, description = "The replicas did not hold still in time, or PostgreSQL or Redis is unavailable", body = ErrorBody),
    ),
    security(("admin_token" = [])),
)]
async fn snapshot(
    caller: MaybeCaller,
    admin: State,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    admin
        .audited(caller, "projection.snapshot", &name, None, async {
            let module = Admin::module(&name)?;
            let taken =
                projection::snapshot::take(&admin.pg, &admin.redis, module.spec, &admin.snapshots)
                    .await
                    .map_err(|e| match e {
                        SnapshotError::Busy(m) => ApiError::Conflict(m),
                        e @ SnapshotError::NothingServed => ApiError::Conflict(e.to_string()),
                        e @ SnapshotError::NotPaused(_) => ApiError::Unavailable(Box::new(e)),
                        SnapshotError::Outbox(e) => e.into(),
                        SnapshotError::Streams(e) => e.into(),
                    })?;
            let view = SnapshotView::from(&taken);
            let details = details(&view);
            Ok((HttpResponse::Created().json(view), details))
        })
        .await
}

/// How many snapshots of the projection are kept.
#[utoipa::path(
    get,
    path = "/admin/cqrs/snapshots/{name}/count",
    tag = "snapshots",
    params(("name" = String, Path, description = "The projection")),
    responses(
        (status = 200, description = "The count", body = SnapshotCountView),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 404, description = "No such projection", body = ErrorBody),
        (status = 503, description = "PostgreSQL is unavailable", body = ErrorBody),
    ),
    security(("admin_token" = [])),
)]
async fn snapshot_count(
    _: Caller,
    admin: State,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Admin::module(&name)?;
    let count = SnapshotStore::new(admin.pg.clone()).count(&name).await?;
    Ok(HttpResponse::Ok().json(SnapshotCountView { count }))
}

/// A reset or rebuild: its state and progress (events applied of total, rate, ETA).
#[utoipa::path(
    get,
    path = "/admin/cqrs/operations/{id}",
    tag = "operations",
    params(("id" = uuid::Uuid, Path, description = "The operation")),
    responses(
        (status = 200, description = "The operation", body = OperationView),
        (status = 400, description = "`id` is not a UUID", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 404, description = "No such operation", body = ErrorBody),
        (status = 503, description = "PostgreSQL is unavailable", body = ErrorBody),
    ),
    security(("admin_token" = [])),
)]
async fn get_operation(
    _: Caller,
    admin: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_uuid(&id, "id")?;
    let op = OperationStore::new(admin.pg.clone())
        .get(id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(OperationView::from(&op)))
}

/// The query of the dead-letter list. Read as strings so that a bad value answers 400
/// naming its field.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Only this projection's dead letters.
    projection: Option<String>,
    /// Page size, 1–100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// The previous page's `next_cursor`.
    cursor: Option<String>,
}

/// `limit` (1–100, default 20).
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

fn bad_cursor() -> ApiError {
    ApiError::validation("cursor", "cursor is malformed")
}

/// The dead letters of one projection, or of all, oldest first per projection. The cursor
/// names the projection and the entry the next page starts after.
#[utoipa::path(
    get,
    path = "/admin/cqrs/dlq",
    tag = "dead letters",
    params(ListParams),
    responses(
        (status = 200, description = "A page", body = DeadLetterPage),
        (status = 400, description = "Bad `limit` or `cursor`", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 404, description = "No such projection", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody),
    ),
    security(("admin_token" = [])),
)]
async fn list_dead_letters(
    _: Caller,
    admin: State,
    params: web::Query<ListParams>,
) -> Result<HttpResponse, ApiError> {
    let limit = limit(params.limit.as_deref())?;
    let names: Vec<&'static str> = match params.projection.as_deref() {
        Some(p) => vec![Admin::module(p)?.spec.projection],
        None => modules::specs().map(|s| s.projection).collect(),
    };
    let (mut at, mut after) = match params.cursor.as_deref() {
        None => (0, None),
        Some(c) => {
            let raw = URL_SAFE_NO_PAD.decode(c).map_err(|_| bad_cursor())?;
            let raw = String::from_utf8(raw).map_err(|_| bad_cursor())?;
            let (p, id) = raw.split_once('\n').ok_or_else(bad_cursor)?;
            let i = names.iter().position(|n| *n == p).ok_or_else(bad_cursor)?;
            (i, Some(id.to_owned()))
        }
    };
    let mut conn = admin
        .redis
        .commands
        .get()
        .await
        .map_err(streams::StreamError::from)?;
    let mut items = Vec::new();
    let mut next_cursor = None;
    while at < names.len() {
        let keys = DeadLetterKeys::new(&admin.redis.keys, names[at]);
        let want = limit - items.len();
        // One more than needed tells whether a next page exists.
        let page = streams::dlq::list(&mut conn, &keys, after.as_deref(), want + 1).await?;
        let more = page.len() > want;
        for entry in page.iter().take(want) {
            items.push(DeadLetterView::new(names[at], entry));
        }
        if items.len() == limit {
            let last = page.get(want - 1).map(|e| e.id.clone());
            let has_next = more || at + 1 < names.len();
            if has_next && let Some(last) = last {
                next_cursor = Some(URL_SAFE_NO_PAD.encode(format!("{}\n{last}", names[at])));
            }
            break;
        }
        at += 1;
        after = None;
    }
    Ok(HttpResponse::Ok().json(DeadLetterPage { items, next_cursor }))
}

/// Dead letters counted by projection and by error type.
#[utoipa::path(
    get,
    path = "/admin/cqrs/dlq/stats",
    tag = "dead letters",
    responses(
        (status = 200, description = "The counts", body = DeadLetterStatsView),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody),
    ),
    security(("admin_token" = [])),
)]
async fn dead_letter_stats(_: Caller, admin: State) -> Result<HttpResponse, ApiError> {
    let mut view = DeadLetterStatsView {
        total: 0,
        by_projection: Default::default(),
        by_error_type: Default::default(),
        oldest_age_seconds: 0.0,
    };
    for module in modules::ALL {
        let stats = DeadLetters::new(admin.redis.clone(), (module.projection)())
            .stats()
            .await?;
        view.total += stats.total;
        view.by_projection
            .insert(module.spec.projection.to_owned(), stats.total);
        for (t, n) in stats.by_error_type {
            *view.by_error_type.entry(t).or_default() += n;
        }
        view.oldest_age_seconds = view.oldest_age_seconds.max(stats.oldest_age_seconds);
    }
    Ok(HttpResponse::Ok().json(view))
}

/// A dead letter's public id, `<projection>:<entry id>`, split.
fn dead_letter_id(id: &str) -> Result<(&'static module_kit::Module, &str), ApiError> {
    let (projection, entry) = id.split_once(':').ok_or_else(|| {
        ApiError::validation("id", "a dead letter id is `<projection>:<entry id>`")
    })?;
    Ok((Admin::module(projection)?, entry))
}

fn dead_letter_error(e: DeadLetterError) -> ApiError {
    match e {
        DeadLetterError::NotFound(_) => ApiError::NotFound,
        e @ (DeadLetterError::NotHead(..) | DeadLetterError::StillFailing { .. }) => {
            ApiError::Conflict(e.to_string())
        }
        DeadLetterError::Streams(e) => e.into(),
    }
}

/// Re-drives one dead letter, then the events parked behind it, in order. One that still
/// fails stays a dead letter (409), nothing is lost.
#[utoipa::path(
    post,
    path = "/admin/cqrs/dlq/{id}/retry",
    tag = "dead letters",
    params(("id" = String, Path, description = "`<projection>:<entry id>`, as listed")),
    responses(
        (status = 202, description = "Applied", body = RedriveView),
        (status = 400, description = "`id` is not `<projection>:<entry id>`", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "A read-only token", body = ErrorBody),
        (status = 404, description = "No such dead letter or projection", body = ErrorBody),
        (status = 409, description = "It still fails (it stays), or it is parked behind another: retry that one", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody),
    ),
    security(("admin_token" = [])),
)]
async fn retry_one(
    caller: MaybeCaller,
    admin: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    admin
        .audited(caller, "dlq.retry", &id, None, async {
            let (module, entry) = dead_letter_id(&id)?;
            let done = DeadLetters::new(admin.redis.clone(), (module.projection)())
                .redrive(entry)
                .await
                .map_err(dead_letter_error)?;
            let body = RedriveView {
                applied: done.applied,
                duplicates: done.duplicates,
                unparked: done.unparked,
            };
            Ok((HttpResponse::Accepted().json(&body), details(&body)))
        })
        .await
}

/// The query of a bulk re-drive. Read as strings so that a bad value answers 400 naming it.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct RetryAllParams {
    /// The projection whose dead letters to re-drive (required).
    #[param(required = true, value_type = String)]
    projection: Option<String>,
    /// `true`: only say what would be re-driven.
    #[param(value_type = Option<bool>)]
    dry_run: Option<String>,
}

/// Re-drives every dead letter of a projection, chain by chain in order, in bounded pages.
#[utoipa::path(
    post,
    path = "/admin/cqrs/dlq/retry",
    tag = "dead letters",
    params(RetryAllParams),
    responses(
        (status = 200, description = "`dry_run=true`: what would be re-driven", body = BulkRedriveView),
        (status = 202, description = "Re-driven; the chains still failing stay", body = BulkRedriveView),
        (status = 400, description = "Missing `projection`, bad `dry_run`", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "A read-only token", body = ErrorBody),
        (status = 404, description = "No such projection", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody),
    ),
    security(("admin_token" = [])),
)]
async fn retry_all(
    caller: MaybeCaller,
    admin: State,
    params: web::Query<RetryAllParams>,
) -> Result<HttpResponse, ApiError> {
    let target = params.projection.clone().unwrap_or_default();
    admin
        .audited(caller, "dlq.retry_all", &target, None, async {
            let name = params
                .projection
                .as_deref()
                .ok_or_else(|| ApiError::validation("projection", "projection is required"))?;
            let dry_run = match params.dry_run.as_deref() {
                None | Some("false") => false,
                Some("true") => true,
                Some(_) => {
                    return Err(ApiError::validation(
                        "dry_run",
                        "dry_run must be true or false",
                    ));
                }
            };
            let module = Admin::module(name)?;
            let bulk = DeadLetters::new(admin.redis.clone(), (module.projection)())
                .redrive_all(dry_run)
                .await?;
            let body = BulkRedriveView {
                dry_run: bulk.dry_run,
                entries: bulk.entries,
                chains: bulk.aggregates,
                applied: bulk.done.applied,
                duplicates: bulk.done.duplicates,
                unparked: bulk.done.unparked,
                still_failing: bulk.still_failing,
                failures: bulk.failures,
            };
            let response = if dry_run {
                HttpResponse::Ok().json(&body)
            } else {
                HttpResponse::Accepted().json(&body)
            };
            Ok((response, details(&body)))
        })
        .await
}

/// The query of a discard.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DiscardParams {
    /// Why the event is given up (required, at most 500 characters): kept in the audit log.
    #[param(required = true, value_type = String, min_length = 1, max_length = 500)]
    reason: Option<String>,
}

/// Discards a dead letter for good: the event is kept in the audit entry with the reason,
/// and replays skip it from then on; events parked behind it are applied.
#[utoipa::path(
    delete,
    path = "/admin/cqrs/dlq/{id}",
    tag = "dead letters",
    params(("id" = String, Path, description = "`<projection>:<entry id>`, as listed"), DiscardParams),
    responses(
        (status = 200, description = "Discarded", body = DiscardView),
        (status = 400, description = "No `reason`, or a bad `id`", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "A read-only token", body = ErrorBody),
        (status = 404, description = "No such dead letter or projection", body = ErrorBody),
        (status = 409, description = "It is parked behind another: discard or retry that one", body = ErrorBody),
        (status = 503, description = "PostgreSQL or Redis is unavailable", body = ErrorBody),
    ),
    security(("admin_token" = [])),
)]
async fn discard(
    caller: MaybeCaller,
    admin: State,
    id: web::Path<String>,
    params: web::Query<DiscardParams>,
) -> Result<HttpResponse, ApiError> {
    let reason = params
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty());
    let actor = caller
        .as_ref()
        .map_or_else(|_| "?".to_owned(), |c| c.actor.clone());
    admin
        .audited(caller, "dlq.discard", &id, reason, async {
            let reason = reason.ok_or_else(|| {
                ApiError::validation("reason", "say why the event is discarded (?reason=…)")
            })?;
            if reason.chars().count() > 500 {
                return Err(ApiError::validation(
                    "reason",
                    "reason is at most 500 characters",
                ));
            }
            let (module, entry) = dead_letter_id(&id)?;
            let letters = DeadLetters::new(admin.redis.clone(), (module.projection)());
            let letter = letters.get(entry).await?.ok_or(ApiError::NotFound)?;
            // The discarded event is kept in the audit entry (it leaves Redis for good), and
            // recorded so that rebuilds and repairs skip it instead of dead-lettering it anew.
            let event = DeadLetterView::new(module.spec.projection, &letter);
            if let (Ok(envelope), "") = (
                events::EventEnvelope::from_json(letter.field("event").as_bytes()),
                letter.field("parked_behind"),
            ) {
                ControlStore::new(admin.pg.clone())
                    .record_discard(
                        module.spec.projection,
                        envelope.event_id,
                        (envelope.aggregate_id, envelope.aggregate_version),
                        &actor,
                        reason,
                    )
                    .await?;
            }
            let done = letters.discard(entry).await.map_err(dead_letter_error)?;
            let body = DiscardView {
                discarded: done.discarded,
                applied: done.applied,
                unparked: done.unparked,
            };
            let details = serde_json::json!({"result": details(&body), "dead_letter": event});
            Ok((HttpResponse::Ok().json(&body), details))
        })
        .await
}

/// The outbox: rows waiting to be published, per partition, and who holds each partition.
#[utoipa::path(
    get,
    path = "/admin/cqrs/outbox/stats",
    tag = "pipeline",
    responses(
        (status = 200, description = "The outbox", body = OutboxStatsView),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 503, description = "PostgreSQL is unavailable", body = ErrorBody),
    ),
    security(("admin_token" = [])),
)]
async fn outbox_stats(_: Caller, admin: State) -> Result<HttpResponse, ApiError> {
    let stats = outbox::stats::outbox_stats(&admin.pg, admin.partitions).await?;
    Ok(HttpResponse::Ok().json(OutboxStatsView {
        pending_count: stats.pending_count,
        oldest_pending_age_seconds: stats.oldest_pending_age_seconds,
        live_relays: stats.live_relays,
        partitions: stats
            .partitions
            .into_iter()
            .map(|p| PartitionView {
                partition: p.partition,
                pending: p.pending,
                oldest_pending_age_seconds: p.oldest_pending_age_seconds,
                owner: p.owner,
            })
            .collect(),
    }))
}

/// Every partition stream of every module, with its consumer groups.
#[utoipa::path(
    get,
    path = "/admin/cqrs/streams",
    tag = "pipeline",
    responses(
        (status = 200, description = "The streams", body = Vec<StreamView>),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody),
    ),
    security(("admin_token" = [])),
)]
async fn list_streams(_: Caller, admin: State) -> Result<HttpResponse, ApiError> {
    let routing = admin.redis.keys.routing(admin.partitions);
    let mut conn = admin
        .redis
        .commands
        .get()
        .await
        .map_err(streams::StreamError::from)?;
    let mut out = Vec::new();
    for spec in modules::specs() {
        for stream in routing.streams(spec.name) {
            let summary = streams::info::summary(&mut conn, &stream).await?;
            let groups = streams::consumer::groups(&mut conn, &stream).await?;
            let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
            out.push(StreamView {
                stream,
                module: spec.name.to_owned(),
                length: summary.length,
                first_id: summary.first_id,
                last_id: summary.last_id,
                groups: groups
                    .into_iter()
                    .map(|g| GroupView {
                        name: g.name,
                        consumers: count(g.consumers),
                        pending: count(g.pending),
                        lag: g.lag.map(count),
                        last_delivered_id: g.last_delivered_id,
                    })
                    .collect(),
            });
        }
    }
    Ok(HttpResponse::Ok().json(out))
}

/// The query of the audit log.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditParams {
    /// Page size, 1–100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// The previous page's `next_cursor`.
    cursor: Option<String>,
}

/// Every mutating call, refused ones included, newest first.
#[utoipa::path(
    get,
    path = "/admin/cqrs/audit",
    tag = "audit",
    params(AuditParams),
    responses(
        (status = 200, description = "A page", body = AuditPage),
        (status = 400, description = "Bad `limit` or `cursor`", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 503, description = "PostgreSQL is unavailable", body = ErrorBody),
    ),
    security(("admin_token" = [])),
)]
async fn list_audit(
    _: Caller,
    admin: State,
    params: web::Query<AuditParams>,
) -> Result<HttpResponse, ApiError> {
    let limit = limit(params.limit.as_deref())?;
    let before = params
        .cursor
        .as_deref()
        .map(|c| {
            URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(bad_cursor)
        })
        .transpose()?;
    let mut entries = AuditStore::new(admin.pg.clone())
        .list(before, i64::try_from(limit + 1).unwrap_or(101))
        .await?;
    let next_cursor = (entries.len() > limit).then(|| {
        entries.truncate(limit);
        URL_SAFE_NO_PAD.encode(entries[limit - 1].id.to_string())
    });
    let items: Vec<AuditView> = entries.iter().map(AuditView::from).collect();
    Ok(HttpResponse::Ok().json(AuditPage { items, next_cursor }))
}
