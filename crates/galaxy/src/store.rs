//! The galaxy commands' SQL. Each function runs inside the command runner's transaction: it
//! locks (or inserts) the aggregate's row, applies the pure rules, writes the new rows and
//! returns the events for the runner to append.

use events::{Committed, EventContext, commit};
use outbox::tokio_postgres::{GenericClient, Row};
use outbox::{CommandTx, param};
use service_kit::command::CommandOutcome;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::SPEC;
use crate::domain::{
    ActivityType, CreateNode, CreateRelation, GalaxyError, KnowledgeNode, RelationType, UserNode,
    UserNodeCommand, decide_create_node, decide_relation, decide_user_node, user_node_id,
};

const NODE_COLUMNS: &str = "id, name, name_en, description, keywords, importance_level, is_seed, \
    parent_id, subject_id, created_at, version";

const USER_NODE_COLUMNS: &str = "user_id, node_id, mastery_score, total_minutes, study_count, \
    is_unlocked, is_collapsed, first_unlocked_at, last_studied_at, version";

/// Reads a row selected with [`NODE_COLUMNS`].
fn node_from_row(row: &Row) -> KnowledgeNode {
    KnowledgeNode {
        id: row.get(0),
        name: row.get(1),
        name_en: row.get(2),
        description: row.get(3),
        keywords: row.get(4),
        importance_level: row.get(5),
        is_seed: row.get(6),
        parent_id: row.get(7),
        subject_id: row.get(8),
        created_at: row.get(9),
        version: row.get(10),
    }
}

/// Reads a row selected with [`USER_NODE_COLUMNS`].
fn user_node_from_row(row: &Row) -> UserNode {
    UserNode {
        user_id: row.get(0),
        node_id: row.get(1),
        mastery_score: row.get(2),
        total_minutes: row.get(3),
        study_count: row.get(4),
        is_unlocked: row.get(5),
        is_collapsed: row.get(6),
        first_unlocked_at: row.get(7),
        last_studied_at: row.get(8),
        version: row.get(9),
    }
}

/// Refuses `expected` (an `If-Match`) unless it is `current`.
fn check_version(expected: Option<i64>, current: i64) -> Result<(), GalaxyError> {
    match expected {
        Some(expected) if expected != current => {
            Err(GalaxyError::VersionMismatch { expected, current })
        }
        _ => Ok(()),
    }
}

/// A history `commit` could not fold: the pure rules and the row disagree (a bug).
fn no_state() -> GalaxyError {
    GalaxyError::MalformedEvent {
        event_type: "commit".into(),
        reason: "the events left no aggregate".into(),
    }
}

async fn node_exists(tx: &CommandTx<'_>, id: Uuid) -> Result<bool, GalaxyError> {
    // Nodes are never deleted, so existence checked here holds until commit.
    Ok(tx
        .query_opt(
            &tx.prepare_cached("SELECT 1 FROM knowledge_nodes WHERE id = $1")
                .await?,
            &[&id],
        )
        .await?
        .is_some())
}

/// Creates a node. A `parent_id` must name an existing node.
///
/// # Errors
/// [`GalaxyError::Invalid`] naming `parent_id` for a missing parent, [`GalaxyError::Store`].
pub async fn create_node(
    tx: &CommandTx<'_>,
    ctx: &EventContext,
    cmd: &CreateNode,
) -> Result<CommandOutcome, GalaxyError> {
    if let Some(parent) = cmd.parent_id
        && !node_exists(tx, parent).await?
    {
        return Err(GalaxyError::Invalid {
            field: "parent_id",
            message: format!("parent_id {parent} is not an existing node"),
        });
    }
    let user = ctx.user_id.unwrap_or_default();
    let events = decide_create_node(user, cmd);
    let Committed {
        state: Some(node),
        envelopes,
    } = commit::<KnowledgeNode>(None, 0, cmd.id, &events, ctx)?
    else {
        return Err(no_state());
    };
    tx.send(
        &tx.prepare_cached(
            "INSERT INTO knowledge_nodes (id, name, name_en, description, keywords, importance_level,
                 is_seed, parent_id, subject_id, created_by, created_at, version)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .await?,
        vec![
            param(node.id),
            param(node.name),
            param(node.name_en),
            param(node.description),
            param(node.keywords),
            param(node.importance_level),
            param(node.is_seed),
            param(node.parent_id),
            param(node.subject_id),
            param(user),
            param(node.created_at),
            param(node.version),
        ],
    )?;
    Ok(
        CommandOutcome::new(SPEC.name, node.id, node.version, envelopes)
            .created_at(format!("/v1/galaxy/nodes/{}", node.id)),
    )
}

