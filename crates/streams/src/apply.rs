//! The atomic apply step: one event's read-model change, the aggregate's applied version and
//! (optionally) the stream acknowledgement, committed together by a Lua script. One script
//! call carries a whole run of events (up to 128), each of them all or nothing.
//!
//! This is what makes delivery at-least-once but effects exactly-once: a duplicate (a version
//! already applied) changes nothing but is acknowledged; a gap (a version ahead of the next
//! one) changes nothing and is not acknowledged, so it is retried once its predecessor lands.
//!
//! A Lua script is atomic (nothing else runs in between) but does not roll back when a command
//! fails half-way, so the script first checks, per event, that every key has the type its
//! operation needs (following the event's own earlier ops: a `SET` makes a string, a `DEL`
//! frees the key) and that every `HINCRBY` field holds an integer, and only then writes. Data
//! problems are answered per event, never raised. Should a call still fail as a whole (an
//! error no check foresaw), its events are run again one per call, so each gets its own
//! outcome and an error never spreads to the events that shared its call.

use std::collections::HashMap;
use std::sync::LazyLock;

use deadpool_redis::redis::{self, Script, Value};
use uuid::Uuid;

use crate::StreamError;
use crate::generation::GenerationGuard;

/// One read-model write. Projections return these; they never touch Redis themselves. Every
/// variant names the key it writes first; the rest are the command's arguments.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)] // the fields are the Redis command's arguments, named as Redis names them
pub enum Op {
    /// `SET key value`: replaces whatever the key held.
    Set { key: String, value: String },
    /// `DEL key`.
    Del { key: String },
    /// `ZADD key score member`; `score` must be finite (a NaN is refused before Redis sees it).
    ZAdd {
        key: String,
        score: f64,
        member: String,
    },
    /// `ZREM key member`.
    ZRem { key: String, member: String },
    /// `HINCRBY key field delta`: the commutative update that shared state (counters several
    /// aggregates touch) must use.
    HIncrBy {
        key: String,
        field: String,
        delta: i64,
    },
    /// `HSET key field value`.
    HSet {
        key: String,
        field: String,
        value: String,
    },
    /// `HDEL key field`.
    HDel { key: String, field: String },
    /// `ZREMRANGEBYRANK key 0 -(count + 1)`: keeps the `count` members of highest score (ties:
    /// the lexicographically greatest), removes the rest. After a `ZADD`, the commutative way
    /// to keep a bounded "newest N" list that several aggregates add to: whatever the order of
    /// the adds, the set ends as the top `count` of everything added.
    ZKeepHighest { key: String, count: u32 },
}

impl Op {
    /// The key the operation writes.
    #[must_use]
    pub fn key(&self) -> &str {
        match self {
            Self::Set { key, .. }
            | Self::Del { key }
            | Self::ZAdd { key, .. }
            | Self::ZRem { key, .. }
            | Self::HIncrBy { key, .. }
            | Self::HSet { key, .. }
            | Self::HDel { key, .. }
            | Self::ZKeepHighest { key, .. } => key,
        }
    }
}

/// One generation an event is written to.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The generation's hash of applied versions.
    pub versions_key: String,
    /// A key that must exist for the write to happen (the generation's marker: without it the
    /// read model is gone or half gone); `None` for a generation being built.
    pub marker: Option<String>,
    /// The writes, with the generation's keys.
    pub ops: Vec<Op>,
}

/// One event to apply, to one or more generations ([`Target`]s), all or nothing.
#[derive(Debug, Clone)]
pub struct ApplyItem {
    /// The aggregate.
    pub aggregate_id: Uuid,
    /// The event's `aggregate_version`.
    pub version: i64,
    /// Where it is written. Each target applies it if its applied version is the one before,
    /// has it already (a duplicate) if later; a gap in any target holds the whole item back.
    pub targets: Vec<Target>,
    /// `(stream, group, entry id)` to acknowledge in the same step; `None` when replaying
    /// history that did not come from a stream.
    pub ack: Option<(String, String, String)>,
    /// `(lease key, owner)`: apply only if `owner` (not empty) still holds the lease, checked in
    /// the same atomic step. `None` for writers that hold no lease (replays, re-drives of a parked
    /// aggregate, which no consumer touches).
    pub fence: Option<(String, String)>,
    /// Apply only if the projection's generations are still those planned for.
    pub guard: Option<GenerationGuard>,
}

impl ApplyItem {
    /// An item writing `ops` to the one generation whose versions are at `versions_key`,
    /// with no acknowledgement, fence, marker or guard.
    #[must_use]
    pub fn new(versions_key: String, aggregate_id: Uuid, version: i64, ops: Vec<Op>) -> Self {
        Self {
            aggregate_id,
            version,
            targets: vec![Target {
                versions_key,
                marker: None,
                ops,
            }],
            ack: None,
            fence: None,
            guard: None,
        }
    }
}

