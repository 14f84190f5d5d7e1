//! Request extractors that answer with the error body of http-api.md: JSON bodies (415, 413,
//! 400 with the offending field), path ids and query strings.

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use futures::StreamExt as _;
use futures::future::LocalBoxFuture;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::http::ApiError;

/// Largest accepted request body (http-api.md: over 64 KiB → 413).
pub const BODY_LIMIT: usize = 64 * 1024;

/// A JSON object body, deserialised into `T`, with the raw bytes kept for request fingerprints.
///
/// - `Content-Type` other than `application/json` (or `…+json`) → 415;
/// - a body over [`BODY_LIMIT`] → 413, detected while streaming, before it is all read;
/// - not JSON, or not an object → 400 `invalid_json`;
/// - a wrong, missing or unknown field → 400 `validation_failed` naming the field (types
///   deserialised here should use `#[serde(deny_unknown_fields)]`).
#[derive(Debug)]
pub struct JsonBody<T> {
    /// The parsed body.
    pub value: T,
    /// The bytes as received.
    pub raw: web::Bytes,
}

/// Like [`JsonBody`], but an absent body (no bytes) gives `T::default()`: for commands whose
/// every field is optional.
#[derive(Debug)]
pub struct OptionalJsonBody<T>(pub JsonBody<T>);

fn is_json(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|essence| {
            let essence = essence.trim().to_ascii_lowercase();
            essence == "application/json"
                || (essence.starts_with("application/") && essence.ends_with("+json"))
        })
        .unwrap_or(false)
}

async fn read_limited(req: &HttpRequest, payload: &mut Payload) -> Result<web::Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT) {
        return Err(ApiError::PayloadTooLarge { limit: BODY_LIMIT });
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::InvalidJson(format!("cannot read body: {e}")))?;
        if body.len() + chunk.len() > BODY_LIMIT {
            return Err(ApiError::PayloadTooLarge { limit: BODY_LIMIT });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Parses a JSON object into `T`, classifying errors as http-api.md wants them.
///
/// # Errors
/// 400 `invalid_json` or `validation_failed`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde accepts a JSON array for a struct (by position); the contract is an object.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(ApiError::InvalidJson(
            "request body must be a JSON object".into(),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let message = strip_position(&inner.to_string());
                let field = unknown_field(&message)
                    .or_else(|| missing_field(&message, &path))
                    .unwrap_or(path);
                ApiError::Validation {
                    message,
                    field: (!field.is_empty() && field != ".").then_some(field),
                }
            }
            _ => ApiError::InvalidJson(format!("malformed JSON: {inner}")),
        }
    })?;
    // Trailing bytes after the object (`{...} x`) make the body malformed as a whole.
    de.end()
        .map_err(|e| ApiError::InvalidJson(format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// `serde_path_to_error` reports the parent path for an unknown field; the field itself is
/// in the message.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_owned())
}

/// serde names a missing field only in its message ("missing field `name`"), with the path of
/// the object that lacks it: the field is that path plus the name.
fn missing_field(message: &str, path: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    let name = rest.split('`').next()?;
    Some(if path.is_empty() || path == "." {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    })
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let mut payload = payload.take();
        Box::pin(async move {
            let raw = read_limited(&req, &mut payload).await?;
            if !is_json(&req) {
                if raw.is_empty() {
                    return Err(ApiError::InvalidJson("a JSON body is required".into()));
                }
                return Err(ApiError::UnsupportedMediaType);
            }
            let value = parse_json(&raw)?;
            Ok(Self { value, raw })
        })
    }
}

impl<T: DeserializeOwned + Default + 'static> FromRequest for OptionalJsonBody<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let mut payload = payload.take();
        Box::pin(async move {
            let raw = read_limited(&req, &mut payload).await?;
            if raw.iter().all(u8::is_ascii_whitespace) {
                return Ok(Self(JsonBody {
                    value: T::default(),
                    raw: web::Bytes::new(),
                }));
            }
            if !is_json(&req) {
                return Err(ApiError::UnsupportedMediaType);
            }
            let value = parse_json(&raw)?;
            Ok(Self(JsonBody { value, raw }))
        })
    }
}

/// Parses a path segment as a UUID.
///
/// # Errors
/// 400 `validation_failed` naming `field`.
pub fn parse_uuid(raw: &str, field: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::validation(field, format!("{field} must be a UUID")))
}

/// Query-string errors as 400 `validation_failed`; register with
/// `cfg.app_data(query_config())`.
#[must_use]
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, _req| {
        ApiError::Validation {
            message: format!("invalid query string: {err}"),
            field: None,
        }
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        title: String,
        minutes: u16,
    }

    fn err(json: &str) -> (String, Option<String>) {
        let e = parse_json::<Body>(json.as_bytes()).expect_err("must fail");
        let field = e.body()["error"]["details"]["field"]
            .as_str()
            .map(str::to_owned);
        (e.code().to_owned(), field)
    }

    #[test]
    fn errors_are_classified_and_name_the_field() {
        assert_eq!(err("{\"title\": "), ("invalid_json".into(), None));
        assert_eq!(err("not json"), ("invalid_json".into(), None));
        assert_eq!(err("[\"a\", 1]"), ("invalid_json".into(), None));
        assert_eq!(
            err("{\"title\": \"a\", \"minutes\": 1} x"),
            ("invalid_json".into(), None)
        );
        assert_eq!(
            err("{\"title\": 5, \"minutes\": 1}"),
            ("validation_failed".into(), Some("title".into()))
        );
        assert_eq!(
            err("{\"title\": \"a\", \"minutes\": -1}"),
            ("validation_failed".into(), Some("minutes".into()))
        );
        assert_eq!(
            err("{\"title\": \"a\", \"minutes\": 1, \"x\": 1}"),
            ("validation_failed".into(), Some("x".into()))
        );
        assert_eq!(
            err("{\"title\": \"a\"}"),
            ("validation_failed".into(), Some("minutes".into())),
            "a missing required field is named"
        );
    }

    #[test]
    fn a_valid_object_parses() {
        let b: Body = parse_json(b" {\"title\": \"a\", \"minutes\": 3}").expect("parse");
        assert_eq!((b.title.as_str(), b.minutes), ("a", 3));
    }
}
