//! Writing outbox load the way command-api does, and checking what reached the streams.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use events::{EventContext, EventEnvelope};
use outbox::Pool;
use rand::RngExt as _;
use streams::{RedisPools, redis};
use uuid::Uuid;

/// Appends `total` events over `aggregates` aggregates from `writers` concurrent writers, 1–3
/// events per transaction. Like command-api, a writer serialises on its aggregate before
/// choosing the next version (an advisory lock stands in for the row lock), so versions have
/// no gaps and commits of one aggregate are in version order. Failed transactions (the
/// database restarting, say) are retried. Returns the number of events committed (always
/// `total`, counted from `event_store`).
///
/// # Panics
/// When a writer cannot make progress for a minute.
pub async fn write_events(
    pool: &Pool,
    aggregates: usize,
    total: usize,
    writers: usize,
    partitions: u32,
) -> usize {
    let ids: Arc<Vec<Uuid>> = Arc::new((0..aggregates).map(|_| Uuid::now_v7()).collect());
    let left = Arc::new(AtomicUsize::new(total));
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let (pool, ids, left) = (pool.clone(), ids.clone(), left.clone());
            tokio::spawn(async move {
                let mut failures = 0u32;
                loop {
                    let want = rand::rng().random_range(1..=3usize);
                    let Ok(n) = left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| {
                        (l > 0).then(|| l - want.min(l))
                    }) else {
                        return;
                    };
                    let n = want.min(n);
                    let id = ids[rand::rng().random_range(0..ids.len())];
                    while let Err(e) = append_next(&pool, id, n, partitions).await {
                        failures += 1;
                        assert!(failures < 600, "writer stuck: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer");
    }
    let c = pool.get().await.expect("client");
    let n: i64 = c
        .query_one("SELECT count(*) FROM event_store", &[])
        .await
        .expect("count")
        .get(0);
    usize::try_from(n).unwrap_or(0)
}

async fn append_next(pool: &Pool, id: Uuid, n: usize, partitions: u32) -> Result<(), String> {
    let mut c = pool.get().await.map_err(|e| e.to_string())?;
    let tx = c.transaction().await.map_err(|e| e.to_string())?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1::text))",
        &[&id.to_string()],
    )
    .await
    .map_err(|e| e.to_string())?;
    let current: i64 = tx
        .query_one(
            "SELECT coalesce(max(aggregate_version), 0) FROM event_store WHERE aggregate_id = $1",
            &[&id],
        )
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    let ctx = EventContext::new(None, None, "load");
    let events: Vec<EventEnvelope> = (1..=n as i64)
        .map(|k| {
            ctx.envelope(
                "Task",
                id,
                current + k,
                "task.updated",
                serde_json::json!({"k": current + k}),
            )
        })
        .collect();
    outbox::append_events(&tx, &events, partitions)
        .await
        .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())?;
    // As command-api does: the relay is woken after the commit. A wake-up that fails is lost
    // (the relay's poll covers it); failing the write would make the caller write it again.
    let _ = outbox::wake::notify(&c, &outbox::wake::partitions_of(&events, partitions)).await;
    Ok(())
}

/// Every envelope in `module`'s partition streams, in stream order per partition.
///
/// # Panics
/// When Redis is unreachable or an entry is malformed.
pub async fn stream_events(
    redis_pools: &RedisPools,
    module: &str,
    partitions: u32,
) -> Vec<EventEnvelope> {
    let mut conn = redis_pools.commands.get().await.expect("redis");
    let mut out = vec![];
    for stream in redis_pools.keys.routing(partitions).streams(module) {
        let mut start = "-".to_owned();
        loop {
            let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                .arg(&stream)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(5000)
                .query_async(&mut *conn)
                .await
                .expect("xrange");
            let Some(last) = entries.last().map(|(id, _)| id.clone()) else {
                break;
            };
            for (_, fields) in entries {
                let env = fields
                    .into_iter()
                    .find(|(k, _)| k == "envelope")
                    .expect("envelope field")
                    .1;
                out.push(EventEnvelope::from_json(env.as_bytes()).expect("envelope"));
            }
            start = format!("({last}");
        }
    }
    out
}

/// What the streams hold, compared with `event_store`.
#[derive(Debug, Default)]
pub struct StreamAudit {
    /// Events in `event_store`.
    pub committed: usize,
    /// Stream entries (duplicates included).
    pub entries: usize,
    /// Entries whose `event_id` appeared before.
    pub duplicates: usize,
    /// Committed events not found in any stream.
    pub missing: Vec<Uuid>,
    /// Aggregates whose first occurrences are not `1, 2, 3, …` in stream order.
    pub out_of_order: Vec<(Uuid, Vec<i64>)>,
}

/// Checks that every committed event is in the streams and that, per aggregate, the first
/// occurrences are in `aggregate_version` order with no gap.
///
/// # Panics
/// When PostgreSQL or Redis is unreachable.
pub async fn audit_streams(
    pool: &Pool,
    redis_pools: &RedisPools,
    module: &str,
    partitions: u32,
) -> StreamAudit {
    let c = pool.get().await.expect("client");
    let committed: HashSet<Uuid> = c
        .query("SELECT event_id FROM event_store", &[])
        .await
        .expect("events")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let entries = stream_events(redis_pools, module, partitions).await;
    let mut seen = HashSet::new();
    let mut firsts: BTreeMap<Uuid, Vec<i64>> = BTreeMap::new();
    let mut duplicates = 0;
    for e in &entries {
        if seen.insert(e.event_id) {
            firsts
                .entry(e.aggregate_id)
                .or_default()
                .push(e.aggregate_version);
        } else {
            duplicates += 1;
        }
    }
    let missing = committed
        .iter()
        .filter(|id| !seen.contains(id))
        .copied()
        .collect();
    let out_of_order = firsts
        .into_iter()
        .filter(|(_, vs)| vs.iter().enumerate().any(|(i, v)| *v != i as i64 + 1))
        .collect();
    StreamAudit {
        committed: committed.len(),
        entries: entries.len(),
        duplicates,
        missing,
        out_of_order,
    }
}
