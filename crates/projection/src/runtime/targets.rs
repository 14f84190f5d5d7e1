//! Which generations a batch writes, and what planning needs of them.
//!
//! Live applies (and repairs) write the active generation and, while a rebuild runs, the one
//! being built: all or nothing, so the new generation misses nothing the served one has. A
//! rebuild's replay writes only the generation it builds. Each generation is planned against
//! its own state and versions (they may differ: the new one catches up), and an event is sent
//! only when every generation can take it, or has it.

use std::collections::{BTreeSet, HashMap};

use events::EventEnvelope;
use streams::read_model::{self, LoadRequest};
use streams::{
    GenerationGuard, GenerationState, Generations, Op, ReadModelKeys, RedisPools, StreamError,
    Target,
};
use uuid::Uuid;

use super::Projector;
use super::fate::Unsent;
use crate::plan::{PlanOutcome, Projection, ViewState, plan};

/// Where a batch comes from, which decides what it writes and how failures are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// Stream entries: acknowledged when applied; with `prefetch`, the apply's round trip
    /// reads the next batch.
    Stream {
        /// Read the next batch in the apply's round trip.
        prefetch: bool,
    },
    /// History replayed into the generation being built (a rebuild).
    Rebuild(i64),
    /// History replayed into the written generations: versions a read model missed (gap
    /// repair), or what Redis lost when it went back in time.
    Repair,
}

/// One generation a batch writes.
#[derive(Debug, Clone)]
pub(crate) struct TargetGen {
    /// Its keys.
    pub(crate) keys: ReadModelKeys,
    /// Whether its marker must exist (the served generation must be whole).
    pub(crate) marker: bool,
}

/// The generations a batch writes, and the state they were chosen from.
#[derive(Debug, Clone)]
pub(crate) struct Targets {
    pub(crate) list: Vec<TargetGen>,
    pub(crate) guard: GenerationGuard,
}

impl Targets {
    /// What live applies write in `state` of `generations`: the active generation (whole,
    /// when `marker`) and the one being built. `None` when there is neither.
    pub(crate) fn live(
        generations: &Generations,
        state: GenerationState,
        marker: bool,
    ) -> Option<Self> {
        let list: Vec<TargetGen> = state
            .active
            .map(|g| TargetGen {
                keys: generations.keys_of(g),
                marker,
            })
            .into_iter()
            .chain(state.building.map(|b| TargetGen {
                keys: generations.keys_of(b),
                marker: false,
            }))
            .collect();
        (!list.is_empty()).then(|| Self {
            list,
            guard: generations.guard(),
        })
    }
}

impl Projector {
    /// The generations `source` writes now; `None` when there is nothing to write to (no
    /// usable generation and no build under way; or the build a replay writes has gone).
    pub(super) fn targets(&self, source: Source) -> Option<Targets> {
        let state = self.generation_state();
        match source {
            Source::Rebuild(b) => (state.building == Some(b)).then(|| Targets {
                list: vec![TargetGen {
                    keys: self.generations.keys_of(b),
                    marker: false,
                }],
                guard: self.generations.guard(),
            }),
            // With a database the served generation must be whole; without one (tests of the
            // stream side) nothing ever builds it, so no marker is asked for.
            Source::Stream { .. } | Source::Repair => {
                Targets::live(&self.generations, state, self.pg.is_some())
            }
        }
    }
}

/// What planning a batch needs, read in one round trip.
#[derive(Default)]
pub(crate) struct Loaded {
    /// Per target generation: applied versions and the keys the projection reads.
    pub(crate) models: Vec<(HashMap<Uuid, i64>, ViewState)>,
    /// Aggregates parked in the dead letters.
    pub(crate) parked: BTreeSet<Uuid>,
}

