//! The event vocabulary shared by every process: the envelope that travels from the command
//! transaction through the outbox and Redis Streams into the projections, the catalogue of
//! modules and event types, the stable routing of aggregates to stream partitions, and the
//! consistency token a command hands back to its caller.
//!
//! This crate does no IO and knows no runtime: it is the bottom of the dependency graph, so
//! everything here must stay pure and cheap to test.
#![warn(missing_docs)]

pub mod catalogue;
pub mod consistency;
pub mod envelope;
pub mod routing;

pub use catalogue::{ModuleSpec, TASK};
pub use consistency::{ConsistencyToken, InvalidToken};
pub use envelope::{EnvelopeError, EventContext, EventEnvelope, EventMetadata, truncate_to_micros};
pub use routing::{StreamRouting, partition_for};
