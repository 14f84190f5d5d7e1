//! The active generation of a projection's read model, resolved at run time.
//!
//! Every read-model key carries its generation ([`crate::ReadModelKeys`]); which generation is
//! *active* is recorded under [`crate::KeySpace::generation_pointer`]. Readers and writers keep
//! the last value they saw in an [`ActiveGeneration`] and refresh it when the pointer says
//! otherwise, so a later switch to a rebuilt generation needs no restart. Until a switch
//! records a pointer, the initial generation is the active one.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use deadpool_redis::redis::{self, Value};

use crate::keys::INITIAL_GENERATION;
use crate::{KeySpace, ReadModelKeys, StreamError};

/// One projection's active generation as this process last saw it. Clones share the value.
#[derive(Debug, Clone)]
pub struct ActiveGeneration {
    keys: KeySpace,
    module: &'static str,
    pointer: String,
    current: Arc<AtomicI64>,
}

impl ActiveGeneration {
    /// The active generation of `projection` (whose read model is named after `module`), seen
    /// as the initial one until the first [`ActiveGeneration::refresh`].
    #[must_use]
    pub fn new(keys: &KeySpace, module: &'static str, projection: &str) -> Self {
        Self {
            keys: keys.clone(),
            module,
            pointer: keys.generation_pointer(projection),
            current: Arc::new(AtomicI64::new(INITIAL_GENERATION)),
        }
    }

    /// The generation last seen.
    #[must_use]
    pub fn get(&self) -> i64 {
        self.current.load(Ordering::Acquire)
    }

    /// The keys of the generation last seen.
    #[must_use]
    pub fn keys(&self) -> ReadModelKeys {
        self.keys.read_model(self.module, self.get())
    }

    /// The read of the pointer, to ride in a round trip the caller makes anyway.
    #[must_use]
    pub fn read_cmd(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("GET");
        cmd.arg(&self.pointer);
        cmd
    }

    /// Takes the pointer's value from a reply to [`ActiveGeneration::read_cmd`]; returns
    /// whether it differs from the generation last seen (then the caller's read, made with the
    /// old keys, must be made again).
    ///
    /// # Errors
    /// [`StreamError`] for an error reply or a pointer that is not a generation number.
    pub fn observe(&self, reply: Value) -> Result<bool, StreamError> {
        let seen: Option<i64> = crate::error::from_reply(reply, "generation pointer")?;
        let seen = seen.unwrap_or(INITIAL_GENERATION);
        Ok(self.current.swap(seen, Ordering::AcqRel) != seen)
    }

    /// Reads the pointer; returns the active generation.
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn refresh(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
    ) -> Result<i64, StreamError> {
        let reply: Value = self.read_cmd().query_async(conn).await?;
        self.observe(reply)?;
        Ok(self.get())
    }

    /// Records `generation` as the active one (a switch).
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn activate(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
        generation: i64,
    ) -> Result<(), StreamError> {
        let () = redis::cmd("SET")
            .arg(&self.pointer)
            .arg(generation)
            .query_async(conn)
            .await?;
        self.current.store(generation, Ordering::Release);
        Ok(())
    }
}
