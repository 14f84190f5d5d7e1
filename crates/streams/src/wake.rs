//! Waking the relay through Redis when a command committed outbox rows.
//!
//! The relay publishes to Redis, so a wake-up sent through Redis is lost only when the relay
//! could not publish anyway; sent through PostgreSQL (`pg_notify`) it cost a transaction of
//! its own per burst of commits: 86–141 µs of PostgreSQL's CPU each at 1,000 commits a second,
//! a fifth to a third of what the command's own transaction costs there, on the one server
//! that cannot scale out (issue 14; BENCHMARKS.md, "Waking the relay through Redis"). A `PUBLISH` costs Redis a few µs. The relay's poll still finds any
//! rows whose wake-up was lost, and the relay keeps its PostgreSQL `LISTEN` for writers that
//! notify there.
//!
//! The payload names the partitions written, as numbers separated by commas.

use std::collections::BTreeSet;

use deadpool_redis::redis;

use crate::{KeySpace, StreamError};

/// The channel wake-ups go to: one per key prefix (one per deployment).
#[must_use]
pub fn channel(keys: &KeySpace) -> String {
    format!("{}cqrs:outbox", keys.prefix())
}

/// Tells the relays that `partitions` have new outbox rows.
///
/// # Errors
/// [`StreamError`] when Redis fails (the relay's poll then finds the rows).
pub async fn publish(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &KeySpace,
    partitions: &BTreeSet<i32>,
) -> Result<(), StreamError> {
    if partitions.is_empty() {
        return Ok(());
    }
    let _: i64 = redis::cmd("PUBLISH")
        .arg(channel(keys))
        .arg(events::wake_payload(partitions))
        .query_async(conn)
        .await?;
    Ok(())
}

/// Follows the wake-ups of the deployment under `keys` on a connection of its own to
/// `client`, calling `on_wake` with each payload and `on_live` as the subscription comes up
/// or goes down ([`crate::pubsub::follow`]). Failures are logged at debug only: the relay's
/// publishing reports Redis outages. Never returns: abort the task to stop it.
pub async fn follow(
    client: redis::Client,
    keys: &KeySpace,
    on_live: impl FnMut(bool),
    on_wake: impl FnMut(&str),
) {
    crate::pubsub::follow(client, channel(keys), None, on_live, on_wake).await;
}
