//! The galaxy's two aggregates and their pure rules.
//!
//! - [`KnowledgeNode`] (aggregate `KnowledgeNode`, id = the node id): created once, then one
//!   event per relation it is the source of. The graph is shared by every user.
//! - [`UserNode`] (aggregate `UserNode`, id = [`user_node_id`], UUIDv5 of user and node): one
//!   user's progress on one node, so that a node studied by many users is no hot spot.
//!
//! `decide_*` checks a command against the current state and returns the events it causes
//! (none when nothing would change); `evolve_*` folds an event into the state. The command side
//! writes `evolve`'s result as the row, the projection as the view.

use events::{DomainEvent, PayloadError, decode_payload, encode_payload};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// How two nodes relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RelationType {
    /// The source must be learnt before the target.
    Prerequisite,
    /// The two are related.
    Related,
    /// The target extends the source.
    Extends,
}

impl RelationType {
    /// Every type.
    pub const ALL: [Self; 3] = [Self::Prerequisite, Self::Related, Self::Extends];

    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prerequisite => "prerequisite",
            Self::Related => "related",
            Self::Extends => "extends",
        }
    }

    /// Parses a wire name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// What a study session was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActivityType {
    /// Learning the material.
    Study,
    /// Exercises.
    Practice,
    /// Going over it again.
    Review,
}

impl ActivityType {
    /// Every type.
    pub const ALL: [Self; 3] = [Self::Study, Self::Practice, Self::Review];

    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Study => "study",
            Self::Practice => "practice",
            Self::Review => "review",
        }
    }

    /// Parses a wire name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// A knowledge node: the NodeView of http-api.md without `child_count`, which is not the
/// node's own state (its children's creations change it) and is kept apart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[allow(missing_docs)] // the fields are NodeView's, documented in http-api.md
pub struct KnowledgeNode {
    pub id: Uuid,
    #[schema(min_length = 1, max_length = 255)]
    pub name: String,
    #[schema(max_length = 255)]
    pub name_en: Option<String>,
    #[schema(max_length = 5000)]
    pub description: Option<String>,
    /// Up to 20 keywords.
    pub keywords: Vec<String>,
    #[schema(minimum = 1, maximum = 5)]
    pub importance_level: i16,
    pub is_seed: bool,
    pub parent_id: Option<Uuid>,
    pub subject_id: Option<i64>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The aggregate version: its creation plus one per relation it is the source of.
    pub version: i64,
}

/// NodeView: a node and how many nodes name it as their parent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeView {
    /// The node.
    #[serde(flatten)]
    pub node: KnowledgeNode,
    /// How many nodes have this one as `parent_id`.
    pub child_count: i64,
}

/// One user's progress on one node; serialised, the UserNodeView of http-api.md (plus
/// `user_id` and `version`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = UserNodeView)]
#[allow(missing_docs)] // the fields are UserNodeView's, documented in http-api.md
pub struct UserNode {
    pub user_id: Uuid,
    pub node_id: Uuid,
    /// 0–100.
    #[schema(minimum = 0, maximum = 100)]
    pub mastery_score: f64,
    pub total_minutes: i64,
    pub study_count: i64,
    pub is_unlocked: bool,
    /// `true` until the user expands the node.
    pub is_collapsed: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub first_unlocked_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_studied_at: Option<OffsetDateTime>,
    /// The aggregate version: send it back in `If-Match`.
    pub version: i64,
}

/// The id of the aggregate holding `user`'s progress on `node`: UUIDv5 in the user's
/// namespace, so each (user, node) pair has its own aggregate, found without a lookup.
#[must_use]
pub fn user_node_id(user: Uuid, node: Uuid) -> Uuid {
    Uuid::new_v5(&user, node.as_bytes())
}

/// The mastery at which a node counts as mastered.
pub const MASTERED_AT: f64 = 80.0;

/// The mastery after a study of `performance_score` (0–1) from `mastery`: raised by
/// `performance_score × 10`, clamped to 0–100, rounded to hundredths (so sums of decimal
/// scores stay readable, and PostgreSQL and Redis hold the same number).
#[must_use]
pub fn raised_mastery(mastery: f64, performance_score: f64) -> f64 {
    let raised = (mastery + performance_score * 10.0).clamp(0.0, 100.0);
    (raised * 100.0).round() / 100.0
}

