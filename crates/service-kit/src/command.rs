//! The command runner: the one place where an HTTP command becomes a PostgreSQL transaction.
//!
//! For every module and every command it does the same thing, in this order, inside one
//! transaction: honour `Idempotency-Key` (replay or refuse), run the module's logic (which locks
//! or inserts its aggregate row and returns its events), append the events to `event_store` and
//! `outbox` with a NOTIFY, store the answer under the idempotency key, commit. Any error rolls
//! everything back, so a rejected command leaves no row, no event and no outbox entry.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{FromRequest, HttpRequest, HttpResponse, dev::Payload};
use events::{ConsistencyToken, EventContext, EventEnvelope};
use futures::future::{Ready, ready};
use outbox::idempotency::{self, Claim};
use outbox::{CommandTx, Pool};
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::http::ApiError;
use crate::http::middleware::RequestId;

/// What a module's command logic returns on success.
#[derive(Debug, Clone)]
pub struct CommandOutcome {
    /// The module, for the consistency token.
    pub module: &'static str,
    /// The aggregate the command acted on.
    pub aggregate_id: Uuid,
    /// The aggregate's version after the command (unchanged when nothing changed).
    pub version: i64,
    /// The events to append; empty when the command changed nothing.
    pub events: Vec<EventEnvelope>,
    /// `Some(location)` for a creation: answered 201 with a `Location` header.
    pub created: Option<String>,
    /// Extra fields of the answer body (e.g. `mastery_score`).
    pub extra: Map<String, Value>,
}

impl CommandOutcome {
    /// An outcome with the given events; `changed` is derived from them.
    #[must_use]
    pub fn new(
        module: &'static str,
        aggregate_id: Uuid,
        version: i64,
        events: Vec<EventEnvelope>,
    ) -> Self {
        Self {
            module,
            aggregate_id,
            version,
            events,
            created: None,
            extra: Map::new(),
        }
    }

    /// Marks the outcome as a creation at `location`.
    #[must_use]
    pub fn created_at(mut self, location: String) -> Self {
        self.created = Some(location);
        self
    }

    /// The answer's body.
    #[must_use]
    pub fn accepted(&self) -> CommandAccepted {
        let token = ConsistencyToken {
            module: self.module.to_owned(),
            aggregate_id: self.aggregate_id,
            version: self.version,
        };
        CommandAccepted {
            id: self.aggregate_id,
            version: self.version,
            event_ids: self.events.iter().map(|e| e.event_id).collect(),
            consistency_token: token.encode(),
            changed: !self.events.is_empty(),
            extra: self.extra.clone(),
        }
    }

    fn body(&self) -> Value {
        // Through a `Value` (sorted keys, and what the idempotency store keeps); `json!` of
        // these fields cannot fail.
        json!(self.accepted())
    }
}

/// The answer to every successful command (http-api.md), and its schema in the document.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CommandAccepted {
    /// The aggregate the command acted on.
    pub id: Uuid,
    /// The aggregate's version after the command: send it back in `If-Match`.
    pub version: i64,
    /// The events the command wrote, in order; empty when it changed nothing.
    pub event_ids: Vec<Uuid>,
    /// Send it back to query-api as `X-Consistency-Token` to read this write.
    pub consistency_token: String,
    /// `false` when the command changed nothing (and wrote no event).
    #[schema(required = false)]
    pub changed: bool,
    /// Module-specific fields (e.g. `mastery_score`).
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Map<String, Value>,
}

/// The request headers every command reads ([`CommandMeta`]), for the document.
impl utoipa::IntoParams for CommandMeta {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        vec![crate::http::api::optional_parameter(
            "Idempotency-Key",
            utoipa::openapi::path::ParameterIn::Header,
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::Type::String)
                .min_length(Some(1))
                .max_length(Some(255))
                .pattern(Some("^[!-~]+$")),
            "A retry with the same key, user and body within 24 h gets the first answer again \
             (same status and body, `Idempotency-Replayed: true`) and writes nothing; the same \
             key with another body answers 409 `idempotency_key_reused`",
        )]
    }
}

/// The `If-Match` header of commands on an existing aggregate (read by [`if_match`]), for the
/// document: list it in an operation's `params(...)`.
#[derive(Debug)]
pub struct IfMatch;

