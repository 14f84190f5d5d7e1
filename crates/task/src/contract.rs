//! The task module's part of the registry's contracts: what PostgreSQL says every query must
//! answer ([`expected_reads`]) and a realistic history of its events ([`sample_history`]).

use events::{EventContext, EventEnvelope};
use futures::future::BoxFuture;
use module_kit::{BoxError, Expected, ExpectedRead};
use outbox::tokio_postgres::Client;
use uuid::Uuid;

use crate::AGGREGATE_TYPE;
use crate::domain::{TaskCompleted, TaskCreated, TaskEvent, TaskType, TaskUpdated};
use crate::projection::TaskStats;
use crate::store;

/// Every task's view as its owner reads it (404 once deleted), and for each of `users` the
/// stats and the whole list of live tasks, newest first.
pub fn expected_reads<'a>(
    client: &'a Client,
    users: &'a [Uuid],
) -> BoxFuture<'a, Result<Vec<ExpectedRead>, BoxError>> {
    Box::pin(async move {
        let mut out = Vec::new();
        for row in client.query("SELECT id FROM tasks", &[]).await? {
            let id: Uuid = row.get(0);
            let Some(task) = store::load(client, id).await? else {
                continue;
            };
            out.push(ExpectedRead {
                user: task.user_id,
                path: format!("/v1/tasks/{id}"),
                expect: if task.deleted {
                    Expected::NotFound
                } else {
                    Expected::Body(json(&task))
                },
            });
        }
        for user in users {
            let row = client
                .query_one(
                    "SELECT count(*), count(*) FILTER (WHERE status = 'pending'),
                            count(*) FILTER (WHERE status = 'in_progress'),
                            count(*) FILTER (WHERE status = 'completed'),
                            count(*) FILTER (WHERE status = 'abandoned'),
                            coalesce(sum(estimated_minutes), 0)::bigint,
                            coalesce(sum(actual_minutes) FILTER (WHERE status = 'completed'), 0)::bigint
                     FROM tasks WHERE user_id = $1 AND deleted_at IS NULL",
                    &[user],
                )
                .await?;
            let stats = TaskStats::from_values(std::array::from_fn(|i| row.get::<_, i64>(i)));
            out.push(ExpectedRead {
                user: *user,
                path: "/v1/me/task-stats".into(),
                expect: Expected::Body(json(&stats)),
            });
            let live = store::live_tasks_of(client, *user).await?;
            out.push(ExpectedRead {
                user: *user,
                path: "/v1/me/tasks?limit=100".into(),
                expect: Expected::Items(live.iter().map(json).collect()),
            });
        }
        Ok(out)
    })
}

fn json(v: &impl serde::Serialize) -> serde_json::Value {
    events::encode_payload(v)
}

/// How many events one task's life in [`sample_history`] has.
pub const LIFECYCLE: usize = 4;

