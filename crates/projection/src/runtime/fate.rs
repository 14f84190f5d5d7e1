//! What becomes of one event of a batch, decided from its plan and the apply's answer. Pure, so
//! every rule is tested here without Redis.
//!
//! The rules that matter most: a gap never goes to the dead letters (entries lost between
//! PostgreSQL and Redis are repaired, not poison); a read model that contradicts itself, or is
//! missing, holds events back without using up their attempts; only what the projection code
//! refuses (or Redis refuses to write) is retried and finally dead-lettered.

use streams::ApplyOutcome;

use crate::plan::{PlanOutcome, ProjectionError};

/// Why an event did not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Its version is ahead of the next one expected: a predecessor has not applied yet.
    Gap {
        /// The version expected next.
        expected: i64,
    },
    /// Redis refused its writes (a key of the wrong type, say).
    Rejected(String),
    /// The projection refused it.
    Refused(ProjectionError),
}

impl Failure {
    /// A bounded label for metrics and dead letters.
    pub(crate) fn error_type(&self) -> &'static str {
        match self {
            Self::Gap { .. } => "version_gap",
            Self::Rejected(_) => "rejected_by_redis",
            Self::Refused(e) => e.error_type(),
        }
    }

    /// What an operator reads, for an event of version `version`.
    pub(crate) fn reason(&self, version: i64) -> String {
        match self {
            Self::Gap { expected } => {
                format!("version {version} arrived but {expected} was expected")
            }
            Self::Rejected(reason) => reason.clone(),
            Self::Refused(e) => e.to_string(),
        }
    }

    /// Whether retrying cannot help: an event type the projection does not know stays unknown.
    pub(crate) fn is_permanent(&self) -> bool {
        matches!(self, Self::Refused(ProjectionError::UnknownEventType(_)))
    }
}

/// Why a planned event was not sent to Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unsent {
    /// It failed (or is a gap left after repair).
    Failure(Failure),
    /// An earlier event of its aggregate in the batch did not apply.
    Blocked,
    /// The read model contradicts its version record for its aggregate.
    Inconsistent(String),
}

impl Unsent {
    /// Why a planned event is not sent (`None`: it is).
    pub(crate) fn of_plan(planned: &PlanOutcome) -> Option<Self> {
        match planned {
            PlanOutcome::Apply(_) | PlanOutcome::Duplicate => None,
            PlanOutcome::Gap { expected } => Some(Self::Failure(Failure::Gap {
                expected: *expected,
            })),
            PlanOutcome::Blocked => Some(Self::Blocked),
            PlanOutcome::Inconsistent(reason) => Some(Self::Inconsistent(reason.clone())),
            PlanOutcome::Failed(e) => Some(Self::Failure(Failure::Refused(e.clone()))),
        }
    }
}

/// Why an event is held back without using up an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Hold {
    /// The read model it writes is missing (no marker): it waits for the rebuild.
    NotReady,
    /// The read model contradicts itself for this aggregate: it waits for the rebuild this
    /// starts.
    Inconsistent(String),
    /// The projection's generations changed since planning: plan again.
    Moved,
}

/// What to do with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Applied (and acknowledged).
    Applied,
    /// Applied before: acknowledged without change.
    Duplicate,
    /// This replica lost the partition: left for the new owner.
    Fenced,
    /// Behind a predecessor that is failing here: waits, without using up an attempt.
    Waiting,
    /// Held back (stays pending) without using up an attempt.
    Held(Hold),
    /// Failed; stays pending and is retried after its backoff.
    Retry(Failure),
    /// Failed for the last time (or for good): moves to the dead letters, parking its aggregate.
    DeadLetter(Failure),
}

/// What the runtime knows about one event when deciding its fate.
#[derive(Debug, Clone)]
pub(crate) struct Facts<'a> {
    /// The apply script's answer, or why the event was not sent.
    pub(crate) answer: Result<&'a ApplyOutcome, Unsent>,
    /// Whether an earlier version of its aggregate is failing here.
    pub(crate) behind_failing: bool,
    /// Deliveries so far (`u64::MAX` for a replayed event: no second chance).
    pub(crate) attempts: u64,
    /// Deliveries allowed before the dead letters.
    pub(crate) max_attempts: u64,
}