/// What the script did with one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Applied and (if asked) acknowledged.
    Applied,
    /// The version was already applied: nothing changed; acknowledged.
    Duplicate {
        /// The applied version found.
        current: i64,
    },
    /// The version is ahead of the next expected one: nothing changed, not acknowledged.
    Gap {
        /// The applied version found.
        current: i64,
    },
    /// The caller no longer holds the partition's lease: nothing changed, not acknowledged.
    Fenced,
    /// The projection's generations changed since planning (a rebuild began or switched):
    /// nothing changed, not acknowledged; plan again.
    Moved,
    /// A generation's marker is missing (the read model is gone or half gone): nothing
    /// changed, not acknowledged.
    NotReady,
    /// Redis refused the change (a key of the wrong type, say): nothing of it was written, and
    /// the entry was not acknowledged. (Only an error no check foresaw, raised by Redis half-way
    /// through the event's writes, could leave part of them behind.)
    Rejected(String),
}

/// Items per script call. One call per batch instead of one per event saves Redis the
/// per-call cost (dispatch, argument copying, the lease check); the cap keeps any one call
/// short, as Redis serves nobody else while a script runs.
const ITEMS_PER_CALL: usize = 128;

/// The operations' chunk both scripts start with (`ops.lua`): one place says how an
/// operation is written.
pub(crate) const OPS: &str = include_str!("ops.lua");

/// The script's reply codes: `{code, value}` per item.
mod reply {
    pub(super) const APPLIED: i64 = 1;
    pub(super) const DUPLICATE: i64 = 0;
    pub(super) const GAP: i64 = 2;
    pub(super) const FENCED: i64 = 3;
    pub(super) const REFUSED: i64 = 4;
    pub(super) const MOVED: i64 = 5;
    pub(super) const NOT_READY: i64 = 6;
}

/// The apply script (after [`OPS`]). Its reply codes are named alike on both sides ([`reply`]).
static APPLY_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{OPS}{}", include_str!("apply.lua"))));

/// An operation's script name and its arguments after the key (shared with [`crate::bulk`]).
pub(crate) fn op_args(op: &Op) -> (&'static str, Vec<String>) {
    match op {
        Op::Set { value, .. } => ("SET", vec![value.clone()]),
        Op::Del { .. } => ("DEL", vec![]),
        // Scores are validated finite by `validate`; format keeps full precision.
        Op::ZAdd { score, member, .. } => ("ZADD", vec![format!("{score}"), member.clone()]),
        Op::ZRem { member, .. } => ("ZREM", vec![member.clone()]),
        Op::HIncrBy { field, delta, .. } => ("HINCRBY", vec![field.clone(), delta.to_string()]),
        Op::HSet { field, value, .. } => ("HSET", vec![field.clone(), value.clone()]),
        Op::HDel { field, .. } => ("HDEL", vec![field.clone()]),
        Op::ZKeepHighest { count, .. } => ("ZKEEPHIGHEST", vec![count.to_string()]),
    }
}

fn generation_arg(g: Option<i64>) -> String {
    g.map(|g| g.to_string()).unwrap_or_default()
}

/// Builds the `EVALSHA` command for a run of items (at most [`ITEMS_PER_CALL`]).
fn eval_cmd(items: &[&ApplyItem]) -> redis::Cmd {
    let mut keys: Vec<&str> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut args: Vec<String> = vec![items.len().to_string()];
    for item in items {
        let mut k = |key| {
            *index.entry(key).or_insert_with(|| {
                keys.push(key);
                keys.len()
            })
        };
        let (stream, group, entry) = match &item.ack {
            Some((stream, group, entry)) => (k(stream.as_str()), group.as_str(), entry.as_str()),
            None => (0, "", ""),
        };
        let (lease, owner) = match &item.fence {
            Some((lease, owner)) => (k(lease.as_str()), owner.as_str()),
            None => (0, ""),
        };
        let (guard, active, building) = match &item.guard {
            Some(g) => (
                k(g.key.as_str()),
                generation_arg(g.expected.active),
                generation_arg(g.expected.building),
            ),
            None => (0, String::new(), String::new()),
        };
        args.extend([
            item.aggregate_id.to_string(),
            item.version.to_string(),
            stream.to_string(),
            group.to_owned(),
            entry.to_owned(),
            lease.to_string(),
            owner.to_owned(),
            guard.to_string(),
            active,
            building,
            item.targets.len().to_string(),
        ]);
        for target in &item.targets {
            let versions = k(target.versions_key.as_str());
            let marker = target.marker.as_deref().map_or(0, &mut k);
            args.extend([
                versions.to_string(),
                marker.to_string(),
                target.ops.len().to_string(),
            ]);
            for op in &target.ops {
                let key = k(op.key());
                let (name, rest) = op_args(op);
                args.push(name.to_owned());
                args.push(key.to_string());
                args.extend(rest);
            }
        }
    }
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(APPLY_SCRIPT.get_hash())
        .arg(keys.len())
        .arg(&keys)
        .arg(&args);
    cmd
}

