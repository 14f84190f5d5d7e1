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
use serde_json::{Value, json};
use service_kit::http::extract::{parse_uuid, query_config};
use service_kit::http::{ApiError, resource};
use streams::dlq::DeadLetterKeys;

use crate::admin::Admin;
use crate::auth::Caller;
use crate::health;
use crate::status::projection_status;
use crate::views::{AuditView, DeadLetterView, OperationView, SnapshotView};

type State = web::Data<Admin>;
/// A caller, or why there is none: mutating handlers audit both.
type MaybeCaller = Result<Caller, ApiError>;

/// Registers the routes. App data: `web::Data<Admin>`, `web::Data<Tokens>`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    let r = |path| resource(path).app_data(query_config());
    cfg.service(r("/health/cqrs").route(web::get().to(cqrs_health)))
        .service(r("/admin/cqrs/projections").route(web::get().to(list_projections)))
        .service(r("/admin/cqrs/projections/{name}").route(web::get().to(get_projection)))
        .service(r("/admin/cqrs/projections/{name}/pause").route(web::post().to(pause)))
        .service(r("/admin/cqrs/projections/{name}/resume").route(web::post().to(resume)))
        .service(r("/admin/cqrs/projections/{name}/reset").route(web::post().to(reset)))
        .service(r("/admin/cqrs/projections/{name}/rebuild").route(web::post().to(rebuild)))
        .service(r("/admin/cqrs/projections/{name}/snapshot").route(web::post().to(snapshot)))
        .service(r("/admin/cqrs/snapshots/{name}/count").route(web::get().to(snapshot_count)))
        .service(r("/admin/cqrs/operations/{id}").route(web::get().to(get_operation)))
        .service(r("/admin/cqrs/dlq").route(web::get().to(list_dead_letters)))
        .service(r("/admin/cqrs/dlq/stats").route(web::get().to(dead_letter_stats)))
        .service(r("/admin/cqrs/dlq/retry").route(web::post().to(retry_all)))
        .service(r("/admin/cqrs/dlq/{id}/retry").route(web::post().to(retry_one)))
        .service(r("/admin/cqrs/dlq/{id}").route(web::delete().to(discard)))
        .service(r("/admin/cqrs/outbox/stats").route(web::get().to(outbox_stats)))
        .service(r("/admin/cqrs/streams").route(web::get().to(list_streams)))
        .service(r("/admin/cqrs/audit").route(web::get().to(list_audit)));
}

async fn cqrs_health(admin: State) -> HttpResponse {
    let report = health::check(&admin).await;
    if report.status == health::Level::Unhealthy {
        HttpResponse::ServiceUnavailable().json(report)
    } else {
        HttpResponse::Ok().json(report)
    }
}

async fn list_projections(_: Caller, admin: State) -> Result<HttpResponse, ApiError> {
    let mut out = Vec::new();
    for module in modules::ALL {
        out.push(projection_status(&admin, module).await?);
    }
    Ok(HttpResponse::Ok().json(out))
}

async fn get_projection(
    _: Caller,
    admin: State,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let module = Admin::module(&name)?;
    Ok(HttpResponse::Ok().json(projection_status(&admin, module).await?))
}

async fn pause(
    caller: MaybeCaller,
    admin: State,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    set_desired(caller, admin, &name, DesiredState::Paused).await
}

async fn resume(
    caller: MaybeCaller,
    admin: State,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    set_desired(caller, admin, &name, DesiredState::Running).await
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
            let body = json!({"projection": name, "desired_state": state.as_str()});
            Ok((HttpResponse::Accepted().json(&body), body))
        })
        .await
}

async fn reset(
    caller: MaybeCaller,
    admin: State,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    start_operation(caller, &admin, &name, OperationKind::Reset, false).await
}

#[derive(Debug, Deserialize)]
struct RebuildParams {
    from: Option<String>,
}

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
                    let body = json!({"operation_id": op.id.to_string()});
                    let mut details = body.clone();
                    if let Some(s) = snapshot_id {
                        details["snapshot_id"] = json!(s.to_string());
                    }
                    Ok((HttpResponse::Accepted().json(&body), details))
                }
                Started::AlreadyRunning(op) => Err(ApiError::ConflictWith {
                    message: format!(
                        "a {} of {name} is already running: operation {}",
                        op.kind.as_str(),
                        op.id
                    ),
                    details: json!({"operation_id": op.id.to_string()}),
                }),
            }
        })
        .await
}

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
            let details = serde_json::to_value(&view).unwrap_or_default();
            Ok((HttpResponse::Created().json(view), details))
        })
        .await
}

