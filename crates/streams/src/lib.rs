//! The Redis side of the pipeline: connection pools, the key space of a deployment, publishing
//! batches to streams, consumer groups, and the atomic apply script that commits a read-model
//! change together with the aggregate's applied version.
//!
//! This crate knows no PostgreSQL and no module: keys and operations come from its callers.
#![warn(missing_docs)]

pub mod apply;
pub mod bulk;
pub mod consumer;
pub mod dlq;
pub mod error;
pub mod generation;
pub mod info;
pub mod keys;
pub mod lease;
pub mod pool;
pub mod publisher;
pub mod pubsub;
pub mod read_model;
pub mod retention;
pub mod snapshot;
pub mod visibility;
pub mod wake;

pub use apply::{ApplyItem, ApplyOutcome, Op, Target, apply_batch};
pub use error::StreamError;
pub use generation::{GenerationGuard, GenerationState, Generations};
pub use keys::{KeySpace, ReadModelKeys};
pub use pool::{RedisPools, RedisSettings};

/// Re-exported so callers use the same client types as this crate.
pub use deadpool_redis::{self, Pool, redis};
