//! What every module crate builds on.
//!
//! - [`Module`]: the one definition a module exports, and the only thing the registry crate
//!   (`modules`) lists. Every service, the pipeline tests and the benchmarks iterate the
//!   registry, so a new module is its crate, its migration and one registry line.
//! - [`input`]: the shape of request bodies every module validates (PATCH fields that tell
//!   absent from `null`, bounded text, numbers and lists), each failure naming its field.
//! - [`dates`]: the `YYYY-MM-DD` wire format.
//! - [`paging`]: newest-first keyset lists over sorted sets, their opaque cursors and `limit`.
//! - `testing` (feature `testing`): an in-memory model of the read-model writes and a clock
//!   for building events, for the modules' pure tests.
//!
//! Module crates depend on this crate and on the core crates; nothing here knows a module.
#![warn(missing_docs)]

pub mod dates;
pub mod input;
pub mod paging;
#[cfg(feature = "testing")]
pub mod testing;

use std::sync::Arc;

use events::{EventEnvelope, ModuleSpec};
use futures::future::BoxFuture;
use outbox::tokio_postgres;
use projection::Projection;
use service_kit::http::Routes;
use service_kit::read_side::ReadSide;
use uuid::Uuid;

/// Everything the services need to know to host one module.
#[derive(Clone, Copy)]
pub struct Module {
    /// Its catalogue entry: stream, consumer group, projection, aggregate and event types.
    pub spec: &'static ModuleSpec,
    /// Its projection (projections are pure values; each call makes one).
    pub projection: fn() -> Arc<dyn Projection>,
    /// Registers its commands on command-api, each with its OpenAPI operation (a route
    /// cannot be mounted undocumented). App data there: `CommandRunner`, `JwtKeys`; the
    /// security scheme `bearer` is registered.
    pub command_routes: fn(&mut Routes),
    /// Registers its queries on query-api, reading through `read` (attach it to the module's
    /// paths with `routes.with_data(web::Data::new(read.clone()))`). App data there:
    /// `JwtKeys`; the security scheme `bearer` is registered.
    pub query_routes: fn(&mut Routes, &ReadSide),
    /// A realistic history of about `n` of its events, as a busy system publishes them (one
    /// aggregate's events far apart): the workload of the apply benchmarks.
    pub sample_history: fn(usize) -> Vec<EventEnvelope>,
    /// The read side's contract with PostgreSQL: for `users`, every query query-api must
    /// answer and what PostgreSQL says the answer holds. The pipeline tests check it after
    /// every scenario (under faults too); it is also how to audit a live read model.
    pub expected_reads: ExpectedReads,
    /// Random commands as the module's users send them: the pipeline tests' load (chaos,
    /// self-repair, property tests) drives every module of the registry through this.
    pub traffic: fn() -> Box<dyn Traffic>,
}

/// One command of a module's random traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandCall {
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: &'static str,
    /// The path, e.g. `/v1/tasks/<id>/start`.
    pub path: String,
    /// The JSON body, if the command has one.
    pub body: Option<serde_json::Value>,
}

/// A module's random traffic: what its users would send next, learning from the answers (the
/// ids they created, what they liked). One instance serves every user of a test, so commands
/// may touch what other users made.
pub trait Traffic: Send {
    /// The next command of `user`; `pick(n)` is a random number below `n` (at least 1).
    fn next(&mut self, user: Uuid, pick: &mut dyn FnMut(usize) -> usize) -> CommandCall;
    /// What the API answered to `call` of `user`. Only 200, 201, 403, 404 and 409 are answers
    /// a valid client can get; the traffic must not send what would earn anything else.
    fn answered(&mut self, user: Uuid, call: &CommandCall, status: u16, body: &serde_json::Value);
}

/// See [`Module::expected_reads`].
pub type ExpectedReads = for<'a> fn(
    &'a tokio_postgres::Client,
    &'a [Uuid],
) -> BoxFuture<'a, Result<Vec<ExpectedRead>, BoxError>>;

/// Any error, for contracts whose callers only report it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module")
            .field("name", &self.spec.name)
            .finish_non_exhaustive()
    }
}

/// One query and the answer PostgreSQL says it must get.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedRead {
    /// Who asks (the bearer of the query).
    pub user: Uuid,
    /// The path and query string, e.g. `/v1/tasks/<id>`.
    pub path: String,
    /// What the answer must be.
    pub expect: Expected,
}

/// What an answer must be.
#[derive(Debug, Clone, PartialEq)]
pub enum Expected {
    /// 404: unknown, deleted, or not the caller's to see.
    NotFound,
    /// 200 with exactly this body.
    Body(serde_json::Value),
    /// 200 with a list whose pages, followed cursor by cursor from the first, hold exactly
    /// these items in this order.
    Items(Vec<serde_json::Value>),
}
