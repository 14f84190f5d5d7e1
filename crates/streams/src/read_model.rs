//! The Redis-level pieces of maintaining a read model that are not the apply itself: the one
//! round trip that reads what planning a batch needs, the marker that says a generation was
//! built, the lock one replica holds while it builds one, the atomic switch to a built
//! generation, the deletion of retired generations in bounded steps, and the canary that
//! tells when Redis went back in time.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use deadpool_redis::redis::{self, Value};
use uuid::Uuid;

use crate::generation::Generations;
use crate::{KeySpace, ReadModelKeys, StreamError};

/// What planning a batch needs of one generation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelState {
    /// Applied version per aggregate asked about (0: none yet).
    pub versions: HashMap<Uuid, i64>,
    /// The string keys asked for, with their values (`None`: absent).
    pub values: Vec<(String, Option<String>)>,
}

/// What planning a batch needs, read at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Per generation asked about, in the order asked.
    pub models: Vec<ModelState>,
    /// The aggregates asked about that are parked in the dead letters.
    pub parked: BTreeSet<Uuid>,
}

/// What to read in [`load`].
#[derive(Debug, Clone, Copy)]
pub struct LoadRequest<'a> {
    /// The generations read, each with the string keys needed of it.
    pub models: &'a [(&'a ReadModelKeys, &'a [String])],
    /// Aggregates whose applied versions are needed (each once).
    pub aggregates: &'a [Uuid],
    /// The dead letters' hash of parked aggregates, when parking matters to the caller.
    pub parked: Option<&'a str>,
    /// A generation whose marker must exist: a consumer must not apply stream entries onto a
    /// model that is gone, while a replay into a generation being built needs none.
    pub require_marker: Option<&'a ReadModelKeys>,
}

fn parse<T: redis::FromRedisValue>(v: Option<Value>) -> Result<T, StreamError> {
    crate::error::from_reply(v.unwrap_or(Value::Nil), "read-model load")
}

/// Reads, in one `MULTI` (so all of it describes the same instant): per generation, the
/// values of its keys and the applied versions of `request.aggregates`; which aggregates are
/// parked; and whether the required marker exists. `None` when the marker was required and is
/// missing: the read model is gone and must be rebuilt first.
///
/// # Errors
/// [`StreamError`] when Redis fails or a reply has the wrong shape.
pub async fn load(
    conn: &mut impl redis::aio::ConnectionLike,
    request: LoadRequest<'_>,
) -> Result<Option<Loaded>, StreamError> {
    let LoadRequest {
        models,
        aggregates,
        parked,
        require_marker,
    } = request;
    if aggregates.is_empty() {
        return Ok(Some(Loaded {
            models: vec![ModelState::default(); models.len()],
            parked: BTreeSet::new(),
        }));
    }
    let ids: Vec<String> = aggregates.iter().map(Uuid::to_string).collect();
    let mut pipe = redis::pipe();
    pipe.atomic();
    for (model, reads) in models {
        if !reads.is_empty() {
            pipe.cmd("MGET").arg(*reads);
        }
        pipe.cmd("HMGET").arg(model.versions()).arg(&ids);
    }
    if let Some(key) = parked {
        pipe.cmd("HMGET").arg(key).arg(&ids);
    }
    if let Some(model) = require_marker {
        pipe.cmd("EXISTS").arg(model.marker());
    }
    let mut replies: Vec<Value> = pipe.query_async(conn).await?;
    if require_marker.is_some() {
        let exists: bool = parse(replies.pop())?;
        if !exists {
            return Ok(None);
        }
    }
    let heads: Vec<Option<String>> = if parked.is_some() {
        parse(replies.pop())?
    } else {
        vec![]
    };
    let mut replies = replies.into_iter();
    let mut states = Vec::with_capacity(models.len());
    for (_, reads) in models {
        let values: Vec<Option<String>> = if reads.is_empty() {
            vec![]
        } else {
            parse(replies.next())?
        };
        let versions: Vec<Option<i64>> = parse(replies.next())?;
        states.push(ModelState {
            versions: aggregates
                .iter()
                .zip(versions)
                .map(|(id, v)| (*id, v.unwrap_or(0)))
                .collect(),
            values: reads.iter().cloned().zip(values).collect(),
        });
    }
    Ok(Some(Loaded {
        models: states,
        parked: aggregates
            .iter()
            .zip(heads)
            .filter(|(_, head)| head.is_some())
            .map(|(id, _)| *id)
            .collect(),
    }))
}

/// Whether `model`'s marker exists (the generation was built).
///
/// # Errors
/// [`StreamError`] when Redis fails.
pub async fn is_built(
    conn: &mut impl redis::aio::ConnectionLike,
    model: &ReadModelKeys,
) -> Result<bool, StreamError> {
    Ok(redis::cmd("EXISTS")
        .arg(model.marker())
        .query_async(conn)
        .await?)
}

