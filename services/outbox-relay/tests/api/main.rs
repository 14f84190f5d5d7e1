//! outbox-relay in-process against real PostgreSQL and Redis (private servers where a test
//! restarts one).

mod helpers;
mod relay;
mod restarts;
