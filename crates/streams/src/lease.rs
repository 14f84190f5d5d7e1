//! Partition leases in Redis, for projector replicas.
//!
//! Each (projection, partition) is consumed by one replica at a time: the holder of the key
//! `cqrs:lease:<projection>:<p>` (value = replica id, with an expiry). Every replica heartbeats
//! into a membership sorted set; with `R` live members each aims for `ceil(P / R)` partitions.
//! One Lua script does a whole tick atomically (heartbeat, drop dead members, renew, release
//! extras, take free partitions), so two replicas can never both believe they took a lease.
//!
//! The lease is also a fence: the apply script ([`crate::apply`]) and the dead-letter script
//! ([`crate::dlq`]) check that the caller still holds the partition's lease, inside the same
//! atomic step as the write. A replica that stalled past its lease cannot apply one event more.

use std::sync::LazyLock;
use std::time::Duration;

use deadpool_redis::redis::{self, Script};

use crate::{KeySpace, StreamError};

const TICK: &str = r"
-- KEYS[1] members zset, KEYS[2..] lease keys by partition. ARGV[1] replica, ARGV[2] ttl ms.
local me, ttl = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + ttl, me)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl * 10)
local live = redis.call('ZCARD', KEYS[1])
local p = #KEYS - 1
local share = math.ceil(p / math.max(live, 1))
local held = {}
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == me then
    redis.call('PEXPIRE', KEYS[i], ttl)
    table.insert(held, i - 2)
  end
end
-- Give back the highest partitions above the fair share.
while #held > share do
  local part = table.remove(held)
  redis.call('DEL', KEYS[part + 2])
end
-- Take free ones, lowest first, up to the fair share.
for i = 2, #KEYS do
  if #held >= share then break end
  if redis.call('SET', KEYS[i], me, 'NX', 'PX', ttl) then
    table.insert(held, i - 2)
  end
end
table.sort(held)
return {live, held}
";

const RELEASE: &str = r"
-- KEYS: members zset, lease keys. ARGV[1] replica.
redis.call('ZREM', KEYS[1], ARGV[1])
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
return 1
";

static TICK_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(TICK));
static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE));

/// The leases of one replica over one projection's partitions.
#[derive(Debug, Clone)]
pub struct PartitionLeases {
    members: String,
    leases: Vec<String>,
    replica: String,
    ttl: Duration,
}

/// What a tick decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Live replicas (this one included).
    pub live: u32,
    /// Partitions held after the tick, ascending.
    pub partitions: Vec<u32>,
}

impl PartitionLeases {
    /// Leases of `replica` over `partitions` partitions of `projection`, each valid for `ttl`.
    #[must_use]
    pub fn new(
        keys: &KeySpace,
        projection: &str,
        partitions: u32,
        replica: impl Into<String>,
        ttl: Duration,
    ) -> Self {
        Self {
            members: lease_members_key(keys, projection),
            leases: (0..partitions.max(1))
                .map(|p| lease_key(keys, projection, p))
                .collect(),
            replica: replica.into(),
            ttl,
        }
    }

    /// This replica's id (the lease value).
    #[must_use]
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The lease key of `partition`.
    #[must_use]
    pub fn key(&self, partition: u32) -> &str {
        self.leases
            .get(partition as usize)
            .map_or("", String::as_str)
    }

    /// Heartbeats, renews, and moves towards the fair share.
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails (the leases then simply expire if this persists).
    pub async fn tick(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
    ) -> Result<Held, StreamError> {
        let mut inv = TICK_SCRIPT.prepare_invoke();
        inv.key(&self.members);
        for k in &self.leases {
            inv.key(k);
        }
        inv.arg(&self.replica).arg(self.ttl.as_millis() as u64);
        let (live, partitions): (u32, Vec<u32>) = inv.invoke_async(conn).await?;
        Ok(Held { live, partitions })
    }

    /// Releases every lease of this replica and leaves the membership: peers take the
    /// partitions at their next tick. Called on graceful shutdown.
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails (the leases then expire by themselves).
    pub async fn release_all(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
    ) -> Result<(), StreamError> {
        let mut inv = RELEASE_SCRIPT.prepare_invoke();
        inv.key(&self.members);
        for k in &self.leases {
            inv.key(k);
        }
        inv.arg(&self.replica);
        let _: i64 = inv.invoke_async(conn).await?;
        Ok(())
    }
}

/// The lease key of a projection's partition.
#[must_use]
pub fn lease_key(keys: &KeySpace, projection: &str, partition: u32) -> String {
    format!("{}cqrs:lease:{projection}:{partition}", keys.prefix())
}

/// The membership set of a projection's replicas.
#[must_use]
pub fn lease_members_key(keys: &KeySpace, projection: &str) -> String {
    format!("{}cqrs:members:{projection}", keys.prefix())
}

/// Live replicas of a projection (members whose heartbeat has not expired).
///
/// # Errors
/// [`StreamError`] when Redis fails.
pub async fn live_members(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &KeySpace,
    projection: &str,
) -> Result<Vec<String>, StreamError> {
    let t: (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
    let now = t.0 * 1000 + t.1 / 1000;
    Ok(redis::cmd("ZRANGEBYSCORE")
        .arg(lease_members_key(keys, projection))
        .arg(now)
        .arg("+inf")
        .query_async(conn)
        .await?)
}
