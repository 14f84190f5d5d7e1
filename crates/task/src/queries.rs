//! Reads of the task read model: each query is a command built from the keys of the
//! generation read (so it can ride in the round trip of a consistency check) and a parser of
//! its reply.

use module_kit::paging::PageRequest;
use streams::redis::{self, Value};
use streams::{ReadModelKeys, StreamError};
use uuid::Uuid;

use crate::domain::{Task, TaskStatus};
use crate::projection::{TaskKeys, TaskStats};

/// The read of one task's view.
#[must_use]
pub fn view_cmd(keys: &ReadModelKeys, id: Uuid) -> redis::Cmd {
    let mut cmd = redis::cmd("GET");
    cmd.arg(TaskKeys(keys).view(id));
    cmd
}

fn parse_json(raw: String, what: &str) -> Result<Task, StreamError> {
    serde_json::from_str(&raw).map_err(|e| StreamError::Malformed(format!("{what}: {e}")))
}

/// The task in a reply to [`view_cmd`] (`None` when unknown or deleted).
///
/// # Errors
/// [`StreamError`] for an error reply or a corrupt view.
pub fn parse_view(id: Uuid, reply: Value) -> Result<Option<Task>, StreamError> {
    let what = format!("task view {id}");
    let raw: Option<String> = streams::error::from_reply(reply, &what)?;
    raw.map(|s| parse_json(s, &what)).transpose()
}

/// The read of a page of `user`'s live tasks, newest first, optionally only in `status`.
#[must_use]
pub fn list_cmd(
    keys: &ReadModelKeys,
    user: Uuid,
    status: Option<TaskStatus>,
    page: &PageRequest,
) -> redis::Cmd {
    page.cmd(&TaskKeys(keys).list(user, status))
}

/// The read of the views of `ids`, in order.
#[must_use]
pub fn views_cmd(keys: &ReadModelKeys, ids: &[Uuid]) -> redis::Cmd {
    let keys = TaskKeys(keys);
    let mut cmd = redis::cmd("MGET");
    cmd.arg(ids.iter().map(|id| keys.view(*id)).collect::<Vec<_>>());
    cmd
}

/// The tasks in a reply to [`views_cmd`]; a view deleted in between is left out.
///
/// # Errors
/// [`StreamError`] for an error reply or a corrupt view.
pub fn parse_views(reply: Value) -> Result<Vec<Task>, StreamError> {
    let views: Vec<Option<String>> = streams::error::from_reply(reply, "task views")?;
    views
        .into_iter()
        .flatten()
        .map(|s| parse_json(s, "task view"))
        .collect()
}

/// The read of `user`'s stats.
#[must_use]
pub fn stats_cmd(keys: &ReadModelKeys, user: Uuid) -> redis::Cmd {
    let mut cmd = redis::cmd("HMGET");
    cmd.arg(TaskKeys(keys).stats(user))
        .arg(&TaskStats::FIELDS[..]);
    cmd
}

/// The stats in a reply to [`stats_cmd`] (a user with no task has all zeros).
///
/// # Errors
/// [`StreamError`] for an error reply or values that are not counts.
pub fn parse_stats(reply: Value) -> Result<TaskStats, StreamError> {
    let values: Vec<Option<i64>> = streams::error::from_reply(reply, "task stats")?;
    let mut out = [0i64; 7];
    for (o, v) in out.iter_mut().zip(values) {
        *o = v.unwrap_or(0);
    }
    Ok(TaskStats::from_values(out))
}
