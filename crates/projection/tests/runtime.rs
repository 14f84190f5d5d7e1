//! The projector runtime against a real Redis, with a small counting projection.

use std::sync::Arc;
use std::time::Duration;

use events::{EventContext, EventEnvelope, ModuleSpec, TASK};
use projection::{Projection, ProjectionError, Projector, ProjectorSettings, ViewState};
use streams::publisher::{self, StreamEntry};
use streams::{Op, ReadModelKeys, redis};
use test_kit::{TestRedis, eventually};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// `count:<id>` = number of events applied to the aggregate; `log:<id>` = their versions in
/// order. `task.poison` cannot be applied.
struct Counting;

impl Projection for Counting {
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
        if e.event_type == "task.poison" {
            return Err(ProjectionError::MalformedPayload("poison".into()));
        }
        let key = keys.key(&format!("log:{}", e.aggregate_id));
        let log = s.get(&key).map_or_else(
            || e.aggregate_version.to_string(),
            |l| format!("{l},{}", e.aggregate_version),
        );
        Ok(vec![
            Op::Set { key, value: log },
            Op::HIncrBy {
                key: keys.key("totals"),
                field: "events".into(),
                delta: 1,
            },
        ])
    }
}

fn envelope(id: Uuid, version: i64, event_type: &str) -> EventEnvelope {
    EventContext::new(None, None, "test").envelope(
        "Task",
        id,
        version,
        event_type,
        serde_json::json!({}),
    )
}

struct Fixture {
    redis: TestRedis,
    projector: Projector,
}

impl Fixture {
    async fn new() -> Self {
        let redis = TestRedis::new().await;
        let settings = ProjectorSettings {
            block: Duration::from_millis(50),
            retry_interval: Duration::from_millis(50),
            ..ProjectorSettings::new("c1")
        };
        let projector = Projector::new(redis.pools.clone(), Arc::new(Counting), settings);
        projector.ensure_groups().await.expect("groups");
        Self { redis, projector }
    }

    fn stream(&self) -> String {
        self.redis.pools.keys.routing(1).stream("task", 0)
    }

    async fn publish(&self, events: &[EventEnvelope]) {
        self.publish_raw(
            &events
                .iter()
                .map(EventEnvelope::to_json)
                .collect::<Vec<_>>(),
        )
        .await;
    }

    async fn publish_raw(&self, envelopes: &[String]) {
        let stream = self.stream();
        let entries: Vec<_> = envelopes
            .iter()
            .map(|e| StreamEntry {
                stream: &stream,
                event_id: "x",
                event_type: "t",
                envelope: e,
            })
            .collect();
        let mut c = self.redis.pools.commands.get().await.expect("conn");
        publisher::publish(&mut *c, &entries)
            .await
            .expect("publish");
    }

    async fn log(&self, id: Uuid) -> Option<String> {
        let mut c = self.redis.pools.commands.get().await.expect("conn");
        redis::cmd("GET")
            .arg(self.projector.keys().key(&format!("log:{id}")))
            .query_async(&mut *c)
            .await
            .expect("get")
    }

    async fn total(&self) -> i64 {
        let mut c = self.redis.pools.commands.get().await.expect("conn");
        let v: Option<i64> = redis::cmd("HGET")
            .arg(self.projector.keys().key("totals"))
            .arg("events")
            .query_async(&mut *c)
            .await
            .expect("hget");
        v.unwrap_or(0)
    }
}

#[tokio::test]
async fn a_batch_is_applied_in_order_and_leaves_the_group_idle() {
    let f = Fixture::new().await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    f.publish(&[
        envelope(a, 1, "task.x"),
        envelope(b, 1, "task.x"),
        envelope(a, 2, "task.x"),
        envelope(a, 3, "task.x"),
    ])
    .await;
    let report = f.projector.consume_once(None).await.expect("consume");
    assert_eq!(
        (report.delivered, report.applied, report.unfinished()),
        (4, 4, 0)
    );
    assert_eq!(f.log(a).await.as_deref(), Some("1,2,3"));
    assert_eq!(f.log(b).await.as_deref(), Some("1"));
    assert_eq!(
        f.projector.observe_lag().await.expect("lag"),
        (0, 0),
        "nothing left to read or ack"
    );
}

