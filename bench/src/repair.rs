//! Self-repair benchmark (`make bench`), for every module of the registry, next to the limit
//! of this machine measured in the same run:
//!
//! - **replay**: a rebuild from scratch of `BENCH_REPLAY_EVENTS` events of the module's sample
//!   history, in this process (the projector's own code, release build), against the Redis
//!   limit for the very same script calls: every page planned in memory beforehand and sent
//!   straight to Redis, page after page, split into lanes by aggregate as a replay sends them;
//!   and next to the limit of the fast path a rebuild actually takes (the same pages written
//!   as runs, [`streams::bulk`]);
//! - **gap repair**: `BENCH_GAP_AGGREGATES` aggregates whose middle versions were lost (a
//!   failover that lost their stream entries), then their next event arrives: the release
//!   `projector-worker` repairs each from `event_store`; aggregates and events repaired per
//!   second;
//! - **loss → converged**: every key of a built read model deleted one by one (`SCAN` +
//!   `UNLINK`) under a running `projector-worker`; the time until a generation holding the
//!   whole history is served again.
//!
//! Prints a markdown report (also written to `target/bench/repair.md`).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use bench::env_or;
use events::EventEnvelope;
use modules::Module;
use outbox::PgSettings;
use projection::{PlanOutcome, Projector, ProjectorSettings, ViewState};
use streams::bulk::{Run, Written, write_runs};
use streams::publisher::{self, StreamEntry};
use streams::{
    ApplyItem, ApplyOutcome, GenerationGuard, GenerationState, Generations, ReadModelKeys,
    RedisPools, RedisSettings, Target, redis,
};
use test_kit::process::Process;

// The replay runs in this process: with the services' allocator, as it runs in production.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A rebuild's page: what the projector reads from `event_store` at a time.
const PAGE: usize = 1000;

/// Lanes a rebuild splits each page into (by aggregate), applied side by side.
const LANES: usize = 4;

struct Config {
    pg_url: String,
    redis_url: String,
    replay_events: usize,
    gap_aggregates: usize,
    /// The modules to measure (`BENCH_MODULES`, names separated by commas; all by default).
    modules: Option<Vec<String>>,
    /// Only the replay and its limit (`BENCH_REPAIR_ONLY=replay`), to iterate on it.
    replay_only: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config {
        pg_url: bench::pg_url(),
        redis_url: bench::redis_url(),
        replay_events: env_or("BENCH_REPLAY_EVENTS", 200_000),
        gap_aggregates: env_or("BENCH_GAP_AGGREGATES", 10_000),
        modules: std::env::var("BENCH_MODULES")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.split(',').map(|m| m.trim().to_owned()).collect()),
        replay_only: match std::env::var("BENCH_REPAIR_ONLY").as_deref() {
            Err(_) | Ok("") => false,
            Ok("replay") => true,
            Ok(other) => {
                eprintln!("BENCH_REPAIR_ONLY={other:?}: expected \"replay\"");
                std::process::exit(2)
            }
        },
    };
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut report = String::new();
    for module in modules::ALL.iter().filter(|m| {
        cfg.modules
            .as_ref()
            .is_none_or(|only| only.iter().any(|o| o == m.spec.name))
    }) {
        let schema = format!("bench_repair_{}_{stamp}", module.spec.name);
        let prefix = format!("bench:repair:{stamp}:");
        let pool = outbox::connect(&PgSettings {
            max_connections: 8,
            ..PgSettings::new(cfg.pg_url.clone(), schema.clone())
        })?;
        outbox::migrate::migrate(&pool, &schema).await?;
        // As every service hosting projections does at start (no migration seeds the rows).
        outbox::control::ControlStore::new(pool.clone())
            .register(&[module.spec.projection])
            .await?;
        let redis =
            RedisPools::connect(&RedisSettings::new(cfg.redis_url.clone(), prefix.clone()))?;
        let result = run(&cfg, module, &pool, &schema, &prefix).await;
        bench::clean_up(&pool, &schema, &redis, &prefix).await;
        report.push_str(&result?);
    }
    bench::publish_report("repair", &report)?;
    Ok(())
}

