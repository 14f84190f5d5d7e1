//! What operators see of a stream: its length and ends, and how old the oldest entry a group
//! has not finished with is (the projection's lag in time, not a guess from counts).

use deadpool_redis::redis::{self, Value};

use crate::StreamError;
use crate::consumer::GroupInfo;

/// A stream's size and ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamSummary {
    /// Entries.
    pub length: u64,
    /// The first entry's id (`None` when empty).
    pub first_id: Option<String>,
    /// The last entry's id.
    pub last_id: Option<String>,
}

/// `stream`'s length and ends, in one round trip (an empty summary when it does not exist).
///
/// # Errors
/// [`StreamError`] when Redis fails.
pub async fn summary(
    conn: &mut impl redis::aio::ConnectionLike,
    stream: &str,
) -> Result<StreamSummary, StreamError> {
    let (length, first, last): (u64, Value, Value) = redis::pipe()
        .cmd("XLEN")
        .arg(stream)
        .cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(StreamSummary {
        length,
        first_id: first_id(&first),
        last_id: first_id(&last),
    })
}

/// The id of the first entry of an `XRANGE` reply.
fn first_id(reply: &Value) -> Option<String> {
    let Value::Array(entries) = reply else {
        return None;
    };
    let Some(Value::Array(entry)) = entries.first() else {
        return None;
    };
    match entry.first() {
        Some(Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        Some(Value::SimpleString(s)) => Some(s.clone()),
        _ => None,
    }
}

/// The Unix milliseconds part of an entry id (`<ms>-<seq>`).
#[must_use]
pub fn id_millis(id: &str) -> Option<u64> {
    id.split_once('-').map_or(id, |(ms, _)| ms).parse().ok()
}

/// When the oldest entry `group` has not finished with was added to `stream` (Unix ms): the
/// oldest pending one, or else the first not yet delivered. `None` when the group is done.
///
/// # Errors
/// [`StreamError`] when Redis fails.
pub async fn oldest_unfinished_ms(
    conn: &mut impl redis::aio::ConnectionLike,
    stream: &str,
    group: &GroupInfo,
) -> Result<Option<u64>, StreamError> {
    let (pending, next): (Value, Value) = redis::pipe()
        .cmd("XPENDING")
        .arg(stream)
        .arg(&group.name)
        .cmd("XRANGE")
        .arg(stream)
        .arg(format!("({}", group.last_delivered_id))
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    // XPENDING's summary: [count, smallest id, greatest id, consumers].
    let oldest_pending = match &pending {
        Value::Array(items) if items.len() >= 2 => match &items[1] {
            Value::BulkString(b) => id_millis(&String::from_utf8_lossy(b)),
            Value::SimpleString(s) => id_millis(s),
            _ => None,
        },
        _ => None,
    };
    let next_undelivered = first_id(&next).and_then(|id| id_millis(&id));
    Ok(match (oldest_pending, next_undelivered) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_carry_their_time() {
        assert_eq!(id_millis("1700000000123-4"), Some(1_700_000_000_123));
        assert_eq!(id_millis("17"), Some(17));
        assert_eq!(id_millis("x-1"), None);
    }
}
