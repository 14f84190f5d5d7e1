//! Dead letters and parked aggregates.
//!
//! An event that cannot be applied after its last attempt moves to the projection's
//! dead-letter stream `cqrs:dlq:<projection>`, and is acknowledged on its source stream in the
//! same atomic step, never before (so a failed dead-letter write cannot lose it). Its aggregate
//! is then *parked*: `cqrs:parked:<projection>` maps the aggregate to the head event, and the
//! list `cqrs:parked:<projection>:<aggregate>` holds its dead-letter entries in order. Later
//! events of a parked aggregate follow it into the dead-letter stream, marked `parked_behind`
//! the head, so nothing of that aggregate is applied out of order. An operator then re-drives
//! the chain (applies it in order) or discards the head (the rest then apply).

use std::collections::HashMap;
use std::sync::LazyLock;

use deadpool_redis::redis::{self, Script, Value};
use uuid::Uuid;

use crate::{KeySpace, StreamError};

/// Key names of one projection's dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterKeys {
    /// The dead-letter stream.
    pub stream: String,
    /// Hash: aggregate id → head event id.
    pub parked: String,
    prefix: String,
}

impl DeadLetterKeys {
    /// The keys of `projection`.
    #[must_use]
    pub fn new(keys: &KeySpace, projection: &str) -> Self {
        Self {
            stream: format!("{}cqrs:dlq:{projection}", keys.prefix()),
            parked: format!("{}cqrs:parked:{projection}", keys.prefix()),
            prefix: format!("{}cqrs:parked:{projection}:", keys.prefix()),
        }
    }

    /// The ordered list of an aggregate's dead-letter entries.
    #[must_use]
    pub fn chain(&self, aggregate: Uuid) -> String {
        format!("{}{aggregate}", self.prefix)
    }
}

/// How an entry enters the dead-letter stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// It failed for good: park its aggregate (or follow the head if already parked).
    Park,
    /// Its aggregate is parked: follow the head; if it is no longer parked, do nothing (the
    /// event should be applied instead).
    Follow,
    /// No aggregate is known (an unreadable envelope): dead-letter it alone.
    Alone,
}

/// A dead letter to write.
#[derive(Debug, Clone)]
pub struct NewDeadLetter<'a> {
    /// Where it came from and how to acknowledge it: `(stream, group, entry id)`.
    pub source: Option<(&'a str, &'a str, &'a str)>,
    /// `(lease key, owner)` fence, as for applies.
    pub fence: Option<(&'a str, &'a str)>,
    /// Park, follow, or alone.
    pub mode: Mode,
    /// The aggregate (`None` in [`Mode::Alone`]).
    pub aggregate_id: Option<Uuid>,
    /// The event's id, when known.
    pub event_id: Option<Uuid>,
    /// The envelope as received (JSON, or the raw bytes when unreadable).
    pub event: &'a str,
    /// What went wrong.
    pub error: &'a str,
    /// A bounded label: `malformed_envelope`, `unknown_event_type`, `malformed_payload`, …
    pub error_type: &'a str,
    /// Deliveries so far.
    pub attempts: u64,
    /// First failure (RFC 3339).
    pub first_failed_at: &'a str,
    /// Last failure (RFC 3339).
    pub last_failed_at: &'a str,
}

/// What the dead-letter script did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moved {
    /// Written (and acknowledged): the dead-letter entry id, and the head it is parked behind.
    Written {
        /// Dead-letter entry id.
        id: String,
        /// Head event id when parked behind one.
        parked_behind: Option<String>,
    },
    /// [`Mode::Follow`] on an aggregate that is not parked (any more): nothing written.
    NotParked,
    /// The caller lost the partition's lease: nothing written or acknowledged.
    Fenced,
}

