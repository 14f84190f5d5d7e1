//! The operator's side of dead letters: list them, count them, re-drive a parked aggregate's
//! chain in order, or discard its head so the rest apply. admin-api serves this over HTTP.
//!
//! A re-drive is the only writer of a parked aggregate (the consumers send its live events to
//! the dead letters behind the head), so it needs no lease; the version guard still makes a
//! re-drive interrupted half-way safe to run again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use events::EventEnvelope;
use streams::dlq::{self, DeadLetter, DeadLetterKeys};
use streams::{ApplyItem, ApplyOutcome, GenerationState, Generations, RedisPools, StreamError};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::plan::Projection;
use crate::runtime::{Step, Targets, Unsent, apply_targets, load, plan_targets};

/// Why a dead-letter operation could not be done.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// No dead letter has that id. # Handling: 404.
    #[error("no dead letter {0}")]
    NotFound(String),
    /// Only the head of a parked chain (or a lone entry) can be discarded. # Handling: 409.
    #[error("{0} is parked behind event {1}: discard or re-drive the head first")]
    NotHead(String, String),
    /// Applying an entry failed again; it stays, with everything behind it. # Handling: 409.
    #[error("dead letter {id} still fails: {reason}")]
    StillFailing {
        /// The entry.
        id: String,
        /// Why.
        reason: String,
    },
    /// Redis failed. # Handling: 503.
    #[error(transparent)]
    Streams(#[from] StreamError),
}

impl From<streams::deadpool_redis::PoolError> for DeadLetterError {
    fn from(e: streams::deadpool_redis::PoolError) -> Self {
        Self::Streams(e.into())
    }
}

/// Dead-letter totals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeadLetterStats {
    /// Entries.
    pub total: u64,
    /// Entries per error type.
    pub by_error_type: BTreeMap<String, u64>,
    /// Age of the oldest entry's first failure, seconds (0 when none).
    pub oldest_age_seconds: f64,
}

/// What a re-drive or discard did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redriven {
    /// Events applied.
    pub applied: u64,
    /// Events already applied (removed without change).
    pub duplicates: u64,
    /// Heads discarded.
    pub discarded: u64,
    /// Aggregates unparked.
    pub unparked: u64,
}

/// Dead letters read per page by a bulk re-drive.
const REDRIVE_PAGE: usize = 200;

/// What a bulk re-drive did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BulkRedrive {
    /// Nothing was applied: the counts say what would be re-driven.
    pub dry_run: bool,
    /// Dead letters walked.
    pub entries: u64,
    /// Chains (parked aggregates, and lone entries) re-driven or, dry, to re-drive.
    pub aggregates: u64,
    /// What the re-drives did.
    pub done: Redriven,
    /// Chains that still fail (they stay in the dead letters, in order).
    pub still_failing: u64,
    /// Why, for the first few.
    pub failures: Vec<String>,
}

/// Dead-letter operations of one projection.
pub struct DeadLetters {
    redis: RedisPools,
    projection: Arc<dyn Projection>,
    generations: Generations,
    dlq: DeadLetterKeys,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("projection", &self.projection.module().projection)
            .finish_non_exhaustive()
    }
}

impl DeadLetters {
    /// Operations on `projection`'s dead letters, re-driving into the generations live
    /// applies write (resolved before each re-drive).
    #[must_use]
    pub fn new(redis: RedisPools, projection: Arc<dyn Projection>) -> Self {
        let module = projection.module();
        let generations = Generations::new(
            &redis.keys,
            module.name,
            module.projection,
            GenerationState::default(),
        );
        let dlq = DeadLetterKeys::new(&redis.keys, module.projection);
        Self {
            redis,
            projection,
            generations,
            dlq,
        }
    }

    /// Up to `limit` dead letters after `after`, oldest first.
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StreamError> {
        let mut conn = self.redis.commands.get().await?;
        dlq::list(&mut conn, &self.dlq, after, limit).await
    }

    /// Totals.
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn stats(&self) -> Result<DeadLetterStats, StreamError> {
        let mut stats = DeadLetterStats::default();
        let mut after: Option<String> = None;
        let now = OffsetDateTime::now_utc();
        loop {
            let page = self.list(after.as_deref(), 1000).await?;
            let Some(last) = page.last().map(|d| d.id.clone()) else {
                break;
            };
            for d in &page {
                stats.total += 1;
                *stats
                    .by_error_type
                    .entry(d.field("error_type").to_owned())
                    .or_default() += 1;
                if let Ok(t) = OffsetDateTime::parse(
                    d.field("first_failed_at"),
                    &time::format_description::well_known::Rfc3339,
                ) {
                    stats.oldest_age_seconds =
                        stats.oldest_age_seconds.max((now - t).as_seconds_f64());
                }
            }
            after = Some(last);
        }
        Ok(stats)
    }

