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
    /// How many times the group has delivered it, this delivery included (Redis counts, so the
    /// number survives restarts). 1 for a first delivery.
    pub deliveries: u64,
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
    let reply: Value = read_group_cmd(group, consumer, streams, from, count, block)
        .query_async(conn)
        .await?;
    parse_read_reply(reply)
}

/// The `XREADGROUP` command of [`read_group`], for callers that pipeline it with other work
/// (the projector reads its next batch in the round trip that applies the current one); parse
/// its reply with [`parse_read_reply`].
#[must_use]
pub fn read_group_cmd(
    group: &str,
    consumer: &str,
    streams: &[String],
    from: ReadFrom,
    count: usize,
    block: Option<Duration>,
) -> redis::Cmd {
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
    cmd
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

/// One `[id, fields]` entry of `stream` (fields nil for an entry deleted from the stream), as
/// a first delivery.
fn delivery(stream: &str, mut parts: Vec<Value>) -> Result<Delivery, StreamError> {
    let fields_value = if parts.len() == 2 { parts.pop() } else { None };
    let entry_id = string(parts.first().unwrap_or(&Value::Nil))?;
    let envelope = fields_value.and_then(|f| field(&f, fields::ENVELOPE));
    Ok(Delivery {
        stream: stream.to_owned(),
        entry_id,
        envelope,
        deliveries: 1,
    })
}

/// Parses an `XREAD`/`XREADGROUP` reply by hand: the typed parser of the redis crate rejects
/// the nil field lists Redis returns for pending entries that were deleted from the stream, and
/// those must be seen (and acknowledged or dead-lettered), not crash the consumer.
///
/// # Errors
/// [`StreamError::Malformed`] for a reply of another shape; [`StreamError::NoGroup`] (or
/// another) when the reply is a Redis error.
pub fn parse_read_reply(reply: Value) -> Result<Vec<Delivery>, StreamError> {
    if let Value::ServerError(e) = reply {
        let err: redis::RedisError = e.into();
        return Err(err.into());
    }
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
            let Value::Array(parts) = entry else {
                return Err(StreamError::Malformed(format!("entry {entry:?}")));
            };
            out.push(delivery(&stream, parts)?);
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

/// A pending entry, as `XPENDING` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Entry id.
    pub id: String,
    /// The consumer it is pending with.
    pub consumer: String,
    /// Milliseconds since its last delivery.
    pub idle_ms: u64,
    /// Deliveries so far.
    pub deliveries: u64,
}

/// Entries pending with `consumer` on `stream` that have been idle at least `min_idle`, oldest
/// first, at most `count`.
///
/// # Errors
/// [`StreamError`] when Redis fails ([`StreamError::NoGroup`] when the group is gone).
pub async fn pending(
    conn: &mut impl redis::aio::ConnectionLike,
    stream: &str,
    group: &str,
    consumer: &str,
    min_idle: Duration,
    count: usize,
) -> Result<Vec<Pending>, StreamError> {
    let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg("IDLE")
        .arg(min_idle.as_millis() as u64)
        .arg("-")
        .arg("+")
        .arg(count)
        .arg(consumer)
        .query_async(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, consumer, idle_ms, deliveries)| Pending {
            id,
            consumer,
            idle_ms,
            deliveries,
        })
        .collect())
}

/// Claims `entries` for `consumer` (`XCLAIM`, which counts as a delivery) and returns them with
/// their new delivery counts. Entries no longer in the stream are dropped from the pending
/// list by Redis and not returned; entries delivered again since (idle less than `min_idle`
/// now) are left where they are.
///
/// # Errors
/// [`StreamError`] when Redis fails.
pub async fn claim(
    conn: &mut impl redis::aio::ConnectionLike,
    stream: &str,
    group: &str,
    consumer: &str,
    entries: &[Pending],
    min_idle: Duration,
) -> Result<Vec<Delivery>, StreamError> {
    if entries.is_empty() {
        return Ok(vec![]);
    }
    let reply: Value = redis::cmd("XCLAIM")
        .arg(stream)
        .arg(group)
        .arg(consumer)
        .arg(min_idle.as_millis() as u64)
        .arg(entries.iter().map(|p| p.id.as_str()).collect::<Vec<_>>())
        .query_async(conn)
        .await?;
    let mut out = parse_entries(stream, reply)?;
    for d in &mut out {
        d.deliveries = entries
            .iter()
            .find(|p| p.id == d.entry_id)
            .map_or(1, |p| p.deliveries + 1);
    }
    Ok(out)
}

