//! The relay's side of the outbox: read the oldest rows of a partition, hand them to a
//! publisher, delete exactly those rows once the publisher succeeded.

use deadpool_postgres::Pool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::OutboxError;

/// One queued event.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// Queue position: commit order per aggregate (the aggregate row lock orders commits).
    pub seq: i64,
    /// The event's id.
    pub event_id: Uuid,
    /// The event's type.
    pub event_type: String,
    /// The module whose stream the event goes to.
    pub module: String,
    /// The partition fixed when the event was written.
    pub partition: i32,
    /// The JSON envelope, published verbatim.
    pub envelope: String,
    /// When the row was inserted (close to the commit).
    pub created_at: OffsetDateTime,
}

/// Why a batch was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError<E: std::error::Error + 'static> {
    /// Reading or deleting the rows failed. If it failed after the publisher succeeded, the
    /// rows stay and are published again: a duplicate, never a loss.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The publisher failed; the rows stay and nothing was deleted.
    #[error("publishing failed")]
    Publish(#[source] E),
}

/// Starts a relay transaction. Its commit need not wait for the WAL flush: if a crash loses
/// it, the rows it deleted come back and are published again (same `event_id`), which the
/// at-least-once contract already allows. The command's own commit stays synchronous.
const BEGIN: &str = "BEGIN; SET LOCAL synchronous_commit = off";

/// Takes the fences of the partitions in `$1`: transaction-scoped advisory locks taken
/// shared, which a takeover must win exclusively first (see [`crate::lease`]). Advisory locks
/// live in memory, so nothing before the XADD writes WAL or waits on the disk. It runs as its
/// own statement, after [`BEGIN`] and before [`SELECT_LEASED`], so the lease check that follows
/// reads with a snapshot taken after the fences are held; prepared, so a round does not plan
/// it again. A taker only ever *tries* the fence, so taking several shared here cannot
/// deadlock with it.
static FENCE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {} FROM unnest($1::int4[]) AS p",
        crate::lease::fence_sql("pg_advisory_xact_lock_shared", "p")
    )
});

/// Reads a round if leases are held: every row's first column lists the partitions of `$1`
/// held by `$3` for at least `$4` more seconds (NULL when none is), followed by the columns of
/// up to `$2` of the oldest rows of each of them (NULL when all are empty). A limit per
/// partition keeps each read on the `(partition, seq)` index whatever the backlog.
const SELECT_LEASED: &str = "
    WITH lease AS MATERIALIZED (
        SELECT partition FROM relay_leases
        WHERE partition = ANY($1) AND holder = $3 AND expires_at > clock_timestamp() + make_interval(secs => $4)
    )
    SELECT (SELECT array_agg(partition) FROM lease), o.seq, o.event_id, o.event_type, o.module, o.partition, o.envelope, o.created_at
    FROM (SELECT 1) AS one
    LEFT JOIN LATERAL (
        SELECT r.* FROM lease CROSS JOIN LATERAL (
            SELECT seq, event_id, event_type, module, partition, envelope::text AS envelope, created_at
            FROM outbox WHERE partition = lease.partition ORDER BY seq LIMIT $2
        ) AS r
    ) AS o ON true";

/// The same without leases (single-relay set-ups and tests): every partition asked is held.
const SELECT_UNLEASED: &str = "
    SELECT $1::int4[], o.seq, o.event_id, o.event_type, o.module, o.partition, o.envelope, o.created_at
    FROM (SELECT 1) AS one
    LEFT JOIN LATERAL (
        SELECT r.* FROM unnest($1::int4[]) AS lease(partition) CROSS JOIN LATERAL (
            SELECT seq, event_id, event_type, module, partition, envelope::text AS envelope, created_at
            FROM outbox WHERE partition = lease.partition ORDER BY seq LIMIT $2
        ) AS r
    ) AS o ON true";

