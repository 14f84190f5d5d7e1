//! Retries: the bookkeeping of aggregates whose event is failing here (so their followers wait
//! instead of using up attempts), the claim of pending entries whose backoff has elapsed, and
//! the claim of entries stranded with another consumer.

use std::collections::HashMap;
use std::time::Duration;

use streams::StreamError;
use streams::consumer;
use uuid::Uuid;

use super::{BatchReport, Projector};
use crate::metrics as m;

/// Bound on the in-memory bookkeeping of failing aggregates: if ever exceeded (a storm of
/// distinct failures), it is cleared; the cost is only that followers may use up attempts.
const MAX_TRACKED: usize = 100_000;

/// How long an entry may sit with another consumer of a held partition before this replica
/// claims it (an old owner's in-flight batch is fenced, so this only needs to outlast it).
const STRANDED_AFTER: Duration = Duration::from_secs(1);

/// Aggregates with an event failing here, and the pending entries waiting behind them.
#[derive(Debug, Default)]
pub(super) struct Retries {
    /// Aggregate → lowest version currently failing (retrying) here.
    blocked: HashMap<Uuid, i64>,
    /// Pending entries waiting behind a blocked aggregate: `stream|entry` → aggregate.
    waiting: HashMap<String, Uuid>,
}

fn entry_key(stream: &str, entry: &str) -> String {
    format!("{stream}|{entry}")
}

impl Retries {
    /// `version` of `aggregate` is applied (or found applied already): if it was the failing
    /// head, the aggregate is no longer blocked and its followers are free to go.
    pub(super) fn settled(&mut self, aggregate: Uuid, version: i64) {
        if self.blocked.get(&aggregate).is_some_and(|v| *v <= version) {
            self.blocked.remove(&aggregate);
        }
    }

    /// Whether an earlier version of `aggregate` than `version` is failing here.
    pub(super) fn is_behind_failing(&self, aggregate: Uuid, version: i64) -> bool {
        self.blocked.get(&aggregate).is_some_and(|v| *v < version)
    }

    /// `version` of `aggregate` failed and will be retried.
    pub(super) fn failing(&mut self, aggregate: Uuid, version: i64) {
        if self.blocked.len() > MAX_TRACKED {
            self.blocked.clear();
        }
        let v = self.blocked.entry(aggregate).or_insert(version);
        *v = (*v).min(version);
    }

    /// The entry `entry` of `stream` waits behind its aggregate's failing head.
    pub(super) fn wait(&mut self, stream: &str, entry: &str, aggregate: Uuid) {
        if self.waiting.len() > MAX_TRACKED {
            self.waiting.clear();
        }
        self.waiting.insert(entry_key(stream, entry), aggregate);
    }

    /// `aggregate` went to the dead letters: nothing of it is retried here any more.
    pub(super) fn forget(&mut self, aggregate: Uuid) {
        self.blocked.remove(&aggregate);
    }

    /// Whether `entry` of `stream` is waiting behind a head that is still failing.
    fn waits(&self, stream: &str, entry: &str) -> bool {
        self.waiting
            .get(&entry_key(stream, entry))
            .is_some_and(|a| self.blocked.contains_key(a))
    }

    /// The read model was rebuilt: whatever was failing is settled or will be judged anew.
    pub(super) fn clear(&mut self) {
        self.blocked.clear();
        self.waiting.clear();
    }
}

/// A stream entry id as `(milliseconds, sequence)`, for ordering ids numerically.
fn entry_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

