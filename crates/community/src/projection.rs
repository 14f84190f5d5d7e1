//! The community read model.
//!
//! Keys (under the projection's generation prefix):
//! - `view:<post id>`: the post's JSON ([`Post`], `like_count` included); absent once deleted;
//! - `feed`: every live public post, newest first, as a [`module_kit::paging`] list;
//! - `user:<user id>:posts`: the user's live posts (what the author sees);
//! - `user:<user id>:posts:public`: the user's live public posts (what everyone else sees);
//! - `user:<user id>:liked`: a hash whose fields are the ids of the posts the user likes, so
//!   `liked_by_me` of a whole page is one `HMGET`.
//!
//! Only the view is read-modify-written, and it belongs to the event's aggregate (the post),
//! whose version guard orders its events. Everything shared between posts is changed by
//! commutative, idempotent operations: list membership (`ZADD`/`ZREM` of the post's own
//! member) and the liker's hash field named after the post (`HSET`/`HDEL`), which no other
//! post ever touches. So any interleaving of posts, and any redelivery, ends in the same state.
//!
//! `like_count` lives in the view: likes are the post's own events, so the version guard
//! applies each exactly once, in order, and the count is exact. The likes of a deleted post
//! stay in their likers' hashes, as its `post_likes` rows stay in PostgreSQL: a deleted post
//! is never read, and the fields are bounded by the likes ever given.

use std::collections::BTreeSet;

use events::{DomainEvent as _, EventEnvelope, ModuleSpec};
use projection::{Projection, ProjectionError, ViewState};
use streams::{Op, ReadModelKeys};
use uuid::Uuid;

use crate::SPEC;
use crate::domain::{Post, PostError, PostEvent, Visibility, evolve};

/// Key names of the community read model.
#[derive(Debug, Clone, Copy)]
pub struct CommunityKeys<'a>(pub &'a ReadModelKeys);

impl CommunityKeys<'_> {
    /// A post's view.
    #[must_use]
    pub fn view(&self, id: Uuid) -> String {
        self.0.key(&format!("view:{id}"))
    }

    /// The feed: live public posts.
    #[must_use]
    pub fn feed(&self) -> String {
        self.0.key("feed")
    }

    /// A user's live posts: all of them, or only the public ones.
    #[must_use]
    pub fn posts(&self, user: Uuid, public_only: bool) -> String {
        if public_only {
            self.0.key(&format!("user:{user}:posts:public"))
        } else {
            self.0.key(&format!("user:{user}:posts"))
        }
    }

    /// The posts a user likes (hash fields: post ids).
    #[must_use]
    pub fn liked(&self, user: Uuid) -> String {
        self.0.key(&format!("user:{user}:liked"))
    }
}

/// The list member of a post: creation time then id ([`module_kit::paging::member`]).
#[must_use]
pub fn list_member(post: &Post) -> String {
    module_kit::paging::member(post.created_at, post.id)
}

/// The lists a post is in: none once deleted; its author's list; and, when public, the
/// author's public list and the feed.
fn memberships(keys: CommunityKeys<'_>, post: Option<&Post>) -> BTreeSet<(String, String)> {
    let Some(p) = post.filter(|p| !p.deleted) else {
        return BTreeSet::new();
    };
    let m = list_member(p);
    let mut lists = BTreeSet::from([(keys.posts(p.user_id, false), m.clone())]);
    if p.visibility == Visibility::Public {
        lists.insert((keys.posts(p.user_id, true), m.clone()));
        lists.insert((keys.feed(), m));
    }
    lists
}

/// The community projection.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommunityProjection;

