//! The galaxy read model.
//!
//! Keys (under the projection's generation prefix):
//! - `node:<id>`: the node's JSON ([`KnowledgeNode`]), written by its own events only;
//! - `node:<id>:counts`: a hash holding `child_count`, raised by each child's creation;
//! - `node:<id>:out` / `node:<id>:in`: the relations from / to the node, sorted sets of
//!   [`relation_member`]s, oldest first;
//! - `progress:<user node id>`: a user's progress on a node ([`UserNode`]);
//! - `user:<user>:nodes`: the user's unlocked nodes, a [`module_kit::paging`] list;
//! - `user:<user>:galaxy`: a hash of the user's [`GalaxyStats`];
//! - `user:<user>:studies`: the user's newest [`STUDIES_KEPT`] study records, scored by time.
//!
//! Only `node:<id>` and `progress:<id>` are read, each by its own aggregate's events. Every
//! key several aggregates write (a parent's counts, a target's incoming relations, a user's
//! nodes, stats and studies) changes only by commutative operations (`HINCRBY`, `ZADD` of a
//! member written once, `ZADD` + keep-highest), so events of different aggregates may apply in
//! any order, as `projection::Projection` requires.

use events::{DomainEvent as _, EventEnvelope, ModuleSpec};
use projection::{Projection, ProjectionError, ViewState};
use serde::{Deserialize, Serialize};
use streams::{Op, ReadModelKeys};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::SPEC;
use crate::domain::{
    ActivityType, GalaxyError, GalaxyEvent, KnowledgeNode, MASTERED_AT, NodeEvent, RelationType,
    UserNode, UserNodeEvent, evolve_node, evolve_user_node, user_node_id,
};

/// How many study records the read side keeps per user (http-api.md: the last 50).
pub const STUDIES_KEPT: u32 = 50;

/// A user's galaxy statistics (http-api.md field names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GalaxyStats {
    /// Nodes the user unlocked.
    pub unlocked_nodes: i64,
    /// Nodes at mastery 80 or more.
    pub mastered_nodes: i64,
    /// Minutes of every study session.
    pub total_study_minutes: i64,
}

impl GalaxyStats {
    /// Field names, in order: also the hash fields in Redis.
    pub const FIELDS: [&'static str; 3] =
        ["unlocked_nodes", "mastered_nodes", "total_study_minutes"];

    /// Values in [`GalaxyStats::FIELDS`] order.
    #[must_use]
    pub fn values(&self) -> [i64; 3] {
        [
            self.unlocked_nodes,
            self.mastered_nodes,
            self.total_study_minutes,
        ]
    }

    /// Stats from values in [`GalaxyStats::FIELDS`] order.
    #[must_use]
    pub fn from_values(v: [i64; 3]) -> Self {
        Self {
            unlocked_nodes: v[0],
            mastered_nodes: v[1],
            total_study_minutes: v[2],
        }
    }

    /// What one node's progress adds to its user's stats. Events change stats by the
    /// difference of this before and after, so mastery falling below 80 (should a rule ever
    /// lower it) takes the node out of `mastered_nodes` again.
    #[must_use]
    pub fn contribution(progress: Option<&UserNode>) -> Self {
        let Some(p) = progress else {
            return Self::default();
        };
        Self {
            unlocked_nodes: i64::from(p.is_unlocked),
            mastered_nodes: i64::from(p.mastery_score >= MASTERED_AT),
            total_study_minutes: p.total_minutes,
        }
    }

    /// The stats of a user whose progress is `nodes`.
    #[must_use]
    pub fn of<'a>(nodes: impl IntoIterator<Item = &'a UserNode>) -> Self {
        nodes.into_iter().fold(Self::default(), |acc, n| {
            let c = Self::contribution(Some(n));
            Self {
                unlocked_nodes: acc.unlocked_nodes + c.unlocked_nodes,
                mastered_nodes: acc.mastered_nodes + c.mastered_nodes,
                total_study_minutes: acc.total_study_minutes + c.total_study_minutes,
            }
        })
    }
}

