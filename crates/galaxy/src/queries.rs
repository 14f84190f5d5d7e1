//! Reads of the galaxy read model: each query is commands built from the keys of the
//! generation read (so they can ride in the round trip of a consistency check) and parsers of
//! their replies.

use streams::redis::{self, Value};
use streams::{ReadModelKeys, StreamError};
use uuid::Uuid;

use crate::domain::{KnowledgeNode, NodeView, UserNode, user_node_id};
use crate::projection::{
    CHILD_COUNT, GalaxyKeys, GalaxyStats, RelationView, RelationsView, StudyRecordView,
    parse_relation_member,
};

fn get(key: String) -> redis::Cmd {
    let mut cmd = redis::cmd("GET");
    cmd.arg(key);
    cmd
}

fn json<T: serde::de::DeserializeOwned>(raw: &str, what: &str) -> Result<T, StreamError> {
    serde_json::from_str(raw).map_err(|e| StreamError::Malformed(format!("{what}: {e}")))
}

/// The reads of a node's view: its JSON, then its child count.
#[must_use]
pub fn node_cmds(keys: &ReadModelKeys, id: Uuid) -> Vec<redis::Cmd> {
    let k = GalaxyKeys(keys);
    let mut count = redis::cmd("HGET");
    count.arg(k.counts(id)).arg(CHILD_COUNT);
    vec![get(k.node(id)), count]
}

/// The node in the replies to [`node_cmds`] (`None` when unknown).
///
/// # Errors
/// [`StreamError`] for an error reply or a corrupt view.
pub fn parse_node(id: Uuid, view: Value, count: Value) -> Result<Option<NodeView>, StreamError> {
    let what = format!("node view {id}");
    let raw: Option<String> = streams::error::from_reply(view, &what)?;
    let count: Option<i64> = streams::error::from_reply(count, &what)?;
    raw.map(|s| {
        json::<KnowledgeNode>(&s, &what).map(|node| NodeView {
            node,
            child_count: count.unwrap_or(0),
        })
    })
    .transpose()
}

/// The reads of a node's relations: whether the node exists, then its outgoing and its
/// incoming relations, oldest first.
#[must_use]
pub fn relations_cmds(keys: &ReadModelKeys, id: Uuid) -> Vec<redis::Cmd> {
    let k = GalaxyKeys(keys);
    let mut exists = redis::cmd("EXISTS");
    exists.arg(k.node(id));
    let range = |key: String| {
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(key).arg(0).arg(-1);
        cmd
    };
    vec![exists, range(k.outgoing(id)), range(k.incoming(id))]
}

/// The relations in the replies to [`relations_cmds`] (`None` when the node is unknown).
///
/// # Errors
/// [`StreamError`] for an error reply or a member that is not a relation.
pub fn parse_relations(
    exists: Value,
    outgoing: Value,
    incoming: Value,
) -> Result<Option<RelationsView>, StreamError> {
    let exists: bool = streams::error::from_reply(exists, "node")?;
    if !exists {
        return Ok(None);
    }
    let list = |v: Value, what: &str| -> Result<Vec<RelationView>, StreamError> {
        let members: Vec<String> = streams::error::from_reply(v, what)?;
        members
            .iter()
            .map(|m| {
                parse_relation_member(m)
                    .ok_or_else(|| StreamError::Malformed(format!("{what}: member {m}")))
            })
            .collect()
    };
    Ok(Some(RelationsView {
        outgoing: list(outgoing, "outgoing relations")?,
        incoming: list(incoming, "incoming relations")?,
    }))
}

/// The reads of a user's galaxy: the unlocked nodes' list members (newest unlock first), then
/// the stats.
#[must_use]
pub fn me_cmds(keys: &ReadModelKeys, user: Uuid) -> Vec<redis::Cmd> {
    let k = GalaxyKeys(keys);
    let mut nodes = redis::cmd("ZRANGE");
    nodes.arg(k.user_nodes(user)).arg(0).arg(-1).arg("REV");
    let mut stats = redis::cmd("HMGET");
    stats.arg(k.stats(user)).arg(&GalaxyStats::FIELDS[..]);
    vec![nodes, stats]
}

/// The node ids in the reply listing a user's unlocked nodes.
///
/// # Errors
/// [`StreamError`] for an error reply.
pub fn parse_node_ids(reply: Value) -> Result<Vec<Uuid>, StreamError> {
    let members: Vec<String> = streams::error::from_reply(reply, "user nodes")?;
    Ok(members
        .iter()
        .filter_map(|m| {
            m.split_once(':')
                .and_then(|(_, id)| Uuid::parse_str(id).ok())
        })
        .collect())
}

/// The read of `user`'s progress on `nodes`, in order.
#[must_use]
pub fn progress_cmd(keys: &ReadModelKeys, user: Uuid, nodes: &[Uuid]) -> redis::Cmd {
    let k = GalaxyKeys(keys);
    let mut cmd = redis::cmd("MGET");
    cmd.arg(
        nodes
            .iter()
            .map(|n| k.progress(user_node_id(user, *n)))
            .collect::<Vec<_>>(),
    );
    cmd
}

/// The progress views in a reply to [`progress_cmd`].
///
/// # Errors
/// [`StreamError`] for an error reply or a corrupt view.
pub fn parse_progress(reply: Value) -> Result<Vec<UserNode>, StreamError> {
    let views: Vec<Option<String>> = streams::error::from_reply(reply, "user node views")?;
    views
        .into_iter()
        .flatten()
        .map(|s| json(&s, "user node view"))
        .collect()
}

/// The stats in the reply to [`me_cmds`]' second command (all zeros for a new user).
///
/// # Errors
/// [`StreamError`] for an error reply or values that are not counts.
pub fn parse_stats(reply: Value) -> Result<GalaxyStats, StreamError> {
    let values: Vec<Option<i64>> = streams::error::from_reply(reply, "galaxy stats")?;
    let mut out = [0i64; 3];
    for (o, v) in out.iter_mut().zip(values) {
        *o = v.unwrap_or(0);
    }
    Ok(GalaxyStats::from_values(out))
}

/// The read of a user's `limit` newest study records.
#[must_use]
pub fn studies_cmd(keys: &ReadModelKeys, user: Uuid, limit: usize) -> redis::Cmd {
    let mut cmd = redis::cmd("ZRANGE");
    cmd.arg(GalaxyKeys(keys).studies(user))
        .arg(0)
        .arg(limit.saturating_sub(1))
        .arg("REV");
    cmd
}

/// The records in a reply to [`studies_cmd`], newest first.
///
/// # Errors
/// [`StreamError`] for an error reply or a member that is not a record.
pub fn parse_studies(reply: Value) -> Result<Vec<StudyRecordView>, StreamError> {
    let members: Vec<String> = streams::error::from_reply(reply, "study records")?;
    members.iter().map(|m| json(m, "study record")).collect()
}
