//! What operators see of the outbox: how much waits, since when, per partition, and which
//! relay replica holds each partition (none: nobody relays it).

use deadpool_postgres::Pool;

use crate::OutboxError;

/// One partition.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionStats {
    /// The partition.
    pub partition: i32,
    /// Rows waiting.
    pub pending: i64,
    /// Age of its oldest row, seconds (0 when none).
    pub oldest_pending_age_seconds: f64,
    /// The relay replica holding its lease now (`None`: nobody, the lease expired).
    pub owner: Option<String>,
}

/// The outbox as a whole.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxStats {
    /// Rows waiting.
    pub pending_count: i64,
    /// Age of the oldest, seconds (0 when none).
    pub oldest_pending_age_seconds: f64,
    /// Per partition: `0..partitions`, plus any other partition with rows or a lease.
    pub partitions: Vec<PartitionStats>,
    /// Relay replicas whose membership is fresh.
    pub live_relays: i64,
}

/// The outbox's state with `partitions` configured partitions, read in one statement.
///
/// # Errors
/// [`OutboxError`] when PostgreSQL fails.
pub async fn outbox_stats(pool: &Pool, partitions: u32) -> Result<OutboxStats, OutboxError> {
    let client = pool.get().await?;
    let n = i32::try_from(partitions).unwrap_or(i32::MAX);
    let rows = client
        .query(
            "WITH p AS (SELECT generate_series(0, $1 - 1) AS partition
                        UNION SELECT partition FROM relay_leases
                        UNION SELECT DISTINCT partition FROM outbox)
             SELECT p.partition,
                    (SELECT count(*) FROM outbox o WHERE o.partition = p.partition),
                    (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
                     FROM outbox o WHERE o.partition = p.partition),
                    (SELECT holder FROM relay_leases l
                     WHERE l.partition = p.partition AND l.expires_at > now())
             FROM p ORDER BY 1",
            &[&n],
        )
        .await?;
    let live_relays: i64 = client
        .query_one(
            "SELECT count(*) FROM relay_members
             WHERE heartbeat_at > now() - interval '30 seconds'",
            &[],
        )
        .await?
        .get(0);
    let partitions: Vec<PartitionStats> = rows
        .iter()
        .map(|r| PartitionStats {
            partition: r.get(0),
            pending: r.get(1),
            oldest_pending_age_seconds: r.get(2),
            owner: r.get(3),
        })
        .collect();
    Ok(OutboxStats {
        pending_count: partitions.iter().map(|p| p.pending).sum(),
        oldest_pending_age_seconds: partitions
            .iter()
            .map(|p| p.oldest_pending_age_seconds)
            .fold(0.0, f64::max),
        partitions,
        live_relays,
    })
}

/// Age of the oldest outbox row of `module`, seconds (0 when none): events committed but not
/// yet on their stream, which a projection's lag in time must count too.
///
/// # Errors
/// [`OutboxError`] when PostgreSQL fails.
pub async fn oldest_pending_age(pool: &Pool, module: &str) -> Result<f64, OutboxError> {
    let client = pool.get().await?;
    Ok(client
        .query_one(
            "SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
             FROM outbox WHERE module = $1",
            &[&module],
        )
        .await?
        .get(0))
}