/// One relation as a node's relation lists show it (http-api.md).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RelationView {
    /// The node at the other end.
    pub node_id: Uuid,
    /// Its type.
    pub relation_type: RelationType,
    /// 0–1.
    pub strength: f64,
}

/// A node's relations, from both ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RelationsView {
    /// From this node to others, oldest first.
    pub outgoing: Vec<RelationView>,
    /// From others to this node, oldest first.
    pub incoming: Vec<RelationView>,
}

/// One study session as the caller's study list shows it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StudyRecordView {
    /// The record (the event id of its `galaxy.study.recorded`).
    pub id: Uuid,
    /// The node studied.
    pub node_id: Uuid,
    /// What kind of session.
    pub activity_type: ActivityType,
    /// How long.
    pub minutes: i32,
    /// How well, 0–1.
    pub performance_score: f64,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub studied_at: OffsetDateTime,
}

impl StudyRecordView {
    /// Its sorted-set member (its JSON: the fields in declaration order, so the same record
    /// is always the same member) and score (the time in microseconds, exact in an `f64`
    /// until the year 2255).
    #[must_use]
    pub fn member_and_score(&self) -> (String, f64) {
        // Plain fields always serialise; an empty member would only be a bug's symptom.
        let member = serde_json::to_string(self).unwrap_or_default();
        #[allow(clippy::cast_precision_loss)] // µs since 1970 stay below 2^53 for centuries
        let score = (self.studied_at.unix_timestamp_nanos() / 1000) as f64;
        (member, score)
    }
}

/// Key names of the galaxy read model.
#[derive(Debug, Clone, Copy)]
pub struct GalaxyKeys<'a>(pub &'a ReadModelKeys);

impl GalaxyKeys<'_> {
    /// A node's view.
    #[must_use]
    pub fn node(&self, id: Uuid) -> String {
        self.0.key(&format!("node:{id}"))
    }

    /// A node's counters (`child_count`).
    #[must_use]
    pub fn counts(&self, id: Uuid) -> String {
        self.0.key(&format!("node:{id}:counts"))
    }

    /// The relations from a node.
    #[must_use]
    pub fn outgoing(&self, id: Uuid) -> String {
        self.0.key(&format!("node:{id}:out"))
    }

    /// The relations to a node.
    #[must_use]
    pub fn incoming(&self, id: Uuid) -> String {
        self.0.key(&format!("node:{id}:in"))
    }

    /// A user node's progress view (by aggregate id).
    #[must_use]
    pub fn progress(&self, user_node: Uuid) -> String {
        self.0.key(&format!("progress:{user_node}"))
    }

    /// A user's unlocked nodes.
    #[must_use]
    pub fn user_nodes(&self, user: Uuid) -> String {
        self.0.key(&format!("user:{user}:nodes"))
    }

    /// A user's stats hash.
    #[must_use]
    pub fn stats(&self, user: Uuid) -> String {
        self.0.key(&format!("user:{user}:galaxy"))
    }

    /// A user's newest study records.
    #[must_use]
    pub fn studies(&self, user: Uuid) -> String {
        self.0.key(&format!("user:{user}:studies"))
    }
}

/// The field of a node's counts hash.
pub const CHILD_COUNT: &str = "child_count";

/// A relation's member in the lists of both its ends: `<created µs, 20 digits>:<node at the
/// other end>:<type>:<strength>`. All members have score 0, so the list is in member order:
/// creation time, then node id and type (each relation has one member per list, written
/// once). The strength prints as Rust prints an `f64`, which reads back as the same number.
#[must_use]
pub fn relation_member(
    created_at: OffsetDateTime,
    other: Uuid,
    relation_type: RelationType,
    strength: f64,
) -> String {
    let micros = (created_at.unix_timestamp_nanos() / 1000).max(0);
    format!("{micros:020}:{other}:{}:{strength}", relation_type.as_str())
}

