//! command-api end to end over HTTP, on a real PostgreSQL schema of its own per test.

mod commands;
mod galaxy;
mod helpers;
mod idempotency;
mod openapi;
mod operations;
mod posts;
mod process;
mod validation;
