//! The loop of a replica: obey the desired state, keep leases, watch the canary, start (or
//! resume) a rebuild when the read model needs one (it runs beside, on a task of its own, while
//! this loop keeps applying), retry, consume; back off while Redis is down; on shutdown stop
//! the rebuild at a page (another replica resumes it), finish the batch in hand, release the
//! leases and say so.

use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox::control::DesiredState;
use resilience::{Backoff, Outage};
use streams::StreamError;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::canary::CANARY_PERIOD;
use super::{Projector, RebuildOutcome, ReplayError, Status};

impl Projector {
    /// Consumes until `shutdown`, obeying `desired` (running/paused). Redis outages are
    /// retried with backoff (first failure and recovery logged); a lost group or read model is
    /// recreated. On shutdown the batch being applied is finished, the leases are released so
    /// a peer takes over at once (entries read ahead but not applied stay pending, and the
    /// peer's takeover claims them), and a final heartbeat says `stopped`.
    pub async fn run(
        self: Arc<Self>,
        mut desired: watch::Receiver<DesiredState>,
        shutdown: CancellationToken,
    ) {
        let name = self.projection_name();
        let mut outage = Outage::new("redis", "projector");
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let tick_every = self.settings.lease_ttl / 3;
        let mut lease_due = Instant::now();
        let mut retry_due = Instant::now();
        let mut slow_due = Instant::now();
        let mut canary_due = Instant::now();
        let mut heartbeat_due = Instant::now();
        let mut rebuilding: Option<JoinHandle<()>> = None;
        let mut groups_ready = false;
        let mut nogroup_logged = false;
        let mut status = Status::Running;
        tracing::info!(projection = name, replica = %self.settings.replica, partitions = self.settings.partitions, "projector started");
        while !shutdown.is_cancelled() {
            let paused = *desired.borrow_and_update() == DesiredState::Paused;
            let step: Result<Status, ReplayError> = async {
                if !groups_ready {
                    self.ensure_groups().await?;
                    groups_ready = true;
                }
                if Instant::now() >= lease_due {
                    lease_due = Instant::now() + tick_every;
                    // Leases are kept while paused: nobody else applies either.
                    if paused {
                        let mut conn =
                            self.redis.commands.get().await.map_err(StreamError::from)?;
                        let held = self.leases.tick(&mut conn).await?;
                        self.lock().held = held.partitions;
                    } else {
                        self.tick_leases().await?;
                    }
                }
                if paused {
                    tokio::select! {
                        _ = desired.changed() => {}
                        () = tokio::time::sleep(self.settings.block) => {}
                        () = shutdown.cancelled() => {}
                    }
                    return Ok(Status::Paused);
                }
                let heal_due = std::mem::take(&mut self.lock().heal_due);
                if heal_due || Instant::now() >= slow_due {
                    slow_due = Instant::now() + Duration::from_secs(2);
                    if rebuilding.as_ref().is_none_or(JoinHandle::is_finished)
                        && let Some(reason) = self.rebuild_needed().await?
                    {
                        rebuilding = Some(self.spawn_rebuild(reason, shutdown.clone()));
                    }
                    self.observe_lag().await?;
                    self.remove_dead_consumers().await?;
                    self.delete_retired().await?;
                }
                if Instant::now() >= canary_due {
                    canary_due = Instant::now() + CANARY_PERIOD;
                    self.check_canary().await?;
                }
                if Instant::now() >= retry_due {
                    retry_due = Instant::now() + self.settings.retry_base;
                    // Stranded entries first: a follower's retries of a gap must not run out
                    // while its predecessor sits with another consumer.
                    self.claim_stranded().await?;
                    self.retry_due().await?;
                }
                // Reads are never cancelled mid-way (a batch in hand is always finished); the
                // bounded block keeps shutdown and control changes prompt.
                let block = self
                    .settings
                    .block
                    .min(self.settings.retry_base.max(Duration::from_millis(50)) * 5);
                self.consume_once(Some(block)).await?;
                // Nothing is served while there is no active generation (a first start, or
                // Redis lost the read model): live events go to the one being built.
                Ok(if self.generation_state().active.is_none() {
                    Status::Rebuilding
                } else {
                    Status::Running
                })
            }
            .await;
            match step {
                Ok(s) => {
                    status = s;
                    outage.succeeded();
                    backoff.reset();
                    nogroup_logged = false;
                }
                Err(ReplayError::Streams(StreamError::NoGroup)) => {
                    if !nogroup_logged {
                        tracing::warn!(
                            projection = name,
                            "consumer group missing (Redis lost its data); recreating"
                        );
                        nogroup_logged = true;
                    }
                    groups_ready = false;
                    // Forget the held set so every partition is taken over afresh, and what
                    // was read ahead from the lost group (it is redelivered or replayed).
                    let mut state = self.lock();
                    state.held.clear();
                    state.prefetched.clear();
                }
                Err(e) => {
                    status = Status::Error;
                    outage.failed(&e);
                    groups_ready = false;
                    self.lock().last_error = Some(resilience::error_chain(&e));
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_delay_jittered()) => {}
                        () = shutdown.cancelled() => {}
                    }
                }
            }
            if Instant::now() >= heartbeat_due {
                heartbeat_due = Instant::now() + Duration::from_secs(1);
                self.heartbeat(status).await;
            }
            self.rounds.send_modify(|r| {
                r.status = status;
                r.count += 1;
            });
        }
        if let Some(task) = rebuilding {
            // It stops at its next page; the operation stays running for whoever resumes it.
            let _ = task.await;
        }
        if let Ok(mut conn) = self.redis.commands.get().await {
            match self.leases.release_all(&mut conn).await {
                Ok(()) => tracing::info!(projection = name, "partition leases released"),
                Err(e) => {
                    tracing::warn!(projection = name, error = %resilience::error_chain(&e), "cannot release leases; they expire by themselves")
                }
            }
        }
        self.lock().held.clear();
        self.heartbeat(Status::Stopped).await;
        tracing::info!(projection = name, "projector stopped");
    }

    /// Runs the rebuild `reason` calls for on a task of its own, until it ends or `shutdown`
    /// (then the operation stays running and is resumed by whichever replica gets to it).
    fn spawn_rebuild(
        self: &Arc<Self>,
        reason: String,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let name = this.projection_name();
            tokio::select! {
                outcome = this.rebuild(&reason) => match outcome {
                    Ok(RebuildOutcome::Switched { .. } | RebuildOutcome::Busy) => {}
                    Err(e) => {
                        tracing::warn!(projection = name, error = %resilience::error_chain(&e),
                            "rebuild interrupted; it resumes from where it stopped")
                    }
                },
                () = shutdown.cancelled() => {
                    tracing::info!(projection = name, "rebuild stopped for shutdown; another replica resumes it");
                }
            }
        })
    }
}