/// Create a node: a `POST /v1/galaxy/nodes` body once validated ([`crate::input`]).
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)] // the fields are the body's, validated
pub struct CreateNode {
    /// The new node's id, chosen by the server (UUIDv7).
    pub id: Uuid,
    pub name: String,
    pub name_en: Option<String>,
    pub description: Option<String>,
    pub keywords: Vec<String>,
    pub importance_level: i16,
    /// Must name an existing node (checked in the transaction).
    pub parent_id: Option<Uuid>,
    pub subject_id: Option<i64>,
    pub is_seed: bool,
}

/// Relate two existing, different nodes: a `POST /v1/galaxy/relations` body once validated.
#[derive(Debug, Clone, Copy, PartialEq)]
#[allow(missing_docs)] // the fields are the body's, validated
pub struct CreateRelation {
    pub source_node_id: Uuid,
    pub target_node_id: Uuid,
    pub relation_type: RelationType,
    /// 0–1.
    pub strength: f64,
}

/// A study session: a `POST /v1/galaxy/nodes/{id}/study` body once validated.
#[derive(Debug, Clone, Copy, PartialEq)]
#[allow(missing_docs)] // the fields are the body's, validated
pub struct Study {
    /// 1–1440.
    pub minutes: i32,
    /// 0–1.
    pub performance_score: f64,
    pub activity_type: ActivityType,
}

/// A command on a user's progress on a node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UserNodeCommand {
    /// Unlock the node for the user (nothing if unlocked already).
    Unlock,
    /// Expand an unlocked node (nothing if expanded already).
    Expand,
    /// Record a study session on an unlocked node, and raise the mastery.
    Study(Study),
}

impl UserNodeCommand {
    fn action(self) -> &'static str {
        match self {
            Self::Unlock => "unlock",
            Self::Expand => "expand",
            Self::Study(_) => "study",
        }
    }
}

/// `galaxy.node.created`: the new node's fields, as on [`KnowledgeNode`]. A shipped payload
/// shape never changes (a new shape is a new `schema_version` with an upcaster).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)] // the fields are [`KnowledgeNode`]'s
pub struct NodeCreated {
    pub name: String,
    pub name_en: Option<String>,
    pub description: Option<String>,
    pub keywords: Vec<String>,
    pub importance_level: i16,
    pub is_seed: bool,
    pub parent_id: Option<Uuid>,
    pub subject_id: Option<i64>,
    /// Who created it.
    pub created_by: Uuid,
}

/// `galaxy.relation.created`, an event of the source node.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)] // the fields are the relation's
pub struct RelationCreated {
    pub target_node_id: Uuid,
    pub relation_type: RelationType,
    pub strength: f64,
}

/// A knowledge node's event.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeEvent {
    /// `galaxy.node.created`.
    Created(NodeCreated),
    /// `galaxy.relation.created`.
    RelationCreated(RelationCreated),
}

/// `galaxy.node.unlocked`: the first event of a [`UserNode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)] // whose progress on which node
pub struct NodeUnlocked {
    pub user_id: Uuid,
    pub node_id: Uuid,
}

/// `galaxy.study.recorded`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)] // the session's, as on [`Study`]
pub struct StudyRecorded {
    pub minutes: i32,
    pub performance_score: f64,
    pub activity_type: ActivityType,
}

/// `galaxy.mastery.updated`: the mastery after a study.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasteryUpdated {
    /// 0–100.
    pub mastery_score: f64,
}

/// A user node's event.
#[derive(Debug, Clone, PartialEq)]
pub enum UserNodeEvent {
    /// `galaxy.node.unlocked`.
    Unlocked(NodeUnlocked),
    /// `galaxy.node.expanded`.
    Expanded,
    /// `galaxy.study.recorded`.
    StudyRecorded(StudyRecorded),
    /// `galaxy.mastery.updated`.
    MasteryUpdated(MasteryUpdated),
}

/// Any galaxy event: the module's one stream carries both aggregates' events.
#[derive(Debug, Clone, PartialEq)]
pub enum GalaxyEvent {
    /// An event of a [`KnowledgeNode`].
    Node(NodeEvent),
    /// An event of a [`UserNode`].
    UserNode(UserNodeEvent),
}

