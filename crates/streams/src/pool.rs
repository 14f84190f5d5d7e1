//! Redis connection pools.
//!
//! Two pools: one for ordinary commands, with a response timeout so a stuck server fails fast,
//! and one for blocking reads (`XREADGROUP … BLOCK`) with no response timeout. The redis crate's
//! default 500 ms timeout would otherwise cut every blocking read short (ecosystem.md, trap 1).
//! And, for the hot request/response paths (query-api's reads, command-api's wake-ups, the
//! relay's `XADD`, the projector's apply), [`SharedConnections`]: multiplexed connections that
//! need no checkout (a pool's checkout sends `UNWATCH` + `PING` first and waits for it, turning
//! a one-`GET` read into three commands, and a one-event batch into two round trips).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use deadpool_redis::redis::aio::ConnectionLike;
use deadpool_redis::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use deadpool_redis::redis::{
    AsyncConnectionConfig, Client, Cmd, Pipeline, RedisError, RedisFuture, Value,
};
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
    /// Multiplexed connections for reads on the request path.
    pub shared: SharedConnections,
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
            shared: SharedConnections::new(settings)?,
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

/// One multiplexed, self-reconnecting connection per thread, for request/response commands.
///
/// Taking one costs no round trip (a pool checkout pings first). One per thread, not one per
/// process: each actix worker is a runtime of its own, and a connection is driven by a task on
/// the runtime that opened it, so a request's Redis IO stays on the request's thread instead
/// of waking another one for every reply (and dies with no other worker's runtime).
///
/// A broken connection fails the commands in flight (the caller answers 503) and is
/// reopened on the next use. Blocking reads must not use it: they would stall everything
/// multiplexed behind them.
#[derive(Clone)]
pub struct SharedConnections {
    client: Client,
    config: ConnectionManagerConfig,
    by_thread: Arc<Mutex<HashMap<ThreadId, SharedConnection>>>,
    opened: Arc<AtomicU64>,
}

/// A connection from [`SharedConnections::get`]. It remembers which it is, so that forgetting
/// it after a failure drops exactly it: on a multi-threaded runtime the task that failed may
/// have moved to another thread since it took it.
#[derive(Clone)]
pub struct SharedConnection {
    conn: ConnectionManager,
    thread: ThreadId,
    id: u64,
}

impl ConnectionLike for SharedConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.conn.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.conn.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

impl std::fmt::Debug for SharedConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedConnections").finish_non_exhaustive()
    }
}

impl SharedConnections {
    fn new(settings: &RedisSettings) -> Result<Self, StreamError> {
        let client = Client::open(settings.url.as_str())
            .map_err(|e| StreamError::Config(format!("REDIS_URL does not parse: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(Some(settings.command_timeout))
            // Reconnecting is retried briefly; a longer outage fails requests fast (503) and
            // the next request tries again.
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(200));
        Ok(Self {
            client,
            config,
            by_thread: Arc::default(),
            opened: Arc::default(),
        })
    }

    /// This thread's connection (opened on first use, on the current tokio runtime). Clones
    /// are cheap and share the connection.
    ///
    /// # Errors
    /// [`StreamError::Unavailable`] when the connection cannot be set up.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn get(&self) -> Result<SharedConnection, StreamError> {
        let thread = std::thread::current().id();
        let mut by_thread = self.lock();
        if let Some(conn) = by_thread.get(&thread) {
            return Ok(conn.clone());
        }
        let conn = SharedConnection {
            conn: ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())
                .map_err(StreamError::from)?,
            thread,
            id: self.opened.fetch_add(1, Ordering::Relaxed),
        };
        by_thread.insert(thread, conn.clone());
        Ok(conn)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ThreadId, SharedConnection>> {
        self.by_thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Call with the error of a command on this thread's connection: after a timeout the
    /// connection is dropped and the next [`SharedConnections::get`] opens a new one. (The
    /// connection reopens by itself when it breaks, but not when the server or the network
    /// silently stops answering: a multiplexed connection cannot tell that from slowness.)
    pub fn forget_if_stuck(&self, conn: &SharedConnection, error: &RedisError) {
        if error.is_timeout() {
            self.forget(conn);
        }
    }

    /// [`SharedConnections::forget`]s `conn` when `error` (of work done on it, the caller's own
    /// deadline included) says Redis did not answer: a stalled connection is not reopened by
    /// itself.
    pub fn forget_if_unavailable(&self, conn: &SharedConnection, error: &StreamError) {
        if error.is_unavailable() {
            self.forget(conn);
        }
    }

    /// Drops `conn` (if it is still its thread's): the next [`SharedConnections::get`] there
    /// opens a new one.
    pub fn forget(&self, conn: &SharedConnection) {
        let mut by_thread = self.lock();
        if by_thread.get(&conn.thread).is_some_and(|c| c.id == conn.id) {
            by_thread.remove(&conn.thread);
        }
    }
}
