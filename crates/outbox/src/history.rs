//! Reading `event_store` back, for replays (self-healing, and later reset and rebuild).
//!
//! A replay reads pages in `position` order, and must do so inside **one snapshot**. Positions
//! are handed out at insert, not at commit: while commands are running, a page can end at a
//! position past a transaction that commits a moment later, and the next page (`position >
//! last`) would skip that transaction's events for ever, while reading the same aggregates'
//! later events: a version gap that was never in the data. Within one repeatable-read snapshot
//! every page sees the same committed set; whatever commits after the snapshot is newer than
//! everything the replay saw of its aggregate, and reaches the projection through the stream.

use deadpool_postgres::{Client, Transaction};
use events::{EventEnvelope, EventMetadata};
use time::OffsetDateTime;
use tokio_postgres::{GenericClient, IsolationLevel, Row};
use uuid::Uuid;

use crate::OutboxError;

/// Opens the read-only, repeatable-read snapshot a replay reads all its pages in. Dropping it
/// ends it.
///
/// # Errors
/// [`OutboxError`] when PostgreSQL fails.
pub async fn snapshot(client: &mut Client) -> Result<Transaction<'_>, OutboxError> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    // A bitmap scan returns rows out of order, so a page planned with one sorts every row
    // left after its position to keep a thousand: each page costs the whole rest of the
    // history, and a replay turns quadratic (PostgreSQL picks it whenever its statistics
    // underestimate the rows, e.g. right after a bulk import: 70 µs of its CPU per event in
    // the repair benchmark, a full core). Pages need rows in index order.
    tx.batch_execute("SET LOCAL enable_bitmapscan = off")
        .await?;
    Ok(tx)
}

/// Up to `limit` events of `aggregate_types` after `position` `after`, in position order,
/// with their positions. No row is ever skipped (a replay that left an event out would park
/// its aggregate behind a false gap): one with unreadable metadata comes without it.
///
/// # Errors
/// [`OutboxError`] when PostgreSQL fails or a row does not decode.
pub async fn page(
    snapshot: &Transaction<'_>,
    aggregate_types: &[String],
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, EventEnvelope)>, OutboxError> {
    let statement = snapshot
        .prepare_cached(
            // Per aggregate type, the next `limit` rows in index order, then the first `limit`
            // of those: a page reads at most `limit` rows per type, whatever the statistics say
            // (with `= ANY` over the whole table, an index on (type, position) yields rows
            // type by type, and every row after `after` would be sorted for each page).
            "SELECT e.position, e.event_id, e.event_type, e.schema_version, e.aggregate_type,
                    e.aggregate_id, e.aggregate_version, e.occurred_at, e.payload, e.metadata
             FROM (SELECT DISTINCT unnest($1::text[])) AS t(aggregate_type)
             CROSS JOIN LATERAL (
                 SELECT position, event_id, event_type, schema_version, aggregate_type,
                        aggregate_id, aggregate_version, occurred_at, payload, metadata
                 FROM event_store s
                 WHERE s.aggregate_type = t.aggregate_type AND s.position > $2
                 ORDER BY s.position LIMIT $3
             ) e
             ORDER BY e.position LIMIT $3",
        )
        .await?;
    let rows = snapshot
        .query(&statement, &[&aggregate_types, &after, &limit])
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), envelope(r))).collect())
}

/// Writes `events` into `event_store` only (no outbox row, no notification): history that
/// predates the streams, for imports, benchmarks and tests. Returns how many were written.
///
/// # Errors
/// [`OutboxError::Conflict`] when one of them exists already; others when PostgreSQL fails.
pub async fn import(
    client: &impl GenericClient,
    events: &[EventEnvelope],
) -> Result<u64, OutboxError> {
    let mut written = 0;
    for chunk in events.chunks(5000) {
        let ids: Vec<Uuid> = chunk.iter().map(|e| e.event_id).collect();
        let types: Vec<&str> = chunk.iter().map(|e| e.event_type.as_str()).collect();
        let schema_versions: Vec<i32> = chunk.iter().map(|e| e.schema_version).collect();
        let aggregate_types: Vec<&str> = chunk.iter().map(|e| e.aggregate_type.as_str()).collect();
        let aggregate_ids: Vec<Uuid> = chunk.iter().map(|e| e.aggregate_id).collect();
        let versions: Vec<i64> = chunk.iter().map(|e| e.aggregate_version).collect();
        let occurred: Vec<OffsetDateTime> = chunk.iter().map(|e| e.occurred_at).collect();
        let payloads: Vec<&serde_json::Value> = chunk.iter().map(|e| &e.payload).collect();
        let metadata: Vec<serde_json::Value> = chunk
            .iter()
            .map(|e| serde_json::to_value(&e.metadata).unwrap_or_default())
            .collect();
        written += client
            .execute(
                "INSERT INTO event_store (event_id, event_type, schema_version, aggregate_type,
                                          aggregate_id, aggregate_version, occurred_at, payload, metadata)
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int[], $4::text[], $5::uuid[],
                                      $6::bigint[], $7::timestamptz[], $8::jsonb[], $9::jsonb[])",
                &[
                    &ids,
                    &types,
                    &schema_versions,
                    &aggregate_types,
                    &aggregate_ids,
                    &versions,
                    &occurred,
                    &payloads,
                    &metadata,
                ],
            )
            .await?;
    }
    Ok(written)
}

