//! The read side as query routes see it: one [`ReadSide`] per module, reading the active
//! generation of the module's read model, waiting for consistency tokens, and answering with
//! the freshness header, in as few round trips as the answer allows. While a module has no
//! usable generation (a first start, or Redis lost its read model) its reads answer 503 with
//! `Retry-After`: never a 404 for what exists, never zeros for what is counted.

/// The module's read model is being built from nothing: there is no answer to give yet.
#[derive(Debug, thiserror::Error)]
#[error("the {0} read model is being rebuilt; try again shortly")]
pub struct NoReadModel(pub &'static str);

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::HttpResponse;
use events::ModuleSpec;
use streams::redis::{self, Value};
use streams::visibility::AppliedWatch;
use streams::{GenerationState, Generations, ReadModelKeys, RedisPools, StreamError};

use crate::consistency::{ConsistencyWait, Freshness, mark};
use crate::http::ApiError;

/// How many times in a row a read is made again because a generation moved under it before it
/// answers from the newest it saw (a switch is rare; this only bounds a pathological flapping).
const MAX_SWITCHES: usize = 3;

/// A module's read model as its query routes see it: the active generation (resolved at run
/// time, so a switch needs no restart), the process's Redis pools and its subscription to the
/// projectors' announcements. Cheap to clone.
#[derive(Clone)]
pub struct ReadSide {
    pools: RedisPools,
    watch: AppliedWatch,
    module: &'static ModuleSpec,
    /// Every hosted module's active generation: a consistency token may name another module
    /// than the one read (a client sends its last token along with any query).
    generations: Arc<BTreeMap<&'static str, Generations>>,
}

impl std::fmt::Debug for ReadSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadSide")
            .field("module", &self.module.name)
            .finish_non_exhaustive()
    }
}

/// The read sides of every hosted module, sharing one set of generations.
#[derive(Clone)]
pub struct ReadSides {
    pools: RedisPools,
    watch: AppliedWatch,
    generations: Arc<BTreeMap<&'static str, Generations>>,
}

