//! What every service binary shares: the setting groups of architecture.md §11, telemetry
//! (tracing and the Prometheus recorder), health endpoints, graceful shutdown, and the HTTP
//! layer (the one error mapping of http-api.md, JSON and auth extractors, request ids, and the
//! command runner that wraps a command in its transaction).
//!
//! Library code here never listens for signals itself except in [`shutdown`], which binaries
//! call from `main`.
#![warn(missing_docs)]

pub mod command;
pub mod consistency;
pub mod health;
pub mod http;
pub mod read_side;
pub mod secret;
pub mod settings;
pub mod shutdown;
pub mod startup;
pub mod telemetry;

pub use secret::Secret;

/// The allocator every service binary installs (`#[global_allocator] static ALLOCATOR:
/// service_kit::Allocator = service_kit::Allocator;` in `main.rs`). glibc's malloc spent about
/// a third of the projector's CPU on allocation and free-list upkeep under load; mimalloc cut
/// the projector's CPU per event by a quarter (BENCHMARKS.md).
pub use mimalloc::MiMalloc as Allocator;
