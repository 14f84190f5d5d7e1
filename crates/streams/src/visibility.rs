//! Telling readers that writes became visible. The projector announces the `(aggregate,
//! version)` pairs it applied on one pub/sub channel; a query waiting for a consistency token
//! wakes on the announcement instead of polling Redis in a loop.
//!
//! Pub/sub delivers at most once, so an announcement is only a hint: a woken reader still
//! checks the applied version itself, and while the subscription is down readers fall back to
//! polling. Nothing is lost when a message is.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use deadpool_redis::redis;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::{KeySpace, StreamError};

/// The channel announcements go to: one per key prefix (one per deployment).
#[must_use]
pub fn channel(keys: &KeySpace) -> String {
    format!("{}cqrs:applied", keys.prefix())
}

/// Publishes that `applied` (aggregate, version) pairs are now visible. One message per batch:
/// `<uuid>:<version>` lines.
///
/// # Errors
/// [`StreamError`] when Redis fails (the caller treats it as a lost hint).
pub async fn announce(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &KeySpace,
    applied: &[(Uuid, i64)],
) -> Result<(), StreamError> {
    if applied.is_empty() {
        return Ok(());
    }
    let _: i64 = announcement(keys, applied).query_async(conn).await?;
    Ok(())
}

/// The `PUBLISH` command of an announcement, for callers that pipeline it with other work.
#[must_use]
pub fn announcement(keys: &KeySpace, applied: &[(Uuid, i64)]) -> redis::Cmd {
    let mut payload = String::with_capacity(applied.len() * 40);
    for (id, version) in applied {
        let _ = writeln!(payload, "{id}:{version}");
    }
    let mut cmd = redis::cmd("PUBLISH");
    cmd.arg(channel(keys)).arg(payload);
    cmd
}

/// The pairs of an announcement; malformed lines are skipped.
pub fn parse(payload: &str) -> impl Iterator<Item = (Uuid, i64)> + '_ {
    payload.lines().filter_map(|line| {
        let (id, version) = line.split_once(':')?;
        Some((Uuid::parse_str(id).ok()?, version.parse().ok()?))
    })
}

type Waiters = HashMap<Uuid, Vec<(i64, oneshot::Sender<()>)>>;

struct Inner {
    waiters: Mutex<Waiters>,
    live: AtomicBool,
}

impl Inner {
    fn waiters(&self) -> MutexGuard<'_, Waiters> {
        // A panic while holding the lock leaves a map that is still consistent.
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wake(&self, id: Uuid, version: i64) {
        let mut waiters = self.waiters();
        if let Some(list) = waiters.get_mut(&id) {
            let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(list)
                .into_iter()
                .partition(|(v, _)| *v <= version);
            *list = rest;
            if list.is_empty() {
                waiters.remove(&id);
            }
            for (_, tx) in due {
                let _ = tx.send(());
            }
        }
    }

    /// Drops waiters that gave up (their receiver is gone), so the map stays bounded.
    fn prune(&self) {
        self.waiters().retain(|_, list| {
            list.retain(|(_, tx)| !tx.is_closed());
            !list.is_empty()
        });
    }
}

/// A query service's subscription to the announcements, shared by all its requests.
#[derive(Clone)]
pub struct AppliedWatch {
    inner: Arc<Inner>,
    /// Held, not read: the subscriber task lives as long as any clone of the watch.
    _task: Option<Arc<AbortOnDrop>>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl AppliedWatch {
    /// Subscribes on a connection of its own to `url` and keeps the subscription up
    /// (reconnecting with backoff) until the last clone is dropped.
    ///
    /// # Errors
    /// [`StreamError::Config`] when `url` is not a Redis URL.
    pub fn start(url: &str, keys: &KeySpace) -> Result<Self, StreamError> {
        let client = redis::Client::open(url).map_err(|e| StreamError::Config(e.to_string()))?;
        let inner = Arc::new(Inner {
            waiters: Mutex::new(HashMap::new()),
            live: AtomicBool::new(false),
        });
        let task = tokio::spawn(subscribe(client, channel(keys), inner.clone()));
        Ok(Self {
            inner,
            _task: Some(Arc::new(AbortOnDrop(task))),
        })
    }

    /// A watch that never hears anything: readers poll (tests of the fallback, tools).
    #[must_use]
    pub fn none() -> Self {
        Self {
            inner: Arc::new(Inner {
                waiters: Mutex::new(HashMap::new()),
                live: AtomicBool::new(false),
            }),
            _task: None,
        }
    }

    /// Whether the subscription is up (announcements can arrive).
    #[must_use]
    pub fn is_live(&self) -> bool {
        self.inner.live.load(Ordering::Acquire)
    }

    /// A receiver that fires once `version` (or a later one) of `id` is announced. Register
    /// *before* checking the applied version, so an announcement in between is not missed.
    #[must_use]
    pub fn wait_for(&self, id: Uuid, version: i64) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut waiters = self.inner.waiters();
        let list = waiters.entry(id).or_default();
        list.retain(|(_, tx)| !tx.is_closed());
        list.push((version, tx));
        rx
    }

    /// Waiters currently registered (for tests and metrics).
    #[must_use]
    pub fn waiting(&self) -> usize {
        self.inner.prune();
        self.inner.waiters().values().map(Vec::len).sum()
    }
}

async fn subscribe(client: redis::Client, channel: String, inner: Arc<Inner>) {
    let follow = crate::pubsub::follow(
        client,
        channel,
        Some(resilience::Outage::new("redis", "visibility-watch")),
        |up| {
            inner.live.store(up, Ordering::Release);
            if !up {
                // Readers poll until it is back, and nobody waits for what this
                // subscription would have announced.
                inner.prune();
            }
        },
        |payload| {
            for (id, version) in parse(payload) {
                inner.wake(id, version);
            }
        },
    );
    let prune = async {
        let mut every = tokio::time::interval(Duration::from_secs(10));
        loop {
            every.tick().await;
            inner.prune();
        }
    };
    tokio::join!(follow, prune);
}
