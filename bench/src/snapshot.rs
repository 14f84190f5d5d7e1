//! Snapshot benchmark (`make bench`): on a history of `BENCH_SNAPSHOT_EVENTS` events (1M by
//! default) of each module's sample history, a rebuild from scratch against a rebuild from a
//! snapshot taken at 90 % of it (the snapshot loaded, then only the last 10 % replayed). Both
//! run the projector's own code in this process (release build, the services' allocator);
//! the target is a rebuild from the snapshot at least 5 × faster. Also reports what taking
//! the snapshot cost (the time the projection is held still) and its size.
//!
//! Prints a markdown report (also written to `target/bench/snapshot.md`).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::ensure;
use bench::env_or;
use modules::Module;
use outbox::PgSettings;
use outbox::operations::{NewOperation, OperationKind, OperationStore};
use projection::snapshot::SnapshotSettings;
use projection::{Projector, ProjectorSettings, RebuildOutcome};
use streams::{RedisPools, RedisSettings};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let events: usize = env_or("BENCH_SNAPSHOT_EVENTS", 1_000_000);
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut report = String::new();
    for module in modules::ALL {
        let schema = format!("bench_snapshot_{}_{stamp}", module.spec.name);
        let prefix = format!("bench:snapshot:{stamp}:");
        let pool = outbox::connect(&PgSettings {
            max_connections: 8,
            ..PgSettings::new(bench::pg_url(), schema.clone())
        })?;
        outbox::migrate::migrate(&pool, &schema).await?;
        outbox::control::ControlStore::new(pool.clone())
            .register(&[module.spec.projection])
            .await?;
        let redis = RedisPools::connect(&RedisSettings::new(bench::redis_url(), prefix.clone()))?;
        let result = run(module, &pool, &redis, events).await;
        bench::clean_up(&pool, &schema, &redis, &prefix).await;
        report.push_str(&result?);
    }
    bench::publish_report("snapshot", &report)?;
    Ok(())
}

async fn rebuild(projector: &Projector) -> anyhow::Result<(Duration, i64)> {
    let started = Instant::now();
    let outcome = projector.rebuild("benchmark").await?;
    let RebuildOutcome::Switched { events, .. } = outcome else {
        anyhow::bail!("the rebuild did not run: {outcome:?}");
    };
    Ok((started.elapsed(), events))
}

async fn run(
    module: &'static Module,
    pool: &outbox::Pool,
    redis: &RedisPools,
    events: usize,
) -> anyhow::Result<String> {
    let name = module.spec.name;
    let history = (module.sample_history)(events);
    let cut = history.len() * 9 / 10;
    let projector = Projector::new(
        redis.clone(),
        Some(pool.clone()),
        (module.projection)(),
        ProjectorSettings::new("bench"),
    );
    projector.ensure_groups().await?;

    eprintln!("{name}: importing the first {cut} events and building them…");
    for part in history[..cut].chunks(50_000) {
        outbox::history::import(&**pool.get().await?, part).await?;
    }
    rebuild(&projector).await?;

    eprintln!("{name}: a snapshot at 90 %…");
    let started = Instant::now();
    let snapshot = projection::snapshot::take(
        pool,
        redis,
        module.spec,
        &SnapshotSettings::new("bench", env!("CARGO_PKG_VERSION")),
    )
    .await?;
    let took_snapshot = started.elapsed();

    eprintln!("{name}: importing the last {} events…", history.len() - cut);
    for part in history[cut..].chunks(50_000) {
        outbox::history::import(&**pool.get().await?, part).await?;
    }
    eprintln!("{name}: a rebuild from scratch…");
    let (scratch, scratch_events) = rebuild(&projector).await?;
    ensure!(
        usize::try_from(scratch_events)? == history.len(),
        "from scratch replayed {scratch_events}"
    );
    eprintln!("{name}: {scratch:?}; a rebuild from the snapshot…");
    let new = NewOperation {
        snapshot_id: Some(snapshot.id),
        ..NewOperation::new(OperationKind::Rebuild, module.spec.projection, "benchmark")
    };
    OperationStore::new(pool.clone()).start(new).await?;
    let (from_snapshot, replayed) = rebuild(&projector).await?;
    eprintln!("{name}: {from_snapshot:?} ({replayed} events replayed)");

    let speedup = scratch.as_secs_f64() / from_snapshot.as_secs_f64();
    let mut r = String::new();
    writeln!(
        r,
        "### Snapshots, {name} ({} events of history)\n",
        history.len()
    )?;
    writeln!(r, "| measure | value | ratio |")?;
    writeln!(r, "|---|---|---|")?;
    writeln!(
        r,
        "| taking a snapshot at 90 % ({} keys, {:.1} MiB in PostgreSQL; the projection held still meanwhile) | {:.2} s | |",
        snapshot.keys,
        snapshot.bytes as f64 / 1_048_576.0,
        took_snapshot.as_secs_f64()
    )?;
    writeln!(
        r,
        "| rebuild from scratch ({} events replayed) | {:.2} s ({:.0} events/s) | 1.00 |",
        scratch_events,
        scratch.as_secs_f64(),
        scratch_events as f64 / scratch.as_secs_f64()
    )?;
    writeln!(
        r,
        "| rebuild from the snapshot (loaded, then {replayed} events replayed) | {:.2} s | **{speedup:.1} ×** faster (target ≥ 5 ×) |",
        from_snapshot.as_secs_f64()
    )?;
    writeln!(r)?;
    Ok(r)
}
