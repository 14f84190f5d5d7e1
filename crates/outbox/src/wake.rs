//! Waking the relay after a commit, outside the committing transaction.
//!
//! A `pg_notify` inside a command's transaction makes PostgreSQL take a database-wide lock at
//! commit (so that notifications follow commit order) and hold it through the commit's WAL
//! flush: every writing transaction then commits one after the other, and group commit never
//! happens (issue 14 measured 1.7–2× more commits per second without it). So commands commit
//! without notifying, and a [`Waker`] sends the relay one notification per burst of commits
//! afterwards, on a transaction of its own that does not wait for the WAL flush under the
//! lock ([`notify`]).
//!
//! command-api sends its wake-ups through Redis (`streams::wake`, with
//! [`Waker::start_with`]): a `PUBLISH` costs Redis a few µs, where a notifying transaction
//! costs PostgreSQL 90–140 µs. [`notify`] and [`Waker::start`] remain for writers without
//! Redis; the relay listens on both.
//!
//! A wake-up can be lost (the process dies between commit and notify, the notifying
//! connection fails): the relay's poll finds those rows. Latency is one extra round trip on
//! the notifying side; while one notification is in flight, the commits meanwhile pile up
//! and go out as the next one.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

use events::{EventEnvelope, partition_for};
use tokio::sync::mpsc;

use crate::{OutboxError, Pool};

/// The partitions `events` go to with `partitions` partitions: what a wake-up names.
#[must_use]
pub fn partitions_of(events: &[EventEnvelope], partitions: u32) -> BTreeSet<i32> {
    events
        .iter()
        // A partition index is < partitions ≤ i32::MAX in any sane deployment.
        .map(|e| i32::try_from(partition_for(e.aggregate_id, partitions)).unwrap_or(0))
        .collect()
}

/// Notifies the relays of the connection's schema that `partitions` have new rows, in a
/// transaction of its own: `client` must not be in one (see the module docs for why a notify
/// never rides in a command's transaction).
///
/// One round trip, and no wait for the disk: PostgreSQL gives a notifying transaction an id,
/// so its commit writes WAL and, with `synchronous_commit = on`, would wait for the flush
/// while holding the database-wide notify lock; a wake-up lost to a crash costs nothing (the
/// relay's poll finds the rows), so it commits without waiting. The payload is partition
/// numbers only, so it is written into the statement as is (no statement to prepare).
///
/// # Errors
/// [`OutboxError`] when PostgreSQL fails; the relay's poll then finds the rows.
pub async fn notify(
    client: &tokio_postgres::Client,
    partitions: &BTreeSet<i32>,
) -> Result<(), OutboxError> {
    if partitions.is_empty() {
        return Ok(());
    }
    let payload = events::wake_payload(partitions);
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL synchronous_commit = off; \
             SELECT pg_notify('cqrs_outbox_' || current_schema(), '{payload}'); COMMIT"
        ))
        .await?;
    Ok(())
}

/// Coalesces the wake-ups of many commits into few notifications, sent by a task of its own.
/// Cheap to clone; the task ends with the last clone.
#[derive(Debug, Clone)]
pub struct Waker {
    pending: Arc<Mutex<BTreeSet<i32>>>,
    kick: mpsc::Sender<()>,
}

impl Waker {
    /// Starts a notifying task on the current tokio runtime that notifies through PostgreSQL
    /// ([`notify`], on a connection of `pool`).
    #[must_use]
    pub fn start(pool: Pool) -> Self {
        Self::start_with(move |partitions| {
            let pool = pool.clone();
            async move {
                let client = pool.get().await.map_err(OutboxError::from)?;
                notify(&client, &partitions).await
            }
        })
    }

    /// Starts a notifying task on the current tokio runtime that hands each coalesced set of
    /// partitions to `send` (one call at a time). A failed send is logged at debug: the
    /// relay's poll finds the rows.
    #[must_use]
    pub fn start_with<F, Fut, E>(send: F) -> Self
    where
        F: Fn(BTreeSet<i32>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send,
        E: std::fmt::Display,
    {
        let pending = Arc::new(Mutex::new(BTreeSet::new()));
        // One slot: a kick already waiting covers every commit until the task takes the set.
        let (kick, mut kicks) = mpsc::channel::<()>(1);
        let taken = pending.clone();
        tokio::spawn(async move {
            while kicks.recv().await.is_some() {
                let partitions = std::mem::take(&mut *lock(&taken));
                if let Err(e) = send(partitions).await {
                    tracing::debug!(error = %e, "cannot wake the relay; its poll will find the rows");
                }
            }
        });
        Self { pending, kick }
    }

    /// Asks for a notification naming `partitions` (a commit just wrote to them). Returns at
    /// once; the notification follows on the waker's task.
    pub fn wake(&self, partitions: impl IntoIterator<Item = i32>) {
        lock(&self.pending).extend(partitions);
        // Full: a kick is waiting and will take these partitions too. Closed: the task is gone
        // (the runtime is shutting down); the poll covers it.
        let _ = self.kick.try_send(());
    }
}

/// The set, even if a holder panicked (a set of numbers cannot be left half-updated).
fn lock(set: &Mutex<BTreeSet<i32>>) -> std::sync::MutexGuard<'_, BTreeSet<i32>> {
    set.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
