//! The task read model.
//!
//! Keys (under the projection's generation prefix):
//! - `view:<task id>`: the TaskView JSON; absent once the task is deleted;
//! - `user:<user id>:tasks` and `user:<user id>:tasks:<status>`: the user's live tasks, newest
//!   first, as [`module_kit::paging`] lists;
//! - `user:<user id>:stats`: a hash of counters.
//!
//! Every change is computed as the difference between what the task contributed before and
//! after the event (to lists and stats), so each event's effect is exact and self-inverse:
//! stats are the sum of live tasks' contributions by construction.

use std::collections::BTreeSet;

use events::{DomainEvent as _, EventEnvelope, ModuleSpec};
use projection::{Projection, ProjectionError, ViewState};
use serde::{Deserialize, Serialize};
use streams::{Op, ReadModelKeys};
use uuid::Uuid;

use crate::SPEC;
use crate::domain::{Task, TaskError, TaskEvent, TaskStatus, evolve};

/// The per-user statistics of http-api.md (field names are the wire format), over the user's
/// live (non-deleted) tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[allow(missing_docs)] // counts of live tasks, in total and per status
pub struct TaskStats {
    pub total_tasks: i64,
    pub pending_tasks: i64,
    pub in_progress_tasks: i64,
    pub completed_tasks: i64,
    pub abandoned_tasks: i64,
    /// The sum of their estimates.
    pub total_estimated_minutes: i64,
    /// The sum of the actual minutes of the completed ones.
    pub completed_minutes: i64,
}

impl TaskStats {
    /// Field names, in order: also the hash fields in Redis.
    pub const FIELDS: [&'static str; 7] = [
        "total_tasks",
        "pending_tasks",
        "in_progress_tasks",
        "completed_tasks",
        "abandoned_tasks",
        "total_estimated_minutes",
        "completed_minutes",
    ];

    /// Values in [`TaskStats::FIELDS`] order.
    #[must_use]
    pub fn values(&self) -> [i64; 7] {
        [
            self.total_tasks,
            self.pending_tasks,
            self.in_progress_tasks,
            self.completed_tasks,
            self.abandoned_tasks,
            self.total_estimated_minutes,
            self.completed_minutes,
        ]
    }

    /// Stats from values in [`TaskStats::FIELDS`] order.
    #[must_use]
    pub fn from_values(v: [i64; 7]) -> Self {
        Self {
            total_tasks: v[0],
            pending_tasks: v[1],
            in_progress_tasks: v[2],
            completed_tasks: v[3],
            abandoned_tasks: v[4],
            total_estimated_minutes: v[5],
            completed_minutes: v[6],
        }
    }

    /// What one task adds to its owner's stats (nothing when deleted).
    #[must_use]
    pub fn contribution(task: Option<&Task>) -> Self {
        let Some(t) = task.filter(|t| !t.deleted) else {
            return Self::default();
        };
        let is = |s: TaskStatus| i64::from(t.status == s);
        Self {
            total_tasks: 1,
            pending_tasks: is(TaskStatus::Pending),
            in_progress_tasks: is(TaskStatus::InProgress),
            completed_tasks: is(TaskStatus::Completed),
            abandoned_tasks: is(TaskStatus::Abandoned),
            total_estimated_minutes: i64::from(t.estimated_minutes),
            completed_minutes: if t.status == TaskStatus::Completed {
                i64::from(t.actual_minutes.unwrap_or(0))
            } else {
                0
            },
        }
    }
}

/// Key names of the task read model.
#[derive(Debug, Clone, Copy)]
pub struct TaskKeys<'a>(pub &'a ReadModelKeys);

impl TaskKeys<'_> {
    /// A task's view.
    #[must_use]
    pub fn view(&self, id: Uuid) -> String {
        self.0.key(&format!("view:{id}"))
    }

    /// A user's list of live tasks, optionally only those in `status`.
    #[must_use]
    pub fn list(&self, user: Uuid, status: Option<TaskStatus>) -> String {
        match status {
            None => self.0.key(&format!("user:{user}:tasks")),
            Some(s) => self.0.key(&format!("user:{user}:tasks:{}", s.as_str())),
        }
    }

    /// A user's stats hash.
    #[must_use]
    pub fn stats(&self, user: Uuid) -> String {
        self.0.key(&format!("user:{user}:stats"))
    }
}

