//! Events on partitioned streams become read models; the worker's own set-up.

use std::time::Duration;

use events::EventContext;
use streams::publisher::{self, StreamEntry};
use streams::redis;
use test_kit::{TestDb, eventually};
use uuid::Uuid;

use crate::helpers::*;

#[tokio::test]
async fn task_events_on_every_partition_are_projected_and_shutdown_is_clean() {
    let TestApp {
        db: _db,
        redis: r,
        port,
        shutdown,
        run,
    } = spawn_app(3).await;

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
    let generations = streams::Generations::new(
        &r.pools.keys,
        "task",
        "task_projection",
        streams::GenerationState::default(),
    );
    eventually(
        Duration::from_secs(10),
        "all twelve tasks counted",
        || async {
            let mut c = r.pools.commands.get().await.ok()?;
            generations.refresh(&mut *c).await.ok()?;
            let stats_key = generations
                .active_keys()?
                .key(&format!("user:{user}:stats"));
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

#[tokio::test]
async fn every_projection_of_the_registry_gets_its_control_row_at_start() {
    let db = TestDb::new().await;
    {
        // As for a module added after the schema was migrated: no row yet.
        let c = db.pool.get().await.expect("client");
        c.execute("DELETE FROM projections", &[])
            .await
            .expect("delete");
    }
    let app = spawn_app_on(db, 1).await;
    let c = app.db.pool.get().await.expect("client");
    let mut rows: Vec<String> = c
        .query("SELECT name FROM projections ORDER BY name", &[])
        .await
        .expect("rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut expected: Vec<String> = modules::specs().map(|s| s.projection.to_owned()).collect();
    rows.sort();
    expected.sort();
    assert_eq!(rows, expected);
    // And its heartbeats land (a heartbeat needs the row).
    eventually(Duration::from_secs(10), "a heartbeat", || async {
        let n: i64 = c
            .query_one("SELECT count(*) FROM projection_workers", &[])
            .await
            .ok()?
            .get(0);
        (n > 0).then_some(())
    })
    .await;
    app.shutdown.cancel();
}
