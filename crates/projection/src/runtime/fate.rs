//! What becomes of one event of a batch, decided from its plan and the apply's answer. Pure, so
//! every rule is tested here without Redis.

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

/// What to do with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Applied (and acknowledged).
    Applied,
    /// Applied before: acknowledged without change.
    Duplicate,
    /// This replica lost the partition: left for the new owner.
    Fenced,
    /// A gap behind a predecessor that is failing here: waits, without using up an attempt.
    Waiting,
    /// Failed; stays pending and is retried after its backoff.
    Retry(Failure),
    /// Failed for the last time (or for good): moves to the dead letters, parking its aggregate.
    DeadLetter(Failure),
}

impl Failure {
    /// Why a planned event was not sent to Redis at all (`None`: it was sent).
    pub(crate) fn of_plan(planned: &PlanOutcome) -> Option<Self> {
        match planned {
            PlanOutcome::Apply(_) | PlanOutcome::Duplicate => None,
            PlanOutcome::Gap { expected } => Some(Self::Gap {
                expected: *expected,
            }),
            PlanOutcome::Failed(e) => Some(Self::Refused(e.clone())),
        }
    }
}

/// What the runtime knows about one event when deciding its fate.
#[derive(Debug, Clone)]
pub(crate) struct Facts<'a> {
    /// The apply script's answer, or why the event was not sent.
    pub(crate) answer: Result<&'a ApplyOutcome, Failure>,
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
        Ok(ApplyOutcome::Gap { current }) => Failure::Gap {
            expected: current + 1,
        },
        Ok(ApplyOutcome::Rejected(reason)) => Failure::Rejected(reason.clone()),
        Err(failure) => failure,
    };
    if matches!(failure, Failure::Gap { .. }) && facts.behind_failing {
        return Fate::Waiting;
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

    fn facts(answer: Result<&ApplyOutcome, Failure>) -> Facts<'_> {
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
            decide(facts(Ok(&ApplyOutcome::Gap { current: 4 }))),
            Fate::Retry(Failure::Gap { expected: 5 })
        );
        assert_eq!(
            decide(facts(Ok(&ApplyOutcome::Rejected("WRONGTYPE".into())))),
            Fate::Retry(Failure::Rejected("WRONGTYPE".into()))
        );
    }

    #[test]
    fn only_gaps_and_refusals_are_held_back_from_redis() {
        assert_eq!(Failure::of_plan(&PlanOutcome::Apply(vec![])), None);
        assert_eq!(Failure::of_plan(&PlanOutcome::Duplicate), None);
        assert_eq!(
            Failure::of_plan(&PlanOutcome::Gap { expected: 2 }),
            Some(Failure::Gap { expected: 2 })
        );
        let refused = ProjectionError::MissingState("view".into());
        assert_eq!(
            Failure::of_plan(&PlanOutcome::Failed(refused.clone())),
            Some(Failure::Refused(refused))
        );
    }

    #[test]
    fn a_gap_behind_a_failing_predecessor_waits_without_an_attempt() {
        let gap = || Err(Failure::Gap { expected: 2 });
        let mut f = facts(gap());
        f.behind_failing = true;
        f.attempts = 99;
        assert_eq!(decide(f), Fate::Waiting);
        let mut f = facts(gap());
        f.attempts = 99;
        assert_eq!(decide(f), Fate::DeadLetter(Failure::Gap { expected: 2 }));
    }

    #[test]
    fn the_last_attempt_and_unknown_types_go_to_the_dead_letters() {
        let malformed = || {
            Err(Failure::Refused(ProjectionError::MalformedPayload(
                "x".into(),
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
        let unknown = facts(Err(Failure::Refused(ProjectionError::UnknownEventType(
            "t.x".into(),
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