/// Why a galaxy command was refused, or a galaxy event could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GalaxyError {
    /// Bad input, or a parent or relation end that does not exist. # Handling: 400
    /// `validation_failed`.
    #[error("{message}")]
    Invalid {
        /// Field.
        field: &'static str,
        /// Why.
        message: String,
    },
    /// Unknown node. # Handling: 404.
    #[error("node not found")]
    NotFound,
    /// The node is not unlocked by the caller. # Handling: 409 `invalid_transition`.
    #[error("cannot {action} a node that is not unlocked")]
    NotUnlocked {
        /// The refused action.
        action: &'static str,
    },
    /// The same relation exists. # Handling: 409 `conflict`.
    #[error("a {relation_type} relation from {source_node_id} to {target_node_id} exists already")]
    RelationExists {
        /// Its source.
        source_node_id: Uuid,
        /// Its target.
        target_node_id: Uuid,
        /// Its type.
        relation_type: &'static str,
    },
    /// `If-Match` differs. # Handling: 412.
    #[error("version mismatch")]
    VersionMismatch {
        /// Sent.
        expected: i64,
        /// Current.
        current: i64,
    },
    /// A stored event or row does not parse, or a history that cannot happen. # Handling:
    /// dead-letter it.
    #[error("malformed {event_type}: {reason}")]
    MalformedEvent {
        /// Its type.
        event_type: String,
        /// Why.
        reason: String,
    },
    /// PostgreSQL failed. # Handling: 503 or 500 by kind.
    #[error(transparent)]
    Store(#[from] outbox::OutboxError),
}

impl From<outbox::tokio_postgres::Error> for GalaxyError {
    fn from(e: outbox::tokio_postgres::Error) -> Self {
        Self::Store(e.into())
    }
}

impl From<module_kit::input::Invalid> for GalaxyError {
    fn from(e: module_kit::input::Invalid) -> Self {
        Self::Invalid {
            field: e.field,
            message: e.message,
        }
    }
}

impl From<PayloadError> for GalaxyError {
    fn from(e: PayloadError) -> Self {
        Self::MalformedEvent {
            event_type: e.event_type,
            reason: e.reason,
        }
    }
}

const NODE_CREATED: &str = "galaxy.node.created";
const RELATION_CREATED: &str = "galaxy.relation.created";
const UNLOCKED: &str = "galaxy.node.unlocked";
const EXPANDED: &str = "galaxy.node.expanded";
const STUDY_RECORDED: &str = "galaxy.study.recorded";
const MASTERY_UPDATED: &str = "galaxy.mastery.updated";

impl DomainEvent for NodeEvent {
    const TYPES: &'static [&'static str] = &[NODE_CREATED, RELATION_CREATED];

    fn event_type(&self) -> &'static str {
        match self {
            Self::Created(_) => NODE_CREATED,
            Self::RelationCreated(_) => RELATION_CREATED,
        }
    }

    fn payload(&self) -> serde_json::Value {
        match self {
            Self::Created(p) => encode_payload(p),
            Self::RelationCreated(p) => encode_payload(p),
        }
    }

    fn from_payload(event_type: &str, p: &serde_json::Value) -> Result<Self, PayloadError> {
        Ok(match event_type {
            NODE_CREATED => Self::Created(decode_payload(event_type, p)?),
            RELATION_CREATED => Self::RelationCreated(decode_payload(event_type, p)?),
            other => return Err(PayloadError::unknown(other)),
        })
    }
}

impl DomainEvent for UserNodeEvent {
    const TYPES: &'static [&'static str] = &[UNLOCKED, EXPANDED, STUDY_RECORDED, MASTERY_UPDATED];

    fn event_type(&self) -> &'static str {
        match self {
            Self::Unlocked(_) => UNLOCKED,
            Self::Expanded => EXPANDED,
            Self::StudyRecorded(_) => STUDY_RECORDED,
            Self::MasteryUpdated(_) => MASTERY_UPDATED,
        }
    }

    fn payload(&self) -> serde_json::Value {
        match self {
            Self::Unlocked(p) => encode_payload(p),
            Self::Expanded => serde_json::json!({}),
            Self::StudyRecorded(p) => encode_payload(p),
            Self::MasteryUpdated(p) => encode_payload(p),
        }
    }

    fn from_payload(event_type: &str, p: &serde_json::Value) -> Result<Self, PayloadError> {
        Ok(match event_type {
            UNLOCKED => Self::Unlocked(decode_payload(event_type, p)?),
            EXPANDED => Self::Expanded,
            STUDY_RECORDED => Self::StudyRecorded(decode_payload(event_type, p)?),
            MASTERY_UPDATED => Self::MasteryUpdated(decode_payload(event_type, p)?),
            other => return Err(PayloadError::unknown(other)),
        })
    }
}

