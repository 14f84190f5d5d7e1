//! The projector runtime against a real Redis and PostgreSQL.

mod consuming;
mod fixture;
mod generations;
