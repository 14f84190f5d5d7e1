//! Redis connection pools.
//!
//! Two pools: one for ordinary commands, with a response timeout so a stuck server fails fast,
//! and one for blocking reads (`XREADGROUP … BLOCK`) with no response timeout. The redis crate's
//! default 500 ms timeout would otherwise cut every blocking read short (ecosystem.md, trap 1).

use std::time::Duration;

use deadpool_redis::redis::AsyncConnectionConfig;
use deadpool_redis::{Manager, Pool, Runtime};

use crate::{KeySpace, StreamError};

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Prepended to every key, stream and lease of the deployment.
    pub key_prefix: String,
    /// Connections per pool.
    pub max_connections: usize,
    /// Response timeout of the command pool.
    pub command_timeout: Duration,
    /// How long to wait for a connection before reporting Redis unavailable.
    pub connect_timeout: Duration,
}

impl RedisSettings {
    /// Settings for `url` and `key_prefix` with defaults for the rest.
    #[must_use]
    pub fn new(url: impl Into<String>, key_prefix: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            key_prefix: key_prefix.into(),
            max_connections: 16,
            command_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// The two pools of a process.
#[derive(Clone)]
pub struct RedisPools {
    /// Ordinary commands, with a response timeout.
    pub commands: Pool,
    /// Blocking reads only; no response timeout.
    pub blocking: Pool,
    /// The deployment's key space.
    pub keys: KeySpace,
}

impl std::fmt::Debug for RedisPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPools")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl RedisPools {
    /// Builds both pools. No connection is made until first use.
    ///
    /// # Errors
    /// [`StreamError::Config`] when the URL does not parse.
    pub fn connect(settings: &RedisSettings) -> Result<Self, StreamError> {
        let build = |response_timeout: Option<Duration>| {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(settings.connect_timeout))
                .set_response_timeout(response_timeout);
            let manager = Manager::new_with_config(settings.url.as_str(), config)
                .map_err(|e| StreamError::Config(format!("REDIS_URL does not parse: {e}")))?;
            Pool::builder(manager)
                .max_size(settings.max_connections)
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(settings.connect_timeout))
                .create_timeout(Some(settings.connect_timeout))
                .recycle_timeout(Some(settings.connect_timeout))
                .build()
                .map_err(|e| StreamError::Config(format!("cannot build Redis pool: {e}")))
        };
        Ok(Self {
            commands: build(Some(settings.command_timeout))?,
            blocking: build(None)?,
            keys: KeySpace::new(settings.key_prefix.clone()),
        })
    }

    /// Redis's `maxmemory-policy`; `None` when the server refuses `CONFIG GET` (managed
    /// services often rename it), which says nothing either way.
    ///
    /// # Errors
    /// [`StreamError::Unavailable`] when Redis does not answer.
    pub async fn eviction_policy(&self) -> Result<Option<String>, StreamError> {
        let mut conn = self.commands.get().await?;
        let reply: Result<Vec<String>, _> = deadpool_redis::redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut conn)
            .await;
        match reply {
            Ok(v) => Ok(v.into_iter().nth(1)),
            Err(e) => match StreamError::from(e) {
                StreamError::Redis(_) => Ok(None),
                other => Err(other),
            },
        }
    }

    /// `PING`: the readiness probe.
    ///
    /// # Errors
    /// [`StreamError::Unavailable`] when Redis does not answer.
    pub async fn ping(&self) -> Result<(), StreamError> {
        let mut conn = self.commands.get().await?;
        let _: String = deadpool_redis::redis::cmd("PING")
            .query_async(&mut conn)
            .await?;
        Ok(())
    }
}