impl Projector {
    /// Claims and processes this replica's pending entries whose backoff has elapsed (by their
    /// delivery count), skipping those waiting behind a failing predecessor.
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn retry_due(&self) -> Result<BatchReport, StreamError> {
        let mut report = BatchReport::default();
        for p in self.held() {
            let stream = self.stream(p);
            let due: Vec<consumer::Pending> = {
                let mut conn = self.redis.commands.get().await?;
                let pending = consumer::pending(
                    &mut conn,
                    &stream,
                    &self.group,
                    &self.settings.replica,
                    self.settings.retry_base,
                    self.settings.batch_size,
                )
                .await?;
                let state = self.lock();
                pending
                    .into_iter()
                    // Read ahead and not processed yet: not a retry (consume_once has it).
                    .filter(|e| {
                        !state
                            .prefetched
                            .iter()
                            .any(|d| d.entry_id == e.id && d.stream == stream)
                    })
                    .filter(|e| {
                        Duration::from_millis(e.idle_ms) >= self.settings.backoff(e.deliveries)
                    })
                    .filter(|e| {
                        // Waiting behind a predecessor that still fails: not its turn yet.
                        // Past the backoff cap it is retried regardless, so that bookkeeping
                        // gone stale (a head settled elsewhere) can never strand an entry; a
                        // follower retried too early only goes back to waiting.
                        Duration::from_millis(e.idle_ms) >= self.settings.retry_cap
                            || !state.retries.waits(&stream, &e.id)
                    })
                    .collect()
            };
            if due.is_empty() {
                continue;
            }
            let claimed = {
                let mut conn = self.redis.commands.get().await?;
                consumer::claim(
                    &mut conn,
                    &stream,
                    &self.group,
                    &self.settings.replica,
                    &due,
                    self.settings.retry_base,
                )
                .await?
            };
            let retries = claimed.iter().filter(|d| d.deliveries > 1).count();
            metrics::counter!(m::RETRY_ATTEMPTS_TOTAL, "projection" => self.projection_name())
                .increment(retries as u64);
            report.add(&self.process(claimed).await?);
        }
        Ok(report)
    }

    /// Claims and processes entries of held partitions left pending with *other* consumers
    /// for over a second. The takeover claim covers what the previous owner had when the lease
    /// moved; this covers the rest: an entry an old owner read just after that claim (its
    /// apply was fenced, so it never acknowledged it), or one pending with a consumer whose
    /// partition came back to us. Returns how many entries were claimed.
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails.
    pub async fn claim_stranded(&self) -> Result<usize, StreamError> {
        let mut claimed_total = 0;
        for p in self.held() {
            let stream = self.stream(p);
            let mut claimed = {
                let mut conn = self.redis.commands.get().await?;
                let mut stranded = Vec::new();
                for c in consumer::consumers(&mut conn, &stream, &self.group).await? {
                    if c.pending > 0 && c.name != self.settings.replica {
                        stranded.extend(
                            consumer::pending(
                                &mut conn,
                                &stream,
                                &self.group,
                                &c.name,
                                STRANDED_AFTER,
                                self.settings.batch_size,
                            )
                            .await?,
                        );
                    }
                }
                consumer::claim(
                    &mut conn,
                    &stream,
                    &self.group,
                    &self.settings.replica,
                    &stranded,
                    STRANDED_AFTER,
                )
                .await?
            };
            if !claimed.is_empty() {
                tracing::info!(
                    projection = self.projection_name(),
                    partition = p,
                    entries = claimed.len(),
                    "claimed entries stranded with another consumer"
                );
                claimed_total += claimed.len();
                // Gathered consumer by consumer: back into stream order, so one aggregate's
                // versions are planned oldest first.
                claimed.sort_by_key(|d| entry_order(&d.entry_id));
                self.process(claimed).await?;
            }
        }
        Ok(claimed_total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followers_wait_only_while_their_head_fails() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut r = Retries::default();
        r.failing(a, 3);
        r.failing(a, 2);
        assert!(
            r.is_behind_failing(a, 3),
            "the lowest failing version is the head"
        );
        assert!(!r.is_behind_failing(a, 2));
        assert!(!r.is_behind_failing(b, 9));
        r.wait("s", "1-0", a);
        assert!(r.waits("s", "1-0"));
        r.settled(a, 1);
        assert!(
            r.waits("s", "1-0"),
            "an older version settling frees nothing"
        );
        r.settled(a, 2);
        assert!(!r.waits("s", "1-0"), "the head applied: its followers go");
        r.failing(b, 1);
        r.forget(b);
        assert!(!r.is_behind_failing(b, 2));
    }

    #[test]
    fn entry_ids_order_numerically() {
        let mut ids = vec!["10-0", "9-1", "9-0", "9-10"];
        ids.sort_by_key(|id| entry_order(id));
        assert_eq!(ids, vec!["9-0", "9-1", "9-10", "10-0"]);
    }
}
