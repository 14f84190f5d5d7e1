//! Consumer groups: create, read, acknowledge, inspect.

use std::time::Duration;

use deadpool_redis::redis::{self, Value, streams::StreamInfoGroupsReply};

use crate::StreamError;
use crate::publisher::fields;

/// One entry delivered to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The stream it came from.
    pub stream: String,
    /// Its entry id in that stream.
    pub entry_id: String,
    /// The JSON envelope; `None` when the entry is pending but no longer in the stream (it was
    /// deleted or trimmed), or carries no envelope field.
    pub envelope: Option<Vec<u8>>,
}

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// Entries never delivered to the group (`>`).
    New,
    /// Entries already delivered to this consumer and not acknowledged (`0`): its pending list.
    Pending,
}

/// Creates `group` on `stream` (and the stream if missing), starting from the beginning of the
/// stream so a new group sees every retained entry. Returns whether it was created.
///
/// # Errors
/// [`StreamError`] when Redis fails; an existing group is not an error.
pub async fn ensure_group(
    conn: &mut impl redis::aio::ConnectionLike,
    stream: &str,
    group: &str,
) -> Result<bool, StreamError> {
    let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Ok(()) => Ok(true),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// `XREADGROUP` over `streams`, at most `count` entries per stream, blocking up to `block`
/// for new entries (`None`: do not block). Use a connection without a response timeout when
/// blocking.
///
/// # Errors
/// [`StreamError::NoGroup`] when a group or stream is missing (Redis lost its data).
pub async fn read_group(
    conn: &mut impl redis::aio::ConnectionLike,
    group: &str,
    consumer: &str,
    streams: &[String],
    from: ReadFrom,
    count: usize,
    block: Option<Duration>,
) -> Result<Vec<Delivery>, StreamError> {
    if streams.is_empty() {
        return Ok(vec![]);
    }
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("COUNT")
        .arg(count);
    if let Some(block) = block {
        cmd.arg("BLOCK").arg(block.as_millis() as u64);
    }
    cmd.arg("STREAMS").arg(streams);
    let id = match from {
        ReadFrom::New => ">",
        ReadFrom::Pending => "0",
    };
    for _ in streams {
        cmd.arg(id);
    }
    let reply: Value = cmd.query_async(conn).await?;
    parse_read_reply(reply)
}

/// Reads this consumer's pending entries of one stream with ids after `after` (`"0"` for
/// all): the pending-list scan used to retry entries left unacknowledged.
///
/// # Errors
/// [`StreamError::NoGroup`] when the group or stream is missing.
pub async fn read_group_after(
    conn: &mut impl redis::aio::ConnectionLike,
    group: &str,
    consumer: &str,
    stream: &str,
    after: &str,
    count: usize,
) -> Result<Vec<Delivery>, StreamError> {
    let reply: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(stream)
        .arg(after)
        .query_async(conn)
        .await?;
    parse_read_reply(reply)
}

/// Parses an `XREAD`/`XREADGROUP` reply by hand: the typed parser of the redis crate rejects
/// the nil field lists Redis returns for pending entries that were deleted from the stream, and
/// those must be seen (and acknowledged or dead-lettered), not crash the consumer.
fn parse_read_reply(reply: Value) -> Result<Vec<Delivery>, StreamError> {
    let per_stream: Vec<(Value, Value)> = match reply {
        Value::Nil => return Ok(vec![]),
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Array(mut pair) if pair.len() == 2 => {
                    let entries = pair.pop().unwrap_or(Value::Nil);
                    let name = pair.pop().unwrap_or(Value::Nil);
                    Ok((name, entries))
                }
                other => Err(StreamError::Malformed(format!("stream item {other:?}"))),
            })
            .collect::<Result<_, _>>()?,
        Value::Map(pairs) => pairs,
        other => {
            return Err(StreamError::Malformed(format!(
                "XREADGROUP reply {other:?}"
            )));
        }
    };
    let mut out = Vec::new();
    for (name, entries) in per_stream {
        let stream = string(&name)?;
        let Value::Array(entries) = entries else {
            continue;
        };
        for entry in entries {
            let Value::Array(mut parts) = entry else {
                return Err(StreamError::Malformed(format!("entry {entry:?}")));
            };
            let fields_value = if parts.len() == 2 { parts.pop() } else { None };
            let entry_id = string(parts.first().unwrap_or(&Value::Nil))?;
            let envelope = fields_value.and_then(|f| field(&f, fields::ENVELOPE));
            out.push(Delivery {
                stream: stream.clone(),
                entry_id,
                envelope,
            });
        }
    }
    Ok(out)
}

fn string(v: &Value) -> Result<String, StreamError> {
    match v {
        Value::BulkString(b) => Ok(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Ok(s.clone()),
        other => Err(StreamError::Malformed(format!(
            "expected a string, got {other:?}"
        ))),
    }
}

fn field(fields: &Value, name: &str) -> Option<Vec<u8>> {
    let Value::Array(items) = fields else {
        return None;
    };
    items.chunks(2).find_map(|kv| match kv {
        [Value::BulkString(k), Value::BulkString(v)] if k == name.as_bytes() => Some(v.clone()),
        _ => None,
    })
}

/// `XACK`s `ids` on `stream`. Returns how many were pending.
///
/// # Errors
/// [`StreamError`] when Redis fails.
pub async fn ack(
    conn: &mut impl redis::aio::ConnectionLike,
    stream: &str,
    group: &str,
    ids: &[String],
) -> Result<u64, StreamError> {
    if ids.is_empty() {
        return Ok(0);
    }
    Ok(redis::cmd("XACK")
        .arg(stream)
        .arg(group)
        .arg(ids)
        .query_async(conn)
        .await?)
}

/// What `XINFO GROUPS` says about one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// Group name.
    pub name: String,
    /// Consumers known to the group.
    pub consumers: usize,
    /// Entries delivered and not acknowledged.
    pub pending: usize,
    /// Entries not yet delivered to the group (Redis ≥ 7); `None` when Redis cannot tell.
    pub lag: Option<usize>,
    /// Last entry id delivered to the group.
    pub last_delivered_id: String,
}

/// The groups of `stream`; empty when the stream does not exist.
///
/// # Errors
/// [`StreamError`] when Redis fails.
pub async fn groups(
    conn: &mut impl redis::aio::ConnectionLike,
    stream: &str,
) -> Result<Vec<GroupInfo>, StreamError> {
    let reply: Result<StreamInfoGroupsReply, redis::RedisError> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await;
    match reply {
        Ok(reply) => Ok(reply
            .groups
            .into_iter()
            .map(|g| GroupInfo {
                name: g.name,
                consumers: g.consumers,
                pending: g.pending,
                lag: g.lag,
                last_delivered_id: g.last_delivered_id,
            })
            .collect()),
        // XINFO on a missing key answers "ERR no such key".
        Err(e) if e.to_string().contains("no such key") => Ok(vec![]),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_entries_including_deleted_pending_ones() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("envelope"), bulk("{}")]),
                ]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let got = parse_read_reply(reply).expect("parse");
        assert_eq!(
            got,
            vec![
                Delivery {
                    stream: "s".into(),
                    entry_id: "1-0".into(),
                    envelope: Some(b"{}".to_vec())
                },
                Delivery {
                    stream: "s".into(),
                    entry_id: "2-0".into(),
                    envelope: None
                },
            ]
        );
        assert!(parse_read_reply(Value::Nil).expect("nil").is_empty());
    }
}