    /// One dead letter by its entry id.
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn get(&self, id: &str) -> Result<Option<DeadLetter>, StreamError> {
        let mut conn = self.redis.commands.get().await?;
        dlq::get(&mut conn, &self.dlq, id).await
    }

    async fn entry(&self, id: &str) -> Result<DeadLetter, DeadLetterError> {
        let mut conn = self.redis.commands.get().await?;
        dlq::get(&mut conn, &self.dlq, id)
            .await?
            .ok_or_else(|| DeadLetterError::NotFound(id.to_owned()))
    }

    /// Re-drives the chain `id` belongs to, from its head, in order; unparks the aggregate when
    /// the chain is empty. Stops at the first entry that still fails (it and the rest stay).
    ///
    /// # Errors
    /// [`DeadLetterError`].
    pub async fn redrive(&self, id: &str) -> Result<Redriven, DeadLetterError> {
        let entry = self.entry(id).await?;
        let mut done = Redriven::default();
        match entry.aggregate_id() {
            Some(aggregate) => self.redrive_aggregate(aggregate, &mut done).await?,
            None => self.redrive_lone(&entry, &mut done).await?,
        }
        Ok(done)
    }

    /// Re-drives every parked aggregate (and every lone entry), in dead-letter order, reading
    /// the dead letters a page at a time (never the whole stream in memory). A chain that still
    /// fails stays as it was and the walk goes on with the next. With `dry_run`, nothing is
    /// applied: the answer says what would be re-driven.
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails (what was re-driven by then stays re-driven).
    pub async fn redrive_all(&self, dry_run: bool) -> Result<BulkRedrive, StreamError> {
        let mut bulk = BulkRedrive {
            dry_run,
            ..BulkRedrive::default()
        };
        // Aggregates already handled in this walk: a chain that still fails keeps its later
        // entries in the stream, and they must not be tried again page after page.
        let mut handled: std::collections::HashSet<Uuid> = std::collections::HashSet::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.list(after.as_deref(), REDRIVE_PAGE).await?;
            let Some(last) = page.last().map(|d| d.id.clone()) else {
                break;
            };
            for entry in &page {
                bulk.entries += 1;
                let outcome = match entry.aggregate_id() {
                    Some(a) if handled.contains(&a) => continue,
                    Some(a) => {
                        handled.insert(a);
                        bulk.aggregates += 1;
                        if dry_run {
                            continue;
                        }
                        self.redrive_aggregate(a, &mut bulk.done).await
                    }
                    None => {
                        bulk.aggregates += 1;
                        if dry_run {
                            continue;
                        }
                        self.redrive_lone(entry, &mut bulk.done).await
                    }
                };
                match outcome {
                    Ok(()) => {}
                    Err(DeadLetterError::Streams(e)) => return Err(e),
                    Err(e) => {
                        bulk.still_failing += 1;
                        if bulk.failures.len() < 20 {
                            bulk.failures.push(e.to_string());
                        }
                    }
                }
            }
            after = Some(last);
        }
        Ok(bulk)
    }

    /// Discards a chain's head (or a lone entry): its version is marked applied without
    /// applying it, it is removed, and the rest of the chain is re-driven.
    ///
    /// # Errors
    /// [`DeadLetterError::NotHead`] for an entry parked behind another.
    pub async fn discard(&self, id: &str) -> Result<Redriven, DeadLetterError> {
        let entry = self.entry(id).await?;
        let head = entry.field("parked_behind");
        if !head.is_empty() {
            return Err(DeadLetterError::NotHead(id.to_owned(), head.to_owned()));
        }
        let mut done = Redriven {
            discarded: 1,
            ..Redriven::default()
        };
        let mut conn = self.redis.commands.get().await?;
        match entry.aggregate_id() {
            None => dlq::remove(&mut conn, &self.dlq, id, None).await?,
            Some(aggregate) => {
                let targets = self.targets(&mut conn).await?;
                if let Ok(event) = EventEnvelope::from_json(entry.field("event").as_bytes()) {
                    for t in targets.iter().flat_map(|t| &t.list) {
                        dlq::skip_version(
                            &mut conn,
                            &t.keys.versions(),
                            aggregate,
                            event.aggregate_version,
                        )
                        .await?;
                    }
                }
                dlq::remove(&mut conn, &self.dlq, id, Some(aggregate)).await?;
                drop(conn);
                self.redrive_aggregate(aggregate, &mut done).await?;
            }
        }
        Ok(done)
    }

    async fn redrive_lone(
        &self,
        entry: &DeadLetter,
        done: &mut Redriven,
    ) -> Result<(), DeadLetterError> {
        let event = EventEnvelope::from_json(entry.field("event").as_bytes()).map_err(|e| {
            DeadLetterError::StillFailing {
                id: entry.id.clone(),
                reason: e.to_string(),
            }
        })?;
        self.apply_one(&entry.id, &event, None, done).await
    }

    async fn redrive_aggregate(
        &self,
        aggregate: Uuid,
        done: &mut Redriven,
    ) -> Result<(), DeadLetterError> {
        loop {
            let chain = {
                let mut conn = self.redis.commands.get().await?;
                dlq::chain(&mut conn, &self.dlq, aggregate).await?
            };
            for id in &chain {
                let entry = self.entry(id).await?;
                let event =
                    EventEnvelope::from_json(entry.field("event").as_bytes()).map_err(|e| {
                        DeadLetterError::StillFailing {
                            id: id.clone(),
                            reason: e.to_string(),
                        }
                    })?;
                self.apply_one(id, &event, Some(aggregate), done).await?;
            }
            let mut conn = self.redis.commands.get().await?;
            if dlq::unpark_if_empty(&mut conn, &self.dlq, aggregate).await? {
                done.unparked += 1;
                return Ok(());
            }
            // More followers arrived while re-driving: go again.
        }
    }

    async fn apply_one(
        &self,
        id: &str,
        event: &EventEnvelope,
        aggregate: Option<Uuid>,
        done: &mut Redriven,
    ) -> Result<(), DeadLetterError> {
        let failed = |reason: String| DeadLetterError::StillFailing {
            id: id.to_owned(),
            reason,
        };

        let Some(targets) = ({
            let mut conn = self.redis.commands.get().await?;
            self.targets(&mut conn).await?
        }) else {
            return Err(failed("the projection has no read model yet".into()));
        };
        // No marker required: the version guard alone keeps a re-drive onto a model being
        // rebuilt correct.
        let models: Vec<_> = targets.list.iter().map(|t| &t.keys).collect();
        let loaded = load(
            &self.redis,
            self.projection.as_ref(),
            &models,
            &[event],
            None,
            None,
        )
        .await?
        .unwrap_or_default();
        let (mut steps, _) = plan_targets(self.projection.as_ref(), &targets, &[event], loaded);
        let ops = match steps.remove(0) {
            Step::Send(ops) => ops,
            Step::Hold(Unsent::Failure(f)) => {
                return Err(failed(f.reason(event.aggregate_version)));
            }
            Step::Hold(other) => return Err(failed(format!("{other:?}"))),
        };
        let item = ApplyItem {
            guard: Some(targets.guard.clone()),
            targets: apply_targets(&targets, ops),
            ..ApplyItem::new(
                String::new(),
                event.aggregate_id,
                event.aggregate_version,
                vec![],
            )
        };
        let mut conn = self.redis.commands.get().await?;
        // Readers waiting for this write (a consistency token) wake as for any apply.
        match streams::apply::apply_batch_announcing(&mut conn, &[item], &self.redis.keys)
            .await?
            .remove(0)
        {
            ApplyOutcome::Applied => done.applied += 1,
            ApplyOutcome::Duplicate { .. } => done.duplicates += 1,
            other => return Err(failed(format!("{other:?}"))),
        }
        dlq::remove(&mut conn, &self.dlq, id, aggregate).await?;
        Ok(())
    }

    /// The generations a re-drive writes, resolved now.
    async fn targets(
        &self,
        conn: &mut streams::deadpool_redis::Connection,
    ) -> Result<Option<Targets>, StreamError> {
        let state = self.generations.refresh(conn).await?;
        Ok(Targets::live(&self.generations, state, false))
    }

    /// The parked aggregates and their head event ids.
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn parked(&self) -> Result<HashMap<String, String>, StreamError> {
        let mut conn = self.redis.commands.get().await?;
        dlq::parked(&mut conn, &self.dlq).await
    }
}