async fn run(
    cfg: &Config,
    module: &'static Module,
    pool: &outbox::Pool,
    schema: &str,
    prefix: &str,
) -> anyhow::Result<String> {
    let name = module.spec.name;
    let history = (module.sample_history)(cfg.replay_events);
    eprintln!(
        "{name}: importing {} events into event_store…",
        history.len()
    );
    outbox::history::import(&**pool.get().await?, &history).await?;

    eprintln!("{name}: the replay limit…");
    let limit = replay_limit(cfg, module, &history, &format!("{prefix}limit:")).await?;
    eprintln!("{name}: {limit:.0} events/s; the fast path's limit…");
    let runs = runs_limit(cfg, module, &history, &format!("{prefix}runs:")).await?;
    eprintln!("{name}: {runs:.0} events/s; a rebuild from scratch…");
    let replay_prefix = format!("{prefix}replay:");
    let (took, events) = rebuild(cfg, module, pool, &replay_prefix).await?;
    let replay = events as f64 / took.as_secs_f64();
    eprintln!("{name}: {replay:.0} events/s");
    if cfg.replay_only {
        return Ok(format!(
            "### Replay, {name} ({} events): script limit {limit:.0} events/s, runs limit {runs:.0} events/s, rebuild {replay:.0} events/s ({:.2} × the script's limit, {:.2} × the runs')\n\n",
            history.len(),
            replay / limit,
            replay / runs
        ));
    }

    eprintln!("{name}: loss → converged…");
    let converged = loss_to_converged(cfg, module, schema, &replay_prefix, history.len()).await?;

    eprintln!("{name}: gap repair…");
    let gap_schema = format!("{schema}_gap");
    let gap_pool = outbox::connect(&PgSettings {
        max_connections: 8,
        ..PgSettings::new(cfg.pg_url.clone(), gap_schema.clone())
    })?;
    outbox::migrate::migrate(&gap_pool, &gap_schema).await?;
    outbox::control::ControlStore::new(gap_pool.clone())
        .register(&[module.spec.projection])
        .await?;
    let gap_prefix = format!("{prefix}gap:");
    let gap = gap_repair(cfg, module, &gap_pool, &gap_schema, &gap_prefix).await;
    let gap_redis = RedisPools::connect(&RedisSettings::new(
        cfg.redis_url.clone(),
        gap_prefix.clone(),
    ))?;
    bench::clean_up(&gap_pool, &gap_schema, &gap_redis, &gap_prefix).await;
    let gap = gap?;

    let mut r = String::new();
    writeln!(
        r,
        "### Self-repair, {name} ({} events of history)\n",
        history.len()
    )?;
    writeln!(r, "| measure | value | ratio |")?;
    writeln!(r, "|---|---|---|")?;
    writeln!(
        r,
        "| Redis limit: the apply script's calls of a replay (one checked item per event), planned beforehand, page by page ({PAGE}), {LANES} lanes by aggregate | {limit:.0} events/s | 1.00 |"
    )?;
    writeln!(
        r,
        "| Redis limit of the fast path: the same pages written as runs (`streams::bulk`), planned beforehand | {runs:.0} events/s | {:.2} × limit |",
        runs / limit
    )?;
    writeln!(
        r,
        "| rebuild from scratch (replay of event_store into a new generation, then the switch) | {replay:.0} events/s ({:.2} s) | {:.2} × limit, {:.2} × the fast path's, {:.2} × target |",
        took.as_secs_f64(),
        replay / limit,
        replay / runs,
        replay / 50_000.0
    )?;
    writeln!(r, "| replay target | 50000 events/s | |")?;
    writeln!(
        r,
        "| gap repair: {} aggregates missing 2 versions each, their next event arriving (release projector-worker) | {:.0} aggregates/s, {:.0} events/s repaired ({:.2} s) | |",
        gap.aggregates,
        gap.aggregates as f64 / gap.took.as_secs_f64(),
        gap.repaired as f64 / gap.took.as_secs_f64(),
        gap.took.as_secs_f64()
    )?;
    writeln!(
        r,
        "| every key deleted one by one under a running projector-worker → the whole history served again | {:.2} s ({:.0} events replayed per second of it) | |",
        converged.as_secs_f64(),
        history.len() as f64 / converged.as_secs_f64()
    )?;
    writeln!(r)?;
    Ok(r)
}

