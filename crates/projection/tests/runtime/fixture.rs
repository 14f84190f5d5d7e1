//! What the runtime tests share: a small projection whose failures the tests control, and a
//! fixture with a projector on a key prefix (and schema) of its own.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use events::{EventContext, EventEnvelope, ModuleSpec};
use projection::dead_letters::DeadLetters;
use projection::{Projection, ProjectionError, Projector, ProjectorSettings, ViewState};
use streams::publisher::{self, StreamEntry};
use streams::{Op, ReadModelKeys, redis};
use test_kit::{TestDb, TestRedis};
use uuid::Uuid;

/// The module these tests project: the task stream, names and catalogue.
pub const TASK: ModuleSpec = ModuleSpec {
    name: "task",
    projection: "task_projection",
    consumer_group: "task_projection_group",
    aggregate_types: &["Task"],
    event_types: &[
        "task.created",
        "task.updated",
        "task.started",
        "task.completed",
        "task.abandoned",
        "task.deleted",
    ],
};

/// `log:<id>` lists the versions applied to the aggregate, in order. `task.poison` fails while
/// `broken` is set (a bug fixed by a later deploy).
pub struct Logging {
    pub broken: Arc<AtomicBool>,
}

impl Projection for Logging {
    fn module(&self) -> &'static ModuleSpec {
        &TASK
    }
    fn reads(&self, e: &EventEnvelope, keys: &ReadModelKeys) -> Vec<String> {
        vec![keys.key(&format!("log:{}", e.aggregate_id))]
    }
    fn apply(
        &self,
        e: &EventEnvelope,
        s: &ViewState,
        keys: &ReadModelKeys,
    ) -> Result<Vec<Op>, ProjectionError> {
        if e.event_type == "task.poison" && self.broken.load(Ordering::SeqCst) {
            return Err(ProjectionError::MalformedPayload(
                "cannot digest poison".into(),
            ));
        }
        if !TASK.emits(&e.event_type) && e.event_type != "task.poison" {
            return Err(ProjectionError::UnknownEventType(e.event_type.clone()));
        }
        let key = keys.key(&format!("log:{}", e.aggregate_id));
        let log = s.get(&key).map_or_else(
            || e.aggregate_version.to_string(),
            |l| format!("{l},{}", e.aggregate_version),
        );
        // Like a real view's update, `task.completed` needs the log to exist.
        if e.event_type == "task.completed" && s.get(&key).is_none() {
            return Err(ProjectionError::MissingState(format!(
                "version {} found no log",
                e.aggregate_version
            )));
        }
        Ok(vec![Op::Set { key, value: log }])
    }
}

pub fn envelope(id: Uuid, version: i64, event_type: &str) -> EventEnvelope {
    EventContext::new(None, None, "test").envelope(
        "Task",
        id,
        version,
        event_type,
        serde_json::json!({}),
    )
}

pub fn settings(replica: &str, partitions: u32) -> ProjectorSettings {
    ProjectorSettings {
        partitions,
        block: Duration::from_millis(50),
        lease_ttl: Duration::from_millis(900),
        retry_base: Duration::from_millis(40),
        retry_cap: Duration::from_millis(400),
        max_attempts: 4,
        retired_grace: Duration::ZERO,
        rebuild_lock_ttl: Duration::from_secs(1),
        ..ProjectorSettings::new(replica)
    }
}

pub struct Fixture {
    pub redis: TestRedis,
    pub broken: Arc<AtomicBool>,
    pub projector: Arc<Projector>,
    pub partitions: u32,
}

impl Fixture {
    pub async fn new(partitions: u32) -> Self {
        Self::with_db(partitions, None).await
    }

    pub async fn with_db(partitions: u32, pg: Option<outbox::Pool>) -> Self {
        let redis = TestRedis::new().await;
        let broken = Arc::new(AtomicBool::new(true));
        let projector = Arc::new(Projector::new(
            redis.pools.clone(),
            pg.clone(),
            Arc::new(Logging {
                broken: broken.clone(),
            }),
            settings("r1", partitions),
        ));
        projector.ensure_groups().await.expect("groups");
        projector.tick_leases().await.expect("leases");
        if pg.is_none() {
            // Nothing builds a read model without a database: generation 1 is served from the
            // start, as a built one would be (re-drives resolve it like any writer).
            let generations = streams::Generations::new(
                &redis.pools.keys,
                "task",
                "task_projection",
                streams::GenerationState::default(),
            );
            let mut c = redis.pools.commands.get().await.expect("conn");
            generations.activate(&mut c, 1).await.expect("activate");
        }
        Self {
            redis,
            broken,
            projector,
            partitions,
        }
    }

    pub fn another(&self, replica: &str) -> Projector {
        self.another_with(replica, None)
    }

    /// Another replica on the same Redis (and database, when `pg` is given).
    pub fn another_with(&self, replica: &str, pg: Option<outbox::Pool>) -> Projector {
        Projector::new(
            self.redis.pools.clone(),
            pg,
            Arc::new(Logging {
                broken: self.broken.clone(),
            }),
            settings(replica, self.partitions),
        )
    }

    pub async fn publish(&self, events: &[EventEnvelope]) {
        let routing = self.redis.pools.keys.routing(self.partitions);
        let json: Vec<(String, String)> = events
            .iter()
            .map(|e| (routing.stream_for("task", e.aggregate_id), e.to_json()))
            .collect();
        self.publish_raw(&json).await;
    }

    pub async fn publish_raw(&self, entries: &[(String, String)]) {
        let list: Vec<_> = entries
            .iter()
            .map(|(s, e)| StreamEntry {
                stream: s,
                event_id: "x",
                event_type: "t",
                envelope: e,
            })
            .collect();
        let mut c = self.redis.pools.commands.get().await.expect("conn");
        publisher::publish(&mut *c, &list).await.expect("publish");
    }

    pub async fn log(&self, id: Uuid) -> Option<String> {
        let mut c = self.redis.pools.commands.get().await.expect("conn");
        redis::cmd("GET")
            .arg(self.projector.keys().key(&format!("log:{id}")))
            .query_async(&mut *c)
            .await
            .expect("get")
    }

    pub fn dead_letters(&self) -> DeadLetters {
        DeadLetters::new(
            self.redis.pools.clone(),
            Arc::new(Logging {
                broken: self.broken.clone(),
            }),
        )
    }

    /// Retries until nothing is due for `d`.
    pub async fn settle(&self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.projector.retry_due().await.expect("retry");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub async fn append(db: &TestDb, events: &[EventEnvelope]) {
    let mut c = db.pool.get().await.expect("pg");
    let tx = c.transaction().await.expect("tx");
    outbox::append_events(&tx, events, 1).await.expect("append");
    tx.commit().await.expect("commit");
}