#[tokio::test]
async fn republished_events_change_nothing() {
    let f = Fixture::new().await;
    let a = Uuid::now_v7();
    let events = [envelope(a, 1, "task.x"), envelope(a, 2, "task.x")];
    f.publish(&events).await;
    f.projector.consume_once(None).await.expect("consume");
    // The relay crashed after XADD and published the same events again.
    f.publish(&events).await;
    let report = f.projector.consume_once(None).await.expect("consume");
    assert_eq!((report.applied, report.duplicates), (0, 2));
    assert_eq!(f.log(a).await.as_deref(), Some("1,2"));
    assert_eq!(f.total().await, 2);
    assert_eq!(
        f.projector.observe_lag().await.expect("lag"),
        (0, 0),
        "duplicates are acknowledged"
    );
}

#[tokio::test]
async fn an_event_ahead_of_its_predecessor_waits_then_applies() {
    let f = Fixture::new().await;
    let a = Uuid::now_v7();
    f.publish(&[envelope(a, 2, "task.x")]).await;
    let report = f.projector.consume_once(None).await.expect("consume");
    assert_eq!((report.applied, report.waiting), (0, 1));
    assert_eq!(f.log(a).await, None);
    f.publish(&[envelope(a, 1, "task.x")]).await;
    f.projector.consume_once(None).await.expect("consume");
    assert_eq!(f.projector.retry_pending().await.expect("retry"), 0);
    assert_eq!(f.log(a).await.as_deref(), Some("1,2"));
}

#[tokio::test]
async fn failing_and_malformed_entries_stay_pending_and_block_only_their_aggregate() {
    let f = Fixture::new().await;
    let (bad, good) = (Uuid::now_v7(), Uuid::now_v7());
    f.publish(&[
        envelope(bad, 1, "task.poison"),
        envelope(bad, 2, "task.x"),
        envelope(good, 1, "task.x"),
    ])
    .await;
    f.publish_raw(&["{not json".to_owned()]).await;
    let report = f.projector.consume_once(None).await.expect("consume");
    assert_eq!((report.applied, report.failed, report.waiting), (1, 2, 1));
    assert_eq!(f.log(good).await.as_deref(), Some("1"));
    assert_eq!(
        f.log(bad).await,
        None,
        "later events of a failing aggregate wait"
    );
    assert_eq!(
        f.projector.retry_pending().await.expect("retry"),
        3,
        "never acknowledged without being applied"
    );
    assert_eq!(f.projector.observe_lag().await.expect("lag"), (0, 3));
}

#[tokio::test]
async fn the_loop_recreates_a_lost_group_and_stops_on_shutdown() {
    let f = Arc::new(Fixture::new().await);
    let shutdown = CancellationToken::new();
    let run = {
        let f = f.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { f.projector.run(shutdown).await })
    };
    let a = Uuid::now_v7();
    f.publish(&[envelope(a, 1, "task.x")]).await;
    eventually(Duration::from_secs(5), "first event applied", || async {
        f.log(a).await.filter(|l| l == "1")
    })
    .await;
    // Redis loses the stream and its group (a restart without persistence).
    {
        let mut c = f.redis.pools.commands.get().await.expect("conn");
        let _: i64 = redis::cmd("DEL")
            .arg(f.stream())
            .query_async(&mut *c)
            .await
            .expect("del");
    }
    let b = Uuid::now_v7();
    eventually(
        Duration::from_secs(5),
        "group recreated and new event applied",
        || async {
            f.publish(&[envelope(b, 1, "task.x")]).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            f.log(b).await
        },
    )
    .await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(3), run)
        .await
        .expect("stops promptly")
        .expect("task");
}
