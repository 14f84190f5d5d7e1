//! Pure planning: from events and the current read-model state to the operations that apply
//! them. Tested without Redis.

use std::collections::HashMap;

use events::{EventEnvelope, ModuleSpec};
use streams::{Op, ReadModelKeys};
use uuid::Uuid;

/// Why a projection could not compute an event's change.
///
/// # Handling
/// The event is not applied and not acknowledged: it is retried, and it does not become valid
/// by itself, so it ends up dead-lettered.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProjectionError {
    /// The event type is not one this projection knows.
    #[error("unknown event type {0}")]
    UnknownEventType(String),
    /// The payload does not have the shape of its event type.
    #[error("malformed payload: {0}")]
    MalformedPayload(String),
    /// The read model lacks state the event needs (e.g. an update of a task never created).
    #[error("missing read-model state: {0}")]
    MissingState(String),
}

impl ProjectionError {
    /// A bounded label for metrics and dead letters.
    #[must_use]
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::UnknownEventType(_) => "unknown_event_type",
            Self::MalformedPayload(_) => "malformed_payload",
            Self::MissingState(_) => "missing_state",
        }
    }
}

/// Current values of the string keys a projection asked to read (`None`: key absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewState {
    values: HashMap<String, Option<String>>,
}

impl ViewState {
    /// State from `(key, value)` pairs.
    #[must_use]
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, Option<String>)>) -> Self {
        Self {
            values: pairs.into_iter().collect(),
        }
    }

    /// The value of `key`, if it was read and exists.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).and_then(Option::as_deref)
    }

    /// Folds `ops` into the state, so the next event of the same aggregate in a batch sees
    /// what this one wrote. Only string keys (`SET`/`DEL`) are tracked: projections read only
    /// string keys.
    fn absorb(&mut self, ops: &[Op]) {
        for op in ops {
            match op {
                Op::Set { key, value } => {
                    self.values.insert(key.clone(), Some(value.clone()));
                }
                Op::Del { key } => {
                    self.values.insert(key.clone(), None);
                }
                _ => {}
            }
        }
    }
}

/// A read model, as pure functions. Implementations never do IO: [`Projection::reads`] names
/// the string keys the change depends on, and [`Projection::apply`] computes the change from
/// their values. One generic runtime applies the result atomically with the version guard.
///
/// Rule: `reads` may only name keys owned by the event's aggregate (its view). State shared
/// between aggregates must be changed by commutative operations (`HINCRBY`, set membership),
/// never read-modify-write, because the version guard protects one aggregate at a time.
pub trait Projection: Send + Sync + 'static {
    /// The module whose stream this projection consumes.
    fn module(&self) -> &'static ModuleSpec;

    /// The string keys whose current values `apply` needs for `event`.
    fn reads(&self, event: &EventEnvelope, keys: &ReadModelKeys) -> Vec<String>;

    /// The read-model operations that apply `event` to `state`.
    ///
    /// # Errors
    /// [`ProjectionError`] when the event cannot be applied.
    fn apply(
        &self,
        event: &EventEnvelope,
        state: &ViewState,
        keys: &ReadModelKeys,
    ) -> Result<Vec<Op>, ProjectionError>;
}

/// What to do with one event of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanOutcome {
    /// Apply these operations (guarded by the version check in Redis).
    Apply(Vec<Op>),
    /// Already applied: acknowledge without changing anything.
    Duplicate,
    /// Ahead of the next expected version, with no earlier event of the batch to explain it:
    /// the versions `expected..version` are missing here (not delivered yet, or lost; the
    /// runtime repairs them from `event_store`).
    Gap {
        /// The version expected next.
        expected: i64,
    },
    /// Behind an earlier event of its aggregate in this batch that did not apply: waits for it.
    Blocked,
    /// The read model contradicts its own version record for this aggregate (a view missing
    /// although versions were applied, or present although none was): the read model, not
    /// the event, is wrong, and only a rebuild mends it.
    Inconsistent(String),
    /// The projection refused it.
    Failed(ProjectionError),
}

