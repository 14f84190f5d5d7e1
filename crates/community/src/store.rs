//! The post commands' SQL. Each function runs inside the command runner's transaction: it
//! locks (or inserts) the post row, applies the pure rules, writes the new row (and the
//! caller's `post_likes` row for a like or unlike) and returns the events for the runner to
//! append.

use events::{Committed, EventContext, commit};
use outbox::tokio_postgres::{GenericClient, Row};
use outbox::{CommandTx, param};
use service_kit::command::CommandOutcome;
use uuid::Uuid;

use crate::SPEC;
use crate::domain::{
    CreatePost, Post, PostCommand, PostError, PostEvent, Visibility, check_access, decide,
    decide_create,
};

const COLUMNS: &str = "id, user_id, content, image_urls, topic, visibility, like_count, \
    created_at, updated_at, deleted_at IS NOT NULL, version";

/// Reads a row selected with [`COLUMNS`].
///
/// # Errors
/// [`PostError::MalformedEvent`] if a stored visibility is unknown (the CHECK constraint
/// prevents it).
pub fn from_row(row: &Row) -> Result<Post, PostError> {
    Ok(Post {
        id: row.get(0),
        user_id: row.get(1),
        content: row.get(2),
        image_urls: row.get(3),
        topic: row.get(4),
        visibility: Visibility::parse(row.get(5)).ok_or_else(|| PostError::MalformedEvent {
            event_type: "row".into(),
            reason: "visibility".into(),
        })?,
        like_count: row.get(6),
        created_at: row.get(7),
        updated_at: row.get(8),
        deleted: row.get(9),
        version: row.get(10),
    })
}

/// Creates a post written by the context's user.
///
/// # Errors
/// [`PostError::Store`] when PostgreSQL fails.
pub async fn create(
    tx: &CommandTx<'_>,
    ctx: &EventContext,
    cmd: &CreatePost,
) -> Result<CommandOutcome, PostError> {
    let user = ctx.user_id.unwrap_or_default();
    let events = decide_create(user, cmd);
    let Committed {
        state: Some(post),
        envelopes,
    } = commit::<Post>(None, 0, cmd.id, &events, ctx)?
    else {
        return Err(PostError::NotFound);
    };
    tx.send(
        &tx.prepare_cached(
            "INSERT INTO posts (id, user_id, content, image_urls, topic, visibility, like_count,
                                created_at, updated_at, version)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .await?,
        vec![
            param(post.id),
            param(post.user_id),
            param(post.content),
            param(post.image_urls),
            param(post.topic),
            param(post.visibility.as_str()),
            param(post.like_count),
            param(post.created_at),
            param(post.updated_at),
            param(post.version),
        ],
    )?;
    Ok(
        CommandOutcome::new(SPEC.name, post.id, post.version, envelopes)
            .created_at(format!("/v1/posts/{}", post.id)),
    )
}

/// Runs `cmd` of the context's user on post `id`.
///
/// Order of checks: the post must exist, not be deleted and be visible to the caller (else
/// 404, so a private post is indistinguishable from a missing one); an edit or delete must
/// be the author's (else 403); then `If-Match` (412); then the rules.
///
/// # Errors
/// [`PostError::NotFound`], [`PostError::Forbidden`], [`PostError::VersionMismatch`],
/// [`PostError::Store`].
pub async fn execute(
    tx: &CommandTx<'_>,
    ctx: &EventContext,
    id: Uuid,
    expected_version: Option<i64>,
    cmd: &PostCommand,
) -> Result<CommandOutcome, PostError> {
    let actor = ctx.user_id.unwrap_or_default();
    // FOR UPDATE serialises every command on one post, likes of different users included:
    // they commit in version order (so their outbox rows are in version order too), and the
    // `post_likes` check below cannot race another like of the same user.
    let row = tx
        .query_opt(
            &tx.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM posts WHERE id = $1 FOR UPDATE"
            ))
            .await?,
            &[&id],
        )
        .await?;
    let post = row
        .as_ref()
        .map(from_row)
        .transpose()?
        .ok_or(PostError::NotFound)?;
    check_access(&post, actor, cmd)?;
    if let Some(expected) = expected_version
        && expected != post.version
    {
        return Err(PostError::VersionMismatch {
            expected,
            current: post.version,
        });
    }
    let liked = match cmd {
        PostCommand::Like | PostCommand::Unlike => tx
            .query_opt(
                &tx.prepare_cached("SELECT 1 FROM post_likes WHERE post_id = $1 AND user_id = $2")
                    .await?,
                &[&id, &actor],
            )
            .await?
            .is_some(),
        PostCommand::Update(_) | PostCommand::Delete => false,
    };
    let events = decide(&post, actor, liked, cmd)?;
    if events.is_empty() {
        return Ok(CommandOutcome::new(SPEC.name, id, post.version, vec![]));
    }
    let version = post.version;
    let Committed {
        state: Some(new),
        envelopes,
    } = commit(Some(post), version, id, &events, ctx)?
    else {
        return Err(PostError::NotFound);
    };
    for event in &events {
        match event {
            PostEvent::Liked(l) => {
                tx.send(
                    &tx.prepare_cached(
                        "INSERT INTO post_likes (post_id, user_id, liked_at) VALUES ($1, $2, $3)",
                    )
                    .await?,
                    vec![param(id), param(l.user_id), param(ctx.now)],
                )?;
            }
            PostEvent::Unliked(l) => {
                tx.send(
                    &tx.prepare_cached(
                        "DELETE FROM post_likes WHERE post_id = $1 AND user_id = $2",
                    )
                    .await?,
                    vec![param(id), param(l.user_id)],
                )?;
            }
            PostEvent::Created(_) | PostEvent::Updated(_) | PostEvent::Deleted => {}
        }
    }
    tx.send(
        &tx.prepare_cached(
            "UPDATE posts SET content = $2, image_urls = $3, topic = $4, visibility = $5,
                    like_count = $6, updated_at = $7::timestamptz, version = $8,
                    deleted_at = CASE WHEN $9::boolean THEN $7::timestamptz ELSE NULL END
             WHERE id = $1",
        )
        .await?,
        vec![
            param(id),
            param(new.content),
            param(new.image_urls),
            param(new.topic),
            param(new.visibility.as_str()),
            param(new.like_count),
            param(new.updated_at),
            param(new.version),
            param(new.deleted),
        ],
    )?;
    Ok(CommandOutcome::new(SPEC.name, id, new.version, envelopes))
}

/// Loads a post row (deleted ones included): for tests and checks that compare the read
/// model with PostgreSQL.
///
/// # Errors
/// [`PostError::Store`] when PostgreSQL fails.
pub async fn load(client: &impl GenericClient, id: Uuid) -> Result<Option<Post>, PostError> {
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM posts WHERE id = $1"),
            &[&id],
        )
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Every post row, deleted ones included, newest first.
///
/// # Errors
/// [`PostError::Store`] when PostgreSQL fails.
pub async fn all(client: &impl GenericClient) -> Result<Vec<Post>, PostError> {
    let rows = client
        .query(
            &format!("SELECT {COLUMNS} FROM posts ORDER BY created_at DESC, id DESC"),
            &[],
        )
        .await?;
    rows.iter().map(from_row).collect()
}

/// Who likes each post now, from `post_likes` (the truth of likes): `(post, user)` pairs.
///
/// # Errors
/// [`PostError::Store`] when PostgreSQL fails.
pub async fn likes(client: &impl GenericClient) -> Result<Vec<(Uuid, Uuid)>, PostError> {
    let rows = client
        .query("SELECT post_id, user_id FROM post_likes", &[])
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