impl DomainEvent for GalaxyEvent {
    const TYPES: &'static [&'static str] = &[
        NODE_CREATED,
        RELATION_CREATED,
        UNLOCKED,
        EXPANDED,
        STUDY_RECORDED,
        MASTERY_UPDATED,
    ];

    fn event_type(&self) -> &'static str {
        match self {
            Self::Node(e) => e.event_type(),
            Self::UserNode(e) => e.event_type(),
        }
    }

    fn payload(&self) -> serde_json::Value {
        match self {
            Self::Node(e) => e.payload(),
            Self::UserNode(e) => e.payload(),
        }
    }

    fn from_payload(event_type: &str, p: &serde_json::Value) -> Result<Self, PayloadError> {
        if NodeEvent::TYPES.contains(&event_type) {
            NodeEvent::from_payload(event_type, p).map(Self::Node)
        } else {
            UserNodeEvent::from_payload(event_type, p).map(Self::UserNode)
        }
    }
}

/// The event creating a node.
#[must_use]
pub fn decide_create_node(user: Uuid, cmd: &CreateNode) -> Vec<NodeEvent> {
    vec![NodeEvent::Created(NodeCreated {
        name: cmd.name.clone(),
        name_en: cmd.name_en.clone(),
        description: cmd.description.clone(),
        keywords: cmd.keywords.clone(),
        importance_level: cmd.importance_level,
        is_seed: cmd.is_seed,
        parent_id: cmd.parent_id,
        subject_id: cmd.subject_id,
        created_by: user,
    })]
}

/// The event relating `cmd`'s nodes, given whether the same relation exists already.
///
/// # Errors
/// [`GalaxyError::Invalid`] for a relation of a node to itself, [`GalaxyError::RelationExists`]
/// when the same (source, target, type) exists.
pub fn decide_relation(cmd: &CreateRelation, exists: bool) -> Result<Vec<NodeEvent>, GalaxyError> {
    if cmd.source_node_id == cmd.target_node_id {
        return Err(GalaxyError::Invalid {
            field: "target_node_id",
            message: "a node cannot be related to itself".into(),
        });
    }
    if exists {
        return Err(GalaxyError::RelationExists {
            source_node_id: cmd.source_node_id,
            target_node_id: cmd.target_node_id,
            relation_type: cmd.relation_type.as_str(),
        });
    }
    Ok(vec![NodeEvent::RelationCreated(RelationCreated {
        target_node_id: cmd.target_node_id,
        relation_type: cmd.relation_type,
        strength: cmd.strength,
    })])
}

/// The events `cmd` of `user` on `node` causes, given the user's progress on it (`None`: not
/// unlocked yet); empty when nothing would change. A study always records the session and the
/// mastery after it, two events.
///
/// # Errors
/// [`GalaxyError::NotUnlocked`] for an expand or a study of a node not unlocked.
pub fn decide_user_node(
    user: Uuid,
    node: Uuid,
    state: Option<&UserNode>,
    cmd: UserNodeCommand,
) -> Result<Vec<UserNodeEvent>, GalaxyError> {
    let unlocked = state.filter(|s| s.is_unlocked);
    Ok(match (unlocked, cmd) {
        (Some(_), UserNodeCommand::Unlock) => vec![],
        (None, UserNodeCommand::Unlock) => vec![UserNodeEvent::Unlocked(NodeUnlocked {
            user_id: user,
            node_id: node,
        })],
        (Some(s), UserNodeCommand::Expand) => {
            if s.is_collapsed {
                vec![UserNodeEvent::Expanded]
            } else {
                vec![]
            }
        }
        (Some(s), UserNodeCommand::Study(study)) => vec![
            UserNodeEvent::StudyRecorded(StudyRecorded {
                minutes: study.minutes,
                performance_score: study.performance_score,
                activity_type: study.activity_type,
            }),
            UserNodeEvent::MasteryUpdated(MasteryUpdated {
                mastery_score: raised_mastery(s.mastery_score, study.performance_score),
            }),
        ],
        (None, cmd @ (UserNodeCommand::Expand | UserNodeCommand::Study(_))) => {
            return Err(GalaxyError::NotUnlocked {
                action: cmd.action(),
            });
        }
    })
}