impl utoipa::IntoParams for IfMatch {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        vec![crate::http::api::optional_parameter(
            "If-Match",
            utoipa::openapi::path::ParameterIn::Header,
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::Type::String)
                // Versions from 1 up to 18 digits (an i64 holds 18 of any value).
                .pattern(Some(r#"^(\*|(W/)?"?0*[1-9][0-9]{0,17}"?)$"#)),
            "The version the command expects the aggregate at, like `\"3\"` (`*`: any); \
             another version answers 412 `version_mismatch`",
        )]
    }
}

/// The request-level facts of a command: who, which request, which idempotency key. Extract it
/// in a handler; it validates the `Idempotency-Key` header (≤ 255 visible characters).
#[derive(Debug, Clone)]
pub struct CommandMeta {
    request_id: String,
    idempotency_key: Option<String>,
    method: String,
    path: String,
}

impl FromRequest for CommandMeta {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(command_meta(req))
    }
}

fn command_meta(req: &HttpRequest) -> Result<CommandMeta, ApiError> {
    let request_id = req
        .extensions_ref()
        .get::<RequestId>()
        .map_or_else(|| Uuid::now_v7().to_string(), |r| r.0.clone());
    let idempotency_key = match req.headers().get("idempotency-key") {
        None => None,
        Some(v) => {
            let key = v.to_str().ok().map(str::trim).unwrap_or_default();
            if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ApiError::validation(
                    "Idempotency-Key",
                    "Idempotency-Key must be 1 to 255 visible ASCII characters",
                ));
            }
            Some(key.to_owned())
        }
    };
    Ok(CommandMeta {
        request_id,
        idempotency_key,
        method: req.method().to_string(),
        path: req.path().to_owned(),
    })
}

/// Small extension so `command_meta` reads like the rest of the code.
trait ExtensionsRef {
    fn extensions_ref(&self) -> std::cell::Ref<'_, actix_web::dev::Extensions>;
}

impl ExtensionsRef for HttpRequest {
    fn extensions_ref(&self) -> std::cell::Ref<'_, actix_web::dev::Extensions> {
        actix_web::HttpMessage::extensions(self)
    }
}

/// Parses `If-Match: "<version>"` (quotes optional, `W/` tolerated, `*` means any).
///
/// # Errors
/// 400 `validation_failed` for anything else.
pub fn if_match(req: &HttpRequest) -> Result<Option<i64>, ApiError> {
    let Some(value) = req.headers().get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text == "*" {
        return Ok(None);
    }
    let unquoted = text.trim_start_matches("W/").trim_matches('"');
    unquoted
        .parse::<i64>()
        .ok()
        .filter(|v| *v >= 1)
        .map(Some)
        .ok_or_else(|| ApiError::validation("If-Match", "If-Match must be a version like \"3\""))
}

/// A waker that tells the relays of `redis`'s deployment about new outbox rows with a Redis
/// `PUBLISH` ([`streams::wake`]: a few µs of Redis instead of a PostgreSQL transaction per
/// burst of commits), on this thread's multiplexed connection. Start it on the thread whose
/// requests use it (its task runs on the current tokio runtime).
#[must_use]
pub fn redis_waker(redis: streams::RedisPools) -> outbox::wake::Waker {
    outbox::wake::Waker::start_with(move |partitions| {
        let redis = redis.clone();
        async move {
            let mut conn = redis.shared.get()?;
            streams::wake::publish(&mut conn, &redis.keys, &partitions).await
        }
    })
}

/// Runs commands in their transaction.
#[derive(Debug, Clone)]
pub struct CommandRunner {
    pool: Pool,
    partitions: u32,
    source: &'static str,
    waker: outbox::wake::Waker,
}

impl CommandRunner {
    /// A runner writing through `pool`, routing events over `partitions` partitions, stamping
    /// events with `source`, and waking the relay through `waker` after each commit that
    /// wrote events ([`redis_waker`], or [`outbox::wake::Waker::start`] without Redis).
    #[must_use]
    pub fn new(
        pool: Pool,
        partitions: u32,
        source: &'static str,
        waker: outbox::wake::Waker,
    ) -> Self {
        Self {
            waker,
            pool,
            partitions,
            source,
        }
    }

