//! The relay against real PostgreSQL and Redis: order, wake-ups, outages.

use std::time::Duration;

use events::{EventContext, EventEnvelope};
use outbox_relay::{Application, Settings};
use service_kit::settings::{PostgresArgs, RedisArgs, ShutdownArgs, StreamArgs, TelemetryArgs};
use streams::redis;
use test_kit::proxy::TcpProxy;
use test_kit::{TestDb, TestRedis, eventually};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

struct Fixture {
    db: TestDb,
    redis: TestRedis,
    partitions: u32,
}

impl Fixture {
    async fn new(partitions: u32) -> Self {
        Self {
            db: TestDb::new().await,
            redis: TestRedis::new().await,
            partitions,
        }
    }

    fn settings(&self, pg_url: &str, redis_url: &str, poll_ms: u64) -> Settings {
        Settings {
            postgres: PostgresArgs::new(pg_url, &self.db.schema),
            redis: RedisArgs::new(redis_url, &self.redis.prefix),
            streams: StreamArgs {
                stream_partitions: self.partitions,
            },
            telemetry: TelemetryArgs::default(),
            shutdown: ShutdownArgs::default(),
            http_addr: "127.0.0.1:0".parse().expect("addr"),
            relay_batch_size: 50,
            relay_poll_interval_ms: poll_ms,
            relay_lease_ms: 1500,
            relay_trim_interval_ms: 200,
            relay_vacuum_interval_ms: 5000,
            relay_id: None,
        }
    }

    async fn start(
        &self,
        settings: Settings,
    ) -> (
        CancellationToken,
        u16,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let app = Application::build(settings).await.expect("build");
        let port = app.port();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        (shutdown, port, handle)
    }

    async fn write(
        &self,
        aggregate: Uuid,
        versions: std::ops::RangeInclusive<i64>,
    ) -> Vec<EventEnvelope> {
        let ctx = EventContext::new(None, None, "test");
        let events: Vec<_> = versions
            .map(|v| ctx.envelope("Task", aggregate, v, "task.updated", serde_json::json!({})))
            .collect();
        let mut c = self.db.pool.get().await.expect("client");
        let tx = c.transaction().await.expect("tx");
        outbox::append_events(&tx, &events, self.partitions)
            .await
            .expect("append");
        tx.commit().await.expect("commit");
        events
    }

    async fn outbox_len(&self) -> i64 {
        let c = self.db.pool.get().await.expect("client");
        c.query_one("SELECT count(*) FROM outbox", &[])
            .await
            .expect("count")
            .get(0)
    }

    /// (aggregate, version) of every entry of every partition stream, in stream order.
    async fn published(&self) -> Vec<(Uuid, i64)> {
        let mut c = self.redis.pools.commands.get().await.expect("conn");
        let mut out = vec![];
        for stream in self
            .redis
            .pools
            .keys
            .routing(self.partitions)
            .streams("task")
        {
            let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                .arg(&stream)
                .arg("-")
                .arg("+")
                .query_async(&mut *c)
                .await
                .expect("xrange");
            for (_, fields) in entries {
                let env = fields
                    .iter()
                    .find(|(k, _)| k == "envelope")
                    .expect("envelope");
                let e = EventEnvelope::from_json(env.1.as_bytes()).expect("json");
                assert_eq!(
                    stream,
                    self.redis
                        .pools
                        .keys
                        .routing(self.partitions)
                        .stream_for("task", e.aggregate_id),
                    "each event goes to its aggregate's partition stream"
                );
                out.push((e.aggregate_id, e.aggregate_version));
            }
        }
        out
    }
}

#[tokio::test]
async fn a_backlog_is_published_in_aggregate_order_across_partitions_and_deleted() {
    let f = Fixture::new(4).await;
    let ids: Vec<Uuid> = (0..8).map(|_| Uuid::now_v7()).collect();
    for round in 0..3 {
        for id in &ids {
            f.write(*id, (round * 10 + 1)..=(round * 10 + 10)).await;
        }
    }
    let (shutdown, _, handle) = f
        .start(f.settings(&test_kit::database_url(), &test_kit::redis_url(), 1000))
        .await;
    eventually(Duration::from_secs(10), "outbox drained", || async {
        (f.outbox_len().await == 0).then_some(())
    })
    .await;
    let published = f.published().await;
    assert_eq!(published.len(), 8 * 30);
    for id in &ids {
        let versions: Vec<i64> = published
            .iter()
            .filter(|(a, _)| a == id)
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(
            versions,
            (1..=30).collect::<Vec<_>>(),
            "per-aggregate order for {id}"
        );
    }
    shutdown.cancel();
    handle.await.expect("join").expect("clean stop");
}