/// Sets `model`'s marker to `info` (a JSON description of the build).
///
/// # Errors
/// [`StreamError`] when Redis fails.
pub async fn mark_built(
    conn: &mut impl redis::aio::ConnectionLike,
    model: &ReadModelKeys,
    info: &str,
) -> Result<(), StreamError> {
    let () = redis::cmd("SET")
        .arg(model.marker())
        .arg(info)
        .query_async(conn)
        .await?;
    Ok(())
}

/// The lock one replica holds while it builds a projection's read model. It expires by itself
/// (a builder that dies frees it), so a long build renews it as it goes.
#[derive(Debug, Clone)]
pub struct RebuildLock {
    key: String,
    owner: String,
    ttl: Duration,
}

impl RebuildLock {
    /// `projection`'s lock in `keys`, taken as `owner` for `ttl` at a time.
    #[must_use]
    pub fn new(keys: &KeySpace, projection: &str, owner: impl Into<String>, ttl: Duration) -> Self {
        Self {
            key: keys.rebuild_lock(projection),
            owner: owner.into(),
            ttl,
        }
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// Takes the lock if nobody holds it; returns whether this owner now holds it.
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn try_acquire(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
    ) -> Result<bool, StreamError> {
        let won: Option<String> = redis::cmd("SET")
            .arg(&self.key)
            .arg(&self.owner)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl_ms())
            .query_async(conn)
            .await?;
        Ok(won.is_some())
    }

    /// Extends the lock by its time-to-live.
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn renew(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
    ) -> Result<(), StreamError> {
        let _: i64 = redis::cmd("PEXPIRE")
            .arg(&self.key)
            .arg(self.ttl_ms())
            .query_async(conn)
            .await?;
        Ok(())
    }

    /// Frees the lock, if this owner still holds it (it may have expired and been taken).
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn release(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
    ) -> Result<(), StreamError> {
        let _: i64 = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
        )
        .key(&self.key)
        .arg(&self.owner)
        .invoke_async(conn)
        .await?;
        Ok(())
    }
}

/// The wall clock in Unix milliseconds (what retirement times are scored with).
fn now_ms() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_millis()).unwrap_or(i128::MAX))
}

/// Makes generation `to` (being built, its replay done) the active one, in one atomic step:
/// its marker is set to `info`, the pointer's `active` becomes `to` and `building` goes, and
/// the previously active generation (if any) is retired for deletion. Returns `false`, and
/// does nothing, when `to` is no longer the generation being built (the build was abandoned).
///
/// # Errors
/// [`StreamError`] when Redis fails.
pub async fn switch(
    conn: &mut impl redis::aio::ConnectionLike,
    generations: &Generations,
    retired: &str,
    to: i64,
    info: &str,
) -> Result<bool, StreamError> {
    static SWITCH: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
        redis::Script::new(
            r"
            local pointer, retired, marker = KEYS[1], KEYS[2], KEYS[3]
            local to, info, now = ARGV[1], ARGV[2], ARGV[3]
            if redis.call('HGET', pointer, 'building') ~= to then return 0 end
            local old = redis.call('HGET', pointer, 'active')
            redis.call('SET', marker, info)
            redis.call('HSET', pointer, 'active', to)
            redis.call('HDEL', pointer, 'building')
            if old and old ~= to then redis.call('ZADD', retired, now, old) end
            return 1
            ",
        )
    });
    let now_ms = now_ms();
    let done: i64 = SWITCH
        .key(generations.pointer())
        .key(retired)
        .key(generations.keys_of(to).marker())
        .arg(to)
        .arg(info)
        .arg(now_ms.to_string())
        .invoke_async(conn)
        .await?;
    Ok(done == 1)
}

/// Stops serving generation `generation` (a reset: readers answer 503 until a new one is
/// built): if it is the active one, the pointer forgets it, its marker goes (so nothing adopts
/// it again) and it is retired for deletion, in one atomic step. Returns whether it was active.
///
/// # Errors
/// [`StreamError`] when Redis fails.
pub async fn withdraw(
    conn: &mut impl redis::aio::ConnectionLike,
    generations: &Generations,
    retired: &str,
    generation: i64,
) -> Result<bool, StreamError> {
    let now_ms = now_ms();
    let done: i64 = redis::Script::new(
        r"
        if redis.call('HGET', KEYS[1], 'active') ~= ARGV[1] then return 0 end
        redis.call('HDEL', KEYS[1], 'active')
        redis.call('DEL', KEYS[3])
        redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
        return 1
        ",
    )
    .key(generations.pointer())
    .key(retired)
    .key(generations.keys_of(generation).marker())
    .arg(generation)
    .arg(now_ms.to_string())
    .invoke_async(conn)
    .await?;
    Ok(done == 1)
}

