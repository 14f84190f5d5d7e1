//! command-api end to end over HTTP, on a real PostgreSQL schema of its own per test.

mod commands;
mod helpers;
mod idempotency;
mod operations;
mod process;
mod validation;