/// What one round over several partitions did ([`OutboxStore::publish_round`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// Rows published (and deleted).
    pub published: usize,
    /// Partitions that gave a full batch: more rows may wait there.
    pub full: Vec<i32>,
    /// Partitions asked for whose lease this replica does not hold (or has too little of it
    /// left): nothing was read from them.
    pub not_held: Vec<i32>,
}

/// A pooled connection inside a manually managed transaction. Unless [`OpenTransaction::finish`]
/// is called (after COMMIT or ROLLBACK), dropping it removes the connection from the pool and
/// closes it, which makes PostgreSQL roll the transaction back.
struct OpenTransaction(Option<deadpool_postgres::Object>);

impl OpenTransaction {
    fn client(&self) -> &deadpool_postgres::Object {
        // Set in the constructor and only taken by `finish` (which consumes self) or drop.
        self.0
            .as_ref()
            .unwrap_or_else(|| unreachable!("client taken before finish"))
    }

    fn finish(mut self) {
        // Back to the pool, in a clean state.
        drop(self.0.take());
    }
}

impl Drop for OpenTransaction {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

/// Pending work, for metrics and the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingStats {
    /// Rows waiting to be published.
    pub count: i64,
    /// Age of the oldest waiting row, in seconds (0 when none waits).
    pub oldest_age_seconds: f64,
}

/// The relay's access to the outbox table.
#[derive(Debug, Clone)]
pub struct OutboxStore {
    pool: Pool,
}