fn impossible(event_type: &str, reason: String) -> GalaxyError {
    GalaxyError::MalformedEvent {
        event_type: event_type.to_owned(),
        reason,
    }
}

/// Folds one node event into the node. `id`, `version` and `at` come from the envelope.
///
/// # Errors
/// [`GalaxyError::MalformedEvent`] for a relation of a node that does not exist, or a
/// creation of one that does.
pub fn evolve_node(
    state: Option<KnowledgeNode>,
    event: &NodeEvent,
    id: Uuid,
    version: i64,
    at: OffsetDateTime,
) -> Result<KnowledgeNode, GalaxyError> {
    let mut node = match (state, event) {
        (None, NodeEvent::Created(c)) => KnowledgeNode {
            id,
            name: c.name.clone(),
            name_en: c.name_en.clone(),
            description: c.description.clone(),
            keywords: c.keywords.clone(),
            importance_level: c.importance_level,
            is_seed: c.is_seed,
            parent_id: c.parent_id,
            subject_id: c.subject_id,
            created_at: at,
            version,
        },
        (Some(_), NodeEvent::Created(_)) => {
            return Err(impossible(
                NODE_CREATED,
                format!("node {id} already exists"),
            ));
        }
        (None, NodeEvent::RelationCreated(_)) => {
            return Err(impossible(
                RELATION_CREATED,
                format!("node {id} does not exist"),
            ));
        }
        // A relation lives in the relation lists, not in the node: only the version moves.
        (Some(n), NodeEvent::RelationCreated(_)) => n,
    };
    node.version = version;
    Ok(node)
}

/// Folds one user-node event into the progress. `version` and `at` come from the envelope.
///
/// # Errors
/// [`GalaxyError::MalformedEvent`] for progress on a node never unlocked, or an unlock of one
/// unlocked already.
pub fn evolve_user_node(
    state: Option<UserNode>,
    event: &UserNodeEvent,
    id: Uuid,
    version: i64,
    at: OffsetDateTime,
) -> Result<UserNode, GalaxyError> {
    let mut progress = match (state, event) {
        (None, UserNodeEvent::Unlocked(u)) => UserNode {
            user_id: u.user_id,
            node_id: u.node_id,
            mastery_score: 0.0,
            total_minutes: 0,
            study_count: 0,
            is_unlocked: true,
            is_collapsed: true,
            first_unlocked_at: at,
            last_studied_at: None,
            version,
        },
        (Some(_), UserNodeEvent::Unlocked(_)) => {
            return Err(impossible(
                UNLOCKED,
                format!("user node {id} exists already"),
            ));
        }
        (None, e) => {
            return Err(impossible(
                e.event_type(),
                format!("user node {id} was never unlocked"),
            ));
        }
        (Some(mut p), e) => {
            match e {
                UserNodeEvent::Unlocked(_) => unreachable!("handled above"),
                UserNodeEvent::Expanded => p.is_collapsed = false,
                UserNodeEvent::StudyRecorded(s) => {
                    p.total_minutes += i64::from(s.minutes);
                    p.study_count += 1;
                    p.last_studied_at = Some(at);
                }
                UserNodeEvent::MasteryUpdated(m) => p.mastery_score = m.mastery_score,
            }
            p
        }
    };
    progress.version = version;
    Ok(progress)
}

impl events::Aggregate for KnowledgeNode {
    type Event = NodeEvent;
    type Error = GalaxyError;
    const TYPE: &'static str = crate::NODE_AGGREGATE;

    fn evolve(
        state: Option<Self>,
        event: &NodeEvent,
        id: Uuid,
        version: i64,
        at: OffsetDateTime,
    ) -> Result<Self, GalaxyError> {
        evolve_node(state, event, id, version, at)
    }
}

impl events::Aggregate for UserNode {
    type Event = UserNodeEvent;
    type Error = GalaxyError;
    const TYPE: &'static str = crate::USER_NODE_AGGREGATE;

