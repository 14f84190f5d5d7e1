//! What the benchmarks share: settings from the environment, percentiles, Redis's CPU, the
//! floor probe, the report, and the clean-up of a run's schema and Redis keys. Processes are
//! started and measured with `test_kit::process`.

use std::time::Duration;

use streams::{RedisPools, redis};

/// `RELAY_LINGER_US` for the relays a bench starts, when the run asks for one with
/// `BENCH_RELAY_LINGER_US`; `None` leaves the relay's own default.
#[must_use]
pub fn relay_linger_env() -> Option<(&'static str, String)> {
    std::env::var("BENCH_RELAY_LINGER_US")
        .ok()
        .map(|v| ("RELAY_LINGER_US", v))
}

/// `key` parsed from the environment, else `default`. A value that does not parse stops the
/// benchmark with a clear message: silently measuring something else would be worse.
#[must_use]
pub fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    match std::env::var(key) {
        Err(_) => default,
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("{key}={v:?} is not a valid value for {key}");
            std::process::exit(2)
        }),
    }
}

/// `DATABASE_URL`, defaulting to the local server.
#[must_use]
pub fn pg_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `REDIS_URL`, defaulting to the local server.
#[must_use]
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The `p` quantile (0–1) of `sorted`; zero when empty.
#[must_use]
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Milliseconds, fractional.
#[must_use]
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// CPU time (user + system) the Redis server has used so far, from `INFO cpu`.
///
/// # Errors
/// When Redis fails.
pub async fn redis_cpu(pools: &RedisPools) -> anyhow::Result<Duration> {
    let mut c = pools.commands.get().await?;
    let info: String = redis::cmd("INFO").arg("cpu").query_async(&mut *c).await?;
    let secs: f64 = info
        .lines()
        .filter_map(|l| {
            l.strip_prefix("used_cpu_user:")
                .or_else(|| l.strip_prefix("used_cpu_sys:"))
        })
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum();
    Ok(Duration::from_secs_f64(secs))
}

/// Drops the run's schema and unlinks every key under its prefix, whatever happened.
pub async fn clean_up(pool: &outbox::Pool, schema: &str, redis: &RedisPools, prefix: &str) {
    if let Ok(c) = pool.get().await {
        let _ = c
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await;
    }
    if let Ok(mut c) = redis.commands.get().await {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut *c)
            .await
            .unwrap_or_default();
        for k in keys.chunks(500) {
            let _: Result<i64, _> = redis::cmd("UNLINK").arg(k).query_async(&mut *c).await;
        }
    }
}

/// Writes `report` to stdout and to `target/bench/<name>.md`.
///
/// # Errors
/// When the file cannot be written.
pub fn publish_report(name: &str, report: &str) -> anyhow::Result<()> {
    println!("{report}");
    std::fs::create_dir_all("target/bench")?;
    std::fs::write(format!("target/bench/{name}.md"), report)?;
    Ok(())
}

/// Times `sql` (one statement, its own transaction) on PostgreSQL `rate` times a second until
/// `done`: with `SELECT 1`, the floor any PostgreSQL-backed hop could reach at that moment on
/// this host; with a one-row `INSERT`, the floor of any durable commit (it waits for the WAL
/// flush, so it sees the disk's stalls too). A stall of the host shows here as it does in the
/// measured path; a queue in the measured path does not. Returns the round trips, sorted.
#[must_use]
pub fn floor_probe(
    pool: &outbox::Pool,
    sql: &'static str,
    rate: u64,
    done: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Vec<Duration>> {
    let pool = pool.clone();
    tokio::spawn(async move {
        let Ok(client) = pool.get().await else {
            return Vec::new();
        };
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
        let mut out = Vec::new();
        while !done.is_cancelled() {
            tick.tick().await;
            let t = std::time::Instant::now();
            if client.simple_query(sql).await.is_ok() {
                out.push(t.elapsed());
            }
        }
        out.sort();
        out
    })
}