impl Projection for CommunityProjection {
    fn module(&self) -> &'static ModuleSpec {
        &SPEC
    }

    fn reads(&self, event: &EventEnvelope, keys: &ReadModelKeys) -> Vec<String> {
        vec![CommunityKeys(keys).view(event.aggregate_id)]
    }

    fn apply(
        &self,
        event: &EventEnvelope,
        state: &ViewState,
        keys: &ReadModelKeys,
    ) -> Result<Vec<Op>, ProjectionError> {
        let keys = CommunityKeys(keys);
        if !SPEC.emits(&event.event_type) {
            return Err(ProjectionError::UnknownEventType(event.event_type.clone()));
        }
        let post_event = PostEvent::from_payload(&event.event_type, &event.payload)
            .map_err(|e| ProjectionError::MalformedPayload(e.to_string()))?;
        let view_key = keys.view(event.aggregate_id);
        let old: Option<Post> = state
            .get(&view_key)
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| {
                ProjectionError::MissingState(format!("view {view_key} is unreadable: {e}"))
            })?;
        let new = evolve(
            old.clone(),
            &post_event,
            event.aggregate_id,
            event.aggregate_version,
            event.occurred_at,
        )
        .map_err(|e| match e {
            PostError::MalformedEvent { reason, .. } => ProjectionError::MissingState(reason),
            other => ProjectionError::MissingState(other.to_string()),
        })?;

        let mut ops = Vec::new();
        if new.deleted {
            ops.push(Op::Del { key: view_key });
        } else {
            let json = serde_json::to_string(&new)
                .map_err(|e| ProjectionError::MalformedPayload(e.to_string()))?;
            ops.push(Op::Set {
                key: view_key,
                value: json,
            });
        }
        let before = memberships(keys, old.as_ref());
        let after = memberships(keys, Some(&new));
        for (key, member) in before.difference(&after) {
            ops.push(Op::ZRem {
                key: key.clone(),
                member: member.clone(),
            });
        }
        for (key, member) in after.difference(&before) {
            ops.push(Op::ZAdd {
                key: key.clone(),
                score: 0.0,
                member: member.clone(),
            });
        }
        match post_event {
            PostEvent::Liked(l) => ops.push(Op::HSet {
                key: keys.liked(l.user_id),
                field: event.aggregate_id.to_string(),
                value: "1".into(),
            }),
            PostEvent::Unliked(l) => ops.push(Op::HDel {
                key: keys.liked(l.user_id),
                field: event.aggregate_id.to_string(),
            }),
            PostEvent::Created(_) | PostEvent::Updated(_) | PostEvent::Deleted => {}
        }
        Ok(ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    use events::{Committed, EventContext, commit};
    use module_kit::testing::{EventClock, MemoryModel};
    use streams::KeySpace;
    use time::macros::datetime;

    use crate::domain::{CreatePost, PostCommand, UpdatePost, decide, decide_create};

    struct Harness {
        model: MemoryModel,
        keys: ReadModelKeys,
        posts: HashMap<Uuid, Post>,
        /// post → users liking it, as `post_likes` holds them.
        likes: BTreeMap<Uuid, BTreeSet<Uuid>>,
        /// Every envelope, in commit order: to replay or redeliver.
        log: Vec<EventEnvelope>,
        clock: EventClock,
    }

    impl Harness {
        fn new() -> Self {
            Self {
                model: MemoryModel::default(),
                keys: KeySpace::new("t:").read_model("community", 1),
                posts: HashMap::new(),
                likes: BTreeMap::new(),
                log: vec![],
                clock: EventClock::starting_at(
                    datetime!(2026-11-24 10:00:01 UTC),
                    time::Duration::seconds(1),
                ),
            }
        }

        fn keys(&self) -> CommunityKeys<'_> {
            CommunityKeys(&self.keys)
        }

        fn project(&mut self, envelope: &EventEnvelope) -> Vec<Op> {
            let reads = CommunityProjection.reads(envelope, &self.keys);
            let ops = CommunityProjection
                .apply(envelope, &self.model.state(&reads), &self.keys)
                .expect("apply");
            self.model.run(&ops);
            ops
        }

        /// Plays `events` of `user` on `id` as the command side does, then projects them.
        fn play(&mut self, user: Uuid, id: Uuid, events: &[PostEvent]) {
            let ctx = self.clock.context(user);
            let state = self.posts.get(&id).cloned();
            let version = state.as_ref().map_or(0, |p| p.version);
            let Committed { state, envelopes } =
                commit(state, version, id, events, &ctx).expect("evolve");
            self.posts.insert(id, state.expect("exists"));
            for e in events {
                match e {
                    PostEvent::Liked(l) => {
                        self.likes.entry(id).or_default().insert(l.user_id);
                    }
                    PostEvent::Unliked(l) => {
                        self.likes.entry(id).or_default().remove(&l.user_id);
                    }
                    _ => {}
                }
            }
            for env in &envelopes {
                self.project(env);
            }
            self.log.extend(envelopes);
        }

        fn create(&mut self, user: Uuid, visibility: Visibility) -> Uuid {
            let cmd = CreatePost {
                id: Uuid::now_v7(),
                content: "hello".into(),
                image_urls: vec![],
                topic: None,
                visibility,
            };
            let events = decide_create(user, &cmd);
            self.play(user, cmd.id, &events);
            cmd.id
        }

        /// Runs `cmd` of `user` if the rules allow it; the events it caused.
        fn command(&mut self, user: Uuid, id: Uuid, cmd: &PostCommand) -> Option<usize> {
            let liked = self.likes.get(&id).is_some_and(|l| l.contains(&user));
            let events = decide(&self.posts[&id], user, liked, cmd).ok()?;
            self.play(user, id, &events);
            Some(events.len())
        }

        fn view(&self, id: Uuid) -> Option<Post> {
            self.model
                .get(&self.keys().view(id))
                .map(|s| serde_json::from_str(s).expect("json"))
        }

        fn list(&self, key: &str) -> Vec<String> {
            let mut members: Vec<String> = self
                .model
                .zsets
                .get(key)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default();
            members.reverse();
            members
        }

        fn liked_by(&self, user: Uuid, id: Uuid) -> bool {
            self.model
                .hashes
                .get(&self.keys().liked(user))
                .is_some_and(|h| h.contains_key(&id.to_string()))
        }

        /// The read model equals what the command side's state says, in every key.
        fn assert_matches_commands(&self, users: &[Uuid]) {
            let mut newest_first: Vec<&Post> = self.posts.values().collect();
            newest_first.sort_by_key(|p| std::cmp::Reverse(list_member(p)));
            let members = |f: &dyn Fn(&Post) -> bool| -> Vec<String> {
                newest_first
                    .iter()
                    .filter(|p| !p.deleted && f(p))
                    .map(|p| list_member(p))
                    .collect()
            };
            let public = |p: &Post| p.visibility == Visibility::Public;
            assert_eq!(self.list(&self.keys().feed()), members(&public));
            for u in users {
                assert_eq!(
                    self.list(&self.keys().posts(*u, false)),
                    members(&|p| p.user_id == *u)
                );
                assert_eq!(
                    self.list(&self.keys().posts(*u, true)),
                    members(&|p| p.user_id == *u && public(p))
                );
            }
            for (id, p) in &self.posts {
                let likers = self.likes.get(id).cloned().unwrap_or_default();
                if p.deleted {
                    assert_eq!(self.view(*id), None);
                    continue;
                }
                let view = self.view(*id).expect("view");
                assert_eq!(&view, p);
                assert_eq!(view.like_count, likers.len() as i64, "distinct likers");
                for u in users {
                    assert_eq!(self.liked_by(*u, *id), likers.contains(u));
                }
            }
        }
    }

    fn users() -> [Uuid; 3] {
        [Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3)]
    }

    #[test]
    fn creation_writes_the_view_and_the_lists_its_visibility_allows() {
        let mut h = Harness::new();
        let [a, _, _] = users();
        let public = h.create(a, Visibility::Public);
        let private = h.create(a, Visibility::Private);
        let friends = h.create(a, Visibility::FriendsOnly);
        assert_eq!(h.view(public).expect("view"), h.posts[&public]);
        assert_eq!(h.view(private).expect("view"), h.posts[&private]);
        let m = |id: Uuid| list_member(&h.posts[&id]);
        assert_eq!(h.list(&h.keys().feed()), vec![m(public)]);
        assert_eq!(h.list(&h.keys().posts(a, true)), vec![m(public)]);
        assert_eq!(
            h.list(&h.keys().posts(a, false)),
            vec![m(friends), m(private), m(public)],
            "newest first"
        );
        h.assert_matches_commands(&users());
    }

    #[test]
    fn a_like_counts_once_and_marks_the_liker_and_an_unlike_takes_both_back() {
        let mut h = Harness::new();
        let [a, b, c] = users();
        let id = h.create(a, Visibility::Public);
        h.command(b, id, &PostCommand::Like);
        let ops = h.command(c, id, &PostCommand::Like);
        assert_eq!(ops, Some(1));
        assert_eq!(h.view(id).expect("view").like_count, 2);
        assert!(h.liked_by(b, id) && h.liked_by(c, id) && !h.liked_by(a, id));
        assert_eq!(
            h.command(b, id, &PostCommand::Like),
            Some(0),
            "second like: no event"
        );
        assert_eq!(h.view(id).expect("view").like_count, 2);
        h.command(b, id, &PostCommand::Unlike);
        assert_eq!(h.view(id).expect("view").like_count, 1);
        assert!(!h.liked_by(b, id) && h.liked_by(c, id));
        h.assert_matches_commands(&users());
    }

    #[test]
    fn a_visibility_change_moves_the_post_in_and_out_of_the_public_lists() {
        let mut h = Harness::new();
        let [a, _, _] = users();
        let id = h.create(a, Visibility::Public);
        let hide = PostCommand::Update(UpdatePost {
            visibility: Some(Visibility::Private),
            ..UpdatePost::default()
        });
        h.command(a, id, &hide);
        assert!(h.list(&h.keys().feed()).is_empty());
        assert!(h.list(&h.keys().posts(a, true)).is_empty());
        assert_eq!(h.list(&h.keys().posts(a, false)).len(), 1);
        let show = PostCommand::Update(UpdatePost {
            visibility: Some(Visibility::Public),
            content: Some("again".into()),
            ..UpdatePost::default()
        });
        h.command(a, id, &show);
        assert_eq!(h.list(&h.keys().feed()).len(), 1);
        assert_eq!(h.view(id).expect("view").content, "again");
        h.assert_matches_commands(&users());
    }

    #[test]
    fn a_deletion_removes_the_view_and_every_list_entry() {
        let mut h = Harness::new();
        let [a, b, _] = users();
        let id = h.create(a, Visibility::Public);
        h.command(b, id, &PostCommand::Like);
        h.command(a, id, &PostCommand::Delete);
        assert_eq!(h.view(id), None);
        assert!(h.list(&h.keys().feed()).is_empty());
        assert!(h.list(&h.keys().posts(a, false)).is_empty());
        assert!(h.list(&h.keys().posts(a, true)).is_empty());
        h.assert_matches_commands(&users());
    }

    #[test]
    fn a_duplicate_delivery_changes_nothing_more() {
        let mut h = Harness::new();
        let [a, b, c] = users();
        let id = h.create(a, Visibility::Public);
        h.command(b, id, &PostCommand::Like);
        h.command(c, id, &PostCommand::Like);
        h.command(b, id, &PostCommand::Unlike);
        // The runtime plans an event at or below the applied version as a duplicate: its ops
        // are never run again, so a redelivered like is not counted twice.
        let versions = HashMap::from([(id, h.posts[&id].version)]);
        let mut state = h.model.state(&[h.keys().view(id)]);
        let log: Vec<&EventEnvelope> = h.log.iter().collect();
        let plans = projection::plan(&CommunityProjection, &h.keys, &log, &versions, &mut state);
        assert!(
            plans
                .iter()
                .all(|p| *p == projection::PlanOutcome::Duplicate)
        );
        // And each event's ops are idempotent by themselves: run twice, they leave what they
        // leave once (set values, set membership, hash fields).
        let mut replay = Harness::new();
        for e in &h.log {
            let ops = replay.project(e);
            let once = replay.model.clone();
            replay.model.run(&ops);
            assert_eq!(replay.model, once, "{}", e.event_type);
        }
        assert_eq!(replay.model, h.model);
        h.assert_matches_commands(&users());
    }

    #[test]
    fn likes_of_different_posts_commute() {
        // Two posts' events interleaved either way leave the same read model: what the
        // projection's contract asks of state shared between aggregates.
        let mut h = Harness::new();
        let [a, b, c] = users();
        let p = h.create(a, Visibility::Public);
        let q = h.create(b, Visibility::Public);
        for (u, id) in [(c, p), (c, q), (a, q), (b, p)] {
            h.command(u, id, &PostCommand::Like);
        }
        h.command(c, p, &PostCommand::Unlike);
        let forward = h.model.clone();
        let mut by_post: Vec<&EventEnvelope> = h.log.iter().collect();
        by_post.sort_by_key(|e| (e.aggregate_id != q, e.aggregate_version));
        let mut other = Harness::new();
        for e in by_post {
            other.project(e);
        }
        assert_eq!(other.model, forward);
    }

    #[test]
    fn foreign_and_malformed_events_are_refused_with_a_type() {
        let h = Harness::new();
        let mut e = EventContext {
            user_id: None,
            correlation_id: None,
            source: "t".into(),
            now: datetime!(2026-01-01 0:00 UTC),
        }
        .envelope(
            "Post",
            Uuid::now_v7(),
            1,
            "community.post.shared",
            serde_json::json!({}),
        );
        let refuse = |e: &EventEnvelope| {
            CommunityProjection
                .apply(e, &ViewState::default(), &h.keys)
                .expect_err("refused")
                .error_type()
        };
        assert_eq!(refuse(&e), "unknown_event_type");
        e.event_type = "community.post.liked".into();
        assert_eq!(refuse(&e), "malformed_payload");
        e.event_type = "community.post.deleted".into();
        assert_eq!(refuse(&e), "missing_state");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Step {
            Create(usize, u8),
            Act(usize, usize, u8),
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                (0..3usize, 0..3u8).prop_map(|(u, v)| Step::Create(u, v)),
                (0..3usize, 0..8usize, 0..6u8).prop_map(|(u, i, a)| Step::Act(u, i, a)),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            /// Any sequence of commands from several users leaves views, lists, counts and
            /// likers equal to the command side's state.
            #[test]
            fn projection_equals_command_state(steps in proptest::collection::vec(step(), 1..60)) {
                let users = users();
                let mut h = Harness::new();
                let mut ids: Vec<Uuid> = vec![];
                for s in steps {
                    match s {
                        Step::Create(u, v) => {
                            ids.push(h.create(users[u], Visibility::ALL[usize::from(v)]));
                        }
                        Step::Act(u, i, a) if !ids.is_empty() => {
                            let id = ids[i % ids.len()];
                            let cmd = match a {
                                0 | 1 => PostCommand::Like,
                                2 => PostCommand::Unlike,
                                3 => PostCommand::Delete,
                                4 => PostCommand::Update(UpdatePost {
                                    visibility: Some(Visibility::ALL[i % 3]),
                                    ..UpdatePost::default()
                                }),
                                _ => PostCommand::Update(UpdatePost {
                                    content: Some(format!("c{i}")),
                                    ..UpdatePost::default()
                                }),
                            };
                            h.command(users[u], id, &cmd);
                        }
                        Step::Act(..) => {}
                    }
                }
                h.assert_matches_commands(&users);
            }
        }
    }
}
