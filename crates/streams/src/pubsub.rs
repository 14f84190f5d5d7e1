//! Following a pub/sub channel on a connection of its own, for as long as the caller's task
//! lives: the one loop behind every hint this system sends through Redis (applied versions
//! for readers, new outbox rows for the relay).
//!
//! Pub/sub delivers at most once, and nothing while the subscription is down, so what rides
//! on it is only ever a hint: `on_live(false)` tells the follower to fall back to polling until
//! `on_live(true)` says the hints flow again.

use std::time::Duration;

use deadpool_redis::redis;
use futures::StreamExt as _;

/// Subscribes to `channel` on `client` and calls `on_message` with each payload, reconnecting
/// with backoff. Outages are logged through `outage` (once each); without one, at debug only
/// (for a process whose main work already reports Redis going down). `on_live` is told when
/// the subscription comes up and when it goes down. Never returns: abort the task to stop it.
pub async fn follow(
    client: redis::Client,
    channel: String,
    mut outage: Option<resilience::Outage>,
    mut on_live: impl FnMut(bool),
    mut on_message: impl FnMut(&str),
) {
    let mut backoff = resilience::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let connected = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        }
        .await;
        match connected {
            Ok(pubsub) => {
                if let Some(o) = &mut outage {
                    o.succeeded();
                }
                backoff.reset();
                on_live(true);
                let mut messages = pubsub.into_on_message();
                while let Some(msg) = messages.next().await {
                    if let Ok(payload) = msg.get_payload::<String>() {
                        on_message(&payload);
                    }
                }
                on_live(false);
            }
            Err(e) => match &mut outage {
                Some(o) => {
                    o.failed(&e);
                }
                None => {
                    tracing::debug!(channel = %channel, error = %e, "cannot subscribe; retrying")
                }
            },
        }
        tokio::time::sleep(backoff.next_delay_jittered()).await;
    }
}