/// Relates two nodes: an event of the source node, whose row is locked so that two requests
/// for the same relation cannot both pass the duplicate check. The lock is `FOR NO KEY
/// UPDATE`: the relation row's foreign keys take a key-share lock on both nodes, and a
/// `FOR UPDATE` on the source would conflict with it, so that A→B and B→A written at once
/// deadlocked. `expected_version` (`If-Match`)
/// is the source node's.
///
/// # Errors
/// [`GalaxyError::Invalid`] naming `source_node_id` or `target_node_id` when it is not an
/// existing node, [`GalaxyError::VersionMismatch`], [`GalaxyError::RelationExists`],
/// [`GalaxyError::Store`].
pub async fn create_relation(
    tx: &CommandTx<'_>,
    ctx: &EventContext,
    expected_version: Option<i64>,
    cmd: &CreateRelation,
) -> Result<CommandOutcome, GalaxyError> {
    let row = tx
        .query_opt(
            &tx.prepare_cached(&format!(
                "SELECT {NODE_COLUMNS} FROM knowledge_nodes WHERE id = $1 FOR NO KEY UPDATE"
            ))
            .await?,
            &[&cmd.source_node_id],
        )
        .await?;
    let Some(source) = row.as_ref().map(node_from_row) else {
        return Err(GalaxyError::Invalid {
            field: "source_node_id",
            message: format!(
                "source_node_id {} is not an existing node",
                cmd.source_node_id
            ),
        });
    };
    if !node_exists(tx, cmd.target_node_id).await? {
        return Err(GalaxyError::Invalid {
            field: "target_node_id",
            message: format!(
                "target_node_id {} is not an existing node",
                cmd.target_node_id
            ),
        });
    }
    check_version(expected_version, source.version)?;
    let exists = tx
        .query_opt(
            &tx.prepare_cached(
                "SELECT 1 FROM knowledge_relations
                 WHERE source_node_id = $1 AND target_node_id = $2 AND relation_type = $3",
            )
            .await?,
            &[
                &cmd.source_node_id,
                &cmd.target_node_id,
                &cmd.relation_type.as_str(),
            ],
        )
        .await?
        .is_some();
    let events = decide_relation(cmd, exists)?;
    let version = source.version;
    let Committed {
        state: Some(node),
        envelopes,
    } = commit(Some(source), version, cmd.source_node_id, &events, ctx)?
    else {
        return Err(no_state());
    };
    tx.send(
        &tx.prepare_cached(
            "INSERT INTO knowledge_relations (source_node_id, target_node_id, relation_type, strength, created_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .await?,
        vec![
            param(cmd.source_node_id),
            param(cmd.target_node_id),
            param(cmd.relation_type.as_str()),
            param(cmd.strength),
            param(ctx.now),
        ],
    )?;
    tx.send(
        &tx.prepare_cached("UPDATE knowledge_nodes SET version = $2 WHERE id = $1")
            .await?,
        vec![param(node.id), param(node.version)],
    )?;
    Ok(
        CommandOutcome::new(SPEC.name, node.id, node.version, envelopes)
            .created_at(format!("/v1/galaxy/nodes/{}/relations", node.id)),
    )
}

async fn lock_user_node(tx: &CommandTx<'_>, id: Uuid) -> Result<Option<UserNode>, GalaxyError> {
    let row = tx
        .query_opt(
            &tx.prepare_cached(&format!(
                "SELECT {USER_NODE_COLUMNS} FROM user_nodes WHERE id = $1 FOR NO KEY UPDATE"
            ))
            .await?,
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(user_node_from_row))
}

/// Runs `cmd` of the context's user on node `node_id`: unlock, expand or study. The node must
/// exist (404); then `If-Match` against the user's progress (version 0 before the unlock);
/// then the rules (409 for expand or study before unlock). A study answers `mastery_score`.
///
/// # Errors
/// [`GalaxyError::NotFound`], [`GalaxyError::VersionMismatch`], [`GalaxyError::NotUnlocked`],
/// [`GalaxyError::Store`].
pub async fn on_user_node(
    tx: &CommandTx<'_>,
    ctx: &EventContext,
    node_id: Uuid,
    expected_version: Option<i64>,
    cmd: UserNodeCommand,
) -> Result<CommandOutcome, GalaxyError> {
    if !node_exists(tx, node_id).await? {
        return Err(GalaxyError::NotFound);
    }
    let user = ctx.user_id.unwrap_or_default();
    let id = user_node_id(user, node_id);
    let mut state = lock_user_node(tx, id).await?;
    if state.is_none() && cmd == UserNodeCommand::Unlock {
        // Two first unlocks at once both find no row: the row is claimed here, and the loser
        // of the race waits for the winner's commit, then sees its row (nothing to change).
        // No conflict target: the row is unique by `id` and by `(user_id, node_id)`, and a
        // target naming only one lets the loser fail on the other with a unique violation (a
        // 409 under load) instead of waiting and doing nothing.
        let claimed = tx
            .execute(
                &tx.prepare_cached(
                    "INSERT INTO user_nodes (id, user_id, node_id, mastery_score, total_minutes,
                         study_count, is_unlocked, is_collapsed, first_unlocked_at, version)
                     VALUES ($1, $2, $3, 0, 0, 0, false, true, $4, 0)
                     ON CONFLICT DO NOTHING",
                )
                .await?,
                &[&id, &user, &node_id, &ctx.now],
            )
            .await?;
        if claimed == 0 {
            state = lock_user_node(tx, id).await?;
        }
    }
    let current = state.as_ref().map_or(0, |s| s.version);
    check_version(expected_version, current)?;
    let events = decide_user_node(user, node_id, state.as_ref(), cmd)?;
    if events.is_empty() {
        return Ok(with_mastery(
            CommandOutcome::new(SPEC.name, id, current, vec![]),
            cmd,
            state.as_ref(),
        ));
    }
    // A row claimed above but not unlocked yet is version 0, not progress: fold from nothing.
    let before = state.filter(|s| s.version > 0);
    let Committed {
        state: Some(new),
        envelopes,
    } = commit(before, current, id, &events, ctx)?
    else {
        return Err(no_state());
    };
    tx.send(
        &tx.prepare_cached(
            "UPDATE user_nodes SET mastery_score = $2, total_minutes = $3, study_count = $4,
                 is_unlocked = $5, is_collapsed = $6, first_unlocked_at = $7, last_studied_at = $8,
                 version = $9
             WHERE id = $1",
        )
        .await?,
        vec![
            param(id),
            param(new.mastery_score),
            param(new.total_minutes),
            param(new.study_count),
            param(new.is_unlocked),
            param(new.is_collapsed),
            param(new.first_unlocked_at),
            param(new.last_studied_at),
            param(new.version),
        ],
    )?;
    if let UserNodeCommand::Study(study) = cmd {
        // The record's id is its event's: the read side's list names it the same way.
        let record = envelopes.first().map(|e| e.event_id).unwrap_or_default();
        tx.send(
            &tx.prepare_cached(
                "INSERT INTO study_records (id, user_id, node_id, activity_type, minutes, performance_score, studied_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .await?,
            vec![
                param(record),
                param(user),
                param(node_id),
                param(study.activity_type.as_str()),
                param(study.minutes),
                param(study.performance_score),
                param(ctx.now),
            ],
        )?;
    }
    Ok(with_mastery(
        CommandOutcome::new(SPEC.name, id, new.version, envelopes),
        cmd,
        Some(&new),
    ))
}

/// A study's answer adds the mastery after it (http-api.md).
fn with_mastery(
    mut outcome: CommandOutcome,
    cmd: UserNodeCommand,
    state: Option<&UserNode>,
) -> CommandOutcome {
    if let (UserNodeCommand::Study(_), Some(s)) = (cmd, state) {
        outcome
            .extra
            .insert("mastery_score".into(), serde_json::json!(s.mastery_score));
    }
    outcome
}

// Reads for the contract with the read side (what PostgreSQL says every query must answer).

/// Every node with its child count, oldest first.
///
/// # Errors
/// [`GalaxyError::Store`] when PostgreSQL fails.
pub async fn nodes_with_child_counts(
    client: &impl GenericClient,
) -> Result<Vec<(KnowledgeNode, i64)>, GalaxyError> {
    let rows = client
        .query(
            &format!(
                "SELECT {NODE_COLUMNS}, (SELECT count(*) FROM knowledge_nodes c WHERE c.parent_id = n.id)
                 FROM knowledge_nodes n ORDER BY created_at, id"
            ),
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (node_from_row(r), r.get::<_, i64>(11)))
        .collect())
}

