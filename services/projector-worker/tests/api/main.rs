//! projector-worker in-process, on a schema and key prefix of its own per test.

mod helpers;
mod worker;
