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
    /// This replica no longer holds the partition's lease (or has too little of it left to
    /// finish a batch safely); nothing was read or published.
    #[error("partition lease not held")]
    LeaseLost,
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

    /// Publishes up to `limit` of the oldest rows of `partition` and deletes them.
    ///
    /// With `lease = Some((holder, margin))` the transaction first locks the partition's lease
    /// row and proceeds only if `holder` holds it for at least `margin` more; the lock is kept
    /// until commit, so no other replica can take the lease over mid-batch (see
    /// [`crate::lease`]). `None` is for single-relay set-ups and tests.
    ///
    /// Runs in one transaction: select the rows in `seq` order, await `publish` on them, delete
    /// exactly those rows by `seq`, commit. Rows of a transaction that commits later with a
    /// lower `seq` are simply found by a later call: nothing is skipped, because nothing is
    /// remembered between calls except what the table holds.
    ///
    /// Returns how many rows were published (0 when the partition is empty).
    ///
    /// # Errors
    /// [`PublishError::Publish`] when `publish` failed (rows kept), [`PublishError::Outbox`]
    /// when PostgreSQL failed.
    pub async fn publish_batch<E, F>(
        &self,
        partition: i32,
        limit: i64,
        lease: Option<(&str, std::time::Duration)>,
        publish: F,
    ) -> Result<usize, PublishError<E>>
    where
        E: std::error::Error + 'static,
        F: AsyncFnOnce(&[OutboxRow]) -> Result<(), E>,
    {
        let mut client = self.pool.get().await.map_err(OutboxError::from)?;
        let tx = client.transaction().await.map_err(OutboxError::from)?;
        if let Some((holder, margin)) = lease {
            let margin_secs = margin.as_secs_f64();
            let held = tx
                .query_opt(
                    "SELECT 1 FROM relay_leases
                     WHERE partition = $1 AND holder = $2
                       AND expires_at > clock_timestamp() + make_interval(secs => $3)
                     FOR UPDATE",
                    &[&partition, &holder, &margin_secs],
                )
                .await
                .map_err(OutboxError::from)?;
            if held.is_none() {
                return Err(PublishError::LeaseLost);
            }
        }
        let rows = tx
            .query(
                "SELECT seq, event_id, event_type, module, partition, envelope::text, created_at
                 FROM outbox WHERE partition = $1 ORDER BY seq LIMIT $2",
                &[&partition, &limit],
            )
            .await
            .map_err(OutboxError::from)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let batch: Vec<OutboxRow> = rows
            .iter()
            .map(|r| OutboxRow {
                seq: r.get(0),
                event_id: r.get(1),
                event_type: r.get(2),
                module: r.get(3),
                partition: r.get(4),
                envelope: r.get(5),
                created_at: r.get(6),
            })
            .collect();
        publish(&batch).await.map_err(PublishError::Publish)?;
        let seqs: Vec<i64> = batch.iter().map(|r| r.seq).collect();
        tx.execute("DELETE FROM outbox WHERE seq = ANY($1)", &[&seqs])
            .await
            .map_err(OutboxError::from)?;
        tx.commit().await.map_err(OutboxError::from)?;
        Ok(batch.len())
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
