//! Partition leases for relay replicas.
//!
//! Each outbox partition is published by exactly one replica at a time. A lease is a row in
//! `relay_leases` (holder, expiry) kept alive by its holder's periodic [`LeaseStore::tick`].
//! Exclusivity does not rest on clocks alone. Each partition has a *fence*: a
//! transaction-scoped advisory lock keyed by schema and partition ([`fence_sql`]). A publish
//! transaction holds it shared for its whole batch and checks the holder and expiry after
//! taking it ([`crate::relay::OutboxStore::publish_round`] with a holder); taking a lease over
//! requires winning it exclusively (`pg_try_advisory_xact_lock`, skipping the partition this
//! tick otherwise). So a new holder cannot take a lease while the old holder's batch is open,
//! and an old holder that waited for a takeover to commit reads the new holder and stops. The
//! holder's own renewals take no fence, so they never stall publishing; and advisory locks live
//! in memory, so the fence costs no WAL on the publish path. Per-aggregate order therefore survives any
//! handover: the new holder reads what the old one left, in sequence order.
//!
//! Fair share: every replica heartbeats into `relay_members`; with `R` live replicas each aims
//! for `ceil(P / R)` partitions, taking free or expired leases when below it and releasing its
//! highest partitions when above it. A replica that dies stops renewing: its leases expire after
//! the lease time and the others take them at their next tick. A replica that stops gracefully
//! releases everything at once ([`LeaseStore::release_all`]).
//!
//! All times are PostgreSQL's (`clock_timestamp()`), so replicas' clocks need not agree.

use std::time::Duration;

use deadpool_postgres::Pool;

use crate::OutboxError;

/// The NOTIFY payload (on the outbox channel) telling peers that leases were released, so
/// they tick now instead of at their next interval.
pub const REBALANCE: &str = "rebalance";

/// SQL calling `function` (an advisory-lock function) on the fence of `partition` (an SQL
/// expression) in the current schema. Shared by the publisher and the lease taker so that the
/// key can never differ between them.
#[must_use]
pub fn fence_sql(function: &str, partition: &str) -> String {
    format!("{function}(hashtext('cqrs_relay:' || current_schema()), {partition})")
}

/// Lease bookkeeping for one relay replica.
#[derive(Debug, Clone)]
pub struct LeaseStore {
    pool: Pool,
    holder: String,
    partitions: i32,
    ttl: Duration,
}

/// What a tick decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    /// Partitions this replica holds after the tick, ascending.
    pub held: Vec<i32>,
    /// Live replicas seen (this one included).
    pub live_replicas: i64,
}

impl LeaseStore {
    /// Leases of `holder` over `partitions` partitions, each valid for `ttl` after renewal.
    #[must_use]
    pub fn new(pool: Pool, holder: impl Into<String>, partitions: u32, ttl: Duration) -> Self {
        Self {
            pool,
            holder: holder.into(),
            partitions: i32::try_from(partitions.max(1)).unwrap_or(i32::MAX),
            ttl,
        }
    }