/// Refuses operations the script could not execute (a non-finite score).
fn validate(item: &ApplyItem) -> Result<(), String> {
    if item.targets.is_empty() {
        return Err("an item must write to at least one generation".into());
    }
    for op in item.targets.iter().flat_map(|t| &t.ops) {
        if let Op::ZAdd { score, .. } = op
            && !score.is_finite()
        {
            return Err(format!("ZADD score {score} is not finite"));
        }
    }
    if item.version < 1 {
        return Err(format!("version {} is not positive", item.version));
    }
    Ok(())
}

/// Applies `items` in order, pipelined: one round trip for the whole batch. Items of the same
/// aggregate must be in version order; Redis runs them in that order.
///
/// Returns one outcome per item. An item Redis refused is [`ApplyOutcome::Rejected`]; the
/// others are unaffected.
///
/// # Errors
/// [`StreamError::Unavailable`] when Redis is down: then some items may have been applied
/// and acknowledged, and the rest will be redelivered; the version guard makes that safe.
pub async fn apply_batch(
    conn: &mut impl redis::aio::ConnectionLike,
    items: &[ApplyItem],
) -> Result<Vec<ApplyOutcome>, StreamError> {
    Ok(apply_batch_then(conn, items, None, vec![]).await?.0)
}

/// [`apply_batch`], plus an announcement on [`crate::visibility::channel`] of `keys` naming
/// every item, so readers waiting for those writes wake at once. Items that turn out
/// duplicates or gaps are named too: readers re-check the applied version, so a spurious
/// wake-up costs one read, never a wrong answer.
///
/// # Errors
/// As [`apply_batch`].
pub async fn apply_batch_announcing(
    conn: &mut impl redis::aio::ConnectionLike,
    items: &[ApplyItem],
    announce: &crate::KeySpace,
) -> Result<Vec<ApplyOutcome>, StreamError> {
    Ok(apply_batch_then(conn, items, Some(announce), vec![])
        .await?
        .0)
}

/// The general form: applies `items`, then (optionally) announces them, then runs `after`, all
/// in one round trip and in that order, so `after` sees the applies done. Returns the items'
/// outcomes and `after`'s raw replies (an error reply stays a value for the caller to judge).
/// After a NOSCRIPT only the applies run again (a second round trip); `after` ran once.
///
/// # Errors
/// As [`apply_batch`].
pub async fn apply_batch_then(
    conn: &mut impl redis::aio::ConnectionLike,
    items: &[ApplyItem],
    announce: Option<&crate::KeySpace>,
    after: Vec<redis::Cmd>,
) -> Result<(Vec<ApplyOutcome>, Vec<Value>), StreamError> {
    let mut outcomes: Vec<Option<ApplyOutcome>> = items
        .iter()
        .map(|item| validate(item).err().map(ApplyOutcome::Rejected))
        .collect();
    let runnable: Vec<usize> = (0..items.len())
        .filter(|i| outcomes[*i].is_none())
        .collect();
    if runnable.is_empty() && after.is_empty() {
        return Ok((outcomes.into_iter().flatten().collect(), vec![]));
    }
    let chunks: Vec<&[usize]> = runnable.chunks(ITEMS_PER_CALL).collect();
    let applies = || {
        let mut pipe = redis::pipe();
        for chunk in &chunks {
            let run: Vec<&ApplyItem> = chunk.iter().map(|i| &items[*i]).collect();
            pipe.add_command(eval_cmd(&run));
        }
        if let Some(keys) = announce {
            let pairs: Vec<(Uuid, i64)> = runnable
                .iter()
                .map(|i| (items[*i].aggregate_id, items[*i].version))
                .collect();
            if !pairs.is_empty() {
                pipe.add_command(crate::visibility::announcement(keys, &pairs));
            }
        }
        pipe.ignore_errors();
        pipe
    };
    let announced = usize::from(announce.is_some() && !runnable.is_empty());
    let n = chunks.len();
    let mut pipe = applies();
    for cmd in after {
        pipe.add_command(cmd);
    }
    let mut replies: Vec<Value> = pipe.query_async(conn).await?;
    let rest: Vec<Value> = replies.split_off((n + announced).min(replies.len()));
    // After a Redis restart or SCRIPT FLUSH the script is gone: load it and run the applies
    // again (not `after`: its replies from the first run stand). Items that ran before the
    // NOSCRIPT (none: every EVALSHA of the batch failed the same way) are safe to rerun anyway
    // thanks to the version guard.
    if replies.iter().any(is_noscript) {
        let _: String = APPLY_SCRIPT.prepare_invoke().load_async(conn).await?;
        replies = applies().query_async(conn).await?;
    }
    // A call that failed as a whole (an error no check foresaw) may have applied some of its
    // items: run them again one per call, so each gets its own outcome (the applied ones come
    // back as duplicates) and the error stays with the item that raised it.
    let mut alone: Vec<usize> = Vec::new();
    for (chunk, reply) in chunks.iter().zip(replies) {
        if chunk.len() > 1 && matches!(reply, Value::ServerError(_)) {
            alone.extend(chunk.iter().copied());
            continue;
        }
        for (i, outcome) in chunk.iter().zip(parse_outcomes(reply, chunk.len())?) {
            outcomes[*i] = Some(outcome);
        }
    }
    if !alone.is_empty() {
        let mut pipe = redis::pipe();
        for i in &alone {
            pipe.add_command(eval_cmd(&[&items[*i]]));
        }
        let replies: Vec<Value> = pipe.ignore_errors().query_async(conn).await?;
        for (i, reply) in alone.iter().zip(replies) {
            outcomes[*i] = parse_outcomes(reply, 1)?.into_iter().next();
        }
    }
    Ok((
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or(ApplyOutcome::Rejected("no reply".into())))
            .collect(),
        rest,
    ))
}

