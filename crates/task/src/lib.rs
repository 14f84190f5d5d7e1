//! The task module: a user's study tasks.
//!
//! - [`domain`]: the aggregate, its commands and events, and the pure rules `decide` (command →
//!   events) and `evolve` (state + event → state). No IO.
//! - [`input`]: the HTTP bodies and their validation into commands (parse, don't validate).
//! - [`store`]: the commands' SQL, run inside the command runner's transaction.
//! - [`projection`]: the read model (per-task view, per-user lists and stats) as a pure
//!   [`projection::Projection`].
//! - [`queries`]: reads of that read model.
//! - [`http`]: the routes command-api and query-api mount, one line each.
#![warn(missing_docs)]

pub mod domain;
pub mod http;
pub mod input;
pub mod projection;
pub mod queries;
pub mod store;

pub use domain::{Task, TaskError, TaskEvent, TaskStatus, TaskType};
pub use projection::TaskProjection;

/// The module's catalogue entry.
pub const MODULE: &events::ModuleSpec = &events::TASK;
/// The aggregate type of every task event.
pub const AGGREGATE_TYPE: &str = "Task";