/// How many events of `aggregate_types` lie after `position` `after` in `snapshot`: a
/// replay's total, for its progress.
///
/// # Errors
/// [`OutboxError`] when PostgreSQL fails.
pub async fn count_after(
    snapshot: &Transaction<'_>,
    aggregate_types: &[String],
    after: i64,
) -> Result<i64, OutboxError> {
    Ok(snapshot
        .query_one(
            "SELECT count(*) FROM event_store WHERE aggregate_type = ANY($1) AND position > $2",
            &[&aggregate_types, &after],
        )
        .await?
        .get(0))
}

/// The position before the first event recorded at or after `since` (0 when there is none
/// before it): where a replay of what happened since then starts.
///
/// # Errors
/// [`OutboxError`] when PostgreSQL fails.
pub async fn position_before(
    client: &impl GenericClient,
    since: OffsetDateTime,
) -> Result<i64, OutboxError> {
    Ok(client
        .query_one(
            "SELECT coalesce(min(position) - 1, (SELECT coalesce(max(position), 0) FROM event_store))
             FROM event_store WHERE recorded_at >= $1",
            &[&since],
        )
        .await?
        .get(0))
}

/// A version range of one aggregate: the events `from..=to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionRange {
    /// The aggregate.
    pub aggregate_id: Uuid,
    /// First version wanted.
    pub from: i64,
    /// Last version wanted.
    pub to: i64,
}

/// The events of `ranges` (one statement, however many aggregates), each aggregate's in
/// version order. Used to repair the versions a read model missed.
///
/// # Errors
/// [`OutboxError`] when PostgreSQL fails or a row does not decode.
pub async fn versions(
    client: &impl GenericClient,
    ranges: &[VersionRange],
) -> Result<Vec<EventEnvelope>, OutboxError> {
    if ranges.is_empty() {
        return Ok(vec![]);
    }
    let ids: Vec<Uuid> = ranges.iter().map(|r| r.aggregate_id).collect();
    let from: Vec<i64> = ranges.iter().map(|r| r.from).collect();
    let to: Vec<i64> = ranges.iter().map(|r| r.to).collect();
    let rows = client
        .query(
            "SELECT e.position, e.event_id, e.event_type, e.schema_version, e.aggregate_type,
                    e.aggregate_id, e.aggregate_version, e.occurred_at, e.payload, e.metadata
             FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS r(id, lo, hi)
             JOIN event_store e
               ON e.aggregate_id = r.id AND e.aggregate_version BETWEEN r.lo AND r.hi
             ORDER BY e.aggregate_id, e.aggregate_version",
            &[&ids, &from, &to],
        )
        .await?;
    Ok(rows.iter().map(envelope).collect())
}

/// The envelope of a row selected as [`page`] selects it.
fn envelope(r: &Row) -> EventEnvelope {
    let metadata: serde_json::Value = r.get(9);
    EventEnvelope {
        event_id: r.get(1),
        event_type: r.get(2),
        schema_version: r.get(3),
        aggregate_type: r.get(4),
        aggregate_id: r.get(5),
        aggregate_version: r.get(6),
        occurred_at: r.get(7),
        payload: r.get(8),
        // Metadata is for people (logs, tracing), not for projections: an unreadable one must
        // not stop a rebuild, so it becomes "unknown" and is logged.
        metadata: serde_json::from_value(metadata).unwrap_or_else(|e| {
            tracing::warn!(position = r.get::<_, i64>(0), error = %e,
                "event_store row with unreadable metadata; replayed without it");
            EventMetadata {
                user_id: None,
                correlation_id: None,
                causation_id: None,
                source: "unknown".into(),
            }
        }),
    }
}