fn is_noscript(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT")
}

/// One script call's reply: an outcome per item, or one error for all of them (for a call of
/// one item, that item's refusal).
fn parse_outcomes(reply: Value, n: usize) -> Result<Vec<ApplyOutcome>, StreamError> {
    match reply {
        Value::Array(items) if items.len() == n => items.into_iter().map(parse_outcome).collect(),
        Value::ServerError(e) => {
            let err: redis::RedisError = e.into();
            match StreamError::from(err) {
                StreamError::Redis(e) => Ok(vec![ApplyOutcome::Rejected(e.to_string()); n]),
                other => Err(other),
            }
        }
        other => Err(StreamError::Malformed(format!(
            "apply reply for {n} items: {other:?}"
        ))),
    }
}

fn parse_outcome(reply: Value) -> Result<ApplyOutcome, StreamError> {
    let Value::Array(v) = reply else {
        return Err(StreamError::Malformed(format!("apply reply {reply:?}")));
    };
    Ok(match v.as_slice() {
        [Value::Int(reply::APPLIED), Value::Int(_)] => ApplyOutcome::Applied,
        [Value::Int(reply::DUPLICATE), Value::Int(current)] => {
            ApplyOutcome::Duplicate { current: *current }
        }
        [Value::Int(reply::GAP), Value::Int(current)] => ApplyOutcome::Gap { current: *current },
        [Value::Int(reply::FENCED), Value::Int(_)] => ApplyOutcome::Fenced,
        [Value::Int(reply::MOVED), Value::Int(_)] => ApplyOutcome::Moved,
        [Value::Int(reply::NOT_READY), Value::Int(_)] => ApplyOutcome::NotReady,
        [Value::Int(reply::REFUSED), Value::BulkString(m)] => {
            ApplyOutcome::Rejected(String::from_utf8_lossy(m).into_owned())
        }
        [Value::Int(reply::REFUSED), Value::SimpleString(m)] => ApplyOutcome::Rejected(m.clone()),
        other => return Err(StreamError::Malformed(format!("apply reply {other:?}"))),
    })
}

/// Reads the applied version of `aggregate_id` (0 when none).
///
/// # Errors
/// [`StreamError`] when Redis fails.
pub async fn applied_version(
    conn: &mut impl redis::aio::ConnectionLike,
    versions_key: &str,
    aggregate_id: Uuid,
) -> Result<i64, StreamError> {
    parse_applied_version(
        applied_version_cmd(versions_key, aggregate_id)
            .query_async(conn)
            .await?,
    )
}

/// The read behind [`applied_version`], to pipeline with other reads.
#[must_use]
pub fn applied_version_cmd(versions_key: &str, aggregate_id: Uuid) -> redis::Cmd {
    let mut cmd = redis::cmd("HGET");
    cmd.arg(versions_key).arg(aggregate_id.to_string());
    cmd
}

/// The applied version in a reply to [`applied_version_cmd`] (0 when none).
///
/// # Errors
/// [`StreamError`] for an error reply or a value that is not a version.
pub fn parse_applied_version(reply: Value) -> Result<i64, StreamError> {
    let v: Option<i64> = crate::error::from_reply(reply, "applied version")?;
    Ok(v.unwrap_or(0))
}
