//! A dedicated LISTEN connection.
//!
//! Pooled connections silently drop notifications (the pool drives the connection and
//! discards them), so listeners keep one connection of their own and drive it here. The caller
//! reconnects when [`Listener::closed`] resolves and must keep a poll fallback: notifications
//! sent while disconnected are lost.

use futures::StreamExt as _;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::{OutboxError, PgSettings};

/// A live LISTEN session; each notification's payload is sent to the given channel.
#[derive(Debug)]
pub struct Listener {
    driver: JoinHandle<()>,
    _client: tokio_postgres::Client,
}

impl Listener {
    /// Connects, subscribes to `channel` (e.g. [`crate::notify_channel`] of the schema: the
    /// outbox, whose payloads list the partitions a commit wrote) and starts forwarding
    /// notification payloads to `payloads`. When this returns the subscription exists: the
    /// caller should then look for work committed before it ("subscribe before you check").
    ///
    /// # Errors
    /// [`OutboxError`] when the connection or `LISTEN` fails.
    pub async fn start(
        settings: &PgSettings,
        channel: &str,
        payloads: UnboundedSender<String>,
    ) -> Result<Self, OutboxError> {
        let (client, mut connection) = settings.pg_config()?.connect(NoTls).await?;
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        if payloads.send(n.payload().to_owned()).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "LISTEN connection ended");
                        break;
                    }
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN \"{channel}\""))
            .await?;
        Ok(Self {
            driver,
            _client: client,
        })
    }

    /// Resolves when the connection has closed; reconnect then.
    pub async fn closed(&mut self) {
        let _ = (&mut self.driver).await;
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.driver.abort();
    }
}