    /// The pool commands run on.
    #[must_use]
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Runs `logic` for `user` in one transaction and answers the command.
    ///
    /// `body` is the raw request body (empty for body-less commands); with the method and path
    /// it fingerprints the request for `Idempotency-Key`.
    ///
    /// # Errors
    /// The logic's error, or 503 / 500 from PostgreSQL. Nothing is committed on error.
    pub async fn run<E>(
        &self,
        meta: &CommandMeta,
        user: Uuid,
        body: &[u8],
        logic: impl AsyncFnOnce(&CommandTx<'_>, &EventContext) -> Result<CommandOutcome, E>,
    ) -> Result<HttpResponse, ApiError>
    where
        ApiError: From<E>,
    {
        let ctx = EventContext::new(Some(user), Some(meta.request_id.clone()), self.source);
        let client = self.pool.get().await.map_err(outbox::OutboxError::from)?;
        // Begun with its first statement; on any early return it is dropped, which rolls it
        // back without waiting.
        let tx = CommandTx::new(&client);
        let fingerprint = meta
            .idempotency_key
            .as_ref()
            .map(|_| fingerprint(meta, body));
        if let (Some(key), Some(fp)) = (&meta.idempotency_key, &fingerprint) {
            match idempotency::claim(&tx, user, key, fp).await? {
                Claim::Fresh => {}
                Claim::KeyReused => return Err(ApiError::IdempotencyKeyReused),
                Claim::Replay { status, body } => return Ok(replay(status, body)),
            }
        }
        let outcome = logic(&tx, &ctx).await?;
        outbox::append_events(&tx, &outcome.events, self.partitions).await?;
        let body = outcome.body();
        let status = if outcome.created.is_some() {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        if let (Some(key), Some(fp)) = (&meta.idempotency_key, &fingerprint) {
            let stored = json!({"body": body, "location": outcome.created});
            idempotency::store(&tx, user, key, fp, status.as_u16(), &stored).await?;
        }
        tx.commit().await?;
        if !outcome.events.is_empty() {
            self.waker.wake(outbox::wake::partitions_of(
                &outcome.events,
                self.partitions,
            ));
            tracing::info!(
                aggregate_id = %outcome.aggregate_id,
                version = outcome.version,
                events = outcome.events.len(),
                event_type = %outcome.events[0].event_type,
                "command committed"
            );
        }
        Ok(respond(status, body, outcome.created.as_deref(), false))
    }
}

fn fingerprint(meta: &CommandMeta, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(meta.method.as_bytes());
    h.update(b" ");
    h.update(meta.path.as_bytes());
    h.update(b"\n");
    h.update(body);
    hex::encode(h.finalize())
}

fn replay(status: u16, stored: Value) -> HttpResponse {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let location = stored
        .get("location")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let body = stored.get("body").cloned().unwrap_or(Value::Null);
    respond(status, body, location.as_deref(), true)
}

fn respond(
    status: StatusCode,
    body: Value,
    location: Option<&str>,
    replayed: bool,
) -> HttpResponse {
    let mut builder = HttpResponse::build(status);
    if let Some(location) = location.and_then(|l| HeaderValue::from_str(l).ok()) {
        builder.insert_header((header::LOCATION, location));
    }
    if replayed {
        builder.insert_header(("idempotency-replayed", "true"));
    }
    builder.json(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn if_match_accepts_quoted_weak_and_star() {
        let get = |v: &str| {
            if_match(
                &TestRequest::default()
                    .insert_header(("If-Match", v))
                    .to_http_request(),
            )
        };
        assert_eq!(get("\"3\"").ok(), Some(Some(3)));
        assert_eq!(get("3").ok(), Some(Some(3)));
        assert_eq!(get("W/\"7\"").ok(), Some(Some(7)));
        assert_eq!(get("*").ok(), Some(None));
        assert!(get("\"abc\"").is_err());
        assert!(get("0").is_err());
        assert_eq!(
            if_match(&TestRequest::default().to_http_request()).ok(),
            Some(None)
        );
    }

    #[test]
    fn idempotency_keys_are_validated() {
        let meta = |v: &str| {
            command_meta(
                &TestRequest::default()
                    .insert_header(("Idempotency-Key", v))
                    .to_http_request(),
            )
        };
        assert!(meta("abc-123").is_ok());
        assert!(meta(&"k".repeat(255)).is_ok());
        assert!(meta(&"k".repeat(256)).is_err());
        assert!(meta("has space").is_err());
    }

    #[test]
    fn the_answer_carries_a_token_for_the_written_version() {
        let id = Uuid::now_v7();
        let body = CommandOutcome::new("task", id, 4, vec![]).body();
        assert_eq!(body["changed"], false);
        let token = ConsistencyToken::decode(body["consistency_token"].as_str().expect("str"))
            .expect("token");
        assert_eq!(
            (token.module.as_str(), token.aggregate_id, token.version),
            ("task", id, 4)
        );
    }
}
