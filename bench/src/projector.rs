//! Projector benchmark (`make bench`), next to the limits of this machine measured in the same
//! run:
//!
//! - **apply rate**, for every module of the registry: a stream pre-filled with the module's
//!   sample history (tasks: created → updated → started → completed; posts: created → liked →
//!   liked → updated → unliked; the galaxy's nodes, relations, unlocks, expands and studies)
//!   drained by the
//!   release `projector-worker`, 1 replica on 1 partition and 2 replicas on 4 partitions;
//!   beside it, the Redis limit for the apply script: the very same script calls (planned in
//!   memory beforehand, with their acknowledgements and lease checks) sent straight to Redis,
//!   batch by batch, with no projector in between;
//! - **end to end**: `POST /v1/tasks` at a steady rate through command-api, outbox-relay,
//!   projector-worker and query-api (all release processes); latency from the command's answer
//!   (the commit) to query-api answering the task when asked with the command's consistency
//!   token: what a client doing read-your-writes waits. The target rate (`BENCH_RATE`) runs
//!   `BENCH_ROUNDS` times, then one round at each of `BENCH_EXTRA_RATES` (default 800, 500),
//!   with the CPU each process used: on a small machine the whole pipeline, PostgreSQL and the
//!   load generator share the cores, and the table shows where the knee is.
//!
//! `BENCH_ONLY=apply` or `BENCH_ONLY=e2e` runs one half.
//!
//! Prints a markdown report (also written to `target/bench/projector.md`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bench::{env_or, ms, percentile};
use events::EventEnvelope;
use modules::Module;
use outbox::PgSettings;
use projection::{PlanOutcome, ViewState};
use streams::apply::{ApplyItem, ApplyOutcome};
use streams::keys::INITIAL_GENERATION;
use streams::publisher::{self, StreamEntry};
use streams::{GenerationState, Generations, RedisPools, RedisSettings, Target, consumer, redis};
use test_kit::process::{Process, cpu_by_command, cpu_time, find_binary, free_port, wait_ready};
use uuid::Uuid;

const SECRET: &str = "bench-secret-0123456789";

struct Config {
    pg_url: String,
    redis_url: String,
    events: usize,
    rate: u64,
    seconds: u64,
    rounds: usize,
    /// `PROJECTOR_BATCH_SIZE` (the projector's default unless `BENCH_BATCH` says otherwise).
    batch: usize,
    /// `BENCH_ONLY`: `apply` or `e2e` runs one half of the bench (both when unset).
    only: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config {
        pg_url: bench::pg_url(),
        redis_url: bench::redis_url(),
        events: env_or("BENCH_APPLY_EVENTS", 200_000),
        rate: env_or("BENCH_RATE", 1000),
        seconds: env_or("BENCH_SECONDS", 10),
        rounds: env_or("BENCH_ROUNDS", 3),
        batch: env_or("BENCH_BATCH", 256),
        only: std::env::var("BENCH_ONLY").ok().filter(|s| !s.is_empty()),
    };
    if let Some(only) = &cfg.only
        && only != "apply"
        && only != "e2e"
    {
        eprintln!("BENCH_ONLY={only:?}: expected \"apply\" or \"e2e\"");
        std::process::exit(2);
    }
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let schema = format!("bench_projector_{stamp}");
    let prefix = format!("bench:{stamp}:");
    let pool = outbox::connect(&PgSettings {
        max_connections: 16,
        ..PgSettings::new(cfg.pg_url.clone(), schema.clone())
    })?;
    outbox::migrate::migrate(&pool, &schema).await?;
    let redis = RedisPools::connect(&RedisSettings::new(cfg.redis_url.clone(), prefix.clone()))?;
    let result = run(&cfg, &pool, &schema, &prefix).await;
    bench::clean_up(&pool, &schema, &redis, &prefix).await;
    bench::publish_report("projector", &result?)?;
    Ok(())
}

