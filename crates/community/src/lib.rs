//! The community module: posts in a public feed, and their likes.
//!
//! - [`domain`]: the `Post` aggregate, its commands and events, and the pure rules `decide`
//!   (command → events) and `evolve` (state + event → state). No IO.
//! - [`input`]: the HTTP bodies and their validation into commands (parse, don't validate).
//! - [`store`]: the commands' SQL (`posts`, and `post_likes`, the truth of likes), run inside
//!   the command runner's transaction.
//! - [`projection`]: the read model (per-post view, the feed, per-user lists, per-user liked
//!   posts) as a pure [`projection::Projection`].
//! - [`queries`]: reads of that read model.
//! - [`http`]: the routes command-api and query-api mount.
//! - [`contract`]: what PostgreSQL says the read side must answer, a realistic history, and
//!   the users' random commands.
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

pub use domain::{Post, PostError, PostEvent, PostView, Visibility};
pub use projection::CommunityProjection;

/// The aggregate type of every community event.
pub const AGGREGATE_TYPE: &str = "Post";

/// The module's catalogue entry (architecture.md §3).
pub const SPEC: ModuleSpec = ModuleSpec {
    name: "community",
    projection: "community_projection",
    consumer_group: "community_projection_group",
    aggregate_types: &[AGGREGATE_TYPE],
    event_types: <PostEvent as events::DomainEvent>::TYPES,
};

/// What the services need to host the module.
pub const MODULE: module_kit::Module = module_kit::Module {
    spec: &SPEC,
    projection: || Arc::new(CommunityProjection),
    command_routes: http::command_routes,
    query_routes: http::query_routes,
    sample_history: contract::sample_history,
    expected_reads: contract::expected_reads,
    traffic: contract::traffic,
};

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{PostCreated, PostLiker, PostUpdated};
    use events::DomainEvent as _;

    #[test]
    fn the_event_enum_and_the_catalogue_agree() {
        let created = PostCreated {
            user_id: uuid::Uuid::nil(),
            content: "c".into(),
            image_urls: vec![],
            topic: None,
            visibility: Visibility::Public,
        };
        let liker = PostLiker {
            user_id: uuid::Uuid::nil(),
        };
        module_kit::testing::assert_events_match_catalogue(
            &SPEC,
            &[
                PostEvent::Created(created),
                PostEvent::Updated(PostUpdated {
                    content: Some("u".into()),
                    ..PostUpdated::default()
                }),
                PostEvent::Deleted,
                PostEvent::Liked(liker),
                PostEvent::Unliked(liker),
            ],
        );
        assert_eq!(PostEvent::Deleted.event_type(), "community.post.deleted");
    }
}
