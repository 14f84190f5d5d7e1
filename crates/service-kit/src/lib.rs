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
pub mod secret;
pub mod settings;
pub mod shutdown;
pub mod telemetry;

pub use secret::Secret;