    fn evolve(
        state: Option<Self>,
        event: &UserNodeEvent,
        id: Uuid,
        version: i64,
        at: OffsetDateTime,
    ) -> Result<Self, GalaxyError> {
        evolve_user_node(state, event, id, version, at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-11-24 10:00:00 UTC);
    const T1: OffsetDateTime = datetime!(2026-11-24 11:00:00 UTC);

    fn study(score: f64) -> UserNodeCommand {
        UserNodeCommand::Study(Study {
            minutes: 30,
            performance_score: score,
            activity_type: ActivityType::Practice,
        })
    }

    fn unlocked(user: Uuid, node: Uuid) -> UserNode {
        let events =
            decide_user_node(user, node, None, UserNodeCommand::Unlock).expect("unlock allowed");
        assert_eq!(events.len(), 1);
        evolve_user_node(None, &events[0], user_node_id(user, node), 1, T0).expect("evolve")
    }

    /// Runs `cmd` and folds its events, as the command side does.
    fn run(p: UserNode, cmd: UserNodeCommand) -> (Vec<UserNodeEvent>, UserNode) {
        let events = decide_user_node(p.user_id, p.node_id, Some(&p), cmd).expect("allowed");
        let mut state = p;
        for e in &events {
            let v = state.version + 1;
            state = evolve_user_node(Some(state), e, Uuid::nil(), v, T1).expect("evolve");
        }
        (events, state)
    }

    #[test]
    fn the_user_node_id_is_stable_and_per_pair() {
        let (u, n) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(user_node_id(u, n), user_node_id(u, n));
        assert_ne!(user_node_id(u, n), user_node_id(n, u));
        assert_ne!(user_node_id(u, n), user_node_id(Uuid::now_v7(), n));
        assert_eq!(user_node_id(u, n).get_version_num(), 5);
    }

    #[test]
    fn unlock_starts_collapsed_at_zero_and_a_second_unlock_changes_nothing() {
        let (u, n) = (Uuid::now_v7(), Uuid::now_v7());
        let p = unlocked(u, n);
        assert_eq!(
            (p.is_unlocked, p.is_collapsed, p.mastery_score, p.version),
            (true, true, 0.0, 1)
        );
        assert_eq!((p.first_unlocked_at, p.last_studied_at), (T0, None));
        assert!(
            decide_user_node(u, n, Some(&p), UserNodeCommand::Unlock)
                .expect("ok")
                .is_empty()
        );
    }

    #[test]
    fn expand_and_study_before_unlock_are_refused() {
        let (u, n) = (Uuid::now_v7(), Uuid::now_v7());
        for cmd in [UserNodeCommand::Expand, study(0.5)] {
            let err = decide_user_node(u, n, None, cmd).expect_err("refused");
            assert!(matches!(err, GalaxyError::NotUnlocked { .. }), "{cmd:?}");
        }
    }

    #[test]
    fn expand_once_then_nothing() {
        let p = unlocked(Uuid::now_v7(), Uuid::now_v7());
        let (events, p) = run(p, UserNodeCommand::Expand);
        assert_eq!(events, vec![UserNodeEvent::Expanded]);
        assert!(!p.is_collapsed);
        assert_eq!(p.version, 2);
        let (events, _) = run(p, UserNodeCommand::Expand);
        assert!(events.is_empty());
    }

    #[test]
    fn study_records_the_session_and_raises_mastery_by_ten_times_the_score() {
        let p = unlocked(Uuid::now_v7(), Uuid::now_v7());
        let (events, p) = run(p, study(0.7));
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].event_type(), "galaxy.study.recorded");
        assert_eq!(
            events[1],
            UserNodeEvent::MasteryUpdated(MasteryUpdated { mastery_score: 7.0 })
        );
        assert_eq!(
            (p.mastery_score, p.total_minutes, p.study_count, p.version),
            (7.0, 30, 1, 3)
        );
        assert_eq!(p.last_studied_at, Some(T1));
        let (_, p) = run(p, study(0.1));
        assert_eq!(p.mastery_score, 8.0, "hundredths, no 8.000000000000002");
    }

    #[test]
    fn mastery_is_clamped_to_one_hundred() {
        let mut p = unlocked(Uuid::now_v7(), Uuid::now_v7());
        for _ in 0..12 {
            p = run(p, study(1.0)).1;
        }
        assert_eq!(p.mastery_score, 100.0);
        assert_eq!(p.study_count, 12);
        assert_eq!(raised_mastery(99.5, 1.0), 100.0);
        assert_eq!(raised_mastery(0.0, 0.0), 0.0);
        assert_eq!(raised_mastery(0.0, 0.123), 1.23);
    }

    #[test]
    fn relations_refuse_self_loops_and_duplicates() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let rel = |s, t| CreateRelation {
            source_node_id: s,
            target_node_id: t,
            relation_type: RelationType::Extends,
            strength: 0.25,
        };
        assert!(matches!(
            decide_relation(&rel(a, a), false),
            Err(GalaxyError::Invalid {
                field: "target_node_id",
                ..
            })
        ));
        assert!(matches!(
            decide_relation(&rel(a, b), true),
            Err(GalaxyError::RelationExists { .. })
        ));
        let events = decide_relation(&rel(a, b), false).expect("ok");
        assert_eq!(events[0].event_type(), "galaxy.relation.created");
    }

    #[test]
    fn a_node_is_created_once_and_relations_move_only_its_version() {
        let cmd = CreateNode {
            id: Uuid::now_v7(),
            name: "Ownership".into(),
            name_en: None,
            description: Some("who frees what".into()),
            keywords: vec!["rust".into()],
            importance_level: 4,
            parent_id: None,
            subject_id: Some(7),
            is_seed: true,
        };
        let created = decide_create_node(Uuid::nil(), &cmd).remove(0);
        let node = evolve_node(None, &created, cmd.id, 1, T0).expect("created");
        assert_eq!(
            (node.name.as_str(), node.version, node.created_at),
            ("Ownership", 1, T0)
        );
        assert!(evolve_node(Some(node.clone()), &created, cmd.id, 2, T1).is_err());
        let rel = decide_relation(
            &CreateRelation {
                source_node_id: cmd.id,
                target_node_id: Uuid::now_v7(),
                relation_type: RelationType::Related,
                strength: 1.0,
            },
            false,
        )
        .expect("ok")
        .remove(0);
        let after = evolve_node(Some(node.clone()), &rel, cmd.id, 2, T1).expect("evolve");
        assert_eq!(after, KnowledgeNode { version: 2, ..node });
        assert!(evolve_node(None, &rel, cmd.id, 1, T0).is_err());
    }

    #[test]
    fn evolve_refuses_impossible_progress() {
        assert!(evolve_user_node(None, &UserNodeEvent::Expanded, Uuid::nil(), 1, T0).is_err());
        let p = unlocked(Uuid::now_v7(), Uuid::now_v7());
        let again = UserNodeEvent::Unlocked(NodeUnlocked {
            user_id: p.user_id,
            node_id: p.node_id,
        });
        assert!(evolve_user_node(Some(p), &again, Uuid::nil(), 2, T1).is_err());
    }

    #[test]
    fn payloads_round_trip_exactly_including_floats() {
        let events = [
            GalaxyEvent::Node(NodeEvent::RelationCreated(RelationCreated {
                target_node_id: Uuid::now_v7(),
                relation_type: RelationType::Prerequisite,
                strength: 0.1 + 0.2,
            })),
            GalaxyEvent::UserNode(UserNodeEvent::StudyRecorded(StudyRecorded {
                minutes: 5,
                performance_score: 0.123_456_789_012_345_67,
                activity_type: ActivityType::Review,
            })),
            GalaxyEvent::UserNode(UserNodeEvent::Expanded),
        ];
        for e in events {
            let text = e.payload().to_string();
            let back: serde_json::Value = serde_json::from_str(&text).expect("json");
            assert_eq!(
                GalaxyEvent::from_payload(e.event_type(), &back).expect("parse"),
                e
            );
        }
        assert!(GalaxyEvent::from_payload("galaxy.node.deleted", &serde_json::json!({})).is_err());
    }

    #[test]
    fn the_views_have_the_documented_fields() {
        let p = unlocked(Uuid::now_v7(), Uuid::now_v7());
        let v = serde_json::to_value(&p).expect("json");
        for f in [
            "node_id",
            "mastery_score",
            "total_minutes",
            "study_count",
            "is_unlocked",
            "is_collapsed",
            "first_unlocked_at",
            "last_studied_at",
        ] {
            assert!(v.get(f).is_some(), "{f}");
        }
        assert_eq!(v["first_unlocked_at"], "2026-11-24T10:00:00Z");
    }
}
