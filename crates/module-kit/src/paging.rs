//! Newest-first lists with keyset cursors.
//!
//! A list is a sorted set whose members are `<created_at µs, 20 digits>:<id>`, all with score
//! 0: `ZRANGE … BYLEX REV` walks it newest first, ties (one microsecond) broken by id, and a
//! member is a stable position. The cursor of a page is its last member, opaque to clients
//! (base64url), so a page after it skips nothing and repeats nothing while items are added.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use service_kit::http::ApiError;
use streams::redis;
use time::OffsetDateTime;
use uuid::Uuid;

/// `limit` when the client sends none.
pub const DEFAULT_LIMIT: usize = 20;
/// The largest `limit` (http-api.md: 1–100).
pub const MAX_LIMIT: usize = 100;

/// The list member of an item created at `created_at` with id `id`.
#[must_use]
pub fn member(created_at: OffsetDateTime, id: Uuid) -> String {
    let micros = created_at.unix_timestamp_nanos() / 1000;
    format!("{:020}:{id}", micros.max(0))
}

/// A page of a list, as every list answers (http-api.md).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// The page's items, newest first.
    pub items: Vec<T>,
    /// Pass it as `cursor` for the next page; `null` on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// A cursor that this API did not issue.
///
/// # Handling
/// 400 `validation_failed` on `cursor`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cursor is malformed")]
pub struct InvalidCursor;

impl From<InvalidCursor> for ApiError {
    fn from(_: InvalidCursor) -> Self {
        ApiError::validation("cursor", "cursor is malformed")
    }
}

/// Decodes a list cursor into the member it points after.
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

/// Where a page starts and how long it is, from the query's `limit` and `cursor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// Items per page.
    pub limit: usize,
    /// The member the page starts after (`None`: the newest).
    pub after: Option<String>,
}

impl PageRequest {
    /// Parses `limit` (1–100, default 20) and `cursor`.
    ///
    /// # Errors
    /// 400 naming `limit` or `cursor`.
    pub fn parse(limit: Option<&str>, cursor: Option<&str>) -> Result<Self, ApiError> {
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::validation("limit", format!("limit must be 1 to {MAX_LIMIT}"))
                })?,
        };
        let after = cursor.map(decode_cursor).transpose()?;
        Ok(Self { limit, after })
    }

    /// The read of one page of list `key` (one more member than the page holds, to know
    /// whether another page follows).
    #[must_use]
    pub fn cmd(&self, key: &str) -> redis::Cmd {
        let max = self
            .after
            .as_ref()
            .map_or_else(|| "+".to_owned(), |m| format!("({m}"));
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(key)
            .arg(max)
            .arg("-")
            .arg("BYLEX")
            .arg("REV")
            .arg("LIMIT")
            .arg(0)
            .arg(self.limit + 1);
        cmd
    }

    /// The ids of a reply to [`PageRequest::cmd`], newest first, and the next page's cursor.
    #[must_use]
    pub fn page(&self, mut members: Vec<String>) -> (Vec<Uuid>, Option<String>) {
        let more = members.len() > self.limit;
        members.truncate(self.limit);
        let ids = members
            .iter()
            .filter_map(|m| {
                m.split_once(':')
                    .and_then(|(_, id)| Uuid::parse_str(id).ok())
            })
            .collect();
        let next = if more {
            members.last().map(|m| encode_cursor(m))
        } else {
            None
        };
        (ids, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        let m = member(datetime!(2026-11-24 10:00:00.5 UTC), Uuid::now_v7());
        assert_eq!(decode_cursor(&encode_cursor(&m)).expect("cursor"), m);
        for bad in [
            "",
            "%%%",
            &encode_cursor("1:2"),
            &encode_cursor(&format!("{:020}:nope", 1)),
        ] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn members_sort_by_creation_time() {
        let early = member(datetime!(2026-01-01 0:00 UTC), Uuid::now_v7());
        let late = member(datetime!(2026-01-01 0:00:00.000001 UTC), Uuid::nil());
        assert!(early < late);
    }

    #[test]
    fn limits_are_bounded_and_pages_say_whether_more_follow() {
        assert_eq!(
            PageRequest::parse(None, None).expect("default").limit,
            DEFAULT_LIMIT
        );
        for bad in ["0", "101", "x"] {
            assert!(PageRequest::parse(Some(bad), None).is_err(), "{bad}");
        }
        assert!(PageRequest::parse(None, Some("nope")).is_err());
        let req = PageRequest::parse(Some("2"), None).expect("ok");
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let members: Vec<String> = ids.iter().map(|id| format!("{:020}:{id}", 1)).collect();
        let (page, next) = req.page(members.clone());
        assert_eq!(page, ids[..2].to_vec());
        assert_eq!(next, Some(encode_cursor(&members[1])));
        let (all, none) = req.page(members[..2].to_vec());
        assert_eq!((all.len(), none), (2, None));
    }
}
