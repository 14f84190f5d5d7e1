//! What the benchmarks share: settings from the environment, percentiles, the release service
//! binaries run as child processes (stopped with SIGTERM, as in production), resident memory,
//! and the clean-up of a run's schema and Redis keys.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use streams::{RedisPools, redis};

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

/// The release binary `name`, built next to the running benchmark.
///
/// # Errors
/// When it was not built (the `make` target builds it).
pub fn release_bin(name: &str) -> anyhow::Result<PathBuf> {
    let bin = std::env::current_exe()?.with_file_name(name);
    if !bin.exists() {
        bail!(
            "{} is missing: `make bench` builds it (cargo build --release -p {name})",
            bin.display()
        );
    }
    Ok(bin)
}

/// A service child process. Dropping it stops it as production does, with SIGTERM, so it
/// releases its leases (a killed process's leases would make the next one wait for expiry).
pub struct Proc(pub Child);

impl Proc {
    /// Starts release binary `name` with exactly `env` (plus `PATH`), output discarded.
    ///
    /// # Errors
    /// When the binary is missing or cannot start.
    pub fn spawn(name: &str, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let child = Command::new(release_bin(name)?)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self(child))
    }

    /// The process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        for _ in 0..100 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free TCP port on 127.0.0.1, for a service's `HTTP_ADDR`.
///
/// # Errors
/// When no port can be bound.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until `base_url/readyz` answers 200.
///
/// # Errors
/// When it does not within `timeout`.
pub async fn wait_ready(base_url: &str, timeout: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Ok(r) = client
            .get(format!("{base_url}/readyz"))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            && r.status().is_success()
        {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("{base_url} not ready within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Resident memory of process `pid` in MiB (0 when unknown).
#[must_use]
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU time (user + system) process `pid` has used so far (zero when unknown).
#[must_use]
pub fn cpu_time(pid: u32) -> Duration {
    // Fields 14 and 15 of /proc/<pid>/stat, in clock ticks (100 per second on Linux); the
    // command name (field 2) may hold spaces, so count from the closing parenthesis.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(Duration::from_millis(ticks * 10))
        })
        .unwrap_or_default()
}

/// CPU time used so far by every process on the machine, summed by command name (as
/// `/proc/<pid>/stat` gives it, at most 15 characters): where the cores went in a run.
#[must_use]
pub fn cpu_by_command() -> std::collections::BTreeMap<String, Duration> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(name) = stat
            .split_once('(')
            .and_then(|(_, rest)| rest.rsplit_once(')'))
            .map(|(n, _)| n.to_owned())
        else {
            continue;
        };
        *out.entry(name).or_insert(Duration::ZERO) += cpu_time(pid);
    }
    out
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