impl std::fmt::Debug for ReadSides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadSides")
            .field("modules", &self.generations.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl ReadSides {
    /// The read sides of `modules`, reading through `pools`, woken by `watch`.
    #[must_use]
    pub fn new(pools: RedisPools, watch: AppliedWatch, modules: &[&'static ModuleSpec]) -> Self {
        let generations = modules
            .iter()
            .map(|m| {
                (
                    m.name,
                    Generations::new(
                        &pools.keys,
                        m.name,
                        m.projection,
                        GenerationState::default(),
                    ),
                )
            })
            .collect();
        Self {
            pools,
            watch,
            generations: Arc::new(generations),
        }
    }

    /// The read side of `module` (which must be one of those given to [`ReadSides::new`]).
    #[must_use]
    pub fn of(&self, module: &'static ModuleSpec) -> ReadSide {
        ReadSide {
            pools: self.pools.clone(),
            watch: self.watch.clone(),
            module,
            generations: self.generations.clone(),
        }
    }
}

/// What [`ReadSide::read`] read.
#[derive(Debug)]
pub struct Read {
    /// Whether it reflects the awaited write.
    pub freshness: Freshness,
    /// The replies to the read's commands, in order (an error reply stays a value: parse it
    /// with [`streams::error::from_reply`]).
    pub replies: Vec<Value>,
    /// The generation the replies come from: a follow-up read must use the same.
    pub keys: ReadModelKeys,
}

impl Read {
    /// `response`, marked with the answer's freshness (`X-Consistency`).
    #[must_use]
    pub fn answer(&self, mut response: HttpResponse) -> HttpResponse {
        mark(&mut response, self.freshness);
        response
    }

    /// The reply to the read's `i`-th command.
    ///
    /// # Errors
    /// [`StreamError::Malformed`] when there is none.
    pub fn reply(&mut self, i: usize) -> Result<Value, StreamError> {
        self.replies
            .get_mut(i)
            .map(|v| std::mem::replace(v, Value::Nil))
            .ok_or_else(|| StreamError::Malformed(format!("no reply {i} to the read")))
    }
}

impl ReadSide {
    /// The module read.
    #[must_use]
    pub fn module(&self) -> &'static ModuleSpec {
        self.module
    }

    fn generation(&self, module: &str) -> Option<&Generations> {
        self.generations.get(module)
    }

    /// Waits for the request's consistency token, if any, and reads. `build` makes the read's
    /// commands from the keys of the active generation; they ride in the round trip of every
    /// check of the token's applied version, together with the generation pointers, so a
    /// fresh answer costs one round trip and a generation that moved in the meantime is seen
    /// at once (the read is then made again with the new keys, so no answer mixes two).
    ///
    /// The wait wakes when the projector announces the write (an announcement is only a hint:
    /// the applied version is checked then) and every 50 ms as a safety net; while the
    /// subscription is down it polls instead: 1 ms at first, growing by half up to 5 ms.
    ///
    /// # Errors
    /// 503 when Redis is down; 400 for a token of a module this service does not host.
    pub async fn read(
        &self,
        wait: &ConsistencyWait,
        build: impl Fn(&ReadModelKeys) -> Vec<redis::Cmd>,
    ) -> Result<Read, ApiError> {
        let own = self.generation(self.module.name).ok_or_else(|| {
            StreamError::Config(format!("module {} is not hosted", self.module.name))
        })?;
        let awaited = match wait.token() {
            None => None,
            Some(t) => Some((
                t,
                self.generation(&t.module).ok_or_else(|| {
                    ApiError::validation(
                        "X-Consistency-Token",
                        "X-Consistency-Token names a module this API does not serve",
                    )
                })?,
            )),
        };
        let deadline = Instant::now() + wait.wait();
        let mut interval = Duration::from_millis(1);
        let mut switches = 0;
        // Registered before the first check, so an announcement in between is not missed; and
        // only while the subscription is up (nobody would ever wake or prune it otherwise).
        let register = || {
            awaited.and_then(|(t, _)| {
                self.watch
                    .is_live()
                    .then(|| self.watch.wait_for(t.aggregate_id, t.version))
            })
        };
        let mut announced = register();
        loop {
            let Some(keys) = own.active_keys() else {
                // Nothing served as far as this process knows: ask Redis once more (a build
                // may have finished), and answer 503 if there is still nothing.
                let reply = self.query(&own.read_active_cmd()).await?;
                own.observe_active(reply)?;
                if own.active_keys().is_none() || switches >= MAX_SWITCHES {
                    return Err(ApiError::Unavailable(Box::new(NoReadModel(
                        self.module.name,
                    ))));
                }
                switches += 1;
                continue;
            };
            let mut pipe = redis::pipe();
            pipe.add_command(own.read_active_cmd());
            if let Some((t, g)) = awaited {
                pipe.add_command(g.read_active_cmd());
                // A module with nothing served has applied nothing: the wait runs out.
                let versions = g.active_keys().map_or_else(String::new, |k| k.versions());
                pipe.add_command(streams::apply::applied_version_cmd(
                    &versions,
                    t.aggregate_id,
                ));
            }
            for cmd in build(&keys) {
                pipe.add_command(cmd);
            }
            let replies: Vec<Value> = {
                let mut conn = self.pools.shared.get()?;
                pipe.ignore_errors()
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| self.failed(&conn, e))?
            };
            let mut replies = replies.into_iter();
            let mut next = || replies.next().unwrap_or(Value::Nil);
            let mut moved = own.observe_active(next())?;
            let applied = match awaited {
                None => None,
                Some((_, g)) => {
                    moved |= g.observe_active(next())?;
                    Some(streams::apply::parse_applied_version(next())?)
                }
            };
            if moved && switches < MAX_SWITCHES {
                switches += 1;
                continue;
            }
            let read = |freshness| Read {
                freshness,
                replies: replies.collect(),
                keys,
            };
            let (Some((token, _)), Some(applied)) = (awaited, applied) else {
                return Ok(read(Freshness::NotAsked));
            };
            if applied >= token.version {
                return Ok(read(Freshness::Fresh));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(read(Freshness::Stale));
            }
            if let Some(rx) = announced.as_mut() {
                let pause = Duration::from_millis(50).min(deadline - now);
                tokio::select! {
                    // Fired (or the watch went away): wait anew after the next check.
                    _ = rx => announced = register(),
                    () = tokio::time::sleep(pause) => {}
                }
            } else {
                tokio::time::sleep(interval.min(deadline - now)).await;
                interval = (interval * 3 / 2).min(Duration::from_millis(5));
            }
        }
    }

    /// A follow-up read in one round trip, built from an earlier [`Read`]'s keys so that it
    /// reads the same generation.
    ///
    /// # Errors
    /// 503 when Redis is down.
    pub async fn fetch(&self, cmd: redis::Cmd) -> Result<Value, ApiError> {
        self.query(&cmd).await
    }

    /// One command on this thread's shared connection.
    async fn query(&self, cmd: &redis::Cmd) -> Result<Value, ApiError> {
        let mut conn = self.pools.shared.get()?;
        Ok(cmd
            .query_async(&mut conn)
            .await
            .map_err(|e| self.failed(&conn, e))?)
    }

    /// A command's failure, after letting a stuck connection go.
    fn failed(&self, conn: &streams::pool::SharedConnection, e: redis::RedisError) -> StreamError {
        self.pools.shared.forget_if_stuck(conn, &e);
        StreamError::from(e)
    }
}
