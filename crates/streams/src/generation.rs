//! A projection's generations, resolved at run time.
//!
//! Every read-model key carries its generation ([`crate::ReadModelKeys`]). Per projection, a
//! hash at [`crate::KeySpace::generation_pointer`] records which generation is **active**
//! (served by the query side, written by live applies) and which, if any, is **building** (a
//! rebuild writing it from history beside the active one; live applies write it too, so it
//! misses nothing). A switch makes the building generation the active one in one atomic step.
//! No active generation means there is no usable read model (a first start, or Redis lost
//! it): readers then answer 503 rather than guess.
//!
//! Readers and writers keep the last state they saw in a [`Generations`] handle and refresh
//! it when Redis says otherwise: the state rides in round trips they make anyway, and every
//! apply carries the state it was planned for ([`GenerationGuard`]), so an apply planned
//! before a switch is refused instead of landing in the wrong generation.

use std::sync::{Arc, Mutex};

use deadpool_redis::redis::{self, Value};

use crate::{KeySpace, ReadModelKeys, StreamError};

/// The hash fields of the generation pointer.
mod field {
    pub(crate) const ACTIVE: &str = "active";
    pub(crate) const BUILDING: &str = "building";
}

/// Which generations of a projection exist for readers and writers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenerationState {
    /// The served generation; `None`: no usable read model.
    pub active: Option<i64>,
    /// The generation a rebuild is writing, if one runs.
    pub building: Option<i64>,
}

impl GenerationState {
    /// The generations live applies write: the active one and the building one.
    #[must_use]
    pub fn written(&self) -> Vec<i64> {
        self.active.into_iter().chain(self.building).collect()
    }
}

/// What an apply was planned for: the script refuses it (`Moved`) when the projection's
/// generations are no longer these, so no write lands in a generation that stopped being
/// written (after a switch) or misses one that started (a rebuild that began).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationGuard {
    /// The generation pointer's key.
    pub key: String,
    /// The state seen when planning.
    pub expected: GenerationState,
}

/// One projection's generations as this process last saw them. Clones share the value.
#[derive(Debug, Clone)]
pub struct Generations {
    keys: KeySpace,
    module: &'static str,
    pointer: String,
    current: Arc<Mutex<GenerationState>>,
}

fn parse_generation(v: Option<String>, what: &str) -> Result<Option<i64>, StreamError> {
    v.filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<i64>()
                .map_err(|_| StreamError::Malformed(format!("{what} generation {s:?}")))
        })
        .transpose()
}

