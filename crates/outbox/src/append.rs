//! Appending a command's events inside the command's own transaction.

use crate::{TxClient, param};
use events::{EventEnvelope, partition_for};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::OutboxError;

/// Inserts `events` into `event_store` and `outbox`, in one statement on `tx`, sent without
/// waiting for its answer ([`TxClient::send`]: a refusal is reported by the commit, which then
/// rolls back). The caller commits; until then nothing is visible. It does not wake the relay: notifying inside the
/// transaction would serialise every commit (see [`crate::wake`]); after the commit, hand
/// [`crate::wake::partitions_of`] the events to a [`crate::wake::Waker`] (or let the relay's
/// poll find them).
///
/// Each outbox row carries `partition_for(aggregate_id, partitions)`, fixed at write time.
///
/// # Errors
/// [`OutboxError::Conflict`] when `(aggregate_id, aggregate_version)` already exists (a
/// concurrent writer won), [`OutboxError::Unavailable`] when the connection broke.
pub async fn append_events(
    tx: &impl TxClient,
    events: &[EventEnvelope],
    partitions: u32,
) -> Result<(), OutboxError> {
    if events.is_empty() {
        return Ok(());
    }
    let n = events.len();
    let mut ids = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut schema_versions = Vec::with_capacity(n);
    let mut aggregate_types = Vec::with_capacity(n);
    let mut aggregate_ids = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut occurred: Vec<OffsetDateTime> = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    let mut metadata = Vec::with_capacity(n);
    let mut modules = Vec::with_capacity(n);
    let mut parts: Vec<i32> = Vec::with_capacity(n);
    let mut envelopes = Vec::with_capacity(n);
    for e in events {
        ids.push(e.event_id);
        types.push(e.event_type.clone());
        schema_versions.push(e.schema_version);
        aggregate_types.push(e.aggregate_type.clone());
        aggregate_ids.push(e.aggregate_id);
        versions.push(e.aggregate_version);
        occurred.push(e.occurred_at);
        payloads.push(e.payload.clone());
        metadata.push(serde_json::to_value(&e.metadata).unwrap_or_default());
        modules.push(e.module().to_owned());
        // A partition index is < partitions ≤ i32::MAX in any sane deployment.
        parts.push(i32::try_from(partition_for(e.aggregate_id, partitions)).unwrap_or(0));
        envelopes.push(e.to_json());
    }
    // Data-modifying CTEs always run, so one round trip writes both tables.
    let statement = tx.prepare_cached("WITH stored AS (
             INSERT INTO event_store (event_id, event_type, schema_version, aggregate_type,
                                      aggregate_id, aggregate_version, occurred_at, payload, metadata)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int[], $4::text[], $5::uuid[],
                                  $6::bigint[], $7::timestamptz[], $8::jsonb[], $9::jsonb[])
             RETURNING 1
         ), queued AS (
             INSERT INTO outbox (event_id, event_type, module, partition, envelope)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $10::text[], $11::int[], $12::text[]::json[])
             RETURNING 1
         )
         SELECT 1").await.map_err(OutboxError::from)?;
    // Owned: the statement's answer is read after this frame is gone.
    tx.send(
        &statement,
        vec![
            param(ids),
            param(types),
            param(schema_versions),
            param(aggregate_types),
            param(aggregate_ids),
            param(versions),
            param(occurred),
            param(payloads),
            param(metadata),
            param(modules),
            param(parts),
            param(envelopes),
        ],
    )
    .await?;
    Ok(())
}

/// The ids of `events`, for command answers.
#[must_use]
pub fn event_ids(events: &[EventEnvelope]) -> Vec<Uuid> {
    events.iter().map(|e| e.event_id).collect()
}
