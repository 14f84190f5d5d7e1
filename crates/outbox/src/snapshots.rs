//! Snapshots of read models kept in PostgreSQL: a row per snapshot and its copy in chunks
//! (opaque bytes here; the Redis side encodes them). A snapshot becomes visible to rebuilds only
//! once complete, so a copy cut short is never loaded.

use std::collections::HashMap;
use std::time::Duration;

use deadpool_postgres::Pool;
use time::OffsetDateTime;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::OutboxError;

/// A snapshot, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Its id.
    pub id: Uuid,
    /// Of which projection.
    pub projection: String,
    /// The generation it was copied from.
    pub generation: i64,
    /// Every event of the projection's history up to this `event_store` position is in it
    /// (some later ones may be too: their applied versions say so).
    pub position: i64,
    /// Keys copied.
    pub keys: i64,
    /// Bytes stored.
    pub bytes: i64,
    /// The build that took it.
    pub app_version: String,
    /// When.
    pub created_at: OffsetDateTime,
    /// Whether the copy finished.
    pub complete: bool,
}

const COLUMNS: &str =
    "id, projection, generation, position, keys, bytes, app_version, created_at, complete";

fn from_row(r: &Row) -> Snapshot {
    Snapshot {
        id: r.get(0),
        projection: r.get(1),
        generation: r.get(2),
        position: r.get(3),
        keys: r.get(4),
        bytes: r.get(5),
        app_version: r.get(6),
        created_at: r.get(7),
        complete: r.get(8),
    }
}

/// Access to the `snapshots` and `snapshot_chunks` tables.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    pool: Pool,
}

impl SnapshotStore {
    /// A store over `pool`.
    #[must_use]
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Starts a snapshot of `projection`'s `generation` (incomplete until [`Self::complete`]).
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn begin(
        &self,
        projection: &str,
        generation: i64,
        app_version: &str,
    ) -> Result<Uuid, OutboxError> {
        let id = Uuid::now_v7();
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO snapshots (id, projection, generation, position, keys, bytes, app_version)
                 VALUES ($1, $2, $3, 0, 0, 0, $4)",
                &[&id, &projection, &generation, &app_version],
            )
            .await?;
        Ok(id)
    }

    /// Stores chunk `seq` of snapshot `id`.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn put_chunk(&self, id: Uuid, seq: i32, data: &[u8]) -> Result<(), OutboxError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO snapshot_chunks (snapshot_id, seq, data) VALUES ($1, $2, $3)",
                &[&id, &seq, &data],
            )
            .await?;
        Ok(())
    }

    /// Marks snapshot `id` complete at `position`; returns it.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn complete(
        &self,
        id: Uuid,
        position: i64,
        keys: i64,
    ) -> Result<Snapshot, OutboxError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                &format!(
                    "UPDATE snapshots SET complete = true, position = $2, keys = $3,
                            bytes = (SELECT coalesce(sum(length(data)), 0) FROM snapshot_chunks
                                     WHERE snapshot_id = $1)
                     WHERE id = $1 RETURNING {COLUMNS}"
                ),
                &[&id, &position, &keys],
            )
            .await?;
        Ok(from_row(&row))
    }

    /// Deletes snapshot `id` (and its chunks): a copy that could not finish.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn delete(&self, id: Uuid) -> Result<(), OutboxError> {
        let client = self.pool.get().await?;
        client
            .execute("DELETE FROM snapshots WHERE id = $1", &[&id])
            .await?;
        Ok(())
    }

    /// Keeps the `keep` newest complete snapshots of `projection` and deletes the others (and
    /// incomplete ones older than an hour: copies whose taker died). Returns how many went.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn prune(&self, projection: &str, keep: i64) -> Result<u64, OutboxError> {
        let client = self.pool.get().await?;
        Ok(client
            .execute(
                "DELETE FROM snapshots WHERE projection = $1 AND (
                     (complete AND id NOT IN (SELECT id FROM snapshots
                                              WHERE projection = $1 AND complete
                                              ORDER BY created_at DESC LIMIT $2))
                     OR (NOT complete AND created_at < now() - interval '1 hour'))
                   AND id NOT IN (SELECT snapshot_id FROM operations
                                  WHERE state = 'running' AND snapshot_id IS NOT NULL)",
                &[&projection, &keep],
            )
            .await?)
    }

    /// The newest complete snapshot of `projection`.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn newest(&self, projection: &str) -> Result<Option<Snapshot>, OutboxError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_opt(
                &format!(
                    "SELECT {COLUMNS} FROM snapshots WHERE projection = $1 AND complete
                     ORDER BY created_at DESC LIMIT 1"
                ),
                &[&projection],
            )
            .await?
            .as_ref()
            .map(from_row))
    }

    /// One snapshot.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn get(&self, id: Uuid) -> Result<Option<Snapshot>, OutboxError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM snapshots WHERE id = $1"),
                &[&id],
            )
            .await?
            .as_ref()
            .map(from_row))
    }

    /// How many complete snapshots `projection` has.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn count(&self, projection: &str) -> Result<i64, OutboxError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_one(
                "SELECT count(*) FROM snapshots WHERE projection = $1 AND complete",
                &[&projection],
            )
            .await?
            .get(0))
    }

    /// Chunk `seq` of snapshot `id` (chunks are numbered from 0 without holes).
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn chunk(&self, id: Uuid, seq: i32) -> Result<Option<Vec<u8>>, OutboxError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_opt(
                "SELECT data FROM snapshot_chunks WHERE snapshot_id = $1 AND seq = $2",
                &[&id, &seq],
            )
            .await?
            .map(|r| r.get(0)))
    }
}

/// The position up to which a copy of a read model holds every event of `aggregate_types`,
/// given the versions it applied (`versions`: aggregate → last applied version).
///
/// Positions are handed out at insert, not at commit, so a transaction in flight now may
/// later commit events below the newest visible position. This takes the newest visible
/// position `high` and waits (up to `wait`) until every transaction in flight at that moment
/// has ended; transactions that start later insert above `high`. Then the answer is the
/// position before the first event up to `high` the copy lacks, or `high` itself.
///
/// # Errors
/// [`OutboxError`] when PostgreSQL fails, or [`OutboxError::Timeout`] when transactions
/// stayed in flight past `wait`.
pub async fn covered_position(
    pool: &Pool,
    aggregate_types: &[String],
    versions: &HashMap<Uuid, i64>,
    wait: Duration,
) -> Result<i64, OutboxError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint,
                    (SELECT coalesce(max(position), 0) FROM event_store
                     WHERE aggregate_type = ANY($1))",
            &[&aggregate_types],
        )
        .await?;
    let (xmax, high): (i64, i64) = (row.get(0), row.get(1));
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let xmin: i64 = client
            .query_one(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
                &[],
            )
            .await?
            .get(0);
        if xmin >= xmax {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(OutboxError::Timeout(format!(
                "transactions started before xid {xmax} are still running after {wait:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (ids, applied): (Vec<Uuid>, Vec<i64>) = versions.iter().map(|(a, v)| (*a, *v)).unzip();
    let first_missing: Option<i64> = client
        .query_one(
            "SELECT min(e.position) FROM event_store e
             LEFT JOIN unnest($2::uuid[], $3::bigint[]) AS v(id, version) ON v.id = e.aggregate_id
             WHERE e.aggregate_type = ANY($1) AND e.position <= $4
               AND e.aggregate_version > coalesce(v.version, 0)",
            &[&aggregate_types, &ids, &applied, &high],
        )
        .await?
        .get(0);
    Ok(first_missing.map_or(high, |p| p - 1))
}