impl Generations {
    /// The generations of `projection` (whose read model is named after `module`), seen as
    /// `initial` until the first refresh.
    #[must_use]
    pub fn new(
        keys: &KeySpace,
        module: &'static str,
        projection: &str,
        initial: GenerationState,
    ) -> Self {
        Self {
            keys: keys.clone(),
            module,
            pointer: keys.generation_pointer(projection),
            current: Arc::new(Mutex::new(initial)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GenerationState> {
        // Only plain values are written under this lock: a panic cannot leave it half-done.
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The state last seen.
    #[must_use]
    pub fn state(&self) -> GenerationState {
        *self.lock()
    }

    /// The keys of generation `generation` of this read model.
    #[must_use]
    pub fn keys_of(&self, generation: i64) -> ReadModelKeys {
        self.keys.read_model(self.module, generation)
    }

    /// The keys of the active generation last seen, if there is one.
    #[must_use]
    pub fn active_keys(&self) -> Option<ReadModelKeys> {
        self.state().active.map(|g| self.keys_of(g))
    }

    /// The pointer's key.
    #[must_use]
    pub fn pointer(&self) -> &str {
        &self.pointer
    }

    /// The guard of an apply planned now.
    #[must_use]
    pub fn guard(&self) -> GenerationGuard {
        GenerationGuard {
            key: self.pointer.clone(),
            expected: self.state(),
        }
    }

    /// The read of the whole state, to ride in a round trip the caller makes anyway.
    #[must_use]
    pub fn read_cmd(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(&self.pointer)
            .arg(field::ACTIVE)
            .arg(field::BUILDING);
        cmd
    }

    /// The read of the active generation only (what readers need).
    #[must_use]
    pub fn read_active_cmd(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(&self.pointer).arg(field::ACTIVE);
        cmd
    }

    /// Takes the state from a reply to [`Generations::read_cmd`]; returns whether it differs
    /// from the state last seen.
    ///
    /// # Errors
    /// [`StreamError`] for an error reply or a value that is not a generation number.
    pub fn observe(&self, reply: Value) -> Result<bool, StreamError> {
        let (active, building): (Option<String>, Option<String>) =
            crate::error::from_reply(reply, "generation state")?;
        let seen = GenerationState {
            active: parse_generation(active, "active")?,
            building: parse_generation(building, "building")?,
        };
        Ok(std::mem::replace(&mut *self.lock(), seen) != seen)
    }

    /// Takes the active generation from a reply to [`Generations::read_active_cmd`]; returns
    /// whether it differs from the one last seen.
    ///
    /// # Errors
    /// [`StreamError`] for an error reply or a value that is not a generation number.
    pub fn observe_active(&self, reply: Value) -> Result<bool, StreamError> {
        let active: Option<String> = crate::error::from_reply(reply, "active generation")?;
        let active = parse_generation(active, "active")?;
        let mut state = self.lock();
        Ok(std::mem::replace(&mut state.active, active) != active)
    }

    /// Reads the state; returns it.
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn refresh(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
    ) -> Result<GenerationState, StreamError> {
        let reply: Value = self.read_cmd().query_async(conn).await?;
        self.observe(reply)?;
        Ok(self.state())
    }

    /// Records `generation` as the active one outright (adopting a generation that was built
    /// before any pointer existed; tests). A rebuild switches with
    /// [`crate::read_model::switch`] instead.
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn activate(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
        generation: i64,
    ) -> Result<(), StreamError> {
        self.record(conn, field::ACTIVE, generation).await?;
        self.lock().active = Some(generation);
        Ok(())
    }

    /// Records `generation` as the one being built (a rebuild starting).
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn start_building(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
        generation: i64,
    ) -> Result<(), StreamError> {
        self.record(conn, field::BUILDING, generation).await?;
        self.lock().building = Some(generation);
        Ok(())
    }

    async fn record(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
        field: &str,
        generation: i64,
    ) -> Result<(), StreamError> {
        let _: i64 = redis::cmd("HSET")
            .arg(&self.pointer)
            .arg(field)
            .arg(generation)
            .query_async(conn)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(active: Option<&str>, building: Option<&str>) -> Value {
        let v =
            |s: Option<&str>| s.map_or(Value::Nil, |s| Value::BulkString(s.as_bytes().to_vec()));
        Value::Array(vec![v(active), v(building)])
    }

    #[test]
    fn the_state_is_taken_from_replies_and_changes_are_noticed() {
        let g = Generations::new(
            &KeySpace::new("p:"),
            "task",
            "task_projection",
            GenerationState::default(),
        );
        assert_eq!(g.pointer(), "p:cqrs:generation:task_projection");
        assert!(g.active_keys().is_none());
        assert!(g.observe(reply(Some("3"), None)).expect("ok"));
        assert!(!g.observe(reply(Some("3"), None)).expect("ok"), "no change");
        assert_eq!(g.active_keys().map(|k| k.generation()), Some(3));
        assert!(g.observe(reply(Some("3"), Some("4"))).expect("ok"));
        assert_eq!(g.state().written(), vec![3, 4]);
        assert!(
            g.observe_active(Value::BulkString(b"4".to_vec()))
                .expect("ok")
        );
        assert_eq!(g.state().active, Some(4));
        assert!(g.observe(reply(Some("x"), None)).is_err());
    }
}
