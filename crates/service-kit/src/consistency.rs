//! Read-your-writes on the query side: what a query asked to wait for (a command's
//! consistency token, for at most `wait_ms`), and how its answer says whether it waited long
//! enough. The wait itself is [`crate::read_side::ReadSide::read`].

use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, HttpResponse};
use events::ConsistencyToken;
use futures::future::{Ready, ready};

use crate::http::ApiError;

/// The request header carrying the token.
pub const TOKEN_HEADER: &str = "x-consistency-token";
/// The response header saying whether the answer reflects the token's write.
pub const FRESHNESS_HEADER: &str = "x-consistency";
/// Default and maximum wait (http-api.md: `wait_ms` up to 5000, default 2000).
pub const DEFAULT_WAIT: Duration = Duration::from_millis(2000);
/// Upper bound of `wait_ms`.
pub const MAX_WAIT_MS: u64 = 5000;

/// What a query asked to wait for.
#[derive(Debug, Clone)]
pub struct ConsistencyWait {
    token: Option<ConsistencyToken>,
    wait: Duration,
}

impl FromRequest for ConsistencyWait {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(parse(req))
    }
}

fn parse(req: &HttpRequest) -> Result<ConsistencyWait, ApiError> {
    let token = req
        .headers()
        .get(TOKEN_HEADER)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| ConsistencyToken::decode(s.trim()).ok())
                .ok_or_else(|| {
                    ApiError::validation(
                        "X-Consistency-Token",
                        "X-Consistency-Token is not a token this API issued",
                    )
                })
        })
        .transpose()?;
    let wait_ms = req
        .query_string()
        .split('&')
        .find_map(|kv| kv.strip_prefix("wait_ms="))
        .map(|v| {
            v.parse::<u64>()
                .ok()
                .filter(|ms| *ms <= MAX_WAIT_MS)
                .ok_or_else(|| {
                    ApiError::validation("wait_ms", format!("wait_ms must be 0 to {MAX_WAIT_MS}"))
                })
        })
        .transpose()?;
    Ok(ConsistencyWait {
        token,
        wait: wait_ms.map_or(DEFAULT_WAIT, Duration::from_millis),
    })
}

impl ConsistencyWait {
    /// The token sent, if any.
    #[must_use]
    pub fn token(&self) -> Option<&ConsistencyToken> {
        self.token.as_ref()
    }

    /// How long to wait at most.
    #[must_use]
    pub fn wait(&self) -> Duration {
        self.wait
    }
}

/// The request parts a query reads through [`ConsistencyWait`], for the document.
impl utoipa::IntoParams for ConsistencyWait {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::{ObjectBuilder, Type};
        vec![
            crate::http::api::optional_parameter(
                "X-Consistency-Token",
                ParameterIn::Header,
                ObjectBuilder::new().schema_type(Type::String),
                "A command's `consistency_token`: wait (up to `wait_ms`) until that write is \
                 visible; the answer then says `X-Consistency: fresh` or `stale`",
            ),
            crate::http::api::optional_parameter(
                "wait_ms",
                ParameterIn::Query,
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0))
                    .maximum(Some(MAX_WAIT_MS as f64)),
                "How long to wait for `X-Consistency-Token`'s write, in ms (default 2000)",
            ),
        ]
    }
}

/// Whether an answer reflects the awaited write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// No token was sent.
    NotAsked,
    /// The write is visible.
    Fresh,
    /// The wait ran out first.
    Stale,
}

/// Adds `X-Consistency: fresh|stale` when a token was sent.
pub fn mark(response: &mut HttpResponse, freshness: Freshness) {
    let value = match freshness {
        Freshness::NotAsked => return,
        Freshness::Fresh => "fresh",
        Freshness::Stale => "stale",
    };
    response.headers_mut().insert(
        actix_web::http::header::HeaderName::from_static(FRESHNESS_HEADER),
        actix_web::http::header::HeaderValue::from_static(value),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn bad_tokens_and_waits_are_400() {
        let r = TestRequest::default()
            .insert_header((TOKEN_HEADER, "nope"))
            .to_http_request();
        assert!(matches!(parse(&r), Err(ApiError::Validation { .. })));
        let r = TestRequest::with_uri("/x?wait_ms=5001").to_http_request();
        assert!(matches!(parse(&r), Err(ApiError::Validation { .. })));
        let r = TestRequest::with_uri("/x?wait_ms=abc").to_http_request();
        assert!(matches!(parse(&r), Err(ApiError::Validation { .. })));
        let ok =
            parse(&TestRequest::with_uri("/x?limit=3&wait_ms=100").to_http_request()).expect("ok");
        assert_eq!(
            (ok.wait, ok.token.is_none()),
            (Duration::from_millis(100), true)
        );
        let default = parse(&TestRequest::default().to_http_request()).expect("ok");
        assert_eq!(default.wait, DEFAULT_WAIT);
    }
}