fn generations(pools: &RedisPools, module: &Module) -> Generations {
    Generations::new(
        &pools.keys,
        module.spec.name,
        module.spec.projection,
        GenerationState::default(),
    )
}

/// What both limits measure with: a generation 2 being built under `prefix`, and every event
/// of `history` planned into it beforehand (in memory, from nothing).
struct Planned<'a> {
    pools: RedisPools,
    generations: Generations,
    keys: ReadModelKeys,
    events: Vec<(&'a EventEnvelope, Vec<streams::Op>)>,
}

async fn planned<'a>(
    cfg: &Config,
    module: &Module,
    history: &'a [EventEnvelope],
    prefix: &str,
) -> anyhow::Result<Planned<'a>> {
    let pools = RedisPools::connect(&RedisSettings::new(
        cfg.redis_url.clone(),
        prefix.to_owned(),
    ))?;
    let generations = generations(&pools, module);
    let keys = generations.keys_of(2);
    {
        let mut conn = pools.commands.get().await?;
        generations.start_building(&mut *conn, 2).await?;
    }
    let refs: Vec<&EventEnvelope> = history.iter().collect();
    let plans = projection::plan(
        (module.projection)().as_ref(),
        &keys,
        &refs,
        &HashMap::new(),
        &mut ViewState::default(),
    );
    let mut events = Vec::with_capacity(history.len());
    for (e, plan) in history.iter().zip(plans) {
        let PlanOutcome::Apply(ops) = plan else {
            anyhow::bail!("the projection refused {}: {plan:?}", e.event_type);
        };
        events.push((e, ops));
    }
    Ok(Planned {
        pools,
        generations,
        keys,
        events,
    })
}

/// The Redis limit for a replay: the items a rebuild sends (guarded, into a generation being
/// built), planned in memory beforehand and sent page after page from one connection.
async fn replay_limit(
    cfg: &Config,
    module: &Module,
    history: &[EventEnvelope],
    prefix: &str,
) -> anyhow::Result<f64> {
    let Planned {
        pools,
        generations: g,
        keys,
        events,
    } = planned(cfg, module, history, prefix).await?;
    let guard = GenerationGuard {
        key: g.pointer().to_owned(),
        expected: GenerationState {
            active: None,
            building: Some(2),
        },
    };
    let items: Vec<ApplyItem> = events
        .into_iter()
        .map(|(e, ops)| ApplyItem {
            targets: vec![Target {
                versions_key: keys.versions(),
                marker: None,
                ops,
            }],
            guard: Some(guard.clone()),
            ..ApplyItem::new(String::new(), e.aggregate_id, e.aggregate_version, vec![])
        })
        .collect();
    // Split as the replay splits a page: by aggregate, into lanes applied side by side.
    let started = Instant::now();
    let mut applied = 0;
    for page in items.chunks(PAGE) {
        let mut lanes: Vec<Vec<ApplyItem>> = vec![Vec::new(); LANES];
        for item in page {
            lanes[(item.aggregate_id.as_u128() % LANES as u128) as usize].push(item.clone());
        }
        let done = futures::future::join_all(lanes.iter().map(|lane| {
            let pools = pools.clone();
            async move {
                let mut conn = pools.commands.get().await?;
                anyhow::Ok(
                    streams::apply_batch(&mut *conn, lane)
                        .await?
                        .iter()
                        .filter(|o| matches!(o, ApplyOutcome::Applied))
                        .count(),
                )
            }
        }))
        .await;
        for d in done {
            applied += d?;
        }
    }
    let took = started.elapsed();
    ensure!(
        applied == history.len(),
        "only {applied} of {} applied",
        history.len()
    );
    Ok(history.len() as f64 / took.as_secs_f64())
}