async fn run(
    cfg: &Config,
    pool: &outbox::Pool,
    schema: &str,
    prefix: &str,
) -> anyhow::Result<String> {
    let mut applies = Vec::new();
    if cfg.only.as_deref() != Some("e2e") {
        for module in modules::ALL {
            let name = module.spec.name;
            let events = (module.sample_history)(cfg.events);
            eprintln!("apply rate, {name}: {} events…", events.len());
            let limit =
                apply_limit(cfg, module, &events, &format!("{prefix}{name}:limit:")).await?;
            eprintln!("Redis limit for the apply script: {limit:.0} events/s");
            let p1 = format!("{prefix}{name}:p1:");
            let one = drain(cfg, schema, &p1, module, &events, 1, 1).await?;
            eprintln!("1 replica, P = 1: {one:?}");
            let p4 = format!("{prefix}{name}:p4:");
            let two = drain(cfg, schema, &p4, module, &events, 4, 2).await?;
            eprintln!("2 replicas, P = 4: {two:?}");
            applies.push((module, events, limit, one, two));
        }
    }

    let mut rounds = Vec::new();
    let e2e_prefix = format!("{prefix}e2e:");
    let pipeline = match cfg.only.as_deref() {
        Some("apply") => None,
        _ => Some(Pipeline::start(cfg, pool, schema, &e2e_prefix).await?),
    };
    // The target rate several times (the host is noisy), then lower rates: where the knee is.
    let extra: Vec<u64> = std::env::var("BENCH_EXTRA_RATES")
        .unwrap_or_else(|_| "800,500".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let rates: Vec<u64> = std::iter::repeat_n(cfg.rate, cfg.rounds)
        .chain(extra)
        .collect();
    for (n, rate) in rates.into_iter().enumerate() {
        let Some(pipeline) = &pipeline else { break };
        eprintln!(
            "end to end, round {}: POST /v1/tasks at {rate}/s for {} s…",
            n + 1,
            cfg.seconds
        );
        rounds.push(pipeline.round(rate, cfg.seconds).await?);
    }
    drop(pipeline);

    let mut r = String::new();
    for (module, events, limit, one, two) in applies {
        let n = events.len() as f64;
        let rate = |d: Duration| n / d.as_secs_f64();
        let aggregates: std::collections::HashSet<Uuid> =
            events.iter().map(|e| e.aggregate_id).collect();
        writeln!(
            r,
            "### Projector apply rate, {} ({} events of {} aggregates, batch {})\n",
            module.spec.name,
            events.len(),
            aggregates.len(),
            cfg.batch
        )?;
        writeln!(r, "| measure | value | ratio |")?;
        writeln!(r, "|---|---|---|")?;
        writeln!(
            r,
            "| Redis limit: the same apply-script calls sent straight to Redis, pipelined per batch of {}, 4 connections | {limit:.0} events/s | 1.00 |",
            cfg.batch
        )?;
        for (label, (d, cpu)) in [("1 replica, P = 1", one), ("2 replicas, P = 4", two)] {
            writeln!(
                r,
                "| projector-worker, {label} (start to empty group; CPU: projector {:.1} s, Redis {:.1} s) | {:.0} events/s ({:.2} s) | {:.2} × limit, {:.2} × target |",
                cpu.projector.as_secs_f64(),
                cpu.redis.as_secs_f64(),
                rate(d),
                d.as_secs_f64(),
                rate(d) / limit,
                rate(d) / 20_000.0
            )?;
        }
        writeln!(r, "| target | 20000 events/s | |")?;
        writeln!(r)?;
    }
    if rounds.is_empty() {
        return Ok(r);
    }
    writeln!(
        r,
        "| commit → visible in query-api (target rate {} commands/s) | commands | p50 | p99 | max |",
        cfg.rate
    )?;
    writeln!(r, "|---|---|---|---|---|")?;
    for (i, round) in rounds.iter().enumerate() {
        writeln!(
            r,
            "| round {}, {}/s: command answered → query-api answered it (consistency token) | {} | {:.2} ms | {:.2} ms | {:.2} ms |",
            i + 1,
            round.rate,
            round.visible.len(),
            ms(percentile(&round.visible, 0.5)),
            ms(percentile(&round.visible, 0.99)),
            ms(percentile(&round.visible, 1.0))
        )?;
        writeln!(
            r,
            "| round {}, {}/s: the command itself (request → answer) | | {:.2} ms | {:.2} ms | {:.2} ms |",
            i + 1,
            round.rate,
            ms(percentile(&round.command, 0.5)),
            ms(percentile(&round.command, 0.99)),
            ms(percentile(&round.command, 1.0))
        )?;
        for (what, probe) in [
            ("a bare PostgreSQL round trip", &round.floor),
            ("a one-row durable commit", &round.floor_commit),
        ] {
            writeln!(
                r,
                "| round {}: floor, {what} at {FLOOR_RATE}/s meanwhile | {} | {:.2} ms | {:.2} ms | {:.2} ms |",
                i + 1,
                probe.len(),
                ms(percentile(probe, 0.5)),
                ms(percentile(probe, 0.99)),
                ms(percentile(probe, 1.0))
            )?;
        }
    }
    writeln!(r, "| target p99 | | | 25 ms | |")?;
    writeln!(r)?;
    writeln!(
        r,
        "Where the 2 cores went in each round (CPU seconds per second of load, by process name):\n"
    )?;
    for (i, round) in rounds.iter().enumerate() {
        let wall = round.wall.as_secs_f64().max(f64::EPSILON);
        let total: f64 = round.cpu.iter().map(|(_, t)| t.as_secs_f64()).sum::<f64>() / wall;
        let parts: Vec<String> = round
            .cpu
            .iter()
            .map(|(n, t)| format!("{n} {:.2}", t.as_secs_f64() / wall))
            .collect();
        writeln!(
            r,
            "- round {}: {total:.2} of 2.00 — {}",
            i + 1,
            parts.join(", ")
        )?;
    }
    Ok(r)
}

/// XADDs `events` to `module`'s streams of `pools` routed over `partitions`; returns the
/// entry ids in the order of `events`.
async fn publish(
    pools: &RedisPools,
    module: &Module,
    events: &[EventEnvelope],
    partitions: u32,
) -> anyhow::Result<Vec<(String, String)>> {
    let routing = pools.keys.routing(partitions);
    let json: Vec<(String, String, String)> = events
        .iter()
        .map(|e| {
            (
                routing.stream_for(module.spec.name, e.aggregate_id),
                e.event_id.to_string(),
                e.to_json(),
            )
        })
        .collect();
    let mut conn = pools.commands.get().await?;
    let mut ids = Vec::with_capacity(events.len());
    for (chunk, envs) in json.chunks(2000).zip(events.chunks(2000)) {
        let list: Vec<StreamEntry<'_>> = chunk
            .iter()
            .zip(envs)
            .map(|((stream, id, envelope), e)| StreamEntry {
                stream,
                event_id: id,
                event_type: &e.event_type,
                envelope,
            })
            .collect();
        let added = publisher::publish(&mut *conn, &list).await?;
        ids.extend(chunk.iter().map(|c| c.0.clone()).zip(added));
    }
    Ok(ids)
}

/// The Redis limit for the apply script: every event's script call, planned in memory, sent
/// in pipelined batches over 4 connections (each owning a quarter of the aggregates, so each
/// aggregate's versions arrive in order), with the acknowledgement of a real pending entry and
/// the lease check the projector sends. Returns events/s.
async fn apply_limit(
    cfg: &Config,
    module: &Module,
    events: &[EventEnvelope],
    prefix: &str,
) -> anyhow::Result<f64> {
    let pools = RedisPools::connect(&RedisSettings::new(
        cfg.redis_url.clone(),
        prefix.to_owned(),
    ))?;
    let keys = pools.keys.read_model(module.spec.name, INITIAL_GENERATION);
    let generations = Generations::new(
        &pools.keys,
        module.spec.name,
        module.spec.projection,
        GenerationState::default(),
    );
    let group = module.spec.consumer_group;
    let refs: Vec<&EventEnvelope> = events.iter().collect();
    let plans = projection::plan(
        (module.projection)().as_ref(),
        &keys,
        &refs,
        &HashMap::new(),
        &mut ViewState::default(),
    );
    let entries = publish(&pools, module, events, 1).await?;
    let stream = entries.first().map(|e| e.0.clone()).context("no events")?;
    let lease = format!("{prefix}lease");
    {
        let mut conn = pools.commands.get().await?;
        consumer::ensure_group(&mut *conn, &stream, group).await?;
        // Deliver every entry to the group, so that each XACK in the script has work to do.
        let mut delivered = 0;
        while delivered < events.len() {
            let got = consumer::read_group(
                &mut *conn,
                group,
                "limit",
                std::slice::from_ref(&stream),
                consumer::ReadFrom::New,
                10_000,
                None,
            )
            .await?;
            ensure!(!got.is_empty(), "the limit stream ran dry at {delivered}");
            delivered += got.len();
        }
        let _: () = redis::cmd("SET")
            .arg(&lease)
            .arg("limit")
            .query_async(&mut *conn)
            .await?;
        // A served generation, whole, as the projector's applies expect it.
        generations.activate(&mut *conn, INITIAL_GENERATION).await?;
        streams::read_model::mark_built(&mut *conn, &keys, "{}").await?;
    }
    let guard = generations.guard();
    let mut lanes: Vec<Vec<ApplyItem>> = vec![Vec::new(); 4];
    for ((event, plan), (_, entry)) in events.iter().zip(plans).zip(entries) {
        let PlanOutcome::Apply(ops) = plan else {
            bail!("the projection refused {}: {plan:?}", event.event_type);
        };
        // The very item the projector sends: guarded, fenced, the marker checked.
        lanes[(event.aggregate_id.as_u128() % 4) as usize].push(ApplyItem {
            aggregate_id: event.aggregate_id,
            version: event.aggregate_version,
            targets: vec![Target {
                versions_key: keys.versions(),
                marker: Some(keys.marker()),
                ops,
            }],
            ack: Some((stream.clone(), group.to_owned(), entry)),
            fence: Some((lease.clone(), "limit".to_owned())),
            guard: Some(guard.clone()),
        });
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for lane in lanes {
        let (pools, batch) = (pools.clone(), cfg.batch);
        tasks.spawn(async move {
            let mut conn = pools.commands.get().await?;
            let mut applied = 0usize;
            for batch in lane.chunks(batch) {
                let outcomes = streams::apply_batch(&mut *conn, batch).await?;
                applied += outcomes
                    .iter()
                    .filter(|o| matches!(o, ApplyOutcome::Applied))
                    .count();
            }
            anyhow::Ok(applied)
        });
    }
    let mut applied = 0;
    while let Some(done) = tasks.join_next().await {
        applied += done??;
    }
    let took = started.elapsed();
    ensure!(
        applied == events.len(),
        "only {applied} of {} applied",
        events.len()
    );
    Ok(events.len() as f64 / took.as_secs_f64())
}

/// Fills fresh streams of `module` with `events` over `partitions`, starts `replicas`
/// projector-worker processes, and times them from start until every group has read and
/// acknowledged everything; then checks the read model holds every aggregate at its last
/// version.
async fn drain(
    cfg: &Config,
    schema: &str,
    prefix: &str,
    module: &Module,
    events: &[EventEnvelope],
    partitions: u32,
    replicas: usize,
) -> anyhow::Result<(Duration, Cpu)> {
    let pools = RedisPools::connect(&RedisSettings::new(
        cfg.redis_url.clone(),
        prefix.to_owned(),
    ))?;
    publish(&pools, module, events, partitions).await?;
    let streams = pools.keys.routing(partitions).streams(module.spec.name);
    let group = module.spec.consumer_group;
    let redis_cpu = bench::redis_cpu(&pools).await?;
    let started = Instant::now();
    let procs: Vec<Process> = (0..replicas)
        .map(|i| {
            Process::spawn(
                "projector-worker",
                &[
                    ("DATABASE_URL", cfg.pg_url.clone()),
                    ("DATABASE_SCHEMA", schema.to_owned()),
                    ("REDIS_URL", cfg.redis_url.clone()),
                    ("REDIS_KEY_PREFIX", prefix.to_owned()),
                    ("STREAM_PARTITIONS", partitions.to_string()),
                    ("CONSUMER_NAME", format!("bench-{i}")),
                    ("PROJECTOR_BATCH_SIZE", cfg.batch.to_string()),
                    ("HTTP_ADDR", "127.0.0.1:0".to_owned()),
                    ("RUST_LOG", "warn".to_owned()),
                ],
            )
        })
        .collect::<std::io::Result<_>>()?;
    let mut conn = pools.commands.get().await?;
    loop {
        let mut done = true;
        for s in &streams {
            let groups = consumer::groups(&mut *conn, s).await?;
            done &= groups
                .iter()
                .any(|g| g.name == group && g.pending == 0 && g.lag == Some(0));
        }
        if done {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!(
                "the projector did not drain {} events in 5 minutes",
                events.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    let cpu = Cpu {
        projector: procs.iter().map(|p| cpu_time(p.pid())).sum(),
        redis: bench::redis_cpu(&pools).await? - redis_cpu,
    };
    drop(procs);
    let served = Generations::new(
        &pools.keys,
        module.spec.name,
        module.spec.projection,
        GenerationState::default(),
    );
    served.refresh(&mut *conn).await?;
    let model = served
        .active_keys()
        .context("the projector built no read model")?;
    let versions: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(model.versions())
        .query_async(&mut *conn)
        .await?;
    let mut last: HashMap<String, i64> = HashMap::new();
    for e in events {
        let v = last.entry(e.aggregate_id.to_string()).or_default();
        *v = (*v).max(e.aggregate_version);
    }
    ensure!(
        versions == last,
        "the read model does not hold every aggregate at its last version"
    );
    Ok((took, cpu))
}

/// CPU used during a drain.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    /// By the projector processes.
    projector: Duration,
    /// By the Redis server.
    redis: Duration,
}

/// The whole pipeline as release processes on one schema and prefix.
struct Pipeline {
    _procs: Vec<Process>,
    /// For the floor probe.
    pool: outbox::Pool,
    command_url: String,
    query_url: String,
    tokens: Vec<String>,
    http: reqwest::Client,
}

impl Pipeline {
    async fn start(
        cfg: &Config,
        pool: &outbox::Pool,
        schema: &str,
        prefix: &str,
    ) -> anyhow::Result<Self> {
        let env = |port: u16| -> Vec<(&str, String)> {
            vec![
                ("DATABASE_URL", cfg.pg_url.clone()),
                ("DATABASE_SCHEMA", schema.to_owned()),
                ("REDIS_URL", cfg.redis_url.clone()),
                ("REDIS_KEY_PREFIX", prefix.to_owned()),
                (
                    "STREAM_PARTITIONS",
                    env_or("BENCH_E2E_PARTITIONS", 4u32).to_string(),
                ),
                ("JWT_SECRET", SECRET.to_owned()),
                ("CONSUMER_NAME", "bench".to_owned()),
                ("HTTP_ADDR", format!("127.0.0.1:{port}")),
                ("RUST_LOG", "warn".to_owned()),
            ]
        };
        let mut procs = Vec::new();
        let mut urls = HashMap::new();
        for name in [
            "command-api",
            "query-api",
            "outbox-relay",
            "projector-worker",
        ] {
            let port = free_port();
            procs.push(Process::spawn(name, &env(port))?);
            let url = format!("http://127.0.0.1:{port}");
            wait_ready(&url, Duration::from_secs(20))
                .await
                .map_err(anyhow::Error::msg)?;
            urls.insert(name, url);
        }
        // The durable-commit probe's table (the run's schema goes at clean-up).
        pool.get()
            .await?
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS bench_floor (id bigserial PRIMARY KEY, \
                 at timestamptz NOT NULL DEFAULT now())",
            )
            .await?;
        let mut tokens = Vec::new();
        for _ in 0..50 {
            let out =
                std::process::Command::new(find_binary("command-api").map_err(anyhow::Error::msg)?)
                    .args([
                        "token",
                        "--user",
                        &Uuid::now_v7().to_string(),
                        "--ttl",
                        "1h",
                    ])
                    .env("JWT_SECRET", SECRET)
                    .output()
                    .context("minting a token")?;
            ensure!(
                out.status.success(),
                "token: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            tokens.push(String::from_utf8(out.stdout)?.trim().to_owned());
        }
        Ok(Self {
            _procs: procs,
            pool: pool.clone(),
            command_url: urls["command-api"].clone(),
            query_url: urls["query-api"].clone(),
            tokens,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()?,
        })
    }

    /// One second of warm-up, then `rate` creations per second for `seconds`, each followed
    /// by a read with its consistency token.
    async fn round(&self, rate: u64, seconds: u64) -> anyhow::Result<Round> {
        let warmup = rate as usize;
        let total = (rate * seconds) as usize;
        let measured: Arc<Mutex<Round>> = Arc::default();
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut clients = tokio::task::JoinSet::new();
        let mut cpu_before = None;
        let mut started = Instant::now();
        let done = tokio_util::sync::CancellationToken::new();
        let mut probe = None;
        for n in 0..warmup + total {
            if n == warmup {
                cpu_before = Some(cpu_by_command());
                started = Instant::now();
                probe = Some((
                    bench::floor_probe(&self.pool, "SELECT 1", FLOOR_RATE, done.clone()),
                    bench::floor_probe(&self.pool, FLOOR_COMMIT, FLOOR_RATE, done.clone()),
                ));
            }
            tick.tick().await;
            let (http, measured) = (self.http.clone(), measured.clone());
            let token = self.tokens[n % self.tokens.len()].clone();
            let (command_url, query_url) = (self.command_url.clone(), self.query_url.clone());
            clients.spawn(async move {
                let sent = Instant::now();
                let res = http
                    .post(format!("{command_url}/v1/tasks"))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({"title": "bench", "type": "learning", "estimated_minutes": 30}))
                    .send()
                    .await?;
                ensure!(res.status() == reqwest::StatusCode::CREATED, "command answered {}", res.status());
                let body: serde_json::Value = res.json().await?;
                let answered = Instant::now();
                let (id, consistency) = (
                    body["id"].as_str().context("id")?.to_owned(),
                    body["consistency_token"].as_str().context("token")?.to_owned(),
                );
                let res = http
                    .get(format!("{query_url}/v1/tasks/{id}"))
                    .bearer_auth(&token)
                    .header("x-consistency-token", consistency)
                    .send()
                    .await?;
                let visible = Instant::now();
                ensure!(
                    res.status() == reqwest::StatusCode::OK
                        && res.headers().get("x-consistency").is_some_and(|v| v == "fresh"),
                    "query answered {} {:?}",
                    res.status(),
                    res.headers().get("x-consistency")
                );
                if n >= warmup {
                    let mut m = measured.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                    m.command.push(answered - sent);
                    m.visible.push(visible - answered);
                }
                anyhow::Ok(())
            });
        }
        while let Some(finished) = clients.join_next().await {
            finished??;
        }
        let wall = started.elapsed();
        done.cancel();
        let (floor, floor_commit) = match probe {
            Some((read, commit)) => (
                read.await.unwrap_or_default(),
                commit.await.unwrap_or_default(),
            ),
            None => (Vec::new(), Vec::new()),
        };
        let before = cpu_before.unwrap_or_default();
        let mut round =
            std::mem::take(&mut *measured.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
        // Processes that ended meanwhile (none here) would show as negative: saturating.
        round.cpu = cpu_by_command()
            .into_iter()
            .map(|(name, t)| {
                (
                    name.clone(),
                    t.saturating_sub(before.get(&name).copied().unwrap_or_default()),
                )
            })
            .filter(|(_, t)| *t >= Duration::from_millis(100))
            .collect();
        round.cpu.sort_by_key(|(_, t)| std::cmp::Reverse(*t));
        round.wall = wall;
        round.rate = rate;
        round.floor = floor;
        round.floor_commit = floor_commit;
        round.command.sort();
        round.visible.sort();
        ensure!(
            round.visible.len() == total,
            "{} of {total} measured",
            round.visible.len()
        );
        Ok(round)
    }
}

/// One end-to-end round, sorted.
#[derive(Default)]
struct Round {
    /// Command request → answer.
    command: Vec<Duration>,
    /// Command answered → query-api answered the task, fresh.
    visible: Vec<Duration>,
    /// CPU used during the measured part, by command name, largest first.
    cpu: Vec<(String, Duration)>,
    /// Duration of the measured part.
    wall: Duration,
    /// Commands per second.
    rate: u64,
    /// A bare PostgreSQL round trip at [`FLOOR_RATE`] during the round, sorted: where the host
    /// itself stalled.
    floor: Vec<Duration>,
    /// A one-row durable commit at [`FLOOR_RATE`] during the round, sorted: where the disk
    /// stalled every commit, the commands' included.
    floor_commit: Vec<Duration>,
}

/// Probes per second (of each kind) during an end-to-end round: enough for a p99, too few to
/// load the machine being measured.
const FLOOR_RATE: u64 = 100;

/// The durable-commit probe: a one-row insert in its own transaction.
const FLOOR_COMMIT: &str = "INSERT INTO bench_floor DEFAULT VALUES";