/// The list member of a task: creation time then id ([`module_kit::paging::member`]).
#[must_use]
pub fn list_member(task: &Task) -> String {
    module_kit::paging::member(task.created_at, task.id)
}

fn memberships(keys: TaskKeys<'_>, task: Option<&Task>) -> BTreeSet<(String, String)> {
    match task.filter(|t| !t.deleted) {
        None => BTreeSet::new(),
        Some(t) => {
            let m = list_member(t);
            BTreeSet::from([
                (keys.list(t.user_id, None), m.clone()),
                (keys.list(t.user_id, Some(t.status)), m),
            ])
        }
    }
}

/// The task projection.
#[derive(Debug, Clone, Copy, Default)]
pub struct TaskProjection;

impl Projection for TaskProjection {
    fn module(&self) -> &'static ModuleSpec {
        &SPEC
    }

    fn reads(&self, event: &EventEnvelope, keys: &ReadModelKeys) -> Vec<String> {
        vec![TaskKeys(keys).view(event.aggregate_id)]
    }

    fn apply(
        &self,
        event: &EventEnvelope,
        state: &ViewState,
        keys: &ReadModelKeys,
    ) -> Result<Vec<Op>, ProjectionError> {
        let keys = TaskKeys(keys);
        if !SPEC.emits(&event.event_type) {
            return Err(ProjectionError::UnknownEventType(event.event_type.clone()));
        }
        let task_event = TaskEvent::from_payload(&event.event_type, &event.payload)
            .map_err(|e| ProjectionError::MalformedPayload(e.to_string()))?;
        let view_key = keys.view(event.aggregate_id);
        let old: Option<Task> = state
            .get(&view_key)
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| {
                ProjectionError::MissingState(format!("view {view_key} is unreadable: {e}"))
            })?;
        let new = evolve(
            old.clone(),
            &task_event,
            event.aggregate_id,
            event.aggregate_version,
            event.occurred_at,
        )
        .map_err(|e| match e {
            TaskError::MalformedEvent { reason, .. } => ProjectionError::MissingState(reason),
            other => ProjectionError::MissingState(other.to_string()),
        })?;

        let mut ops = Vec::new();
        if new.deleted {
            ops.push(Op::Del { key: view_key });
        } else {
            let json = serde_json::to_string(&new)
                .map_err(|e| ProjectionError::MalformedPayload(e.to_string()))?;
            ops.push(Op::Set {
                key: view_key,
                value: json,
            });
        }
        let before = memberships(keys, old.as_ref());
        let after = memberships(keys, Some(&new));
        for (key, member) in before.difference(&after) {
            ops.push(Op::ZRem {
                key: key.clone(),
                member: member.clone(),
            });
        }
        for (key, member) in after.difference(&before) {
            ops.push(Op::ZAdd {
                key: key.clone(),
                score: 0.0,
                member: member.clone(),
            });
        }
        let was = TaskStats::contribution(old.as_ref()).values();
        let is = TaskStats::contribution(Some(&new)).values();
        for ((field, w), i) in TaskStats::FIELDS.iter().zip(was).zip(is) {
            if i != w {
                ops.push(Op::HIncrBy {
                    key: keys.stats(new.user_id),
                    field: (*field).to_owned(),
                    delta: i - w,
                });
            }
        }
        Ok(ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use events::{Committed, EventContext, commit};
    use module_kit::testing::{EventClock, MemoryModel};
    use streams::KeySpace;
    use time::macros::datetime;

    use crate::domain::{CreateTask, TaskCommand, TaskType, UpdateTask, decide, decide_create};

    struct Harness {
        model: MemoryModel,
        keys: ReadModelKeys,
        user: Uuid,
        tasks: HashMap<Uuid, Task>,
        clock: EventClock,
    }

    impl Harness {
        fn new() -> Self {
            Self {
                model: MemoryModel::default(),
                keys: KeySpace::new("t:").read_model("task", 1),
                user: Uuid::now_v7(),
                tasks: HashMap::new(),
                clock: EventClock::starting_at(
                    datetime!(2026-11-24 10:00:01 UTC),
                    time::Duration::seconds(1),
                ),
            }
        }

        fn project(&mut self, envelope: &EventEnvelope) -> Vec<Op> {
            let reads = TaskProjection.reads(envelope, &self.keys);
            let ops = TaskProjection
                .apply(envelope, &self.model.state(&reads), &self.keys)
                .expect("apply");
            self.model.run(&ops);
            ops
        }

        /// Plays `events` on `id` as the command side does, then projects them.
        fn play(&mut self, id: Uuid, events: &[TaskEvent]) {
            let ctx = self.clock.context(self.user);
            let state = self.tasks.get(&id).cloned();
            let version = state.as_ref().map_or(0, |t| t.version);
            let Committed { state, envelopes } =
                commit(state, version, id, events, &ctx).expect("evolve");
            self.tasks.insert(id, state.expect("exists"));
            for env in &envelopes {
                self.project(env);
            }
        }

        fn create(&mut self, minutes: i32) -> Uuid {
            let cmd = CreateTask {
                id: Uuid::now_v7(),
                title: "t".into(),
                task_type: TaskType::Training,
                estimated_minutes: minutes,
                priority: 3,
                difficulty: 1,
                due_date: None,
                tags: vec![],
            };
            let events = decide_create(self.user, &cmd);
            self.play(cmd.id, &events);
            cmd.id
        }

        fn command(&mut self, id: Uuid, cmd: TaskCommand) {
            let events = decide(&self.tasks[&id], &cmd).expect("allowed");
            self.play(id, &events);
        }

        fn stats(&self) -> TaskStats {
            let key = TaskKeys(&self.keys).stats(self.user);
            TaskStats::from_values(TaskStats::FIELDS.map(|f| self.model.counter(&key, f)))
        }

        fn expected_stats(&self) -> TaskStats {
            let sum = self.tasks.values().fold([0i64; 7], |mut acc, t| {
                for (a, v) in acc
                    .iter_mut()
                    .zip(TaskStats::contribution(Some(t)).values())
                {
                    *a += v;
                }
                acc
            });
            TaskStats::from_values(sum)
        }

        fn view(&self, id: Uuid) -> Option<Task> {
            self.model
                .get(&TaskKeys(&self.keys).view(id))
                .map(|s| serde_json::from_str(s).expect("json"))
        }
    }

    #[test]
    fn creation_writes_view_lists_and_stats() {
        let mut h = Harness::new();
        let id = h.create(30);
        let view = h.view(id).expect("view");
        assert_eq!(view, h.tasks[&id]);
        let k = TaskKeys(&h.keys);
        assert_eq!(h.model.members(&k.list(h.user, None)), 1);
        assert_eq!(
            h.model.members(&k.list(h.user, Some(TaskStatus::Pending))),
            1
        );
        assert_eq!(
            h.stats(),
            TaskStats {
                total_tasks: 1,
                pending_tasks: 1,
                total_estimated_minutes: 30,
                ..TaskStats::default()
            }
        );
    }

    #[test]
    fn each_event_moves_lists_and_stats_exactly() {
        let mut h = Harness::new();
        let a = h.create(30);
        let b = h.create(50);
        h.command(a, TaskCommand::Start);
        assert_eq!(h.stats().in_progress_tasks, 1);
        h.command(
            a,
            TaskCommand::Complete {
                actual_minutes: 25,
                note: None,
            },
        );
        h.command(
            b,
            TaskCommand::Update(UpdateTask {
                estimated_minutes: Some(60),
                ..UpdateTask::default()
            }),
        );
        h.command(
            b,
            TaskCommand::Abandon {
                reason: Some("later".into()),
            },
        );
        assert_eq!(
            h.stats(),
            TaskStats {
                total_tasks: 2,
                completed_tasks: 1,
                abandoned_tasks: 1,
                total_estimated_minutes: 90,
                completed_minutes: 25,
                ..TaskStats::default()
            }
        );
        let keys = h.keys.clone();
        let k = TaskKeys(&keys);
        assert_eq!(
            h.model.members(&k.list(h.user, Some(TaskStatus::Pending))),
            0
        );
        assert_eq!(
            h.model
                .members(&k.list(h.user, Some(TaskStatus::Completed))),
            1
        );
        assert_eq!(h.view(a).expect("a"), h.tasks[&a]);
        assert_eq!(h.view(b).expect("b"), h.tasks[&b]);
        h.command(a, TaskCommand::Delete);
        assert_eq!(h.view(a), None, "deleted tasks have no view");
        assert_eq!(h.model.members(&k.list(h.user, None)), 1);
        assert_eq!(
            h.model
                .members(&k.list(h.user, Some(TaskStatus::Completed))),
            0
        );
        assert_eq!(h.stats(), h.expected_stats());
        assert_eq!(h.stats().completed_minutes, 0);
    }

    #[test]
    fn foreign_and_malformed_events_are_refused_with_a_type() {
        let h = Harness::new();
        let mut e = EventContext {
            user_id: None,
            correlation_id: None,
            source: "t".into(),
            now: datetime!(2026-01-01 0:00 UTC),
        }
        .envelope(
            "Task",
            Uuid::now_v7(),
            1,
            "task.finished",
            serde_json::json!({}),
        );
        let err = TaskProjection
            .apply(&e, &ViewState::default(), &h.keys)
            .expect_err("unknown");
        assert_eq!(err.error_type(), "unknown_event_type");
        e.event_type = "task.completed".into();
        let err = TaskProjection
            .apply(&e, &ViewState::default(), &h.keys)
            .expect_err("malformed");
        assert_eq!(err.error_type(), "malformed_payload");
        e.event_type = "task.started".into();
        let err = TaskProjection
            .apply(&e, &ViewState::default(), &h.keys)
            .expect_err("no view");
        assert_eq!(err.error_type(), "missing_state");
    }

    #[test]
    fn list_members_sort_by_creation_time() {
        let mut h = Harness::new();
        let first = h.create(1);
        let second = h.create(1);
        assert!(list_member(&h.tasks[&first]) < list_member(&h.tasks[&second]));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Step {
            Create(i32),
            Act(usize, u8, i32),
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                (1..1440i32).prop_map(Step::Create),
                (0..8usize, 0..6u8, 0..1440i32).prop_map(|(i, a, n)| Step::Act(i, a, n)),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            /// Any sequence of commands leaves views and stats equal to the command side's state.
            #[test]
            fn projection_equals_command_state(steps in proptest::collection::vec(step(), 1..40)) {
                let mut h = Harness::new();
                let mut ids: Vec<Uuid> = vec![];
                for s in steps {
                    match s {
                        Step::Create(m) => ids.push(h.create(m)),
                        Step::Act(i, a, n) if !ids.is_empty() => {
                            let id = ids[i % ids.len()];
                            let cmd = match a {
                                0 => TaskCommand::Start,
                                1 => TaskCommand::Complete { actual_minutes: n, note: None },
                                2 => TaskCommand::Abandon { reason: None },
                                3 => TaskCommand::Delete,
                                4 => TaskCommand::Update(UpdateTask { estimated_minutes: Some(n.max(1)), ..UpdateTask::default() }),
                                _ => TaskCommand::Update(UpdateTask { title: Some(format!("t{n}")), ..UpdateTask::default() }),
                            };
                            if decide(&h.tasks[&id], &cmd).is_ok() {
                                h.command(id, cmd);
                            }
                        }
                        Step::Act(..) => {}
                    }
                }
                prop_assert_eq!(h.stats(), h.expected_stats());
                for (id, t) in &h.tasks {
                    let expected = (!t.deleted).then(|| t.clone());
                    prop_assert_eq!(h.view(*id), expected);
                }
            }
        }
    }
}