/// The relation a [`relation_member`] stands for (`None` for anything else).
#[must_use]
pub fn parse_relation_member(member: &str) -> Option<RelationView> {
    let mut parts = member.splitn(4, ':');
    let _time = parts.next()?;
    let node_id = Uuid::parse_str(parts.next()?).ok()?;
    let relation_type = RelationType::parse(parts.next()?)?;
    let strength = parts.next()?.parse().ok()?;
    Some(RelationView {
        node_id,
        relation_type,
        strength,
    })
}

/// The member of a node in its user's list of unlocked nodes.
#[must_use]
pub fn user_node_member(progress: &UserNode) -> String {
    module_kit::paging::member(progress.first_unlocked_at, progress.node_id)
}

/// The galaxy projection.
#[derive(Debug, Clone, Copy, Default)]
pub struct GalaxyProjection;

fn is_node_event(event_type: &str) -> bool {
    <NodeEvent as events::DomainEvent>::TYPES.contains(&event_type)
}

fn read_json<T: serde::de::DeserializeOwned>(
    state: &ViewState,
    key: &str,
) -> Result<Option<T>, ProjectionError> {
    state
        .get(key)
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| ProjectionError::MissingState(format!("view {key} is unreadable: {e}")))
}

fn to_json(v: &impl Serialize) -> Result<String, ProjectionError> {
    serde_json::to_string(v).map_err(|e| ProjectionError::MalformedPayload(e.to_string()))
}

fn missing(e: GalaxyError) -> ProjectionError {
    match e {
        GalaxyError::MalformedEvent { reason, .. } => ProjectionError::MissingState(reason),
        other => ProjectionError::MissingState(other.to_string()),
    }
}

impl GalaxyProjection {
    fn apply_node(
        keys: GalaxyKeys<'_>,
        event: &EventEnvelope,
        node_event: &NodeEvent,
        state: &ViewState,
    ) -> Result<Vec<Op>, ProjectionError> {
        let view_key = keys.node(event.aggregate_id);
        let old: Option<KnowledgeNode> = read_json(state, &view_key)?;
        let new = evolve_node(
            old,
            node_event,
            event.aggregate_id,
            event.aggregate_version,
            event.occurred_at,
        )
        .map_err(missing)?;
        let mut ops = vec![Op::Set {
            key: view_key,
            value: to_json(&new)?,
        }];
        match node_event {
            NodeEvent::Created(c) => {
                if let Some(parent) = c.parent_id {
                    ops.push(Op::HIncrBy {
                        key: keys.counts(parent),
                        field: CHILD_COUNT.into(),
                        delta: 1,
                    });
                }
            }
            NodeEvent::RelationCreated(r) => {
                let (source, target) = (event.aggregate_id, r.target_node_id);
                let at = event.occurred_at;
                ops.push(Op::ZAdd {
                    key: keys.outgoing(source),
                    score: 0.0,
                    member: relation_member(at, target, r.relation_type, r.strength),
                });
                ops.push(Op::ZAdd {
                    key: keys.incoming(target),
                    score: 0.0,
                    member: relation_member(at, source, r.relation_type, r.strength),
                });
            }
        }
        Ok(ops)
    }