#[tokio::test]
async fn a_commit_wakes_the_relay_long_before_the_poll_interval() {
    let f = Fixture::new(1).await;
    // A one-minute poll: only the NOTIFY can explain a prompt publish.
    let (shutdown, _, _handle) = f
        .start(f.settings(&test_kit::database_url(), &test_kit::redis_url(), 60_000))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = Uuid::now_v7();
    f.write(id, 1..=1).await;
    eventually(Duration::from_secs(3), "published on NOTIFY", || async {
        (f.published().await == vec![(id, 1)]).then_some(())
    })
    .await;
    shutdown.cancel();
}

#[tokio::test]
async fn a_redis_outage_keeps_rows_and_publishing_resumes_with_nothing_lost() {
    let f = Fixture::new(2).await;
    let proxy = TcpProxy::redis().await;
    let (shutdown, port, _handle) = f
        .start(f.settings(&test_kit::database_url(), &proxy.redis_url(), 100))
        .await;
    let http = reqwest::Client::new();
    let a = Uuid::now_v7();
    f.write(a, 1..=5).await;
    eventually(Duration::from_secs(5), "first batch published", || async {
        (f.published().await.len() == 5).then_some(())
    })
    .await;

    proxy.down();
    f.write(a, 6..=10).await;
    let b = Uuid::now_v7();
    f.write(b, 1..=3).await;
    eventually(
        Duration::from_secs(5),
        "/readyz reports Redis down",
        || async {
            let r = http
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
                .ok()?;
            (r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        f.outbox_len().await,
        8,
        "nothing is deleted while Redis is down"
    );

    proxy.up();
    eventually(
        Duration::from_secs(15),
        "backlog published after recovery",
        || async { (f.outbox_len().await == 0).then_some(()) },
    )
    .await;
    let published = f.published().await;
    let of = |id: Uuid| {
        published
            .iter()
            .filter(|(x, _)| *x == id)
            .map(|(_, v)| *v)
            .collect::<Vec<_>>()
    };
    // At least once: a batch cut mid-pipeline may be published twice, never lost or reordered
    // by first occurrence.
    let first_seen = |vs: Vec<i64>| {
        vs.into_iter().fold(vec![], |mut acc: Vec<i64>, v| {
            if !acc.contains(&v) {
                acc.push(v);
            }
            acc
        })
    };
    assert_eq!(first_seen(of(a)), (1..=10).collect::<Vec<_>>());
    assert_eq!(first_seen(of(b)), vec![1, 2, 3]);
    let r = http
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    shutdown.cancel();
}

#[tokio::test]
async fn a_postgres_outage_is_survived_and_publishing_resumes() {
    let f = Fixture::new(1).await;
    let proxy = TcpProxy::postgres().await;
    let (shutdown, port, _handle) = f
        .start(f.settings(&proxy.postgres_url(), &test_kit::redis_url(), 100))
        .await;
    let id = Uuid::now_v7();
    f.write(id, 1..=2).await;
    eventually(Duration::from_secs(5), "published", || async {
        (f.published().await.len() == 2).then_some(())
    })
    .await;
    proxy.down();
    // Commits keep landing (directly, not through the relay's proxy) while the relay is cut off.
    f.write(id, 3..=4).await;
    let http = reqwest::Client::new();
    eventually(
        Duration::from_secs(5),
        "/readyz reports PostgreSQL down",
        || async {
            let r = http
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
                .ok()?;
            (r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE).then_some(())
        },
    )
    .await;
    proxy.up();
    eventually(Duration::from_secs(15), "resumed", || async {
        let vs: Vec<i64> = f.published().await.into_iter().map(|(_, v)| v).collect();
        (vs == vec![1, 2, 3, 4]).then_some(())
    })
    .await;
    assert_eq!(f.outbox_len().await, 0);
    shutdown.cancel();
}
