//! The fast path of a rebuild: writing history into a generation being built in runs, one per
//! aggregate and share of a page, instead of one guarded item per event.
//!
//! The apply script ([`crate::apply`]) checks every key's type and every counter before it
//! writes anything, so that no event is ever half-applied in a read model someone reads; with
//! about thirteen calls from Lua per event, those checks and the bookkeeping around them are
//! what limits a replay. A generation being built is read by nobody, and written only by the
//! projection's own operations, so a rebuild can do with less:
//! - **one version guard per run**, not per event: a run carries the applied version it was
//!   planned from, and is written only if that is still the aggregate's applied version (live
//!   applies write the generation being built too, so one may have moved the aggregate on in
//!   between: that run is then not written, and the caller applies its events the careful
//!   way). Every run's writes and its new version land in one script call, so a run is all or
//!   nothing even when the process dies, and running a call twice writes nothing twice;
//! - **no per-key checks**: a key of the wrong type there can only come from projection code
//!   that uses one key as two types. Redis then raises an error half-way through a call
//!   ([`StreamError::Redis`]), and the caller must give the generation up;
//! - **folded string writes**: of the `SET`s and `DEL`s a run makes to one key, only the last
//!   is sent (projections read only string keys, and only their own aggregate's).
//!
//! The generation pointer is checked in every call: once the generation stops being the one
//! being built (switched, abandoned, lost), nothing more is written to it.

use std::sync::LazyLock;

use deadpool_redis::redis::{self, Script, Value};
use uuid::Uuid;

use crate::StreamError;
use crate::apply::{OPS, Op, op_args};

/// One aggregate's events of a share, folded into one write.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// The aggregate.
    pub aggregate_id: Uuid,
    /// Its applied version the run was planned from (0: none).
    pub from: i64,
    /// Its applied version once the run is written.
    pub to: i64,
    /// The writes, in order.
    pub ops: Vec<Op>,
}

impl Run {
    /// A run of `aggregate_id` planned from applied version `from`, with nothing in it yet.
    #[must_use]
    pub fn new(aggregate_id: Uuid, from: i64) -> Self {
        Self {
            aggregate_id,
            from,
            to: from,
            ops: Vec::new(),
        }
    }

    /// Adds event `version`'s writes: earlier `SET`s and `DEL`s of a key it sets or deletes
    /// again are dropped, as only the last one can be seen (unless the run also used the key
    /// as something else than a string: then every write goes, and Redis says what it thinks
    /// of that).
    pub fn push(&mut self, version: i64, ops: Vec<Op>) {
        let string = |o: &Op| matches!(o, Op::Set { .. } | Op::Del { .. });
        for op in ops.iter().filter(|o| string(o)) {
            let key = op.key();
            if self.ops.iter().all(|o| o.key() != key || string(o)) {
                self.ops.retain(|o| o.key() != key);
            }
        }
        self.ops.extend(ops);
        self.to = version;
    }
}

/// What [`write_runs`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Per run, in order: whether it was written (`false`: its aggregate's applied version had
    /// moved on since planning, or an operation could not be sent; nothing of it was written).
    Runs(Vec<bool>),
    /// The generation is no longer the one being built: nothing was written.
    Moved,
}

/// The script, and the operations per call: a call runs alone in Redis, so it is kept short
/// (a few milliseconds).
static BULK_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{OPS}{}", include_str!("bulk.lua"))));
const OPS_PER_CALL: usize = 2000;
/// Runs per call: their versions are read and written with one command each, whose arguments
/// Lua's stack must hold (8,000 at most).
const RUNS_PER_CALL: usize = 1000;

/// Writes `runs` into generation `building` (whose pointer is `pointer` and applied versions
/// `versions_key`), in one round trip. At most one run per aggregate: a second one would be
/// judged against the version before the first (and not written).
///
/// # Errors
/// [`StreamError::Unavailable`] when Redis is down (calls made before are whole and guarded:
/// writing the same runs again writes nothing twice); [`StreamError::Redis`] when a call
/// failed half-way (a key of the wrong type): the generation may hold part of a run and must
/// be given up.
pub async fn write_runs(
    conn: &mut impl redis::aio::ConnectionLike,
    pointer: &str,
    versions_key: &str,
    building: i64,
    runs: &[Run],
) -> Result<Written, StreamError> {
    // A score the script could not send back is refused here, before anything is written.
    let sendable: Vec<bool> = runs
        .iter()
        .map(|r| {
            r.ops
                .iter()
                .all(|op| !matches!(op, Op::ZAdd { score, .. } if !score.is_finite()))
        })
        .collect();
    let mut calls: Vec<Vec<usize>> = vec![vec![]];
    let mut ops_in_call = 0;
    for (i, run) in runs.iter().enumerate().filter(|(i, _)| sendable[*i]) {
        let full = calls.last().is_some_and(|c| c.len() >= RUNS_PER_CALL);
        if full || (ops_in_call > 0 && ops_in_call + run.ops.len() > OPS_PER_CALL) {
            calls.push(vec![]);
            ops_in_call = 0;
        }
        ops_in_call += run.ops.len();
        if let Some(call) = calls.last_mut() {
            call.push(i);
        }
    }
    calls.retain(|c| !c.is_empty());
    let mut written = vec![false; runs.len()];
    if calls.is_empty() {
        return Ok(Written::Runs(written));
    }
    let pipe = || {
        let mut pipe = redis::pipe();
        for call in &calls {
            pipe.add_command(call_cmd(pointer, versions_key, building, runs, call));
        }
        pipe.ignore_errors();
        pipe
    };
    let mut replies: Vec<Value> = pipe().query_async(conn).await?;
    // After a Redis restart or SCRIPT FLUSH: load the script and send every call again (the
    // run guards make calls that did run write nothing twice).
    if replies
        .iter()
        .any(|r| matches!(r, Value::ServerError(e) if e.code() == "NOSCRIPT"))
    {
        let _: String = BULK_SCRIPT.prepare_invoke().load_async(conn).await?;
        replies = pipe().query_async(conn).await?;
    }
    for (call, reply) in calls.iter().zip(replies) {
        match reply {
            Value::Int(-1) => return Ok(Written::Moved),
            Value::Array(flags) if flags.len() == call.len() => {
                for (i, flag) in call.iter().zip(flags) {
                    written[*i] = matches!(flag, Value::Int(1));
                }
            }
            Value::ServerError(e) => return Err(StreamError::Redis(e.into())),
            other => {
                return Err(StreamError::Malformed(format!(
                    "bulk write reply {other:?}"
                )));
            }
        }
    }
    Ok(Written::Runs(written))
}

fn call_cmd(
    pointer: &str,
    versions_key: &str,
    building: i64,
    runs: &[Run],
    call: &[usize],
) -> redis::Cmd {
    let mut keys: Vec<&str> = vec![pointer, versions_key];
    let mut args: Vec<String> = vec![building.to_string(), call.len().to_string()];
    for run in call.iter().map(|i| &runs[*i]) {
        args.extend([
            run.aggregate_id.to_string(),
            run.from.to_string(),
            run.to.to_string(),
            run.ops.len().to_string(),
        ]);
        for op in &run.ops {
            keys.push(op.key());
            let (name, rest) = op_args(op);
            args.push(name.to_owned());
            args.extend(rest);
        }
    }
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(BULK_SCRIPT.get_hash())
        .arg(keys.len())
        .arg(&keys)
        .arg(&args);
    cmd
}