/// The Redis limit of a rebuild's fast path: the runs it writes ([`streams::bulk`]), planned
/// in memory beforehand and sent page after page, each page's share of a lane folded into one
/// run per aggregate, the lanes side by side.
async fn runs_limit(
    cfg: &Config,
    module: &Module,
    history: &[EventEnvelope],
    prefix: &str,
) -> anyhow::Result<f64> {
    let Planned {
        pools,
        generations: g,
        keys,
        events,
    } = planned(cfg, module, history, prefix).await?;
    let pages: Vec<Vec<Vec<Run>>> = events
        .chunks(PAGE)
        .map(|page| {
            let mut lanes: Vec<Vec<Run>> = vec![Vec::new(); LANES];
            let mut at: HashMap<uuid::Uuid, (usize, usize)> = HashMap::new();
            for (e, ops) in page {
                let lane = (e.aggregate_id.as_u128() % LANES as u128) as usize;
                let (l, i) = *at.entry(e.aggregate_id).or_insert_with(|| {
                    lanes[lane].push(Run::new(e.aggregate_id, e.aggregate_version - 1));
                    (lane, lanes[lane].len() - 1)
                });
                lanes[l][i].push(e.aggregate_version, ops.clone());
            }
            lanes
        })
        .collect();
    let started = Instant::now();
    let mut written = 0;
    for lanes in &pages {
        let done = futures::future::join_all(lanes.iter().map(|runs| {
            let (pools, pointer, versions) = (pools.clone(), g.pointer(), keys.versions());
            async move {
                let mut conn = pools.commands.get().await?;
                match write_runs(&mut *conn, pointer, &versions, 2, runs).await? {
                    Written::Runs(flags) => anyhow::Ok(
                        runs.iter()
                            .zip(flags)
                            .filter(|(_, ok)| *ok)
                            .map(|(r, _)| usize::try_from(r.to - r.from).unwrap_or(0))
                            .sum::<usize>(),
                    ),
                    Written::Moved => anyhow::bail!("the generation stopped being built"),
                }
            }
        }))
        .await;
        for d in done {
            written += d?;
        }
    }
    let took = started.elapsed();
    ensure!(
        written == history.len(),
        "only {written} of {} written",
        history.len()
    );
    Ok(history.len() as f64 / took.as_secs_f64())
}

fn projector(pools: &RedisPools, pool: &outbox::Pool, module: &Module, replica: &str) -> Projector {
    Projector::new(
        pools.clone(),
        Some(pool.clone()),
        (module.projection)(),
        ProjectorSettings::new(replica),
    )
}

/// Builds the read model from scratch in this process; returns the time and events replayed.
async fn rebuild(
    cfg: &Config,
    module: &Module,
    pool: &outbox::Pool,
    prefix: &str,
) -> anyhow::Result<(Duration, i64)> {
    let pools = RedisPools::connect(&RedisSettings::new(
        cfg.redis_url.clone(),
        prefix.to_owned(),
    ))?;
    let p = projector(&pools, pool, module, "bench");
    p.ensure_groups().await?;
    let started = Instant::now();
    let outcome = p.rebuild("benchmark").await?;
    let took = started.elapsed();
    let projection::RebuildOutcome::Switched { events, .. } = outcome else {
        anyhow::bail!("the rebuild did not run: {outcome:?}");
    };
    Ok((took, events))
}

fn worker_env(cfg: &Config, schema: &str, prefix: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", cfg.pg_url.clone()),
        ("DATABASE_SCHEMA", schema.to_owned()),
        ("REDIS_URL", cfg.redis_url.clone()),
        ("REDIS_KEY_PREFIX", prefix.to_owned()),
        ("STREAM_PARTITIONS", "1".to_owned()),
        ("CONSUMER_NAME", "bench".to_owned()),
        ("HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ]
}

/// The served generation holds every aggregate of `events` at its last version.
async fn whole(pools: &RedisPools, module: &Module, events: usize) -> anyhow::Result<bool> {
    let g = generations(pools, module);
    let mut conn = pools.commands.get().await?;
    g.refresh(&mut *conn).await?;
    let Some(model) = g.active_keys() else {
        return Ok(false);
    };
    if !streams::read_model::is_built(&mut *conn, &model).await? {
        return Ok(false);
    }
    let versions: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(model.versions())
        .query_async(&mut *conn)
        .await?;
    Ok(versions
        .values()
        .map(|v| usize::try_from(*v).unwrap_or(0))
        .sum::<usize>()
        == events)
}

/// Deletes every key of the read model built at `prefix` one by one under a running
/// projector-worker; returns the time until the whole history is served again.
async fn loss_to_converged(
    cfg: &Config,
    module: &Module,
    schema: &str,
    prefix: &str,
    events: usize,
) -> anyhow::Result<Duration> {
    let pools = RedisPools::connect(&RedisSettings::new(
        cfg.redis_url.clone(),
        prefix.to_owned(),
    ))?;
    let worker = Process::spawn("projector-worker", &worker_env(cfg, schema, prefix))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !whole(&pools, module, events).await? {
        ensure!(
            Instant::now() < deadline,
            "the worker never served the read model"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let mut conn = pools.commands.get().await?;
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut *conn)
            .await?;
        if !keys.is_empty() {
            let _: i64 = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut *conn)
                .await?;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    // Give the loss a moment to be seen, then wait for the whole history to be served again.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if started.elapsed() > Duration::from_millis(200) && whole(&pools, module, events).await? {
            break;
        }
        ensure!(Instant::now() < deadline, "not converged within 5 minutes");
    }
    let took = started.elapsed();
    drop(worker);
    Ok(took)
}