/// Reads what planning `events` needs in each of `models` ([`streams::read_model::load`]):
/// the keys `projection` reads there, the aggregates' applied versions, which aggregates are
/// parked (when `parked` names the parked hash), and whether `require_marker`'s marker exists.
/// `None` when it was required and is missing.
pub(crate) async fn load(
    pools: &RedisPools,
    projection: &dyn Projection,
    models: &[&ReadModelKeys],
    events: &[&EventEnvelope],
    parked: Option<&str>,
    require_marker: Option<&ReadModelKeys>,
) -> Result<Option<Loaded>, StreamError> {
    let reads: Vec<Vec<String>> = models
        .iter()
        .map(|m| {
            events
                .iter()
                .flat_map(|e| projection.reads(e, m))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        })
        .collect();
    let aggregates: Vec<Uuid> = events
        .iter()
        .map(|e| e.aggregate_id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let asked: Vec<(&ReadModelKeys, &[String])> = models
        .iter()
        .zip(&reads)
        .map(|(m, r)| (*m, r.as_slice()))
        .collect();
    let mut conn = pools.commands.get().await?;
    let request = LoadRequest {
        models: &asked,
        aggregates: &aggregates,
        parked,
        require_marker,
    };
    Ok(read_model::load(&mut conn, request).await?.map(|l| Loaded {
        models: l
            .models
            .into_iter()
            .map(|m| (m.versions, ViewState::from_pairs(m.values)))
            .collect(),
        parked: l.parked,
    }))
}

/// `inner`, except that the events an operator discarded apply as nothing (their version is
/// recorded, nothing else): a replay meeting one again must not dead-letter it anew.
pub(crate) struct Skipping {
    pub(crate) inner: std::sync::Arc<dyn Projection>,
    pub(crate) skip: std::sync::Arc<std::collections::HashSet<Uuid>>,
}

impl Projection for Skipping {
    fn module(&self) -> &'static events::ModuleSpec {
        self.inner.module()
    }

    fn reads(&self, event: &EventEnvelope, keys: &ReadModelKeys) -> Vec<String> {
        if self.skip.contains(&event.event_id) {
            return vec![];
        }
        self.inner.reads(event, keys)
    }

    fn apply(
        &self,
        event: &EventEnvelope,
        state: &ViewState,
        keys: &ReadModelKeys,
    ) -> Result<Vec<Op>, crate::ProjectionError> {
        if self.skip.contains(&event.event_id) {
            return Ok(vec![]);
        }
        self.inner.apply(event, state, keys)
    }
}

/// One event's plan over every target generation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    /// Send it: per target, its writes (none where the target has it already).
    Send(Vec<Vec<Op>>),
    /// Do not send it.
    Hold(super::fate::Unsent),
}

/// A gap to repair: `aggregate` misses versions `from..=to` in some target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Missing {
    pub(crate) aggregate: Uuid,
    pub(crate) from: i64,
    pub(crate) to: i64,
}

/// Plans `events` against each target's state and combines the plans, event by event: an
/// event is sent when every target can apply it or has it; otherwise it is held, for the
/// reason that matters most (the read model contradicting itself, then a refusal, then an
/// earlier event of the batch, then a gap). Returns the steps and the gaps seen.
pub(crate) fn plan_targets(
    projection: &dyn Projection,
    targets: &Targets,
    events: &[&EventEnvelope],
    loaded: Loaded,
) -> (Vec<Step>, Vec<Missing>) {
    let mut per_target: Vec<std::vec::IntoIter<PlanOutcome>> = targets
        .list
        .iter()
        .zip(loaded.models)
        .map(|(t, (versions, mut view))| {
            plan(projection, &t.keys, events, &versions, &mut view).into_iter()
        })
        .collect();
    let mut missing = Vec::new();
    let steps = events
        .iter()
        .map(|e| {
            // Every target planned every event, so each iterator yields one per event.
            let outcomes: Vec<PlanOutcome> = per_target
                .iter_mut()
                .map(|p| p.next().unwrap_or(PlanOutcome::Duplicate))
                .collect();
            let rank = |o: &PlanOutcome| match o {
                PlanOutcome::Inconsistent(_) => 0,
                PlanOutcome::Failed(_) => 1,
                PlanOutcome::Blocked => 2,
                PlanOutcome::Gap { .. } => 3,
                PlanOutcome::Apply(_) | PlanOutcome::Duplicate => 4,
            };
            for o in &outcomes {
                if let PlanOutcome::Gap { expected } = o {
                    missing.push(Missing {
                        aggregate: e.aggregate_id,
                        from: *expected,
                        to: e.aggregate_version - 1,
                    });
                }
            }
            match outcomes
                .iter()
                .min_by_key(|o| rank(o))
                .and_then(Unsent::of_plan)
            {
                Some(unsent) => Step::Hold(unsent),
                None => Step::Send(
                    outcomes
                        .into_iter()
                        .map(|o| match o {
                            PlanOutcome::Apply(ops) => ops,
                            _ => vec![],
                        })
                        .collect(),
                ),
            }
        })
        .collect();
    (steps, missing)
}