/// One stored relation.
#[derive(Debug, Clone, Copy, PartialEq)]
#[allow(missing_docs)] // a row of `knowledge_relations`
pub struct StoredRelation {
    pub source_node_id: Uuid,
    pub target_node_id: Uuid,
    pub relation_type: RelationType,
    pub strength: f64,
    pub created_at: OffsetDateTime,
}

/// Every relation.
///
/// # Errors
/// [`GalaxyError::Store`] when PostgreSQL fails; [`GalaxyError::MalformedEvent`] for an
/// unknown type (the CHECK constraint prevents it).
pub async fn relations(client: &impl GenericClient) -> Result<Vec<StoredRelation>, GalaxyError> {
    let rows = client
        .query(
            "SELECT source_node_id, target_node_id, relation_type, strength, created_at
             FROM knowledge_relations",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(StoredRelation {
                source_node_id: r.get(0),
                target_node_id: r.get(1),
                relation_type: RelationType::parse(r.get(2)).ok_or_else(|| {
                    GalaxyError::MalformedEvent {
                        event_type: "row".into(),
                        reason: "relation_type".into(),
                    }
                })?,
                strength: r.get(3),
                created_at: r.get(4),
            })
        })
        .collect()
}

/// A user's progress on every node they unlocked.
///
/// # Errors
/// [`GalaxyError::Store`] when PostgreSQL fails.
pub async fn user_nodes_of(
    client: &impl GenericClient,
    user: Uuid,
) -> Result<Vec<UserNode>, GalaxyError> {
    let rows = client
        .query(
            &format!(
                "SELECT {USER_NODE_COLUMNS} FROM user_nodes WHERE user_id = $1 AND version > 0"
            ),
            &[&user],
        )
        .await?;
    Ok(rows.iter().map(user_node_from_row).collect())
}

