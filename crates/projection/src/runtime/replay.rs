//! Replaying `event_store` through the projection: the engine under rebuilds and repairs.
//!
//! History is read page by page inside one snapshot (see `outbox::history`), each page split
//! into lanes by aggregate. Every lane applies its share of each page in order, on a connection
//! of its own, and may run up to [`AHEAD`] pages ahead of the others: no lane waits for the
//! slowest one of a page, so Redis, PostgreSQL and the planning keep each other busy instead of
//! taking turns (with one barrier per page, a fifth of a rebuild's time went to waiting). An
//! aggregate always falls in the same lane, so its events stay in version order.
//!
//! Progress is reported in page order: a position is reported only once every lane has applied
//! every page up to it, so a rebuild resumed from the last report misses nothing.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};

use events::EventEnvelope;
use futures::future::BoxFuture;
use outbox::Transaction;
use outbox::history;
use tokio::sync::mpsc;

use super::batch::{Decoded, Input};
use super::targets::Source;
use super::{BatchReport, Projector, ReplayError, ReplayReport};

/// Events read from `event_store` per page of a replay.
pub(super) const PAGE: i64 = 1000;

/// Lanes a page of history is split into, by aggregate: each keeps its aggregates' order, and
/// the lanes apply side by side over connections of their own.
const LANES: usize = 4;

/// Shares a lane may hold queued beyond the one it applies: how far the fastest lane may run
/// ahead of the slowest. Memory: a share is about a page over `LANES`, so the lanes hold at
/// most about `AHEAD + 1` pages of events between them, plus the page being read.
const AHEAD: usize = 2;

/// One lane's share of a page.
struct Share {
    page: u64,
    inputs: Vec<Input>,
}

/// A page read and handed to the lanes, until every lane has applied its share.
struct Pending {
    page: u64,
    last: i64,
    events: u64,
    shares_left: usize,
    report: BatchReport,
}

impl Projector {
    /// Replays the events of this projection after position `after` in `snapshot` as
    /// `source`, calling `progress` each time a page is applied whole (every earlier page is
    /// too). A rebuild stops at the first event its generation can no longer take (the report
    /// then counts it as `not_ready`); `progress` returning an error stops the replay too.
    ///
    /// # Errors
    /// [`ReplayError`] when PostgreSQL or Redis fails, or `progress` fails.
    pub(super) async fn replay_pages(
        &self,
        snapshot: &Transaction<'_>,
        after: i64,
        source: Source,
        mut progress: impl FnMut(&ReplayReport) -> BoxFuture<'static, Result<(), ReplayError>>,
    ) -> Result<ReplayReport, ReplayError> {
        let types = self.aggregate_types();
        let stop = AtomicBool::new(false);
        let (done_tx, mut done_rx) =
            mpsc::unbounded_channel::<(u64, Result<BatchReport, ReplayError>)>();
        let (pages_tx, mut pages_rx) = mpsc::unbounded_channel::<Pending>();
        let mut senders = Vec::with_capacity(LANES);
        let mut lanes = Vec::with_capacity(LANES);
        for _ in 0..LANES {
            let (tx, mut rx) = mpsc::channel::<Share>(AHEAD);
            senders.push(tx);
            let done = done_tx.clone();
            let stop = &stop;
            lanes.push(async move {
                while let Some(share) = rx.recv().await {
                    // After a failure the rest is drained, not applied: nothing waits on it.
                    let result = if stop.load(Ordering::Relaxed) {
                        Ok(BatchReport::default())
                    } else {
                        match source {
                            Source::Rebuild(b) if !self.lock().bulk_off => {
                                self.bulk_share(share.inputs, b).await
                            }
                            _ => self.process_inputs(share.inputs, source).await,
                        }
                        .map_err(ReplayError::from)
                    };
                    if done.send((share.page, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);

        let feed = async {
            let mut page = history::page(snapshot, &types, after, PAGE).await?;
            let mut seq = 0u64;
            while let Some(last) = page.last().map(|(p, _)| *p) {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let events = page.len() as u64;
                let mut shares: Vec<Vec<Input>> = (0..LANES).map(|_| Vec::new()).collect();
                for (_, e) in std::mem::take(&mut page) {
                    let lane =
                        usize::try_from(e.aggregate_id.as_u128() % LANES as u128).unwrap_or(0);
                    shares[lane].push(input(e));
                }
                let shares: Vec<(usize, Vec<Input>)> = shares
                    .into_iter()
                    .enumerate()
                    .filter(|(_, s)| !s.is_empty())
                    .collect();
                // The collector learns of the page before any lane can finish a share of it.
                let _ = pages_tx.send(Pending {
                    page: seq,
                    last,
                    events,
                    shares_left: shares.len(),
                    report: BatchReport::default(),
                });
                // The next page is read while the lanes apply this one.
                let (sent, next) = tokio::join!(
                    async {
                        for (lane, inputs) in shares {
                            if senders[lane]
                                .send(Share { page: seq, inputs })
                                .await
                                .is_err()
                            {
                                return false;
                            }
                        }
                        true
                    },
                    history::page(snapshot, &types, last, PAGE)
                );
                if !sent {
                    break;
                }
                page = next?;
                seq += 1;
            }
            // No more shares: the lanes finish what they hold, then close the done channel.
            drop(senders);
            drop(pages_tx);
            Ok::<(), ReplayError>(())
        };

        let collect = async {
            let mut report = ReplayReport {
                position: after,
                ..ReplayReport::default()
            };
            let mut pending: VecDeque<Pending> = VecDeque::new();
            // Shares applied whose page is not yet whole, by page.
            let mut finished: BTreeMap<u64, Vec<BatchReport>> = BTreeMap::new();
            let mut failure: Option<ReplayError> = None;
            while let Some((page, result)) = done_rx.recv().await {
                let done = match result {
                    Ok(done) => done,
                    Err(e) => {
                        stop.store(true, Ordering::Relaxed);
                        failure.get_or_insert(e);
                        continue;
                    }
                };
                // Once stopped, nothing more is reported as progress: the pages after the stop
                // were drained, not applied, and a resumed rebuild must not skip them.
                let interrupted = matches!(source, Source::Rebuild(_)) && done.not_ready > 0;
                if stop.load(Ordering::Relaxed) || interrupted {
                    // The generation being built is gone: nothing more can be applied to it.
                    stop.store(true, Ordering::Relaxed);
                    report.batch.add(&done);
                    continue;
                }
                finished.entry(page).or_default().push(done);
                // The feeder records a page before handing out its shares.
                while let Ok(p) = pages_rx.try_recv() {
                    pending.push_back(p);
                }
                for p in &mut pending {
                    for done in finished.remove(&p.page).unwrap_or_default() {
                        p.report.add(&done);
                        p.shares_left -= 1;
                    }
                }
                while pending.front().is_some_and(|p| p.shares_left == 0) {
                    let Some(p) = pending.pop_front() else { break };
                    report.events += p.events;
                    report.batch.add(&p.report);
                    report.position = p.last;
                    if let Err(e) = progress(&report).await {
                        stop.store(true, Ordering::Relaxed);
                        failure = Some(e);
                        break;
                    }
                }
            }
            match failure {
                Some(e) => Err(e),
                None => Ok(report),
            }
        };

        let (fed, collected, _) = tokio::join!(feed, collect, futures::future::join_all(lanes));
        let report = collected?;
        fed?;
        Ok(report)
    }
}

/// A replayed event as a batch's input.
fn input(e: EventEnvelope) -> Input {
    Input {
        delivery: None,
        decoded: Decoded::Event(e),
    }
}
