//! Reads of the task read model.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use streams::redis;
use streams::{Pool, ReadModelKeys, StreamError};
use uuid::Uuid;

use crate::domain::{Task, TaskStatus};
use crate::projection::{TaskKeys, TaskStats};

/// A page of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The tasks, newest first.
    pub items: Vec<Task>,
    /// Opaque cursor of the next page, if there is one.
    pub next_cursor: Option<String>,
}

/// A cursor that this API did not issue.
///
/// # Handling
/// 400 `validation_failed` on `cursor`.
#[derive(Debug, thiserror::Error)]
#[error("cursor is malformed")]
pub struct InvalidCursor;

/// Decodes a list cursor into the sorted-set member it points after.
///
/// # Errors
/// [`InvalidCursor`] for anything not produced by [`encode_cursor`].
pub fn decode_cursor(cursor: &str) -> Result<String, InvalidCursor> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| InvalidCursor)?;
    let member = String::from_utf8(bytes).map_err(|_| InvalidCursor)?;
    let (micros, id) = member.split_once(':').ok_or(InvalidCursor)?;
    if micros.len() != 20
        || !micros.bytes().all(|b| b.is_ascii_digit())
        || Uuid::parse_str(id).is_err()
    {
        return Err(InvalidCursor);
    }
    Ok(member)
}

/// The cursor pointing after `member`.
#[must_use]
pub fn encode_cursor(member: &str) -> String {
    URL_SAFE_NO_PAD.encode(member.as_bytes())
}

/// Query access to the task read model.
#[derive(Clone)]
pub struct TaskQueries {
    pool: Pool,
    keys: ReadModelKeys,
}

impl std::fmt::Debug for TaskQueries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskQueries")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl TaskQueries {
    /// Reads through `pool` from the read model at `keys`.
    #[must_use]
    pub fn new(pool: Pool, keys: ReadModelKeys) -> Self {
        Self { pool, keys }
    }

    /// The generation read.
    #[must_use]
    pub fn generation(&self) -> i64 {
        self.keys.generation()
    }

    /// One task's view (`None` when unknown or deleted).
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails or the view is corrupt.
    pub async fn get(&self, id: Uuid) -> Result<Option<Task>, StreamError> {
        let mut conn = self.pool.get().await?;
        let reply = self.view_cmd(id).query_async(&mut conn).await?;
        Self::parse_view(id, reply)
    }

    /// The read behind [`TaskQueries::get`], for a caller that sends it in its own round trip
    /// (a consistency wait checks the applied version in the same one).
    #[must_use]
    pub fn view_cmd(&self, id: Uuid) -> redis::Cmd {
        let mut cmd = redis::cmd("GET");
        cmd.arg(TaskKeys(&self.keys).view(id));
        cmd
    }

    /// The task in a reply to [`TaskQueries::view_cmd`].
    ///
    /// # Errors
    /// [`StreamError`] for an error reply or a corrupt view.
    pub fn parse_view(id: Uuid, reply: redis::Value) -> Result<Option<Task>, StreamError> {
        let raw: Option<String> = streams::error::from_reply(reply, &format!("task view {id}"))?;
        raw.map(|s| {
            serde_json::from_str(&s)
                .map_err(|e| StreamError::Malformed(format!("task view {id}: {e}")))
        })
        .transpose()
    }

    /// A page of `user`'s live tasks, newest first, optionally only in `status`, after
    /// `cursor` (a decoded cursor).
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn list(
        &self,
        user: Uuid,
        status: Option<TaskStatus>,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Page, StreamError> {
        let keys = TaskKeys(&self.keys);
        let max = after.map_or_else(|| "+".to_owned(), |m| format!("({m}"));
        let mut conn = self.pool.get().await?;
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(keys.list(user, status))
            .arg(&max)
            .arg("-")
            .arg("BYLEX")
            .arg("REV")
            .arg("LIMIT")
            .arg(0)
            .arg(limit + 1)
            .query_async(&mut conn)
            .await?;
        let more = members.len() > limit;
        let members = &members[..members.len().min(limit)];
        let ids: Vec<Uuid> = members
            .iter()
            .filter_map(|m| {
                m.split_once(':')
                    .and_then(|(_, id)| Uuid::parse_str(id).ok())
            })
            .collect();
        let items = if ids.is_empty() {
            vec![]
        } else {
            let views: Vec<Option<String>> = redis::cmd("MGET")
                .arg(ids.iter().map(|id| keys.view(*id)).collect::<Vec<_>>())
                .query_async(&mut conn)
                .await?;
            views
                .into_iter()
                .flatten()
                .map(|s| {
                    serde_json::from_str(&s)
                        .map_err(|e| StreamError::Malformed(format!("task view: {e}")))
                })
                .collect::<Result<Vec<Task>, _>>()?
        };
        let next_cursor = if more {
            members.last().map(|m| encode_cursor(m))
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    /// `user`'s stats.
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn stats(&self, user: Uuid) -> Result<TaskStats, StreamError> {
        let mut conn = self.pool.get().await?;
        let reply = self.stats_cmd(user).query_async(&mut conn).await?;
        Self::parse_stats(reply)
    }

    /// The read behind [`TaskQueries::stats`], for a caller that sends it in its own round
    /// trip.
    #[must_use]
    pub fn stats_cmd(&self, user: Uuid) -> redis::Cmd {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(TaskKeys(&self.keys).stats(user))
            .arg(&TaskStats::FIELDS[..]);
        cmd
    }

    /// The stats in a reply to [`TaskQueries::stats_cmd`].
    ///
    /// # Errors
    /// [`StreamError`] for an error reply or values that are not counts.
    pub fn parse_stats(reply: redis::Value) -> Result<TaskStats, StreamError> {
        let values: Vec<Option<i64>> = streams::error::from_reply(reply, "task stats")?;
        let mut out = [0i64; 7];
        for (o, v) in out.iter_mut().zip(values) {
            *o = v.unwrap_or(0);
        }
        Ok(TaskStats::from_values(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        let member = format!("{:020}:{}", 1_732_000_000_000_000i64, Uuid::now_v7());
        assert_eq!(
            decode_cursor(&encode_cursor(&member)).expect("cursor"),
            member
        );
        for bad in [
            "",
            "%%%",
            &encode_cursor("1:2"),
            &encode_cursor(&format!("{:020}:nope", 1)),
        ] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
    }
}
