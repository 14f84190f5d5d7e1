//! The Redis-level pieces of maintaining a read model that are not the apply itself: the one
//! round trip that reads what planning a batch needs, the marker that says a generation was
//! built, and the lock one replica holds while it builds one.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use deadpool_redis::redis::{self, Value};
use uuid::Uuid;

use crate::{KeySpace, ReadModelKeys, StreamError};

/// What planning a batch needs, read at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Applied version per aggregate asked about (0: none yet).
    pub versions: HashMap<Uuid, i64>,
    /// The string keys asked for, with their values (`None`: absent).
    pub values: Vec<(String, Option<String>)>,
    /// The aggregates asked about that are parked in the dead letters.
    pub parked: BTreeSet<Uuid>,
}

/// What to read in [`load`].
#[derive(Debug, Clone, Copy)]
pub struct LoadRequest<'a> {
    /// The generation read.
    pub model: &'a ReadModelKeys,
    /// String keys whose values are needed (each once).
    pub reads: &'a [String],
    /// Aggregates whose applied versions are needed (each once).
    pub aggregates: &'a [Uuid],
    /// The dead letters' hash of parked aggregates, when parking matters to the caller.
    pub parked: Option<&'a str>,
    /// Whether the generation's marker must exist: a consumer must not apply stream entries
    /// onto a model that is gone, while a replay is what builds it.
    pub require_marker: bool,
}

fn parse<T: redis::FromRedisValue>(v: Option<Value>) -> Result<T, StreamError> {
    crate::error::from_reply(v.unwrap_or(Value::Nil), "read-model load")
}

/// Reads, in one `MULTI` (so all of it describes the same instant): the values of
/// `request.reads`, the applied versions of `request.aggregates`, which of them are parked,
/// and whether the marker exists. `None` when the marker was required and is missing: the
/// read model is gone and must be rebuilt first.
///
/// # Errors
/// [`StreamError`] when Redis fails or a reply has the wrong shape.
pub async fn load(
    conn: &mut impl redis::aio::ConnectionLike,
    request: LoadRequest<'_>,
) -> Result<Option<Loaded>, StreamError> {
    let LoadRequest {
        model,
        reads,
        aggregates,
        parked,
        require_marker,
    } = request;
    if aggregates.is_empty() {
        return Ok(Some(Loaded::default()));
    }
    let ids: Vec<String> = aggregates.iter().map(Uuid::to_string).collect();
    let mut pipe = redis::pipe();
    pipe.atomic();
    if !reads.is_empty() {
        pipe.cmd("MGET").arg(reads);
    }
    pipe.cmd("HMGET").arg(model.versions()).arg(&ids);
    if let Some(key) = parked {
        pipe.cmd("HMGET").arg(key).arg(&ids);
    }
    if require_marker {
        pipe.cmd("EXISTS").arg(model.marker());
    }
    let mut replies: Vec<Value> = pipe.query_async(conn).await?;
    if require_marker {
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
    let values: Vec<Option<String>> = if reads.is_empty() {
        vec![]
    } else {
        parse(replies.next())?
    };
    let versions: Vec<Option<i64>> = parse(replies.next())?;
    Ok(Some(Loaded {
        versions: aggregates
            .iter()
            .zip(versions)
            .map(|(id, v)| (*id, v.unwrap_or(0)))
            .collect(),
        values: reads.iter().cloned().zip(values).collect(),
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

    /// Frees the lock.
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn release(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
    ) -> Result<(), StreamError> {
        let _: i64 = redis::cmd("DEL").arg(&self.key).query_async(conn).await?;
        Ok(())
    }
}
