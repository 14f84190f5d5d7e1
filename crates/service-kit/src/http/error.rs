//! The error body and status codes of http-api.md: the one place where errors become HTTP.
//!
//! ```json
//! {"error": {"code": "validation_failed", "message": "title must not be empty", "details": {"field": "title"}}}
//! ```
//! A 5xx body never carries internals; the log gets the whole cause chain.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use outbox::OutboxError;
use serde::Serialize;
use serde_json::{Value, json};
use streams::StreamError;

/// The body of every error answer; also its schema in the OpenAPI documents, so that every
/// documented error status points at this one shape.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, for programs: `invalid_json`, `validation_failed`, `unauthorized`, `forbidden`,
    /// `not_found`, `method_not_allowed`, `invalid_transition`, `conflict`,
    /// `idempotency_key_reused`, `version_mismatch`, `payload_too_large`,
    /// `unsupported_media_type`, `unavailable` (and `internal` for a bug).
    #[schema(example = "validation_failed")]
    pub code: &'static str,
    /// For humans; never internals.
    #[schema(example = "title must not be blank")]
    pub message: String,
    /// Machine-readable context: `field` for a validation failure, `expected_version` and
    /// `current_version` for a version mismatch, `limit_bytes` for a body too large.
    #[schema(value_type = Object)]
    pub details: Value,
}

/// Every error an API answers with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `invalid_json`: the body is not JSON.
    #[error("{0}")]
    InvalidJson(String),
    /// 400 `validation_failed`: a field, path segment, header or query parameter is invalid.
    #[error("{message}")]
    Validation {
        /// What is wrong, for humans.
        message: String,
        /// The offending field, when there is one.
        field: Option<String>,
    },
    /// 401 `unauthorized`.
    #[error("{0}")]
    Unauthorized(String),
    /// 403 `forbidden`.
    #[error("{0}")]
    Forbidden(String),
    /// 404 `not_found`.
    #[error("resource not found")]
    NotFound,
    /// 405 for a method the resource does not support.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409 `invalid_transition`.
    #[error("{0}")]
    InvalidTransition(String),
    /// 409 `conflict`.
    #[error("{0}")]
    Conflict(String),
    /// 409 `conflict` with details, e.g. the id of the operation already running.
    #[error("{message}")]
    ConflictWith {
        /// What conflicts, for humans.
        message: String,
        /// What a client needs to act on it.
        details: Value,
    },
    /// 409 `idempotency_key_reused`.
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    /// 412 `version_mismatch`.
    #[error("If-Match expected version {expected} but the current version is {current}")]
    VersionMismatch {
        /// What the client sent.
        expected: i64,
        /// What the aggregate is at.
        current: i64,
    },
    /// 413 `payload_too_large`.
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// 415 `unsupported_media_type`.
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// 503 `unavailable`, with `Retry-After`.
    #[error("a dependency is unavailable; retry later")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// 500: a bug. Logged, never shown.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// 400 `validation_failed` about `field`.
    #[must_use]
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        Self::Validation {
            message: message.into(),
            field: Some(field.to_owned()),
        }
    }

    /// The stable `code` of the body.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::Validation { .. } => "validation_failed",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::InvalidTransition(_) => "invalid_transition",
            Self::Conflict(_) | Self::ConflictWith { .. } => "conflict",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::VersionMismatch { .. } => "version_mismatch",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    fn details(&self) -> Value {
        match self {
            Self::Validation { field: Some(f), .. } => json!({ "field": f }),
            Self::VersionMismatch { expected, current } => {
                json!({ "expected_version": expected, "current_version": current })
            }
            Self::PayloadTooLarge { limit } => json!({ "limit_bytes": limit }),
            Self::ConflictWith { details, .. } => details.clone(),
            _ => json!({}),
        }
    }

    /// The body of this error.
    #[must_use]
    pub fn error_body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
                details: self.details(),
            },
        }
    }

    /// The JSON body of this error. Through a [`Value`], whose keys are sorted: the bytes every
    /// client has seen so far.
    #[must_use]
    pub fn body(&self) -> Value {
        // `json!` of a struct of strings and a `Value` cannot fail (only non-string map keys
        // can).
        json!(self.error_body())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidJson(_) | Self::Validation { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::InvalidTransition(_)
            | Self::Conflict(_)
            | Self::ConflictWith { .. }
            | Self::IdempotencyKeyReused => StatusCode::CONFLICT,
            Self::VersionMismatch { .. } => StatusCode::PRECONDITION_FAILED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::Unavailable(e) => {
                tracing::warn!(error = %resilience::error_chain(e.as_ref()), "answering 503");
            }
            Self::Internal(e) => {
                tracing::error!(error = %resilience::error_chain(e.as_ref()), "answering 500");
            }
            _ => {}
        }
        let mut response = HttpResponse::build(self.status_code()).json(self.body());
        if matches!(self, Self::Unavailable(_)) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<OutboxError> for ApiError {
    fn from(e: OutboxError) -> Self {
        match e {
            OutboxError::Unavailable(_) | OutboxError::Timeout(_) => Self::Unavailable(Box::new(e)),
            OutboxError::Conflict(_) => {
                Self::Conflict("a concurrent request changed this resource; retry".into())
            }
            other => Self::Internal(Box::new(other)),
        }
    }
}

impl From<StreamError> for ApiError {
    fn from(e: StreamError) -> Self {
        if e.is_unavailable() {
            Self::Unavailable(Box::new(e))
        } else {
            Self::Internal(Box::new(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_documented_status() {
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (ApiError::InvalidJson("x".into()), 400, "invalid_json"),
            (
                ApiError::validation("title", "blank"),
                400,
                "validation_failed",
            ),
            (ApiError::Unauthorized("x".into()), 401, "unauthorized"),
            (ApiError::Forbidden("x".into()), 403, "forbidden"),
            (ApiError::NotFound, 404, "not_found"),
            (
                ApiError::InvalidTransition("x".into()),
                409,
                "invalid_transition",
            ),
            (ApiError::Conflict("x".into()), 409, "conflict"),
            (
                ApiError::IdempotencyKeyReused,
                409,
                "idempotency_key_reused",
            ),
            (
                ApiError::VersionMismatch {
                    expected: 1,
                    current: 2,
                },
                412,
                "version_mismatch",
            ),
            (
                ApiError::PayloadTooLarge { limit: 10 },
                413,
                "payload_too_large",
            ),
            (
                ApiError::UnsupportedMediaType,
                415,
                "unsupported_media_type",
            ),
            (
                ApiError::Unavailable(Box::new(std::io::Error::other("down"))),
                503,
                "unavailable",
            ),
        ];
        for (e, status, code) in cases {
            assert_eq!(e.status_code().as_u16(), status, "{code}");
            assert_eq!(e.body()["error"]["code"], code);
        }
    }

    #[test]
    fn internal_errors_hide_their_cause_and_503_says_when_to_retry() {
        let e = ApiError::Internal(Box::new(std::io::Error::other("SELECT secret FROM x")));
        let body = e.body().to_string();
        assert!(!body.contains("SELECT"), "{body}");
        let r = ApiError::Unavailable(Box::new(std::io::Error::other("down"))).error_response();
        assert_eq!(
            r.headers().get("retry-after").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
    }

    #[test]
    fn validation_details_name_the_field() {
        assert_eq!(
            ApiError::validation("title", "blank").body()["error"]["details"]["field"],
            "title"
        );
    }
}
