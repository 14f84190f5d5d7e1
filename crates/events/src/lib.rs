//! The event vocabulary shared by every process: the envelope that travels from the command
//! transaction through the outbox and Redis Streams into the projections, the shape of a
//! module's catalogue entry and of its event enum, the stable routing of aggregates to stream
//! partitions, and the consistency token a command hands back to its caller.
//!
//! This crate does no IO and knows no runtime: it is the bottom of the dependency graph, so
//! everything here must stay pure and cheap to test.
#![warn(missing_docs)]

pub mod catalogue;
pub mod consistency;
pub mod domain;
pub mod envelope;
pub mod routing;

pub use catalogue::ModuleSpec;
pub use consistency::{ConsistencyToken, InvalidToken};
pub use domain::{
    Aggregate, Committed, DomainEvent, PayloadError, commit, decode_payload, encode_payload,
};
pub use envelope::{EnvelopeError, EventContext, EventEnvelope, EventMetadata, truncate_to_micros};
pub use routing::{StreamRouting, partition_for, wake_payload};