struct Gap {
    aggregates: usize,
    repaired: usize,
    took: Duration,
}

/// Aggregates whose versions 2 and 3 never reached the stream; their version 4 arrives.
async fn gap_repair(
    cfg: &Config,
    module: &'static Module,
    pool: &outbox::Pool,
    schema: &str,
    prefix: &str,
) -> anyhow::Result<Gap> {
    // The aggregates whose life reaches version 4 (at most `gap_aggregates` of them), up to
    // it: a module's sample may hold shorter lives (a galaxy node: created, related) and
    // longer ones (a post's is 5, a user's progress on a node 6), so ask for more than enough
    // events and keep those; the scenario is about versions 1 to 4.
    let sample = (module.sample_history)(cfg.gap_aggregates * 8);
    let kept: HashSet<uuid::Uuid> = sample
        .iter()
        .filter(|e| e.aggregate_version == 4)
        .take(cfg.gap_aggregates)
        .map(|e| e.aggregate_id)
        .collect();
    let history: Vec<EventEnvelope> = sample
        .into_iter()
        .filter(|e| e.aggregate_version <= 4 && kept.contains(&e.aggregate_id))
        .collect();
    let aggregates = kept.len();
    ensure!(
        aggregates > 0,
        "{}'s sample history has no version 4",
        module.spec.name
    );
    let by_version = |v: i64| -> Vec<EventEnvelope> {
        history
            .iter()
            .filter(|e| e.aggregate_version == v)
            .cloned()
            .collect()
    };
    let client = pool.get().await?;
    outbox::history::import(&**client, &by_version(1)).await?;
    let pools = RedisPools::connect(&RedisSettings::new(
        cfg.redis_url.clone(),
        prefix.to_owned(),
    ))?;
    {
        // The read model as of version 1, built.
        let p = Arc::new(projector(&pools, pool, module, "bench"));
        p.ensure_groups().await?;
        p.rebuild("benchmark").await?;
    }
    // Versions 2 and 3 are committed but lost on the way; version 4 reaches the stream.
    outbox::history::import(&**client, &[by_version(2), by_version(3)].concat()).await?;
    let last = by_version(4);
    outbox::history::import(&**client, &last).await?;
    let stream = pools.keys.routing(1).stream(module.spec.name, 0);
    let json: Vec<String> = last.iter().map(EventEnvelope::to_json).collect();
    let mut conn = pools.commands.get().await?;
    for chunk in json.chunks(2000) {
        let entries: Vec<StreamEntry<'_>> = chunk
            .iter()
            .map(|envelope| StreamEntry {
                stream: &stream,
                event_id: "x",
                event_type: "t",
                envelope,
            })
            .collect();
        publisher::publish(&mut *conn, &entries).await?;
    }
    let started = Instant::now();
    let worker = Process::spawn("projector-worker", &worker_env(cfg, schema, prefix))?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while !whole(&pools, module, history.len()).await? {
        ensure!(
            Instant::now() < deadline,
            "the gaps were not repaired in 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    drop(worker);
    let dead: usize = redis::cmd("XLEN")
        .arg(streams::dlq::DeadLetterKeys::new(&pools.keys, module.spec.projection).stream)
        .query_async(&mut *conn)
        .await
        .context("dead letters")?;
    ensure!(dead == 0, "{dead} events dead-lettered");
    Ok(Gap {
        aggregates,
        repaired: aggregates * 2,
        took,
    })
}
