//! Test helpers, used only by tests: an isolated PostgreSQL schema and Redis key prefix per
//! test (so tests run in parallel against one server), cleaned up on drop with sweeps for
//! leftovers of crashed runs, a polling `eventually`, and helpers to start the service binaries
//! as real processes.
#![warn(missing_docs)]
#![allow(clippy::unwrap_used)]

pub mod events_check;
pub mod openapi;
pub mod process;
pub mod proxy;
pub mod servers;

use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use outbox::{PgSettings, Pool};
use streams::{RedisPools, RedisSettings, redis};

/// PostgreSQL URL of the test database (`TEST_DATABASE_URL`, default the local `test` db).
#[must_use]
pub fn database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Redis URL for tests (`TEST_REDIS_URL`, default the local server).
#[must_use]
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random_suffix() -> String {
    let n: u64 = rand::random();
    format!("{:010x}", n & 0xff_ffff_ffff)
}

/// Runs `f` to completion on a fresh runtime in another thread: how `Drop` impls clean up
/// from inside a test's runtime.
fn block_on_side<F: Future<Output = ()> + Send + 'static>(f: F) {
    let _ = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(f);
        }
    })
    .join();
}

/// A migrated schema of its own, dropped when this value is dropped.
pub struct TestDb {
    /// Schema name: `test_<unix secs>_<random>`.
    pub schema: String,
    /// Settings pointing at it.
    pub settings: PgSettings,
    /// A pool on it.
    pub pool: Pool,
}

impl TestDb {
    /// A fresh, migrated schema.
    ///
    /// # Panics
    /// When PostgreSQL is unreachable: tests need it.
    pub async fn new() -> Self {
        let db = Self::unmigrated().await;
        outbox::migrate::migrate(&db.pool, &db.schema)
            .await
            .expect("migrate test schema");
        db
    }

    /// A schema name with nothing in it yet (not even the schema itself).
    ///
    /// # Panics
    /// When PostgreSQL is unreachable.
    pub async fn unmigrated() -> Self {
        let schema = format!("test_{}_{}", unix_secs(), random_suffix());
        let settings = PgSettings::new(database_url(), schema.clone());
        let pool = outbox::connect(&settings).expect("test pool");
        sweep_old_schemas(&pool).await;
        Self {
            schema,
            settings,
            pool,
        }
    }
}

/// Drops `test_*` schemas older than an hour: leftovers of runs that crashed before cleanup.
async fn sweep_old_schemas(pool: &Pool) {
    let Ok(client) = pool.get().await else { return };
    let cutoff = unix_secs().saturating_sub(3600);
    let Ok(rows) = client
        .query(
            "SELECT nspname FROM pg_namespace WHERE nspname ~ '^test_[0-9]+_'",
            &[],
        )
        .await
    else {
        return;
    };
    for row in rows {
        let name: String = row.get(0);
        let secs: u64 = name
            .split('_')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(u64::MAX);
        if secs < cutoff {
            let _ = client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                .await;
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let url = database_url();
        let schema = self.schema.clone();
        block_on_side(async move {
            if let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                tokio::spawn(conn);
                // Connections of the test (and of in-process apps) may still hold a
                // transaction whose ROLLBACK is queued on the test's runtime, which this drop
                // is blocking: end them, or DROP SCHEMA would wait for their locks forever.
                let _ = client
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                         WHERE application_name LIKE '%@' || $1::text AND pid <> pg_backend_pid()",
                        &[&schema],
                    )
                    .await;
                let _ = client
                    .batch_execute(&format!(
                        "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                    ))
                    .await;
            }
        });
    }
}

/// A Redis key prefix of its own; every key under it is unlinked when this value is dropped.
pub struct TestRedis {
    /// `test:<unix secs>:<random>:`.
    pub prefix: String,
    /// Settings with that prefix.
    pub settings: RedisSettings,
    /// Pools with that prefix.
    pub pools: RedisPools,
}

impl TestRedis {
    /// A fresh prefix.
    ///
    /// # Panics
    /// When the Redis URL is invalid.
    pub async fn new() -> Self {
        let prefix = format!("test:{}:{}:", unix_secs(), random_suffix());
        let settings = RedisSettings::new(redis_url(), prefix.clone());
        let pools = RedisPools::connect(&settings).expect("test redis pools");
        sweep_old_prefixes(&pools).await;
        Self {
            prefix,
            settings,
            pools,
        }
    }

    /// Every key under the prefix (tests inspect what a run left).
    ///
    /// # Panics
    /// When Redis is unreachable.
    pub async fn keys(&self) -> Vec<String> {
        let mut conn = self.pools.commands.get().await.expect("redis");
        scan(&mut conn, &format!("{}*", self.prefix)).await
    }

    /// Unlinks every key under the prefix: a FLUSHALL that leaves parallel tests alone.
    ///
    /// # Panics
    /// When Redis is unreachable.
    pub async fn flush_prefix(&self) {
        let keys = self.keys().await;
        let mut conn = self.pools.commands.get().await.expect("redis");
        unlink_all(&mut conn, &keys).await;
    }
}

async fn scan(conn: &mut impl redis::aio::ConnectionLike, pattern: &str) -> Vec<String> {
    let mut cursor: u64 = 0;
    let mut out = vec![];
    loop {
        let reply: Result<(u64, Vec<String>), _> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await;
        let Ok((next, keys)) = reply else { break };
        out.extend(keys);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    out
}

async fn unlink_all(conn: &mut impl redis::aio::ConnectionLike, keys: &[String]) {
    for chunk in keys.chunks(500) {
        let _: Result<i64, _> = redis::cmd("UNLINK").arg(chunk).query_async(conn).await;
    }
}

/// Unlinks keys of `test:<secs>:…` prefixes older than an hour.
async fn sweep_old_prefixes(pools: &RedisPools) {
    let Ok(mut conn) = pools.commands.get().await else {
        return;
    };
    let cutoff = unix_secs().saturating_sub(3600);
    let old: Vec<String> = scan(&mut conn, "test:*")
        .await
        .into_iter()
        .filter(|k| {
            k.split(':')
                .nth(1)
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|s| s < cutoff)
        })
        .collect();
    unlink_all(&mut conn, &old).await;
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let url = redis_url();
        let pattern = format!("{}*", self.prefix);
        block_on_side(async move {
            let Ok(client) = redis::Client::open(url) else {
                return;
            };
            let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                return;
            };
            let keys = scan(&mut conn, &pattern).await;
            unlink_all(&mut conn, &keys).await;
        });
    }
}

/// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
///
/// # Panics
/// When the condition does not hold in time.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut interval = Duration::from_millis(5);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(Duration::from_millis(200));
    }
}