    /// This replica's holder id.
    #[must_use]
    pub fn holder(&self) -> &str {
        &self.holder
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    /// Heartbeats, renews this replica's leases, then moves towards its fair share: releases
    /// extras or takes free and expired partitions. Call every third of the lease time or so.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails; the leases then simply run out if this persists.
    pub async fn tick(&self) -> Result<LeaseState, OutboxError> {
        let ttl = self.ttl_ms();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // No need to wait for the WAL flush: a renewal or acquisition lost in a crash only
        // means leases are re-taken later, and publishing re-checks its lease in the database.
        tx.batch_execute("SET LOCAL synchronous_commit = off")
            .await?;
        // Lease rows exist for every partition, so takeover is always an UPDATE of a row that
        // a publishing holder may have locked (the fencing described above).
        tx.execute(
            "INSERT INTO relay_leases (partition) SELECT generate_series(0, $1 - 1)
             ON CONFLICT (partition) DO NOTHING",
            &[&self.partitions],
        )
        .await?;
        tx.execute(
            "INSERT INTO relay_members (holder, heartbeat_at) VALUES ($1, clock_timestamp())
             ON CONFLICT (holder) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at",
            &[&self.holder],
        )
        .await?;
        tx.execute(
            "DELETE FROM relay_members WHERE heartbeat_at < clock_timestamp() - make_interval(secs => $1::float8 / 1000)",
            &[&(ttl as f64)],
        )
        .await?;
        let live: i64 = tx
            .query_one("SELECT count(*) FROM relay_members", &[])
            .await?
            .get(0);
        let share = (i64::from(self.partitions) + live - 1) / live.max(1);
        let renewed: Vec<i32> = tx
            .query(
                "UPDATE relay_leases SET expires_at = clock_timestamp() + make_interval(secs => $2::float8 / 1000)
                 WHERE holder = $1 AND partition < $3 RETURNING partition",
                &[&self.holder, &(ttl as f64), &self.partitions],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let held = renewed.len() as i64;
        if held > share {
            // Give back the highest partitions; their rows are renewed, so release them
            // explicitly (expiry now) for others to take at their next tick.
            tx.execute(
                "UPDATE relay_leases SET holder = NULL, expires_at = '-infinity'
                 WHERE partition IN (SELECT partition FROM relay_leases WHERE holder = $1
                                     ORDER BY partition DESC LIMIT $2)",
                &[&self.holder, &(held - share)],
            )
            .await?;
        } else if held < share {
            // A free or expired lease is taken only if its fence can be won exclusively now:
            // a partition whose (old) holder is mid-batch is skipped until a later tick. The
            // fence stays held until this transaction commits the new holder. SKIP LOCKED keeps
            // two takers from waiting on each other's row locks.
            let fence = fence_sql("pg_try_advisory_xact_lock", "partition");
            tx.execute(
                &format!(
                    "UPDATE relay_leases SET holder = $1,
                            expires_at = clock_timestamp() + make_interval(secs => $2::float8 / 1000)
                     WHERE partition IN (
                         SELECT partition FROM relay_leases
                         WHERE partition < $4 AND (holder IS NULL OR expires_at < clock_timestamp())
                           AND {fence}
                         ORDER BY partition LIMIT $3 FOR UPDATE SKIP LOCKED)"
                ),
                &[
                    &self.holder,
                    &(ttl as f64),
                    &(share - held),
                    &self.partitions,
                ],
            )
            .await?;
        }
        let held: Vec<i32> = tx
            .query(
                "SELECT partition FROM relay_leases WHERE holder = $1 AND expires_at > clock_timestamp()
                 ORDER BY partition",
                &[&self.holder],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        tx.commit().await?;
        Ok(LeaseState {
            held,
            live_replicas: live,
        })
    }

    /// Releases every lease of this replica, leaves the membership and notifies the peers
    /// ([`REBALANCE`]), so they take over at once instead of waiting for expiry. Called on
    /// graceful shutdown.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails (the leases then expire by themselves).
    pub async fn release_all(&self) -> Result<(), OutboxError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "WITH released AS (
                     UPDATE relay_leases SET holder = NULL, expires_at = '-infinity' WHERE holder = $1
                 ), departed AS (
                     DELETE FROM relay_members WHERE holder = $1
                 )
                 SELECT pg_notify('cqrs_outbox_' || current_schema(), $2)",
                &[&self.holder, &REBALANCE],
            )
            .await?;
        Ok(())
    }

    /// Who holds each partition now (`None`: free or expired), for status endpoints.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn owners(pool: &Pool) -> Result<Vec<(i32, Option<String>)>, OutboxError> {
        let client = pool.get().await?;
        Ok(client
            .query(
                "SELECT partition, CASE WHEN expires_at > clock_timestamp() THEN holder END
                 FROM relay_leases ORDER BY partition",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }
}