/// Decides one event's fate.
pub(crate) fn decide(facts: Facts<'_>) -> Fate {
    let failure = match facts.answer {
        Ok(ApplyOutcome::Applied) => return Fate::Applied,
        Ok(ApplyOutcome::Duplicate { .. }) => return Fate::Duplicate,
        Ok(ApplyOutcome::Fenced) => return Fate::Fenced,
        Ok(ApplyOutcome::Moved) => return Fate::Held(Hold::Moved),
        Ok(ApplyOutcome::NotReady) => return Fate::Held(Hold::NotReady),
        Ok(ApplyOutcome::Gap { current }) => Failure::Gap {
            expected: current + 1,
        },
        Ok(ApplyOutcome::Rejected(reason)) => Failure::Rejected(reason.clone()),
        Err(Unsent::Blocked) => return Fate::Waiting,
        Err(Unsent::Inconsistent(reason)) => return Fate::Held(Hold::Inconsistent(reason)),
        Err(Unsent::Failure(failure)) => failure,
    };
    if let Failure::Gap { .. } = failure {
        // A gap is never poison: its predecessor is on its way, or lost and repaired.
        return if facts.behind_failing {
            Fate::Waiting
        } else {
            Fate::Retry(failure)
        };
    }
    if failure.is_permanent() || facts.attempts >= facts.max_attempts {
        Fate::DeadLetter(failure)
    } else {
        Fate::Retry(failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(answer: Result<&ApplyOutcome, Unsent>) -> Facts<'_> {
        Facts {
            answer,
            behind_failing: false,
            attempts: 1,
            max_attempts: 3,
        }
    }

    #[test]
    fn the_apply_answer_decides_for_sent_events() {
        assert_eq!(decide(facts(Ok(&ApplyOutcome::Applied))), Fate::Applied);
        assert_eq!(
            decide(facts(Ok(&ApplyOutcome::Duplicate { current: 4 }))),
            Fate::Duplicate
        );
        assert_eq!(decide(facts(Ok(&ApplyOutcome::Fenced))), Fate::Fenced);
        assert_eq!(
            decide(facts(Ok(&ApplyOutcome::Moved))),
            Fate::Held(Hold::Moved)
        );
        assert_eq!(
            decide(facts(Ok(&ApplyOutcome::NotReady))),
            Fate::Held(Hold::NotReady)
        );
        assert_eq!(
            decide(facts(Ok(&ApplyOutcome::Gap { current: 4 }))),
            Fate::Retry(Failure::Gap { expected: 5 })
        );
        assert_eq!(
            decide(facts(Ok(&ApplyOutcome::Rejected("WRONGTYPE".into())))),
            Fate::Retry(Failure::Rejected("WRONGTYPE".into()))
        );
    }

    #[test]
    fn only_what_can_apply_is_sent() {
        assert_eq!(Unsent::of_plan(&PlanOutcome::Apply(vec![])), None);
        assert_eq!(Unsent::of_plan(&PlanOutcome::Duplicate), None);
        assert_eq!(
            Unsent::of_plan(&PlanOutcome::Gap { expected: 2 }),
            Some(Unsent::Failure(Failure::Gap { expected: 2 }))
        );
        assert_eq!(
            Unsent::of_plan(&PlanOutcome::Blocked),
            Some(Unsent::Blocked)
        );
        let refused = ProjectionError::MissingState("view".into());
        assert_eq!(
            Unsent::of_plan(&PlanOutcome::Failed(refused.clone())),
            Some(Unsent::Failure(Failure::Refused(refused)))
        );
    }

    #[test]
    fn a_gap_is_never_dead_lettered_whatever_its_attempts() {
        let gap = || Err(Unsent::Failure(Failure::Gap { expected: 2 }));
        let mut f = facts(gap());
        f.behind_failing = true;
        f.attempts = 99;
        assert_eq!(decide(f), Fate::Waiting);
        let mut f = facts(gap());
        f.attempts = 99;
        assert_eq!(decide(f), Fate::Retry(Failure::Gap { expected: 2 }));
        assert_eq!(decide(facts(Err(Unsent::Blocked))), Fate::Waiting);
    }

    #[test]
    fn an_inconsistent_read_model_holds_events_without_attempts() {
        let mut f = facts(Err(Unsent::Inconsistent("view missing".into())));
        f.attempts = 99;
        assert_eq!(
            decide(f),
            Fate::Held(Hold::Inconsistent("view missing".into()))
        );
    }

    #[test]
    fn the_last_attempt_and_unknown_types_go_to_the_dead_letters() {
        let malformed = || {
            Err(Unsent::Failure(Failure::Refused(
                ProjectionError::MalformedPayload("x".into()),
            )))
        };
        assert!(matches!(
            decide(facts(malformed())),
            Fate::Retry(Failure::Refused(_))
        ));
        let mut last = facts(malformed());
        last.attempts = 3;
        assert!(matches!(
            decide(last),
            Fate::DeadLetter(Failure::Refused(_))
        ));
        let unknown = facts(Err(Unsent::Failure(Failure::Refused(
            ProjectionError::UnknownEventType("t.x".into()),
        ))));
        assert!(
            matches!(decide(unknown), Fate::DeadLetter(ref e) if e.error_type() == "unknown_event_type"),
            "an unknown type is never retried"
        );
    }

    #[test]
    fn reasons_and_labels_name_the_failure() {
        let gap = Failure::Gap { expected: 3 };
        assert_eq!(gap.error_type(), "version_gap");
        assert_eq!(gap.reason(5), "version 5 arrived but 3 was expected");
        assert_eq!(
            Failure::Rejected("no".into()).error_type(),
            "rejected_by_redis"
        );
        let missing = Failure::Refused(ProjectionError::MissingState("view".into()));
        assert_eq!(missing.error_type(), "missing_state");
        assert!(!missing.is_permanent());
    }
}