/// One stored study session.
#[derive(Debug, Clone, Copy, PartialEq)]
#[allow(missing_docs)] // a row of `study_records`
pub struct StoredStudy {
    pub id: Uuid,
    pub node_id: Uuid,
    pub activity_type: ActivityType,
    pub minutes: i32,
    pub performance_score: f64,
    pub studied_at: OffsetDateTime,
}

/// Every study session of a user.
///
/// # Errors
/// [`GalaxyError::Store`] when PostgreSQL fails; [`GalaxyError::MalformedEvent`] for an
/// unknown activity (the CHECK constraint prevents it).
pub async fn studies_of(
    client: &impl GenericClient,
    user: Uuid,
) -> Result<Vec<StoredStudy>, GalaxyError> {
    let rows = client
        .query(
            "SELECT id, node_id, activity_type, minutes, performance_score, studied_at
             FROM study_records WHERE user_id = $1",
            &[&user],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(StoredStudy {
                id: r.get(0),
                node_id: r.get(1),
                activity_type: ActivityType::parse(r.get(2)).ok_or_else(|| {
                    GalaxyError::MalformedEvent {
                        event_type: "row".into(),
                        reason: "activity_type".into(),
                    }
                })?,
                minutes: r.get(3),
                performance_score: r.get(4),
                studied_at: r.get(5),
            })
        })
        .collect()
}
