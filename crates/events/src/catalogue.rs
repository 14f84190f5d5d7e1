//! The catalogue of modules and their event types (architecture.md §3).
//!
//! Event type names are part of the wire format: they are past tense and never renamed. A new
//! module adds one [`ModuleSpec`] here and one crate beside `task`.

/// What the rest of the system needs to know about one module: its stream, consumer group,
/// projection name and the event types it emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleSpec {
    /// Module name, also the stream suffix: `cqrs:stream:<name>`.
    pub name: &'static str,
    /// The projection that consumes the module's stream, e.g. `task_projection`.
    pub projection: &'static str,
    /// The consumer group the projection reads through, e.g. `task_projection_group`.
    pub consumer_group: &'static str,
    /// The aggregate types whose events go to this module's stream.
    pub aggregate_types: &'static [&'static str],
    /// Every event type the module emits, in the order of the catalogue.
    pub event_types: &'static [&'static str],
}

impl ModuleSpec {
    /// Whether `event_type` belongs to this module's catalogue.
    #[must_use]
    pub fn emits(&self, event_type: &str) -> bool {
        self.event_types.contains(&event_type)
    }
}

/// The task module: a user's study tasks.
pub const TASK: ModuleSpec = ModuleSpec {
    name: "task",
    projection: "task_projection",
    consumer_group: "task_projection_group",
    aggregate_types: &["Task"],
    event_types: &[
        "task.created",
        "task.updated",
        "task.started",
        "task.completed",
        "task.abandoned",
        "task.deleted",
    ],
};

/// Every module this build knows, for services that host all of them.
pub const MODULES: &[ModuleSpec] = &[TASK];

/// Finds a module by name.
#[must_use]
pub fn module(name: &str) -> Option<&'static ModuleSpec> {
    MODULES.iter().find(|m| m.name == name)
}

/// Finds a module by the name of its projection.
#[must_use]
pub fn module_by_projection(projection: &str) -> Option<&'static ModuleSpec> {
    MODULES.iter().find(|m| m.projection == projection)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_architecture_convention() {
        for m in MODULES {
            assert_eq!(m.projection, format!("{}_projection", m.name));
            assert_eq!(m.consumer_group, format!("{}_projection_group", m.name));
            for t in m.event_types {
                assert!(
                    t.starts_with(&format!("{}.", m.name)),
                    "{t} outside module {}",
                    m.name
                );
            }
        }
    }

    #[test]
    fn lookups_find_task_and_nothing_else() {
        assert_eq!(module("task"), Some(&TASK));
        assert_eq!(module_by_projection("task_projection"), Some(&TASK));
        assert_eq!(module("nope"), None);
        assert!(TASK.emits("task.completed"));
        assert!(!TASK.emits("task.finished"));
    }
}