    fn apply_user_node(
        keys: GalaxyKeys<'_>,
        event: &EventEnvelope,
        user_event: &UserNodeEvent,
        state: &ViewState,
    ) -> Result<Vec<Op>, ProjectionError> {
        let view_key = keys.progress(event.aggregate_id);
        let old: Option<UserNode> = read_json(state, &view_key)?;
        let new = evolve_user_node(
            old.clone(),
            user_event,
            event.aggregate_id,
            event.aggregate_version,
            event.occurred_at,
        )
        .map_err(missing)?;
        if user_node_id(new.user_id, new.node_id) != event.aggregate_id {
            return Err(ProjectionError::MalformedPayload(format!(
                "user node {} is not UUIDv5(user {}, node {})",
                event.aggregate_id, new.user_id, new.node_id
            )));
        }
        let mut ops = vec![Op::Set {
            key: view_key,
            value: to_json(&new)?,
        }];
        let user = new.user_id;
        match user_event {
            UserNodeEvent::Unlocked(_) => ops.push(Op::ZAdd {
                key: keys.user_nodes(user),
                score: 0.0,
                member: user_node_member(&new),
            }),
            UserNodeEvent::StudyRecorded(s) => {
                let record = StudyRecordView {
                    id: event.event_id,
                    node_id: new.node_id,
                    activity_type: s.activity_type,
                    minutes: s.minutes,
                    performance_score: s.performance_score,
                    studied_at: event.occurred_at,
                };
                let (member, score) = record.member_and_score();
                ops.push(Op::ZAdd {
                    key: keys.studies(user),
                    score,
                    member,
                });
                ops.push(Op::ZKeepHighest {
                    key: keys.studies(user),
                    count: STUDIES_KEPT,
                });
            }
            UserNodeEvent::Expanded | UserNodeEvent::MasteryUpdated(_) => {}
        }
        let was = GalaxyStats::contribution(old.as_ref()).values();
        let is = GalaxyStats::contribution(Some(&new)).values();
        for ((field, w), i) in GalaxyStats::FIELDS.iter().zip(was).zip(is) {
            if i != w {
                ops.push(Op::HIncrBy {
                    key: keys.stats(user),
                    field: (*field).to_owned(),
                    delta: i - w,
                });
            }
        }
        Ok(ops)
    }
}