/// Claims every entry of `stream` pending with other consumers of `group` (`XAUTOCLAIM` from
/// the start, until done): what a replica does when it takes a partition over, so the previous
/// owner's unfinished work is not stranded. Returns the claimed entries with their delivery
/// counts.
///
/// # Errors
/// [`StreamError`] when Redis fails.
pub async fn claim_all(
    conn: &mut impl redis::aio::ConnectionLike,
    stream: &str,
    group: &str,
    consumer: &str,
) -> Result<Vec<Delivery>, StreamError> {
    // Delivery counts are read first: XAUTOCLAIM does not report them.
    let mut counts: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut start = "-".to_owned();
    loop {
        let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(stream)
            .arg(group)
            .arg(&start)
            .arg("+")
            .arg(1000)
            .query_async(conn)
            .await?;
        let Some(last) = rows.last().map(|r| r.0.clone()) else {
            break;
        };
        for (id, _owner, _idle, deliveries) in rows {
            counts.insert(id, deliveries);
        }
        start = format!("({last}");
    }
    let mut out = Vec::new();
    let mut cursor = "0-0".to_owned();
    loop {
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(stream)
            .arg(group)
            .arg(consumer)
            .arg(0)
            .arg(&cursor)
            .arg("COUNT")
            .arg(500)
            .query_async(conn)
            .await?;
        let Value::Array(mut parts) = reply else {
            return Err(StreamError::Malformed("XAUTOCLAIM reply".into()));
        };
        if parts.len() < 2 {
            return Err(StreamError::Malformed("XAUTOCLAIM reply".into()));
        }
        let entries = parts.remove(1);
        cursor = string(&parts[0])?;
        let mut claimed = parse_entries(stream, entries)?;
        for d in &mut claimed {
            d.deliveries = counts.get(&d.entry_id).map_or(1, |c| c + 1);
        }
        out.extend(claimed);
        if cursor == "0-0" {
            return Ok(out);
        }
    }
}

fn parse_entries(stream: &str, reply: Value) -> Result<Vec<Delivery>, StreamError> {
    let Value::Array(entries) = reply else {
        return Ok(vec![]);
    };
    let mut out = Vec::new();
    for entry in entries {
        // Redis 6 answered nil for entries deleted from the stream; skip them.
        let Value::Array(parts) = entry else {
            continue;
        };
        out.push(delivery(stream, parts)?);
    }
    Ok(out)
}

/// A consumer of a group, as `XINFO CONSUMERS` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerInfo {
    /// Name.
    pub name: String,
    /// Entries pending with it.
    pub pending: u64,
    /// Milliseconds since it last interacted.
    pub idle_ms: u64,
}

/// The consumers of `group` on `stream` (empty when the stream or group is missing).
///
/// # Errors
/// [`StreamError`] when Redis fails.
pub async fn consumers(
    conn: &mut impl redis::aio::ConnectionLike,
    stream: &str,
    group: &str,
) -> Result<Vec<ConsumerInfo>, StreamError> {
    let reply: Result<Vec<Value>, redis::RedisError> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await;
    let rows = match reply {
        Ok(rows) => rows,
        Err(e) if e.to_string().contains("no such key") || e.code() == Some("NOGROUP") => {
            return Ok(vec![]);
        }
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for row in rows {
        let pairs: Vec<(String, Value)> = match row {
            Value::Array(items) => items
                .chunks(2)
                .filter_map(|kv| match kv {
                    [k, v] => string(k).ok().map(|k| (k, v.clone())),
                    _ => None,
                })
                .collect(),
            Value::Map(items) => items
                .into_iter()
                .filter_map(|(k, v)| string(&k).ok().map(|k| (k, v)))
                .collect(),
            _ => continue,
        };
        let get = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let int = |v: Option<Value>| match v {
            Some(Value::Int(i)) => u64::try_from(i).unwrap_or(0),
            _ => 0,
        };
        out.push(ConsumerInfo {
            name: get("name")
                .and_then(|v| string(&v).ok())
                .unwrap_or_default(),
            pending: int(get("pending")),
            idle_ms: int(get("idle")),
        });
    }
    Ok(out)
}

/// Removes `consumer` from `group` (its pending entries, if any, are dropped with it: only call
/// this for consumers with none).
///
/// # Errors
/// [`StreamError`] when Redis fails.
pub async fn delete_consumer(
    conn: &mut impl redis::aio::ConnectionLike,
    stream: &str,
    group: &str,
    consumer: &str,
) -> Result<(), StreamError> {
    let _: i64 = redis::cmd("XGROUP")
        .arg("DELCONSUMER")
        .arg(stream)
        .arg(group)
        .arg(consumer)
        .query_async(conn)
        .await?;
    Ok(())
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
                    envelope: Some(b"{}".to_vec()),
                    deliveries: 1
                },
                Delivery {
                    stream: "s".into(),
                    entry_id: "2-0".into(),
                    envelope: None,
                    deliveries: 1
                },
            ]
        );
        assert!(parse_read_reply(Value::Nil).expect("nil").is_empty());
    }
}
