//! Errors of the Redis side, named for what the caller does about them.

use deadpool_redis::redis::{ErrorKind, RedisError, ServerErrorKind};

/// An error talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Redis could not be reached, timed out, or the connection broke.
    ///
    /// # Handling
    /// Back off and retry; nothing was acknowledged.
    #[error("Redis is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The consumer group (or its stream) does not exist: Redis lost its data.
    ///
    /// # Handling
    /// Recreate the group and rebuild what was lost.
    #[error("consumer group does not exist (NOGROUP)")]
    NoGroup,
    /// Redis refused a command: a bug or a broken invariant.
    ///
    /// # Handling
    /// Log the cause and treat the affected event as failed.
    #[error("Redis refused the command")]
    Redis(#[source] RedisError),
    /// A reply did not have the expected shape.
    #[error("unexpected Redis reply: {0}")]
    Malformed(String),
    /// Bad configuration, e.g. an unparsable `REDIS_URL`.
    #[error("invalid Redis setting: {0}")]
    Config(String),
}

impl StreamError {
    /// Whether retrying later may succeed (Redis was unreachable).
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<RedisError> for StreamError {
    fn from(e: RedisError) -> Self {
        if e.code() == Some("NOGROUP") {
            return Self::NoGroup;
        }
        let transient = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || matches!(
                e.kind(),
                ErrorKind::Server(ServerErrorKind::BusyLoading | ServerErrorKind::TryAgain)
            );
        if transient {
            Self::Unavailable(Box::new(e))
        } else {
            Self::Redis(e)
        }
    }
}

impl From<deadpool_redis::PoolError> for StreamError {
    fn from(e: deadpool_redis::PoolError) -> Self {
        match e {
            deadpool_redis::PoolError::Backend(inner) => inner.into(),
            other => Self::Unavailable(Box::new(other)),
        }
    }
}

/// Converts one reply of a pipeline (where an error reply arrives as a value) into `T`: an
/// error reply becomes the [`StreamError`] it stands for, a value of the wrong shape
/// [`StreamError::Malformed`] naming `what`.
///
/// # Errors
/// As described.
pub fn from_reply<T: deadpool_redis::redis::FromRedisValue>(
    reply: deadpool_redis::redis::Value,
    what: &str,
) -> Result<T, StreamError> {
    if let deadpool_redis::redis::Value::ServerError(e) = reply {
        return Err(RedisError::from(e).into());
    }
    deadpool_redis::redis::from_redis_value(reply)
        .map_err(|e| StreamError::Malformed(format!("{what}: {e}")))
}
