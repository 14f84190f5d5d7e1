//! Read-your-writes on the query side: a query that carries a command's consistency token
//! waits (bounded) until the projection has applied that write.

use std::time::{Duration, Instant};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, HttpResponse};
use events::ConsistencyToken;
use futures::future::{Ready, ready};
use streams::RedisPools;
use streams::visibility::AppliedWatch;

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

impl ConsistencyWait {
    /// Waits until the token's version is applied in `generation` of its module's read model.
    /// It wakes when the projector announces the write on `watch`, checking the applied-version
    /// hash then (an announcement is only a hint) and every 50 ms as a safety net; while the
    /// subscription is down it polls instead: 1 ms at first, growing by half up to 5 ms.
    ///
    /// # Errors
    /// 503 when Redis is down.
    pub async fn settle(
        &self,
        pools: &RedisPools,
        watch: &AppliedWatch,
        generation: i64,
    ) -> Result<Freshness, ApiError> {
        Ok(self.settle_then(pools, watch, generation, None).await?.0)
    }

    /// [`ConsistencyWait::settle`], then the answer's own read: `read` rides in the same round
    /// trip as every version check, so a fresh answer costs no round trip of its own. Returns
    /// `read`'s reply from the check that ended the wait (fresh, or the last one when stale).
    ///
    /// # Errors
    /// As [`ConsistencyWait::settle`]. An error reply to `read` may come back as the value
    /// (it shares a pipeline with the check), so the caller's parser must refuse it.
    pub async fn settle_and_read(
        &self,
        pools: &RedisPools,
        watch: &AppliedWatch,
        generation: i64,
        read: streams::redis::Cmd,
    ) -> Result<(Freshness, streams::redis::Value), ApiError> {
        let (freshness, reply) = self
            .settle_then(pools, watch, generation, Some(read))
            .await?;
        let reply =
            reply.ok_or_else(|| streams::StreamError::Malformed("no reply to the read".into()))?;
        Ok((freshness, reply))
    }

    async fn settle_then(
        &self,
        pools: &RedisPools,
        watch: &AppliedWatch,
        generation: i64,
        read: Option<streams::redis::Cmd>,
    ) -> Result<(Freshness, Option<streams::redis::Value>), ApiError> {
        let Some(token) = &self.token else {
            let Some(read) = read else {
                return Ok((Freshness::NotAsked, None));
            };
            let mut conn = pools
                .commands
                .get()
                .await
                .map_err(streams::StreamError::from)?;
            let reply = read
                .query_async(&mut conn)
                .await
                .map_err(streams::StreamError::from)?;
            return Ok((Freshness::NotAsked, Some(reply)));
        };
        let versions = pools.keys.read_model(&token.module, generation).versions();
        let deadline = Instant::now() + self.wait;
        let mut interval = Duration::from_millis(1);
        // Registered before the first check, so an announcement in between is not missed; and
        // only while the subscription is up (nobody would ever wake or prune it otherwise).
        let mut announced = watch
            .is_live()
            .then(|| watch.wait_for(token.aggregate_id, token.version));
        loop {
            let (applied, reply) = {
                let mut conn = pools
                    .commands
                    .get()
                    .await
                    .map_err(streams::StreamError::from)?;
                let mut pipe = streams::redis::pipe();
                pipe.add_command(streams::apply::applied_version_cmd(
                    &versions,
                    token.aggregate_id,
                ));
                if let Some(read) = &read {
                    pipe.add_command(read.clone());
                }
                let replies: Vec<streams::redis::Value> = pipe
                    .ignore_errors()
                    .query_async(&mut conn)
                    .await
                    .map_err(streams::StreamError::from)?;
                let mut replies = replies.into_iter();
                let applied = streams::apply::parse_applied_version(
                    replies.next().unwrap_or(streams::redis::Value::Nil),
                )?;
                (applied, replies.next())
            };
            if applied >= token.version {
                return Ok((Freshness::Fresh, reply));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok((Freshness::Stale, reply));
            }
            if let Some(rx) = announced.as_mut() {
                let pause = Duration::from_millis(50).min(deadline - now);
                tokio::select! {
                    _ = rx => {
                        // Fired (or the watch went away): wait anew after the next check.
                        announced = watch
                            .is_live()
                            .then(|| watch.wait_for(token.aggregate_id, token.version));
                    }
                    () = tokio::time::sleep(pause) => {}
                }
            } else {
                tokio::time::sleep(interval.min(deadline - now)).await;
                interval = (interval * 3 / 2).min(Duration::from_millis(5));
            }
        }
    }
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