/// Gives up building generation `generation`: the pointer forgets it (if it is still the one
/// being built) and it is retired for deletion.
///
/// # Errors
/// [`StreamError`] when Redis fails.
pub async fn abandon(
    conn: &mut impl redis::aio::ConnectionLike,
    generations: &Generations,
    retired: &str,
    generation: i64,
) -> Result<(), StreamError> {
    let now_ms = now_ms();
    let _: () = redis::Script::new(
        r"
        if redis.call('HGET', KEYS[1], 'building') == ARGV[1] then
          redis.call('HDEL', KEYS[1], 'building')
        end
        redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
        ",
    )
    .key(generations.pointer())
    .key(retired)
    .arg(generation)
    .arg(now_ms.to_string())
    .invoke_async(conn)
    .await?;
    Ok(())
}

/// Deletes up to about `count` keys of the oldest generation retired more than `grace` ago
/// (readers that were reading it when it stopped being served are done by then). Returns the
/// number of keys deleted; 0 when nothing is due. Repeated calls finish the work: the scan's
/// cursor is kept in Redis, so any replica can carry on where another stopped.
///
/// # Errors
/// [`StreamError`] when Redis fails.
pub async fn delete_retired_step(
    conn: &mut impl redis::aio::ConnectionLike,
    generations: &Generations,
    retired: &str,
    grace: Duration,
    count: usize,
) -> Result<usize, StreamError> {
    let now_ms = now_ms();
    let due = now_ms - i128::try_from(grace.as_millis()).unwrap_or(i128::MAX);
    let oldest: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
        .arg(retired)
        .arg("-inf")
        .arg(due.to_string())
        .arg("WITHSCORES")
        .arg("LIMIT")
        .arg(0)
        .arg(1)
        .query_async(conn)
        .await?;
    let Some((generation, _)) = oldest.into_iter().next() else {
        return Ok(0);
    };
    let Ok(g) = generation.parse::<i64>() else {
        let _: i64 = redis::cmd("ZREM")
            .arg(retired)
            .arg(&generation)
            .query_async(conn)
            .await?;
        return Ok(0);
    };
    // Never delete what is served or being built (a rollback may have brought it back).
    let state = generations.refresh(conn).await?;
    if state.active == Some(g) || state.building == Some(g) {
        let _: i64 = redis::cmd("ZREM")
            .arg(retired)
            .arg(&generation)
            .query_async(conn)
            .await?;
        return Ok(0);
    }
    let cursors = format!("{retired}:cursor");
    let cursor: Option<u64> = redis::cmd("HGET")
        .arg(&cursors)
        .arg(&generation)
        .query_async(conn)
        .await?;
    let pattern = format!("{}*", escape_glob(generations.keys_of(g).base()));
    let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(cursor.unwrap_or(0))
        .arg("MATCH")
        .arg(&pattern)
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    if !keys.is_empty() {
        let _: i64 = redis::cmd("UNLINK").arg(&keys).query_async(conn).await?;
    }
    if next == 0 {
        let _: () = redis::pipe()
            .cmd("ZREM")
            .arg(retired)
            .arg(&generation)
            .ignore()
            .cmd("HDEL")
            .arg(&cursors)
            .arg(&generation)
            .ignore()
            .query_async(conn)
            .await?;
    } else {
        let _: i64 = redis::cmd("HSET")
            .arg(&cursors)
            .arg(&generation)
            .arg(next)
            .query_async(conn)
            .await?;
    }
    Ok(keys.len())
}

/// `s` with the glob specials of `SCAN MATCH` escaped.
pub(crate) fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The canary as Redis holds it: `(epoch, when recorded, as Unix milliseconds)`; `None` when
/// absent.
///
/// # Errors
/// [`StreamError`] when Redis fails or the value is not a canary.
pub async fn canary(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
) -> Result<Option<(i64, i64)>, StreamError> {
    let raw: Option<String> = redis::cmd("GET").arg(key).query_async(conn).await?;
    raw.map(|v| {
        v.split_once(':')
            .and_then(|(e, t)| Some((e.parse().ok()?, t.parse().ok()?)))
            .ok_or_else(|| StreamError::Malformed(format!("canary {key}: {v:?}")))
    })
    .transpose()
}

/// Moves the canary from `from` (`None`: absent) to `to`, recorded at `at_ms`, unless it
/// moved meanwhile; returns whether this call moved it.
///
/// # Errors
/// [`StreamError`] when Redis fails.
pub async fn advance_canary(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    from: Option<i64>,
    to: i64,
    at_ms: i64,
) -> Result<bool, StreamError> {
    let moved: i64 = redis::Script::new(
        r"
        local v = redis.call('GET', KEYS[1])
        local epoch = v and string.match(v, '^(%-?%d+):') or ''
        if epoch ~= ARGV[1] then return 0 end
        redis.call('SET', KEYS[1], ARGV[2] .. ':' .. ARGV[3])
        return 1
        ",
    )
    .key(key)
    .arg(from.map(|e| e.to_string()).unwrap_or_default())
    .arg(to)
    .arg(at_ms)
    .invoke_async(conn)
    .await?;
    Ok(moved == 1)
}
