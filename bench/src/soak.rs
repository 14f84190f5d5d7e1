//! Soak (`make soak`): the relay and the projector as release processes under a steady load for
//! ten minutes (`SOAK_SECONDS`), sampled every 30 s: outbox rows, dead tuples and size, stream
//! lengths, group lag, Redis memory, and the processes' resident memory. Everything must stay
//! flat. Prints a markdown report (also `target/bench/soak.md`).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use bench::env_or;
use events::EventContext;
use outbox::PgSettings;
use streams::{RedisPools, RedisSettings, redis};
use test_kit::process::{Process, rss_mib};
use uuid::Uuid;

#[derive(Debug)]
struct Sample {
    at: Duration,
    written: u64,
    outbox_rows: i64,
    outbox_dead: i64,
    outbox_bytes: i64,
    stream_len: u64,
    lag: u64,
    pending: u64,
    redis_mib: f64,
    relay_mib: f64,
    projector_mib: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (pg_url, redis_url) = (bench::pg_url(), bench::redis_url());
    let seconds: u64 = env_or("SOAK_SECONDS", 600);
    let rate: u64 = env_or("SOAK_RATE", 500);
    let every: u64 = env_or("SOAK_SAMPLE_SECONDS", 30);
    let partitions: u32 = env_or("SOAK_PARTITIONS", 4);
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let schema = format!("soak_{stamp}");
    let prefix = format!("soak:{stamp}:");
    let pool = outbox::connect(&PgSettings {
        max_connections: 32,
        ..PgSettings::new(pg_url.clone(), schema.clone())
    })?;
    outbox::migrate::migrate(&pool, &schema).await?;
    let redis = RedisPools::connect(&RedisSettings::new(redis_url.clone(), prefix.clone()))?;
    let spawn = |name: &str| -> anyhow::Result<Process> {
        Ok(Process::spawn(
            name,
            &[
                ("DATABASE_URL", pg_url.clone()),
                ("DATABASE_SCHEMA", schema.clone()),
                ("REDIS_URL", redis_url.clone()),
                ("REDIS_KEY_PREFIX", prefix.clone()),
                ("STREAM_PARTITIONS", partitions.to_string()),
                ("RELAY_TRIM_INTERVAL_MS", "5000".to_owned()),
                ("CONSUMER_NAME", "soak".to_owned()),
                ("HTTP_ADDR", "127.0.0.1:0".to_owned()),
                ("RUST_LOG", "warn".to_owned()),
            ],
        )?)
    };
    let relay = spawn("outbox-relay")?;
    let projector = spawn("projector-worker")?;
    let result = soak(
        &pool, &redis, &relay, &projector, seconds, rate, every, partitions,
    )
    .await;
    drop(relay);
    drop(projector);
    bench::clean_up(&pool, &schema, &redis, &prefix).await;
    bench::publish_report("soak", &result?)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn soak(
    pool: &outbox::Pool,
    redis: &RedisPools,
    relay: &Process,
    projector: &Process,
    seconds: u64,
    rate: u64,
    every: u64,
    partitions: u32,
) -> anyhow::Result<String> {
    // A fixed population of tasks: each is created, then edited again and again, so the read
    // model stays the same size and anything that grows is a leak.
    let tasks: Vec<Uuid> = (0..2000).map(|_| Uuid::now_v7()).collect();
    let mut versions = vec![0i64; tasks.len()];
    let user = Uuid::now_v7();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut next_sample = Duration::ZERO;
    let mut samples = Vec::new();
    let mut written = 0u64;
    let mut writers = tokio::task::JoinSet::new();
    let waker = outbox::wake::Waker::start(pool.clone());
    let mut n = 0usize;
    eprintln!("soaking for {seconds} s at {rate} events/s…");
    while started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        let i = n % tasks.len();
        n += 1;
        versions[i] += 1;
        let (id, v) = (tasks[i], versions[i]);
        let (event_type, payload) = if v == 1 {
            (
                "task.created",
                serde_json::json!({"user_id": user, "title": "soak", "type": "training", "tags": [],
                "estimated_minutes": 30, "priority": 3, "difficulty": 1, "due_date": null}),
            )
        } else {
            (
                "task.updated",
                serde_json::json!({"estimated_minutes": 1 + (v % 600)}),
            )
        };
        let (writer_pool, waker) = (pool.clone(), waker.clone());
        writers.spawn(async move {
            let e = EventContext::new(Some(user), None, "soak")
                .envelope("Task", id, v, event_type, payload);
            let woken = outbox::wake::partitions_of(std::slice::from_ref(&e), partitions);
            let mut c = writer_pool.get().await.expect("pg");
            let tx = c.transaction().await.expect("tx");
            outbox::append_events(&tx, &[e], partitions)
                .await
                .expect("append");
            tx.commit().await.expect("commit");
            // The relay is woken after each commit as command-api wakes it.
            waker.wake(woken);
        });
        while writers.try_join_next().is_some() {
            written += 1;
        }
        if started.elapsed() >= next_sample {
            next_sample += Duration::from_secs(every);
            let s = sample(
                pool,
                redis,
                relay,
                projector,
                partitions,
                started.elapsed(),
                written,
            )
            .await?;
            eprintln!("{s:?}");
            samples.push(s);
        }
    }
    while writers.join_next().await.is_some() {
        written += 1;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    samples.push(
        sample(
            pool,
            redis,
            relay,
            projector,
            partitions,
            started.elapsed(),
            written,
        )
        .await?,
    );

    let mut r = String::new();
    writeln!(
        r,
        "### Soak: {seconds} s at {rate} events/s, {partitions} partitions, relay + projector (release)\n"
    )?;
    writeln!(
        r,
        "| t | events written | outbox rows | outbox dead tuples | outbox size | stream entries | group lag | pending | Redis memory | relay RSS | projector RSS |"
    )?;
    writeln!(r, "|---|---|---|---|---|---|---|---|---|---|---|")?;
    for s in &samples {
        writeln!(
            r,
            "| {:.0} s | {} | {} | {} | {} KiB | {} | {} | {} | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
            s.at.as_secs_f64(),
            s.written,
            s.outbox_rows,
            s.outbox_dead,
            s.outbox_bytes / 1024,
            s.stream_len,
            s.lag,
            s.pending,
            s.redis_mib,
            s.relay_mib,
            s.projector_mib
        )?;
    }
    Ok(r)
}

async fn sample(
    pool: &outbox::Pool,
    redis: &RedisPools,
    relay: &Process,
    projector: &Process,
    partitions: u32,
    at: Duration,
    written: u64,
) -> anyhow::Result<Sample> {
    let c = pool.get().await?;
    let row = c
        .query_one(
            "SELECT (SELECT count(*) FROM outbox),
                    (SELECT coalesce(n_dead_tup, 0) FROM pg_stat_user_tables WHERE relid = 'outbox'::regclass),
                    pg_total_relation_size('outbox')",
            &[],
        )
        .await?;
    let mut conn = redis.commands.get().await?;
    let (mut stream_len, mut lag, mut pending) = (0u64, 0u64, 0u64);
    for s in redis.keys.routing(partitions).streams("task") {
        stream_len += streams::retention::length(&mut *conn, &s).await?;
        for g in streams::consumer::groups(&mut *conn, &s).await? {
            lag += g.lag.unwrap_or(0) as u64;
            pending += g.pending as u64;
        }
    }
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut *conn)
        .await?;
    let redis_mib = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0.0, |b| b / 1048576.0);
    Ok(Sample {
        at,
        written,
        outbox_rows: row.get(0),
        outbox_dead: row.get(1),
        outbox_bytes: row.get(2),
        stream_len,
        lag,
        pending,
        redis_mib,
        relay_mib: rss_mib(relay.pid()),
        projector_mib: rss_mib(projector.pid()),
    })
}
