//! The task module: a user's study tasks.
//!
//! - [`domain`]: the aggregate, its commands and events, and the pure rules `decide` (command →
//!   events) and `evolve` (state + event → state). No IO.
//! - [`input`]: the HTTP bodies and their validation into commands (parse, don't validate).
//! - [`store`]: the commands' SQL, run inside the command runner's transaction.
//! - [`projection`]: the read model (per-task view, per-user lists and stats) as a pure
//!   [`projection::Projection`].
//! - [`queries`]: reads of that read model.
//! - [`http`]: the routes command-api and query-api mount.
//! - [`contract`]: what PostgreSQL says the read side must answer, and a realistic history.
//!
//! The services host it through [`MODULE`], its one line in the registry.
#![warn(missing_docs)]

pub mod contract;
pub mod domain;
pub mod http;
pub mod input;
pub mod projection;
pub mod queries;
pub mod store;

use std::sync::Arc;

use events::ModuleSpec;

pub use domain::{Task, TaskError, TaskEvent, TaskStatus, TaskType};
pub use projection::TaskProjection;

/// The aggregate type of every task event.
pub const AGGREGATE_TYPE: &str = "Task";

/// The module's catalogue entry (architecture.md §3).
pub const SPEC: ModuleSpec = ModuleSpec {
    name: "task",
    projection: "task_projection",
    consumer_group: "task_projection_group",
    aggregate_types: &[AGGREGATE_TYPE],
    event_types: <TaskEvent as events::DomainEvent>::TYPES,
};

/// What the services need to host the module.
pub const MODULE: module_kit::Module = module_kit::Module {
    spec: &SPEC,
    projection: || Arc::new(TaskProjection),
    command_routes: http::command_routes,
    query_routes: http::query_routes,
    sample_history: contract::sample_history,
    expected_reads: contract::expected_reads,
    traffic: contract::traffic,
};

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{TaskAbandoned, TaskCompleted, TaskCreated, TaskUpdated};
    use events::DomainEvent as _;

    #[test]
    fn the_event_enum_and_the_catalogue_agree() {
        let created = TaskCreated {
            user_id: uuid::Uuid::nil(),
            title: "t".into(),
            task_type: TaskType::Learning,
            tags: vec![],
            estimated_minutes: 1,
            priority: 1,
            difficulty: 1,
            due_date: None,
        };
        module_kit::testing::assert_events_match_catalogue(
            &SPEC,
            &[
                TaskEvent::Created(created),
                TaskEvent::Updated(TaskUpdated {
                    title: Some("u".into()),
                    ..TaskUpdated::default()
                }),
                TaskEvent::Started,
                TaskEvent::Completed(TaskCompleted {
                    actual_minutes: 3,
                    note: None,
                }),
                TaskEvent::Abandoned(TaskAbandoned { reason: None }),
                TaskEvent::Deleted,
            ],
        );
        assert_eq!(TaskEvent::Started.event_type(), "task.started");
    }
}
