//! The galaxy module: a shared graph of knowledge nodes and relations, and each user's
//! progress on each node (unlock, expand, study, mastery).
//!
//! - [`domain`]: the aggregates `KnowledgeNode` and `UserNode`, their commands and events, and
//!   the pure rules. No IO.
//! - [`input`]: the HTTP bodies and their validation into commands.
//! - [`store`]: the commands' SQL, run inside the command runner's transaction.
//! - [`projection`]: the read model (node views, relations from both ends, child counts, each
//!   user's progress, stats and recent studies) as a pure [`projection::Projection`].
//! - [`queries`]: reads of that read model.
//! - [`http`]: the routes command-api and query-api mount.
//! - [`contract`]: what PostgreSQL says the read side must answer, a realistic history, and
//!   the random traffic of the pipeline tests.
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

pub use domain::{GalaxyError, GalaxyEvent, KnowledgeNode, NodeView, UserNode};
pub use projection::GalaxyProjection;

/// The aggregate type of the node events.
pub const NODE_AGGREGATE: &str = "KnowledgeNode";
/// The aggregate type of a user's progress on a node.
pub const USER_NODE_AGGREGATE: &str = "UserNode";

/// The module's catalogue entry (architecture.md §3).
pub const SPEC: ModuleSpec = ModuleSpec {
    name: "galaxy",
    projection: "galaxy_projection",
    consumer_group: "galaxy_projection_group",
    aggregate_types: &[NODE_AGGREGATE, USER_NODE_AGGREGATE],
    event_types: <GalaxyEvent as events::DomainEvent>::TYPES,
};

/// What the services need to host the module.
pub const MODULE: module_kit::Module = module_kit::Module {
    spec: &SPEC,
    projection: || Arc::new(GalaxyProjection),
    command_routes: http::command_routes,
    query_routes: http::query_routes,
    sample_history: contract::sample_history,
    expected_reads: contract::expected_reads,
    traffic: contract::traffic,
};

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{
        ActivityType, MasteryUpdated, NodeCreated, NodeEvent, NodeUnlocked, RelationCreated,
        RelationType, StudyRecorded, UserNodeEvent,
    };
    use uuid::Uuid;

    #[test]
    fn the_event_enum_and_the_catalogue_agree() {
        module_kit::testing::assert_events_match_catalogue(
            &SPEC,
            &[
                GalaxyEvent::Node(NodeEvent::Created(NodeCreated {
                    name: "n".into(),
                    name_en: None,
                    description: None,
                    keywords: vec![],
                    importance_level: 1,
                    is_seed: false,
                    parent_id: None,
                    subject_id: None,
                    created_by: Uuid::nil(),
                })),
                GalaxyEvent::Node(NodeEvent::RelationCreated(RelationCreated {
                    target_node_id: Uuid::nil(),
                    relation_type: RelationType::Related,
                    strength: 0.5,
                })),
                GalaxyEvent::UserNode(UserNodeEvent::Unlocked(NodeUnlocked {
                    user_id: Uuid::nil(),
                    node_id: Uuid::nil(),
                })),
                GalaxyEvent::UserNode(UserNodeEvent::Expanded),
                GalaxyEvent::UserNode(UserNodeEvent::StudyRecorded(StudyRecorded {
                    minutes: 3,
                    performance_score: 0.25,
                    activity_type: ActivityType::Study,
                })),
                GalaxyEvent::UserNode(UserNodeEvent::MasteryUpdated(MasteryUpdated {
                    mastery_score: 2.5,
                })),
            ],
        );
    }
}