/// About `n` task events (rounded down to whole lifecycles: created → updated → started →
/// completed) in the order a busy system publishes them: version 1 of every task, then version
/// 2 of every task, and so on, so one aggregate's events lie far apart. 500 users own the tasks.
#[must_use]
pub fn sample_history(n: usize) -> Vec<EventEnvelope> {
    let tasks = n / LIFECYCLE;
    let users: Vec<Uuid> = (0..500).map(|_| Uuid::now_v7()).collect();
    let ids: Vec<Uuid> = (0..tasks).map(|_| Uuid::now_v7()).collect();
    let mut out = Vec::with_capacity(tasks * LIFECYCLE);
    for version in 1..=LIFECYCLE as i64 {
        for (i, id) in ids.iter().enumerate() {
            let user = users[i % users.len()];
            let event = match version {
                1 => TaskEvent::Created(TaskCreated {
                    user_id: user,
                    title: format!("Read chapter {i} of the Rust book"),
                    task_type: TaskType::Learning,
                    tags: vec!["rust".into(), "ownership".into()],
                    estimated_minutes: 45,
                    priority: 3,
                    difficulty: 2,
                    due_date: None,
                }),
                2 => TaskEvent::Updated(TaskUpdated {
                    estimated_minutes: Some(60),
                    ..TaskUpdated::default()
                }),
                3 => TaskEvent::Started,
                _ => TaskEvent::Completed(TaskCompleted {
                    actual_minutes: 50,
                    note: None,
                }),
            };
            out.push(EventContext::new(Some(user), None, "bench").envelope_of(
                AGGREGATE_TYPE,
                *id,
                version,
                &event,
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use module_kit::testing::MemoryModel;
    use projection::{Projection, plan};
    use streams::KeySpace;

    #[test]
    fn the_sample_history_projects_without_a_failure() {
        let events = sample_history(4 * 50 + 3);
        assert_eq!(events.len(), 4 * 50);
        let keys = KeySpace::new("").read_model("task", 1);
        let mut model = MemoryModel::default();
        let refs: Vec<&EventEnvelope> = events.iter().collect();
        let reads: Vec<String> = refs
            .iter()
            .flat_map(|e| crate::TaskProjection.reads(e, &keys))
            .collect();
        let mut state = model.state(&reads);
        let plans = plan(
            &crate::TaskProjection,
            &keys,
            &refs,
            &Default::default(),
            &mut state,
        );
        for p in plans {
            let projection::PlanOutcome::Apply(ops) = p else {
                panic!("{p:?}")
            };
            model.run(&ops);
        }
        assert_eq!(model.strings.len(), 50, "one view per task");
    }
}

/// Task types, as the API spells them.
const TYPES: [&str; 6] = [
    "learning",
    "training",
    "error_fix",
    "reflection",
    "social",
    "planning",
];

/// Random task commands: each user creates tasks, edits, starts, completes, abandons and
/// deletes its own (transitions that are not allowed any more answer 409, deleted tasks 404).
#[derive(Debug, Default)]
pub struct TaskTraffic {
    tasks: std::collections::HashMap<Uuid, Vec<String>>,
}

/// A fresh [`TaskTraffic`], for the registry.
#[must_use]
pub fn traffic() -> Box<dyn module_kit::Traffic> {
    Box::new(TaskTraffic::default())
}

impl module_kit::Traffic for TaskTraffic {
    fn next(
        &mut self,
        user: Uuid,
        pick: &mut dyn FnMut(usize) -> usize,
    ) -> module_kit::CommandCall {
        use serde_json::json;
        let mine = self.tasks.get(&user).map(Vec::as_slice).unwrap_or_default();
        let choice = if mine.is_empty() { 0 } else { pick(10) };
        let call = |method, path: String, body| module_kit::CommandCall { method, path, body };
        if choice <= 2 {
            return call(
                "POST",
                "/v1/tasks".to_owned(),
                Some(json!({
                    "title": format!("task {}", pick(1000)),
                    "type": TYPES[pick(TYPES.len())],
                    "estimated_minutes": 1 + pick(1440),
                    "priority": 1 + pick(5),
                    "tags": ["a", "b"],
                })),
            );
        }
        let id = &mine[pick(mine.len())];
        match choice {
            3 => call(
                "PATCH",
                format!("/v1/tasks/{id}"),
                Some(json!({"estimated_minutes": 1 + pick(600), "title": "edited"})),
            ),
            4 | 5 => call("POST", format!("/v1/tasks/{id}/start"), None),
            6 | 7 => call(
                "POST",
                format!("/v1/tasks/{id}/complete"),
                Some(json!({"actual_minutes": pick(301)})),
            ),
            8 => call("POST", format!("/v1/tasks/{id}/abandon"), None),
            _ => call("DELETE", format!("/v1/tasks/{id}"), None),
        }
    }

    fn answered(
        &mut self,
        user: Uuid,
        call: &module_kit::CommandCall,
        status: u16,
        body: &serde_json::Value,
    ) {
        if status == 201
            && call.path == "/v1/tasks"
            && let Some(id) = body["id"].as_str()
        {
            self.tasks.entry(user).or_default().push(id.to_owned());
        }
    }
}