async fn snapshot_count(
    _: Caller,
    admin: State,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Admin::module(&name)?;
    let count = SnapshotStore::new(admin.pg.clone()).count(&name).await?;
    Ok(HttpResponse::Ok().json(json!({"count": count})))
}

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

#[derive(Debug, Deserialize)]
struct ListParams {
    projection: Option<String>,
    limit: Option<String>,
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
    let mut next = None;
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
                next = Some(URL_SAFE_NO_PAD.encode(format!("{}\n{last}", names[at])));
            }
            break;
        }
        at += 1;
        after = None;
    }
    Ok(HttpResponse::Ok().json(json!({"items": items, "next_cursor": next})))
}

async fn dead_letter_stats(_: Caller, admin: State) -> Result<HttpResponse, ApiError> {
    let mut total = 0u64;
    let mut by_projection = serde_json::Map::new();
    let mut by_error_type: std::collections::BTreeMap<String, u64> = Default::default();
    let mut oldest = 0f64;
    for module in modules::ALL {
        let stats = DeadLetters::new(admin.redis.clone(), (module.projection)())
            .stats()
            .await?;
        total += stats.total;
        by_projection.insert(module.spec.projection.to_owned(), json!(stats.total));
        for (t, n) in stats.by_error_type {
            *by_error_type.entry(t).or_default() += n;
        }
        oldest = oldest.max(stats.oldest_age_seconds);
    }
    Ok(HttpResponse::Ok().json(json!({
        "total": total,
        "by_projection": by_projection,
        "by_error_type": by_error_type,
        "oldest_age_seconds": oldest,
    })))
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
            let body = json!({
                "applied": done.applied,
                "duplicates": done.duplicates,
                "unparked": done.unparked,
            });
            Ok((HttpResponse::Accepted().json(&body), body))
        })
        .await
}

#[derive(Debug, Deserialize)]
struct RetryAllParams {
    projection: Option<String>,
    dry_run: Option<String>,
}

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
            let body = json!({
                "dry_run": bulk.dry_run,
                "entries": bulk.entries,
                "chains": bulk.aggregates,
                "applied": bulk.done.applied,
                "duplicates": bulk.done.duplicates,
                "unparked": bulk.done.unparked,
                "still_failing": bulk.still_failing,
                "failures": bulk.failures,
            });
            let response = if dry_run {
                HttpResponse::Ok().json(&body)
            } else {
                HttpResponse::Accepted().json(&body)
            };
            Ok((response, body))
        })
        .await
}

#[derive(Debug, Deserialize)]
struct DiscardParams {
    reason: Option<String>,
}

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
            let body = json!({
                "discarded": done.discarded,
                "applied": done.applied,
                "unparked": done.unparked,
            });
            let details = json!({"result": body, "dead_letter": event});
            Ok((HttpResponse::Ok().json(&body), details))
        })
        .await
}

async fn outbox_stats(_: Caller, admin: State) -> Result<HttpResponse, ApiError> {
    let stats = outbox::stats::outbox_stats(&admin.pg, admin.partitions).await?;
    Ok(HttpResponse::Ok().json(json!({
        "pending_count": stats.pending_count,
        "oldest_pending_age_seconds": stats.oldest_pending_age_seconds,
        "live_relays": stats.live_relays,
        "partitions": stats.partitions.iter().map(|p| json!({
            "partition": p.partition,
            "pending": p.pending,
            "oldest_pending_age_seconds": p.oldest_pending_age_seconds,
            "owner": p.owner,
        })).collect::<Vec<_>>(),
    })))
}

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
            out.push(json!({
                "stream": stream,
                "module": spec.name,
                "length": summary.length,
                "first_id": summary.first_id,
                "last_id": summary.last_id,
                "groups": groups.iter().map(|g| json!({
                    "name": g.name,
                    "consumers": g.consumers,
                    "pending": g.pending,
                    "lag": g.lag,
                    "last_delivered_id": g.last_delivered_id,
                })).collect::<Vec<_>>(),
            }));
        }
    }
    Ok(HttpResponse::Ok().json(out))
}

#[derive(Debug, Deserialize)]
struct AuditParams {
    limit: Option<String>,
    cursor: Option<String>,
}

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
    let next = (entries.len() > limit).then(|| {
        entries.truncate(limit);
        URL_SAFE_NO_PAD.encode(entries[limit - 1].id.to_string())
    });
    let items: Vec<AuditView> = entries.iter().map(AuditView::from).collect();
    Ok(HttpResponse::Ok().json(json!({"items": items, "next_cursor": next})))
}