const MOVE: &str = r"
-- KEYS[1] dlq stream, KEYS[2] source stream, KEYS[3] parked hash, KEYS[4] chain, KEYS[5] lease
-- ARGV[1] group, ARGV[2] entry id ('' = no ack), ARGV[3] owner ('' = no fence),
-- ARGV[4] mode, ARGV[5] aggregate id, ARGV[6] event id, then field/value pairs.
if ARGV[3] ~= '' and redis.call('GET', KEYS[5]) ~= ARGV[3] then return {3, '', ''} end
local head = ''
if ARGV[4] ~= 'alone' then head = redis.call('HGET', KEYS[3], ARGV[5]) or '' end
if ARGV[4] == 'follow' and head == '' then return {2, '', ''} end
local fields = {}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
fields[#fields + 1] = 'parked_behind'
fields[#fields + 1] = head
local id = redis.call('XADD', KEYS[1], '*', unpack(fields))
if ARGV[4] ~= 'alone' then
  if head == '' then redis.call('HSET', KEYS[3], ARGV[5], ARGV[6]) end
  redis.call('RPUSH', KEYS[4], id)
end
if ARGV[2] ~= '' then redis.call('XACK', KEYS[2], ARGV[1], ARGV[2]) end
return {1, id, head}
";

const POP: &str = r"
-- KEYS[1] dlq stream, KEYS[2] chain. ARGV[1] dlq entry id.
if redis.call('LINDEX', KEYS[2], 0) == ARGV[1] then redis.call('LPOP', KEYS[2]) end
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
";

const UNPARK: &str = r"
-- KEYS[1] parked hash, KEYS[2] chain. ARGV[1] aggregate id.
if redis.call('LLEN', KEYS[2]) == 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
";

const SKIP: &str = r"
-- KEYS[1] versions hash. ARGV[1] aggregate id, ARGV[2] version to mark applied.
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if current == tonumber(ARGV[2]) - 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
";

static MOVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(MOVE));
static POP_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(POP));
static UNPARK_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(UNPARK));
static SKIP_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SKIP));

/// Moves one entry to the dead letters (and acknowledges its source) atomically.
///
/// # Errors
/// [`StreamError`] when Redis fails: then nothing was written and nothing acknowledged.
pub async fn move_to_dead_letters(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &DeadLetterKeys,
    letter: &NewDeadLetter<'_>,
) -> Result<Moved, StreamError> {
    let aggregate = letter
        .aggregate_id
        .map(|a| a.to_string())
        .unwrap_or_default();
    let chain = letter
        .aggregate_id
        .map_or_else(|| keys.stream.clone(), |a| keys.chain(a));
    let (stream, group, entry) = letter.source.unwrap_or(("", "", ""));
    let (lease, owner) = letter.fence.unwrap_or(("", ""));
    let mode = match letter.mode {
        Mode::Park => "park",
        Mode::Follow => "follow",
        Mode::Alone => "alone",
    };
    let mut inv = MOVE_SCRIPT.prepare_invoke();
    inv.key(&keys.stream)
        .key(if stream.is_empty() {
            &keys.stream
        } else {
            stream
        })
        .key(&keys.parked)
        .key(&chain)
        .key(if lease.is_empty() {
            &keys.parked
        } else {
            lease
        });
    inv.arg(group)
        .arg(entry)
        .arg(owner)
        .arg(mode)
        .arg(&aggregate);
    inv.arg(letter.event_id.map(|e| e.to_string()).unwrap_or_default());
    for (k, v) in [
        ("event", letter.event.to_owned()),
        ("error", letter.error.to_owned()),
        ("error_type", letter.error_type.to_owned()),
        ("attempts", letter.attempts.to_string()),
        ("first_failed_at", letter.first_failed_at.to_owned()),
        ("last_failed_at", letter.last_failed_at.to_owned()),
        ("aggregate_id", aggregate.clone()),
        (
            "event_id",
            letter.event_id.map(|e| e.to_string()).unwrap_or_default(),
        ),
        ("source_stream", stream.to_owned()),
        ("source_entry_id", entry.to_owned()),
    ] {
        inv.arg(k).arg(v);
    }
    let (code, id, head): (i64, String, String) = inv.invoke_async(conn).await?;
    Ok(match code {
        1 => Moved::Written {
            id,
            parked_behind: (!head.is_empty()).then_some(head),
        },
        2 => Moved::NotParked,
        _ => Moved::Fenced,
    })
}

/// A dead letter as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Dead-letter entry id.
    pub id: String,
    /// The fields (`event`, `error`, `error_type`, `attempts`, `first_failed_at`,
    /// `last_failed_at`, `aggregate_id`, `event_id`, `source_stream`, `source_entry_id`,
    /// `parked_behind`).
    pub fields: HashMap<String, String>,
}

impl DeadLetter {
    /// A field, empty when absent.
    #[must_use]
    pub fn field(&self, name: &str) -> &str {
        self.fields.get(name).map_or("", String::as_str)
    }

    /// The aggregate, when known.
    #[must_use]
    pub fn aggregate_id(&self) -> Option<Uuid> {
        Uuid::parse_str(self.field("aggregate_id")).ok()
    }
}