/// Plans `events` (in delivery order) against `state` and the applied `versions` read at the
/// same instant. Events of one aggregate are chained: the second sees the first's change, so a
/// whole batch can be applied in one round trip.
///
/// An event that fails leaves its aggregate's later events of the batch
/// [`PlanOutcome::Blocked`], so nothing is applied out of order. A projection's
/// [`ProjectionError::MissingState`] is [`PlanOutcome::Inconsistent`] when the version record
/// says the state should be there (a version was applied, or the event is the first and yet
/// state exists); otherwise the event itself is wrong (say, the first event of an aggregate is
/// not a creation) and it is [`PlanOutcome::Failed`].
pub fn plan(
    projection: &dyn Projection,
    keys: &ReadModelKeys,
    events: &[&EventEnvelope],
    versions: &HashMap<Uuid, i64>,
    state: &mut ViewState,
) -> Vec<PlanOutcome> {
    let mut next: HashMap<Uuid, i64> = HashMap::new();
    let mut failed: std::collections::HashSet<Uuid> = std::collections::HashSet::new();
    events
        .iter()
        .map(|event| {
            let expected = *next
                .entry(event.aggregate_id)
                .or_insert_with(|| versions.get(&event.aggregate_id).copied().unwrap_or(0) + 1);
            if event.aggregate_version < expected {
                return PlanOutcome::Duplicate;
            }
            if failed.contains(&event.aggregate_id) {
                return PlanOutcome::Blocked;
            }
            if event.aggregate_version > expected {
                return PlanOutcome::Gap { expected };
            }
            match projection.apply(event, state, keys) {
                Ok(ops) => {
                    state.absorb(&ops);
                    next.insert(event.aggregate_id, expected + 1);
                    PlanOutcome::Apply(ops)
                }
                Err(e) => {
                    failed.insert(event.aggregate_id);
                    match e {
                        ProjectionError::MissingState(reason)
                            if expected > 1
                                || projection
                                    .reads(event, keys)
                                    .iter()
                                    .any(|k| state.get(k).is_some()) =>
                        {
                            PlanOutcome::Inconsistent(reason)
                        }
                        e => PlanOutcome::Failed(e),
                    }
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::EventMetadata;
    use streams::KeySpace;

    const TASK: ModuleSpec = ModuleSpec {
        name: "task",
        projection: "task_projection",
        consumer_group: "task_projection_group",
        aggregate_types: &["Task"],
        event_types: &["task.x"],
    };

    /// A counter projection: `count:<id>` holds how many events the aggregate had.
    struct Counter;

    impl Projection for Counter {
        fn module(&self) -> &'static ModuleSpec {
            &TASK
        }
        fn reads(&self, e: &EventEnvelope, keys: &ReadModelKeys) -> Vec<String> {
            vec![keys.key(&format!("count:{}", e.aggregate_id))]
        }
        fn apply(
            &self,
            e: &EventEnvelope,
            s: &ViewState,
            keys: &ReadModelKeys,
        ) -> Result<Vec<Op>, ProjectionError> {
            if e.event_type == "task.bad" {
                return Err(ProjectionError::MalformedPayload("bad".into()));
            }
            let key = keys.key(&format!("count:{}", e.aggregate_id));
            let n: i64 = s.get(&key).and_then(|v| v.parse().ok()).unwrap_or(0);
            Ok(vec![Op::Set {
                key,
                value: (n + 1).to_string(),
            }])
        }
    }

    fn event(id: Uuid, version: i64, event_type: &str) -> EventEnvelope {
        EventEnvelope {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version: 1,
            aggregate_type: "Task".into(),
            aggregate_id: id,
            aggregate_version: version,
            occurred_at: time::OffsetDateTime::UNIX_EPOCH,
            payload: serde_json::json!({}),
            metadata: EventMetadata {
                user_id: None,
                correlation_id: None,
                causation_id: None,
                source: "t".into(),
            },
        }
    }

    fn set_value(o: &PlanOutcome) -> Option<&str> {
        match o {
            PlanOutcome::Apply(ops) => match ops.as_slice() {
                [Op::Set { value, .. }] => Some(value),
                _ => None,
            },
            _ => None,
        }
    }

    #[test]
    fn events_of_one_aggregate_chain_within_a_batch() {
        let keys = KeySpace::new("").read_model("task", 1);
        let a = Uuid::now_v7();
        let evs = [
            event(a, 1, "task.x"),
            event(a, 2, "task.x"),
            event(a, 3, "task.x"),
        ];
        let refs: Vec<_> = evs.iter().collect();
        let out = plan(
            &Counter,
            &keys,
            &refs,
            &HashMap::new(),
            &mut ViewState::default(),
        );
        let values: Vec<_> = out.iter().map(set_value).collect();
        assert_eq!(values, vec![Some("1"), Some("2"), Some("3")]);
    }

    #[test]
    fn duplicates_and_gaps_are_recognised_from_applied_versions() {
        let keys = KeySpace::new("").read_model("task", 1);
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        let versions = HashMap::from([(a, 2)]);
        let evs = [
            event(a, 1, "task.x"),
            event(a, 2, "task.x"),
            event(a, 4, "task.x"),
            event(b, 1, "task.x"),
        ];
        let refs: Vec<_> = evs.iter().collect();
        let mut state =
            ViewState::from_pairs([(keys.key(&format!("count:{a}")), Some("2".into()))]);
        let out = plan(&Counter, &keys, &refs, &versions, &mut state);
        assert_eq!(out[0], PlanOutcome::Duplicate);
        assert_eq!(out[1], PlanOutcome::Duplicate);
        assert_eq!(out[2], PlanOutcome::Gap { expected: 3 });
        assert_eq!(set_value(&out[3]), Some("1"));
    }

    #[test]
    fn a_failed_event_holds_back_its_aggregate_but_not_others() {
        let keys = KeySpace::new("").read_model("task", 1);
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        let evs = [
            event(a, 1, "task.bad"),
            event(b, 1, "task.x"),
            event(a, 2, "task.x"),
        ];
        let refs: Vec<_> = evs.iter().collect();
        let out = plan(
            &Counter,
            &keys,
            &refs,
            &HashMap::new(),
            &mut ViewState::default(),
        );
        assert!(matches!(
            out[0],
            PlanOutcome::Failed(ProjectionError::MalformedPayload(_))
        ));
        assert_eq!(set_value(&out[1]), Some("1"));
        assert_eq!(out[2], PlanOutcome::Blocked);
    }

    /// `task.missing` needs the counter to exist already.
    struct NeedsState;

    impl Projection for NeedsState {
        fn module(&self) -> &'static ModuleSpec {
            &TASK
        }
        fn reads(&self, e: &EventEnvelope, keys: &ReadModelKeys) -> Vec<String> {
            Counter.reads(e, keys)
        }
        fn apply(
            &self,
            e: &EventEnvelope,
            s: &ViewState,
            keys: &ReadModelKeys,
        ) -> Result<Vec<Op>, ProjectionError> {
            let key = &Counter.reads(e, keys)[0];
            match (e.event_type.as_str(), s.get(key)) {
                ("task.create", None) | ("task.x", Some(_)) => Counter.apply(e, s, keys),
                _ => Err(ProjectionError::MissingState("no counter".into())),
            }
        }
    }

    #[test]
    fn missing_state_the_version_record_promises_is_an_inconsistency_not_poison() {
        let keys = KeySpace::new("").read_model("task", 1);
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let key = |id: Uuid| keys.key(&format!("count:{id}"));
        // a: version 2 applied but its counter is gone; b: nothing applied but a counter is
        // there; c: its first event is not a creation (the event is wrong, not the model).
        let versions = HashMap::from([(a, 2)]);
        let mut state = ViewState::from_pairs([(key(b), Some("7".into()))]);
        let evs = [
            event(a, 3, "task.x"),
            event(b, 1, "task.create"),
            event(c, 1, "task.x"),
        ];
        let refs: Vec<_> = evs.iter().collect();
        let out = plan(&NeedsState, &keys, &refs, &versions, &mut state);
        assert!(
            matches!(out[0], PlanOutcome::Inconsistent(_)),
            "{:?}",
            out[0]
        );
        assert!(
            matches!(out[1], PlanOutcome::Inconsistent(_)),
            "{:?}",
            out[1]
        );
        assert!(
            matches!(
                out[2],
                PlanOutcome::Failed(ProjectionError::MissingState(_))
            ),
            "{:?}",
            out[2]
        );
    }
}
