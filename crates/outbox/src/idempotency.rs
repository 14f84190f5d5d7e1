//! `Idempotency-Key` support: a retried command with the same key, user and request gets the
//! first answer again, within 24 hours, and writes nothing.
//!
//! The check and the store run inside the command's own transaction, so the stored answer
//! commits exactly when the command's effects do. A rejected command (4xx) rolls back and
//! stores nothing, so its retry is evaluated afresh.

use crate::{TxClient, param};
use uuid::Uuid;

use crate::OutboxError;

/// How long an answer is replayed.
pub const RETENTION_HOURS: i32 = 24;

/// What a key means for the request at hand.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// No live answer for this key: run the command, then [`store`] its answer.
    Fresh,
    /// The same request was answered before: send this answer again.
    Replay {
        /// The first answer's HTTP status.
        status: u16,
        /// The first answer's JSON body.
        body: serde_json::Value,
    },
    /// The key was used for a different request.
    ///
    /// # Handling
    /// Answer 409 `idempotency_key_reused`.
    KeyReused,
}

/// Looks the key up, first waiting for any concurrent request with the same key to finish (a
/// transaction-scoped advisory lock), so two simultaneous retries cannot both run the command.
///
/// `fingerprint` identifies the request (method, path and body); a different fingerprint under
/// the same key is [`Claim::KeyReused`].
///
/// # Errors
/// [`OutboxError`] when PostgreSQL fails.
pub async fn claim(
    tx: &impl TxClient,
    user_id: Uuid,
    key: &str,
    fingerprint: &str,
) -> Result<Claim, OutboxError> {
    // The lock rides in the look-up's round trip: PostgreSQL runs them in order.
    tx.send(
        &tx.prepare_cached(
            "SELECT pg_advisory_xact_lock(hashtextextended($1::text || ':' || $2::text, 0))",
        )
        .await
        .map_err(OutboxError::from)?,
        vec![param(user_id.to_string()), param(key.to_owned())],
    )
    .await?;
    let row = tx
        .query_opt(
            &tx.prepare_cached(
                "SELECT fingerprint, status_code, response FROM idempotency_keys
             WHERE user_id = $1 AND key = $2
               AND created_at > now() - make_interval(hours => $3)",
            )
            .await
            .map_err(OutboxError::from)?,
            &[&user_id, &key, &RETENTION_HOURS],
        )
        .await?;
    Ok(match row {
        None => Claim::Fresh,
        Some(r) if r.get::<_, &str>(0) != fingerprint => Claim::KeyReused,
        Some(r) => Claim::Replay {
            status: r.get::<_, i16>(1).unsigned_abs(),
            body: r.get(2),
        },
    })
}

/// Stores the answer of a [`Claim::Fresh`] request, replacing an expired one under the key
/// (sent, not awaited: the commit reports a refusal).
///
/// # Errors
/// [`OutboxError`] when PostgreSQL fails.
pub async fn store(
    tx: &impl TxClient,
    user_id: Uuid,
    key: &str,
    fingerprint: &str,
    status: u16,
    body: &serde_json::Value,
) -> Result<(), OutboxError> {
    let status = i16::try_from(status).unwrap_or(i16::MAX);
    tx.send(
        &tx.prepare_cached(
            "INSERT INTO idempotency_keys (user_id, key, fingerprint, status_code, response)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (user_id, key) DO UPDATE
           SET fingerprint = EXCLUDED.fingerprint, status_code = EXCLUDED.status_code,
               response = EXCLUDED.response, created_at = now()",
        )
        .await
        .map_err(OutboxError::from)?,
        vec![
            param(user_id),
            param(key.to_owned()),
            param(fingerprint.to_owned()),
            param(status),
            param(body.clone()),
        ],
    )
    .await?;
    Ok(())
}

/// Deletes answers older than the retention, returning how many went. Run periodically.
///
/// # Errors
/// [`OutboxError`] when PostgreSQL fails.
pub async fn purge_expired(pool: &deadpool_postgres::Pool) -> Result<u64, OutboxError> {
    let client = pool.get().await?;
    Ok(client
        .execute(
            "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1)",
            &[&RETENTION_HOURS],
        )
        .await?)
}