fn parse_entries(v: Vec<(String, Vec<(String, String)>)>) -> Vec<DeadLetter> {
    v.into_iter()
        .map(|(id, fields)| DeadLetter {
            id,
            fields: fields.into_iter().collect(),
        })
        .collect()
}

/// Up to `limit` dead letters after `after` (exclusive; `None` from the start), oldest first.
///
/// # Errors
/// [`StreamError`] when Redis fails.
pub async fn list(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &DeadLetterKeys,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<DeadLetter>, StreamError> {
    let start = after.map_or_else(|| "-".to_owned(), |a| format!("({a}"));
    let v: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&keys.stream)
        .arg(start)
        .arg("+")
        .arg("COUNT")
        .arg(limit)
        .query_async(conn)
        .await?;
    Ok(parse_entries(v))
}

/// One dead letter by id.
///
/// # Errors
/// [`StreamError`] when Redis fails.
pub async fn get(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &DeadLetterKeys,
    id: &str,
) -> Result<Option<DeadLetter>, StreamError> {
    let v: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&keys.stream)
        .arg(id)
        .arg(id)
        .query_async(conn)
        .await?;
    Ok(parse_entries(v).into_iter().next())
}

/// The dead-letter entry ids of a parked aggregate, in order (head first).
///
/// # Errors
/// [`StreamError`] when Redis fails.
pub async fn chain(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &DeadLetterKeys,
    aggregate: Uuid,
) -> Result<Vec<String>, StreamError> {
    Ok(redis::cmd("LRANGE")
        .arg(keys.chain(aggregate))
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await?)
}

/// Parked aggregates and their head event ids.
///
/// # Errors
/// [`StreamError`] when Redis fails.
pub async fn parked(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &DeadLetterKeys,
) -> Result<HashMap<String, String>, StreamError> {
    Ok(redis::cmd("HGETALL")
        .arg(&keys.parked)
        .query_async(conn)
        .await?)
}

/// Whether each aggregate is parked.
///
/// # Errors
/// [`StreamError`] when Redis fails.
pub async fn are_parked(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &DeadLetterKeys,
    aggregates: &[Uuid],
) -> Result<Vec<bool>, StreamError> {
    if aggregates.is_empty() {
        return Ok(vec![]);
    }
    let v: Vec<Value> = redis::cmd("HMGET")
        .arg(&keys.parked)
        .arg(aggregates.iter().map(Uuid::to_string).collect::<Vec<_>>())
        .query_async(conn)
        .await?;
    Ok(v.into_iter().map(|x| !matches!(x, Value::Nil)).collect())
}

/// Removes a dead letter that was applied or discarded (and pops it off its chain if first).
///
/// # Errors
/// [`StreamError`] when Redis fails.
pub async fn remove(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &DeadLetterKeys,
    id: &str,
    aggregate: Option<Uuid>,
) -> Result<(), StreamError> {
    // A lone entry (no aggregate) is on no chain: only the stream holds it.
    let Some(aggregate) = aggregate else {
        let _: i64 = redis::cmd("XDEL")
            .arg(&keys.stream)
            .arg(id)
            .query_async(conn)
            .await?;
        return Ok(());
    };
    let _: i64 = POP_SCRIPT
        .key(&keys.stream)
        .key(keys.chain(aggregate))
        .arg(id)
        .invoke_async(conn)
        .await?;
    Ok(())
}

/// Unparks `aggregate` if its chain is empty. Returns whether it did (when it did not, more
/// entries arrived and must be re-driven first).
///
/// # Errors
/// [`StreamError`] when Redis fails.
pub async fn unpark_if_empty(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &DeadLetterKeys,
    aggregate: Uuid,
) -> Result<bool, StreamError> {
    let done: i64 = UNPARK_SCRIPT
        .key(&keys.parked)
        .key(keys.chain(aggregate))
        .arg(aggregate.to_string())
        .invoke_async(conn)
        .await?;
    Ok(done == 1)
}

/// Marks `version` of `aggregate` as applied without applying anything (a discarded event),
/// if it is the next one. Returns whether it was.
///
/// # Errors
/// [`StreamError`] when Redis fails.
pub async fn skip_version(
    conn: &mut impl redis::aio::ConnectionLike,
    versions_key: &str,
    aggregate: Uuid,
    version: i64,
) -> Result<bool, StreamError> {
    let done: i64 = SKIP_SCRIPT
        .key(versions_key)
        .arg(aggregate.to_string())
        .arg(version)
        .invoke_async(conn)
        .await?;
    Ok(done == 1)
}
