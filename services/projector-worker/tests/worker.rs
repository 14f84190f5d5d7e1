//! projector-worker in-process: task events on a partitioned stream become read models.

use std::time::Duration;

use events::EventContext;
use projector_worker::{Application, Settings};
use service_kit::settings::{PostgresArgs, RedisArgs, ShutdownArgs, StreamArgs, TelemetryArgs};
use streams::publisher::{self, StreamEntry};
use streams::redis;
use test_kit::{TestDb, TestRedis, eventually};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[tokio::test]
async fn task_events_on_every_partition_are_projected_and_shutdown_is_clean() {
    let db = TestDb::new().await;
    let r = TestRedis::new().await;
    let settings = Settings {
        postgres: PostgresArgs::new(&test_kit::database_url(), &db.schema),
        redis: RedisArgs::new(&test_kit::redis_url(), &r.prefix),
        streams: StreamArgs {
            stream_partitions: 3,
        },
        telemetry: TelemetryArgs::default(),
        shutdown: ShutdownArgs::default(),
        http_addr: "127.0.0.1:0".parse().expect("addr"),
        consumer_name: Some("worker-test".into()),
        projector_batch_size: 16,
        projector_block_ms: 100,
        projector_lease_ms: 2000,
        projector_max_attempts: 5,
        projector_retry_base_ms: 100,
        projector_retry_cap_ms: 10_000,
    };
    let app = Application::build(settings).await.expect("build");
    let port = app.port();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(app.run_until_stopped(shutdown.clone()));

    let routing = r.pools.keys.routing(3);
    let user = Uuid::now_v7();
    let ids: Vec<Uuid> = (0..12).map(|_| Uuid::now_v7()).collect();
    let ctx = EventContext::new(Some(user), None, "test");
    let payload = serde_json::json!({"user_id": user, "title": "t", "type": "social", "tags": [],
        "estimated_minutes": 10, "priority": 3, "difficulty": 1, "due_date": null});
    let envelopes: Vec<_> = ids
        .iter()
        .map(|id| ctx.envelope("Task", *id, 1, "task.created", payload.clone()))
        .collect();
    let streams: Vec<String> = ids
        .iter()
        .map(|id| routing.stream_for("task", *id))
        .collect();
    let json: Vec<String> = envelopes
        .iter()
        .map(events::EventEnvelope::to_json)
        .collect();
    let entries: Vec<_> = streams
        .iter()
        .zip(&json)
        .map(|(s, e)| StreamEntry {
            stream: s,
            event_id: "x",
            event_type: "task.created",
            envelope: e,
        })
        .collect();
    {
        let mut c = r.pools.commands.get().await.expect("conn");
        publisher::publish(&mut *c, &entries)
            .await
            .expect("publish");
    }
    assert!(
        streams
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1,
        "events spread over partitions"
    );
    let stats_key = r
        .pools
        .keys
        .read_model("task", 1)
        .key(&format!("user:{user}:stats"));
    eventually(
        Duration::from_secs(10),
        "all twelve tasks counted",
        || async {
            let mut c = r.pools.commands.get().await.ok()?;
            let total: Option<i64> = redis::cmd("HGET")
                .arg(&stats_key)
                .arg("total_tasks")
                .query_async(&mut *c)
                .await
                .ok()?;
            (total == Some(12)).then_some(())
        },
    )
    .await;
    let ready = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), reqwest::StatusCode::OK);
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("cqrs_events_processed_total"), "{metrics}");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("stops in time")
        .expect("join")
        .expect("clean");
}