impl OutboxStore {
    /// A store over `pool`.
    #[must_use]
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// The pool this store uses.
    #[must_use]
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Publishes up to `limit` of the oldest rows of each of `partitions` and deletes them, in
    /// one transaction: one round trip to read, the publisher, one round trip to delete and
    /// commit, however many partitions. At a low rate, where each partition has a row or two,
    /// that is one transaction for all of them instead of one each.
    ///
    /// With `lease = Some((holder, margin))` the transaction first takes the partitions'
    /// fences and reads only those `holder` holds for at least `margin` more; the fences are
    /// kept until commit, so no other replica can take a lease over mid-batch (see
    /// [`crate::lease`]). `None` is for single-relay set-ups and tests.
    ///
    /// `publish` gets the rows in `seq` order, so each partition's (and each aggregate's)
    /// rows keep their commit order. Rows of a transaction that commits later with a lower
    /// `seq` are simply found by a later call: nothing is skipped, because nothing is
    /// remembered between calls except what the table holds.
    ///
    /// # Errors
    /// [`PublishError::Publish`] when `publish` failed (rows kept), [`PublishError::Outbox`]
    /// when PostgreSQL failed.
    pub async fn publish_round<E, F>(
        &self,
        partitions: &[i32],
        limit: i64,
        lease: Option<(&str, std::time::Duration)>,
        publish: F,
    ) -> Result<Round, PublishError<E>>
    where
        E: std::error::Error + 'static,
        F: AsyncFnOnce(&[OutboxRow]) -> Result<(), E>,
    {
        if partitions.is_empty() {
            return Ok(Round::default());
        }
        // Two round trips per round: BEGIN pipelined with one statement that checks the
        // leases and reads the rows, then DELETE pipelined with COMMIT. The guard discards
        // the connection if the round is abandoned half-way, so an open transaction never
        // goes back to the pool.
        let open = OpenTransaction(Some(self.pool.get().await.map_err(OutboxError::from)?));
        let client = open.client();
        let rows = match lease {
            Some((holder, margin)) => {
                let stmt = client
                    .prepare_cached(SELECT_LEASED)
                    .await
                    .map_err(OutboxError::from)?;
                let fence = client
                    .prepare_cached(&FENCE)
                    .await
                    .map_err(OutboxError::from)?;
                let margin = margin.as_secs_f64();
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                    [&partitions, &limit, &holder, &margin];
                let fence_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&partitions];
                // Sent in this order, in one write: the fence's statement ends before the
                // read's begins.
                let (begin, fenced, rows) = tokio::join!(
                    client.batch_execute(BEGIN),
                    client.execute(&fence, &fence_params),
                    client.query(&stmt, &params)
                );
                begin.map_err(OutboxError::from)?;
                fenced.map_err(OutboxError::from)?;
                rows.map_err(OutboxError::from)?
            }
            None => {
                let stmt = client
                    .prepare_cached(SELECT_UNLEASED)
                    .await
                    .map_err(OutboxError::from)?;
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&partitions, &limit];
                let (begin, rows) =
                    tokio::join!(client.batch_execute(BEGIN), client.query(&stmt, &params));
                begin.map_err(OutboxError::from)?;
                rows.map_err(OutboxError::from)?
            }
        };
        let held: Vec<i32> = rows
            .first()
            .and_then(|r| r.get::<_, Option<Vec<i32>>>(0))
            .unwrap_or_default();
        let mut batch: Vec<OutboxRow> = rows
            .iter()
            .filter(|r| r.get::<_, Option<i64>>(1).is_some())
            .map(|r| OutboxRow {
                seq: r.get(1),
                event_id: r.get(2),
                event_type: r.get(3),
                module: r.get(4),
                partition: r.get(5),
                envelope: r.get(6),
                created_at: r.get(7),
            })
            .collect();
        // Commit order within every partition, whatever order the plan returned them in.
        batch.sort_unstable_by_key(|r| r.seq);
        let not_held: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !held.contains(p))
            .collect();
        if batch.is_empty() {
            client
                .batch_execute("ROLLBACK")
                .await
                .map_err(OutboxError::from)?;
            open.finish();
            return Ok(Round {
                not_held,
                ..Round::default()
            });
        }
        if let Err(e) = publish(&batch).await {
            client
                .batch_execute("ROLLBACK")
                .await
                .map_err(OutboxError::from)?;
            open.finish();
            return Err(PublishError::Publish(e));
        }
        let seqs: Vec<i64> = batch.iter().map(|r| r.seq).collect();
        let delete = client
            .prepare_cached("DELETE FROM outbox WHERE seq = ANY($1)")
            .await
            .map_err(OutboxError::from)?;
        // A failed DELETE aborts the transaction and the COMMIT then rolls it back, so the
        // rows stay queued (published twice later, never lost).
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&seqs];
        let (deleted, committed) = tokio::join!(
            client.execute(&delete, &params),
            client.batch_execute("COMMIT")
        );
        deleted.map_err(OutboxError::from)?;
        committed.map_err(OutboxError::from)?;
        open.finish();
        let mut per_partition = std::collections::BTreeMap::<i32, i64>::new();
        for r in &batch {
            *per_partition.entry(r.partition).or_default() += 1;
        }
        let full = per_partition
            .into_iter()
            .filter_map(|(p, n)| (n >= limit).then_some(p))
            .collect();
        Ok(Round {
            published: batch.len(),
            full,
            not_held,
        })
    }

    /// Dead tuples in the outbox (PostgreSQL's statistics, approximate).
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn dead_tuples(&self) -> Result<i64, OutboxError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one("SELECT coalesce(n_dead_tup, 0) FROM pg_stat_user_tables WHERE relid = 'outbox'::regclass", &[])
            .await?;
        Ok(row.get(0))
    }

    /// Vacuums the outbox when it holds more than `threshold` dead tuples; returns the count
    /// seen. A queue table turns over its rows every few seconds, faster than autovacuum's
    /// one-minute naptime, and every batch's index scan walks the dead entries left behind, so
    /// the relay cleans up after itself. Cheap when there is little to do.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn vacuum_if_needed(&self, threshold: i64) -> Result<i64, OutboxError> {
        let dead = self.dead_tuples().await?;
        if dead > threshold {
            let client = self.pool.get().await?;
            // Not in a transaction: VACUUM refuses to run inside one.
            client.batch_execute("VACUUM outbox").await?;
        }
        Ok(dead)
    }

    /// How much is waiting, and for how long.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn pending(&self) -> Result<PendingStats, OutboxError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)::float8
                 FROM outbox",
                &[],
            )
            .await?;
        Ok(PendingStats {
            count: row.get(0),
            oldest_age_seconds: row.get(1),
        })
    }
}