impl Projection for GalaxyProjection {
    fn module(&self) -> &'static ModuleSpec {
        &SPEC
    }

    fn reads(&self, event: &EventEnvelope, keys: &ReadModelKeys) -> Vec<String> {
        let keys = GalaxyKeys(keys);
        if is_node_event(&event.event_type) {
            vec![keys.node(event.aggregate_id)]
        } else {
            vec![keys.progress(event.aggregate_id)]
        }
    }

    fn apply(
        &self,
        event: &EventEnvelope,
        state: &ViewState,
        keys: &ReadModelKeys,
    ) -> Result<Vec<Op>, ProjectionError> {
        let keys = GalaxyKeys(keys);
        if !SPEC.emits(&event.event_type) {
            return Err(ProjectionError::UnknownEventType(event.event_type.clone()));
        }
        let galaxy_event = GalaxyEvent::from_payload(&event.event_type, &event.payload)
            .map_err(|e| ProjectionError::MalformedPayload(e.to_string()))?;
        match &galaxy_event {
            GalaxyEvent::Node(e) => Self::apply_node(keys, event, e, state),
            GalaxyEvent::UserNode(e) => Self::apply_user_node(keys, event, e, state),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use events::{Aggregate, Committed, EventContext, commit};
    use module_kit::testing::{EventClock, MemoryModel};
    use streams::KeySpace;
    use time::macros::datetime;

    use crate::domain::{
        CreateNode, CreateRelation, MasteryUpdated, Study, UserNodeCommand, decide_create_node,
        decide_relation, decide_user_node,
    };

    struct Harness {
        model: MemoryModel,
        keys: ReadModelKeys,
        nodes: HashMap<Uuid, KnowledgeNode>,
        progress: HashMap<Uuid, UserNode>,
        clock: EventClock,
        /// Every envelope projected, in order: to replay them.
        log: Vec<EventEnvelope>,
    }

    impl Harness {
        fn new() -> Self {
            Self {
                model: MemoryModel::default(),
                keys: KeySpace::new("t:").read_model("galaxy", 1),
                nodes: HashMap::new(),
                progress: HashMap::new(),
                clock: EventClock::starting_at(
                    datetime!(2026-11-24 10:00:01 UTC),
                    time::Duration::seconds(1),
                ),
                log: vec![],
            }
        }

        fn k(&self) -> GalaxyKeys<'_> {
            GalaxyKeys(&self.keys)
        }

        fn project(&mut self, envelope: &EventEnvelope) -> Vec<Op> {
            let reads = GalaxyProjection.reads(envelope, &self.keys);
            let ops = GalaxyProjection
                .apply(envelope, &self.model.state(&reads), &self.keys)
                .expect("apply");
            self.model.run(&ops);
            self.log.push(envelope.clone());
            ops
        }

        fn play<A: Aggregate + Clone>(
            &mut self,
            user: Uuid,
            state: Option<A>,
            version: i64,
            id: Uuid,
            events: &[A::Event],
        ) -> A
        where
            A::Error: std::fmt::Debug,
        {
            let ctx = self.clock.context(user);
            let Committed { state, envelopes } =
                commit(state, version, id, events, &ctx).expect("evolve");
            for env in &envelopes {
                self.project(env);
            }
            state.expect("exists")
        }

        fn node(&mut self, parent: Option<Uuid>) -> Uuid {
            let cmd = CreateNode {
                id: Uuid::now_v7(),
                name: "n".into(),
                name_en: None,
                description: None,
                keywords: vec![],
                importance_level: 2,
                parent_id: parent,
                subject_id: None,
                is_seed: false,
            };
            let events = decide_create_node(Uuid::nil(), &cmd);
            let node = self.play::<KnowledgeNode>(Uuid::nil(), None, 0, cmd.id, &events);
            self.nodes.insert(cmd.id, node);
            cmd.id
        }

        fn relate(&mut self, source: Uuid, target: Uuid, t: RelationType, strength: f64) {
            let events = decide_relation(
                &CreateRelation {
                    source_node_id: source,
                    target_node_id: target,
                    relation_type: t,
                    strength,
                },
                false,
            )
            .expect("ok");
            let state = self.nodes[&source].clone();
            let v = state.version;
            let node = self.play(Uuid::nil(), Some(state), v, source, &events);
            self.nodes.insert(source, node);
        }

        fn act(&mut self, user: Uuid, node: Uuid, cmd: UserNodeCommand) {
            let id = user_node_id(user, node);
            let state = self.progress.get(&id).cloned();
            let events = decide_user_node(user, node, state.as_ref(), cmd).expect("allowed");
            let v = state.as_ref().map_or(0, |s| s.version);
            let p = self.play(user, state, v, id, &events);
            self.progress.insert(id, p);
        }

        fn study(&mut self, user: Uuid, node: Uuid, minutes: i32, score: f64) {
            self.act(
                user,
                node,
                UserNodeCommand::Study(Study {
                    minutes,
                    performance_score: score,
                    activity_type: ActivityType::Study,
                }),
            );
        }

        fn stats(&self, user: Uuid) -> GalaxyStats {
            let key = self.k().stats(user);
            GalaxyStats::from_values(GalaxyStats::FIELDS.map(|f| self.model.counter(&key, f)))
        }

        fn relations(&self, key: &str) -> Vec<RelationView> {
            let mut members: Vec<String> = self
                .model
                .zsets
                .get(key)
                .into_iter()
                .flatten()
                .cloned()
                .collect();
            members.sort();
            members
                .iter()
                .filter_map(|m| parse_relation_member(m))
                .collect()
        }
    }

    #[test]
    fn creation_writes_the_view_and_counts_the_parents_children() {
        let mut h = Harness::new();
        let root = h.node(None);
        let a = h.node(Some(root));
        h.node(Some(root));
        h.node(Some(a));
        let view: KnowledgeNode =
            serde_json::from_str(h.model.get(&h.k().node(root)).expect("view")).expect("json");
        assert_eq!(view, h.nodes[&root]);
        assert_eq!(h.model.counter(&h.k().counts(root), CHILD_COUNT), 2);
        assert_eq!(h.model.counter(&h.k().counts(a), CHILD_COUNT), 1);
    }

    #[test]
    fn a_relation_shows_from_both_ends_and_moves_the_source_version() {
        let mut h = Harness::new();
        let (a, b) = (h.node(None), h.node(None));
        h.relate(a, b, RelationType::Prerequisite, 0.1 + 0.2);
        h.relate(b, a, RelationType::Related, 1.0);
        let out_a = h.relations(&h.k().outgoing(a));
        assert_eq!(
            out_a,
            vec![RelationView {
                node_id: b,
                relation_type: RelationType::Prerequisite,
                strength: 0.1 + 0.2,
            }],
            "the strength survives exactly"
        );
        assert_eq!(
            h.relations(&h.k().incoming(b)),
            vec![RelationView {
                node_id: a,
                ..out_a[0]
            }]
        );
        assert_eq!(
            h.relations(&h.k().incoming(a))[0].relation_type,
            RelationType::Related
        );
        let view: KnowledgeNode =
            serde_json::from_str(h.model.get(&h.k().node(a)).expect("view")).expect("json");
        assert_eq!(view.version, 2);
    }

    #[test]
    fn unlock_expand_and_study_move_the_view_list_and_stats() {
        let mut h = Harness::new();
        let user = Uuid::now_v7();
        let (a, b) = (h.node(None), h.node(None));
        h.act(user, a, UserNodeCommand::Unlock);
        h.act(user, b, UserNodeCommand::Unlock);
        assert_eq!(h.model.members(&h.k().user_nodes(user)), 2);
        assert_eq!(
            h.stats(user),
            GalaxyStats {
                unlocked_nodes: 2,
                ..GalaxyStats::default()
            }
        );
        h.act(user, a, UserNodeCommand::Expand);
        for _ in 0..8 {
            h.study(user, a, 10, 1.0);
        }
        h.study(user, b, 5, 0.5);
        assert_eq!(
            h.stats(user),
            GalaxyStats {
                unlocked_nodes: 2,
                mastered_nodes: 1,
                total_study_minutes: 85,
            }
        );
        let id = user_node_id(user, a);
        let view: UserNode =
            serde_json::from_str(h.model.get(&h.k().progress(id)).expect("view")).expect("json");
        assert_eq!(view, h.progress[&id]);
        assert_eq!(
            (view.mastery_score, view.is_collapsed, view.study_count),
            (80.0, false, 8)
        );
        let studies = h.model.ranked(&h.k().studies(user));
        assert_eq!(studies.len(), 9);
        let newest: StudyRecordView = serde_json::from_str(&studies[0]).expect("json");
        assert_eq!((newest.node_id, newest.minutes), (b, 5));
    }

    #[test]
    fn mastered_nodes_moves_down_when_mastery_falls_below_eighty() {
        let mut h = Harness::new();
        let user = Uuid::now_v7();
        let a = h.node(None);
        h.act(user, a, UserNodeCommand::Unlock);
        for _ in 0..9 {
            h.study(user, a, 1, 1.0);
        }
        assert_eq!(h.stats(user).mastered_nodes, 1);
        // No command lowers mastery today; the projection follows whatever the event says.
        let id = user_node_id(user, a);
        let state = h.progress[&id].clone();
        let v = state.version;
        let lowered = [UserNodeEvent::MasteryUpdated(MasteryUpdated {
            mastery_score: 79.99,
        })];
        let p = h.play(user, Some(state), v, id, &lowered);
        h.progress.insert(id, p);
        assert_eq!(h.stats(user).mastered_nodes, 0);
        assert_eq!(h.stats(user).total_study_minutes, 9);
    }

    #[test]
    fn only_the_newest_fifty_studies_are_kept() {
        let mut h = Harness::new();
        let user = Uuid::now_v7();
        let a = h.node(None);
        h.act(user, a, UserNodeCommand::Unlock);
        for i in 1..=60 {
            h.study(user, a, i, 0.0);
        }
        let studies = h.model.ranked(&h.k().studies(user));
        assert_eq!(studies.len(), 50);
        let minutes: Vec<i32> = studies
            .iter()
            .map(|s| {
                serde_json::from_str::<StudyRecordView>(s)
                    .expect("json")
                    .minutes
            })
            .collect();
        assert_eq!(minutes, (11..=60).rev().collect::<Vec<_>>(), "newest first");
        assert_eq!(h.stats(user).total_study_minutes, (1..=60).sum::<i64>());
    }

    #[test]
    fn shared_keys_end_the_same_whatever_order_other_aggregates_apply_in() {
        let mut h = Harness::new();
        let users = [Uuid::now_v7(), Uuid::now_v7()];
        let root = h.node(None);
        let others: Vec<Uuid> = (0..4).map(|_| h.node(Some(root))).collect();
        for (i, n) in others.iter().enumerate() {
            h.relate(*n, root, RelationType::Extends, 0.5);
            for u in users {
                h.act(u, *n, UserNodeCommand::Unlock);
                for _ in 0..=(i * 3) {
                    h.study(u, *n, 3, 0.9);
                }
            }
        }
        // Replay every aggregate's events in order but the aggregates interleaved differently
        // (reversed): what several aggregates share must come out the same.
        let mut by_aggregate: Vec<(Uuid, Vec<EventEnvelope>)> = vec![];
        for e in &h.log {
            match by_aggregate.iter_mut().find(|(a, _)| *a == e.aggregate_id) {
                Some((_, v)) => v.push(e.clone()),
                None => by_aggregate.push((e.aggregate_id, vec![e.clone()])),
            }
        }
        by_aggregate.reverse();
        let mut replay = MemoryModel::default();
        for (_, events) in &by_aggregate {
            for e in events {
                let reads = GalaxyProjection.reads(e, &h.keys);
                let ops = GalaxyProjection
                    .apply(e, &replay.state(&reads), &h.keys)
                    .expect("apply");
                replay.run(&ops);
            }
        }
        assert_eq!(replay, h.model);
    }

    #[test]
    fn a_duplicate_is_a_new_version_only_once_and_foreign_events_are_refused() {
        let mut h = Harness::new();
        let a = h.node(None);
        let created = h.log[0].clone();
        let reads = GalaxyProjection.reads(&created, &h.keys);
        // The version guard drops duplicates before `apply`; `apply` itself refuses to create
        // twice, so a duplicate slipping past it would be dead-lettered, never double-counted.
        let err = GalaxyProjection
            .apply(&created, &h.model.state(&reads), &h.keys)
            .expect_err("created twice");
        assert_eq!(err.error_type(), "missing_state");
        assert!(h.nodes.contains_key(&a));
        let mut e = EventContext {
            user_id: None,
            correlation_id: None,
            source: "t".into(),
            now: datetime!(2026-01-01 0:00 UTC),
        }
        .envelope(
            "UserNode",
            Uuid::now_v7(),
            1,
            "galaxy.node.deleted",
            serde_json::json!({}),
        );
        let err = GalaxyProjection
            .apply(&e, &ViewState::default(), &h.keys)
            .expect_err("unknown");
        assert_eq!(err.error_type(), "unknown_event_type");
        e.event_type = "galaxy.study.recorded".into();
        let err = GalaxyProjection
            .apply(&e, &ViewState::default(), &h.keys)
            .expect_err("malformed");
        assert_eq!(err.error_type(), "malformed_payload");
        e.event_type = "galaxy.node.expanded".into();
        let err = GalaxyProjection
            .apply(&e, &ViewState::default(), &h.keys)
            .expect_err("never unlocked");
        assert_eq!(err.error_type(), "missing_state");
        e.event_type = "galaxy.node.unlocked".into();
        e.payload = serde_json::json!({"user_id": Uuid::now_v7(), "node_id": Uuid::now_v7()});
        let err = GalaxyProjection
            .apply(&e, &ViewState::default(), &h.keys)
            .expect_err("wrong aggregate id");
        assert_eq!(err.error_type(), "malformed_payload");
    }

    #[test]
    fn every_event_delivered_again_changes_nothing() {
        let mut h = Harness::new();
        let user = Uuid::now_v7();
        let root = h.node(None);
        let child = h.node(Some(root));
        h.relate(child, root, RelationType::Related, 0.5);
        h.act(user, root, UserNodeCommand::Unlock);
        h.act(user, root, UserNodeCommand::Expand);
        h.study(user, root, 10, 0.9);
        let types: std::collections::BTreeSet<&str> =
            h.log.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types.len(), 6, "every event type: {types:?}");
        // What the projector's version guard sees after applying them all: each aggregate at
        // its last version. Every event, redelivered, is a duplicate and writes nothing.
        let mut versions = HashMap::new();
        for e in &h.log {
            versions.insert(e.aggregate_id, e.aggregate_version);
        }
        let before = h.model.clone();
        let refs: Vec<&EventEnvelope> = h.log.iter().collect();
        let reads: Vec<String> = refs
            .iter()
            .flat_map(|e| GalaxyProjection.reads(e, &h.keys))
            .collect();
        let mut state = h.model.state(&reads);
        let plans = projection::plan(&GalaxyProjection, &h.keys, &refs, &versions, &mut state);
        assert!(
            plans
                .iter()
                .all(|p| *p == projection::PlanOutcome::Duplicate),
            "{plans:?}"
        );
        assert_eq!(h.model, before);
    }

    #[test]
    fn relation_members_round_trip() {
        let n = Uuid::now_v7();
        for s in [0.0, 1.0, 0.3, 1e-9, 0.1 + 0.2] {
            let m = relation_member(
                datetime!(2026-11-24 10:00:00.000001 UTC),
                n,
                RelationType::Extends,
                s,
            );
            assert_eq!(
                parse_relation_member(&m),
                Some(RelationView {
                    node_id: n,
                    relation_type: RelationType::Extends,
                    strength: s
                })
            );
        }
        assert_eq!(parse_relation_member("nope"), None);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]
            /// Any sequence of commands leaves views and stats equal to the command side's state.
            #[test]
            fn projection_equals_command_state(
                steps in proptest::collection::vec((0..3usize, 0..4usize, 0..4u8, 0..=10u8), 1..60)
            ) {
                let mut h = Harness::new();
                let users = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
                let nodes: Vec<Uuid> = (0..4).map(|_| h.node(None)).collect();
                for (u, n, action, score) in steps {
                    let (user, node) = (users[u], nodes[n]);
                    let state = h.progress.get(&user_node_id(user, node)).cloned();
                    let cmd = match action {
                        0 => UserNodeCommand::Unlock,
                        1 => UserNodeCommand::Expand,
                        _ => UserNodeCommand::Study(Study {
                            minutes: 1 + i32::from(score),
                            performance_score: f64::from(score) / 10.0,
                            activity_type: ActivityType::Review,
                        }),
                    };
                    if decide_user_node(user, node, state.as_ref(), cmd).is_ok_and(|e| !e.is_empty()) {
                        h.act(user, node, cmd);
                    }
                }
                for user in users {
                    let mine: Vec<&UserNode> = h.progress.values().filter(|p| p.user_id == user).collect();
                    prop_assert_eq!(h.stats(user), GalaxyStats::of(mine.iter().copied()));
                    prop_assert_eq!(h.model.members(&h.k().user_nodes(user)), mine.len());
                }
                for (id, p) in &h.progress {
                    let view: UserNode = serde_json::from_str(h.model.get(&h.k().progress(*id)).expect("view")).expect("json");
                    prop_assert_eq!(&view, p);
                }
            }
        }
    }
}