/// The apply targets of a step sent to `targets`.
pub(crate) fn apply_targets(targets: &Targets, ops: Vec<Vec<Op>>) -> Vec<Target> {
    targets
        .list
        .iter()
        .zip(ops)
        .map(|(t, ops)| Target {
            versions_key: t.keys.versions(),
            marker: t.marker.then(|| t.keys.marker()),
            ops,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::{EventContext, ModuleSpec};
    use streams::{GenerationState, KeySpace};

    const SPEC: ModuleSpec = ModuleSpec {
        name: "t",
        projection: "t_projection",
        consumer_group: "t_projection_group",
        aggregate_types: &["T"],
        event_types: &["t.x"],
    };

    /// Writes the version it applied.
    struct Versions;

    impl Projection for Versions {
        fn module(&self) -> &'static ModuleSpec {
            &SPEC
        }
        fn reads(&self, _: &EventEnvelope, _: &ReadModelKeys) -> Vec<String> {
            vec![]
        }
        fn apply(
            &self,
            e: &EventEnvelope,
            _: &ViewState,
            keys: &ReadModelKeys,
        ) -> Result<Vec<Op>, crate::ProjectionError> {
            Ok(vec![Op::Set {
                key: keys.key(&format!("v:{}", e.aggregate_id)),
                value: e.aggregate_version.to_string(),
            }])
        }
    }

    fn targets(gens: &[i64]) -> Targets {
        let space = KeySpace::new("");
        Targets {
            list: gens
                .iter()
                .map(|g| TargetGen {
                    keys: space.read_model("t", *g),
                    marker: false,
                })
                .collect(),
            guard: GenerationGuard {
                key: "g".into(),
                expected: GenerationState::default(),
            },
        }
    }

    #[test]
    fn an_event_goes_out_only_when_every_generation_can_take_it() {
        let a = Uuid::now_v7();
        let ctx = EventContext::new(None, None, "test");
        let evs = [
            ctx.envelope("T", a, 3, "t.x", serde_json::json!({})),
            ctx.envelope("T", a, 4, "t.x", serde_json::json!({})),
        ];
        let refs: Vec<&EventEnvelope> = evs.iter().collect();
        // The served generation is at 2; the one being built is at 3 already: version 3 is a
        // duplicate there, and 4 applies in both.
        let loaded = Loaded {
            models: vec![
                (HashMap::from([(a, 2)]), ViewState::default()),
                (HashMap::from([(a, 3)]), ViewState::default()),
            ],
            parked: BTreeSet::new(),
        };
        let t = targets(&[1, 2]);
        let (steps, missing) = plan_targets(&Versions, &t, &refs, loaded);
        assert!(missing.is_empty());
        let Step::Send(first) = &steps[0] else {
            panic!("{:?}", steps[0])
        };
        assert_eq!(
            (first[0].len(), first[1].len()),
            (1, 0),
            "a duplicate where built"
        );
        let Step::Send(second) = &steps[1] else {
            panic!("{:?}", steps[1])
        };
        assert_eq!((second[0].len(), second[1].len()), (1, 1));
        let sent = apply_targets(&t, second.clone());
        assert_eq!(sent[1].versions_key, "rm:t:g2:versions");
        assert_eq!(sent[1].ops[0].key(), format!("rm:t:g2:v:{a}"));

        // The one being built lags behind: both events wait, and the gap is reported.
        let loaded = Loaded {
            models: vec![
                (HashMap::from([(a, 2)]), ViewState::default()),
                (HashMap::from([(a, 1)]), ViewState::default()),
            ],
            parked: BTreeSet::new(),
        };
        let (steps, missing) = plan_targets(&Versions, &t, &refs, loaded);
        assert!(
            steps.iter().all(|s| matches!(s, Step::Hold(_))),
            "{steps:?}"
        );
        assert_eq!(
            missing[0],
            Missing {
                aggregate: a,
                from: 2,
                to: 2
            }
        );
    }
}
