//! The PostgreSQL side of the pipeline: connection pools, schema migrations, the append of
//! events to `event_store` and `outbox` inside a command's own transaction, idempotency keys,
//! and the relay's read-publish-delete of outbox batches.
//!
//! # Delivery guarantee
//! A command's business rows, its `event_store` rows and its `outbox` rows commit in one
//! transaction, so an event exists exactly when its effect does. The relay deletes outbox rows
//! only after Redis accepted them ([`relay::OutboxStore::publish_round`]); a crash between the
//! two publishes the same `event_id` again, so delivery is at-least-once and consumers dedupe
//! on `(aggregate_id, aggregate_version)`.
//!
//! This crate knows no Redis and no HTTP.
#![warn(missing_docs)]

pub mod append;
pub mod audit;
pub mod command_tx;
pub mod control;
pub mod error;
pub mod history;
pub mod idempotency;
pub mod lease;
pub mod listener;
pub mod migrate;
pub mod operations;
pub mod pool;
pub mod relay;
pub mod snapshots;
pub mod stats;
pub mod wake;

pub use append::append_events;
pub use command_tx::{CommandTx, Param, TxClient, param};
pub use error::OutboxError;
pub use pool::{PgSettings, connect};

/// Re-exported so module crates name the same driver types as this crate.
pub use deadpool_postgres::{Pool, Transaction};
pub use tokio_postgres;

/// The NOTIFY channel the relay listens on for a schema. Channels are database-wide, so the
/// schema is part of the name: deployments (and tests) that share a database in different
/// schemas do not wake each other.
#[must_use]
pub fn notify_channel(schema: &str) -> String {
    format!("cqrs_outbox_{schema}")
}
