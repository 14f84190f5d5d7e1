//! The projector runtime: the [`Projection`] trait that modules implement as pure functions,
//! the generic [`plan`] that turns a batch of events into read-model operations, and the
//! [`Projector`] that reads a consumer group, applies each event atomically with its version
//! guard, and acknowledges only what was applied.
//!
//! Knows no module: a module plugs in by implementing [`Projection`].
#![warn(missing_docs)]

pub mod control;
pub mod dead_letters;
pub mod metrics;
pub mod plan;
pub mod runtime;
pub mod snapshot;

pub use plan::{PlanOutcome, Projection, ProjectionError, ViewState, plan};
pub use runtime::{
    BatchReport, CanaryCheck, DuplicateReplica, Projector, ProjectorSettings, RebuildOutcome,
    ReplayError, ReplayReport, Rounds, Status,
};
