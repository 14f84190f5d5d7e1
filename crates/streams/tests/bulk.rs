//! A rebuild's runs ([`streams::bulk`]) against a real Redis.

use streams::Op;
use streams::StreamError;
use streams::bulk::{Run, Written, write_runs};
use streams::redis;
use test_kit::TestRedis;
use uuid::Uuid;

struct Model {
    r: TestRedis,
    pointer: String,
    versions: String,
}

impl Model {
    /// A model whose generation 7 is being built.
    async fn new() -> Self {
        let r = TestRedis::new().await;
        let pointer = format!("{}generations", r.prefix);
        let versions = format!("{}versions", r.prefix);
        let m = Self {
            r,
            pointer,
            versions,
        };
        let _: i64 = m
            .cmd(redis::cmd("HSET").arg(&m.pointer).arg("building").arg(7))
            .await;
        m
    }

    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.r.prefix)
    }

    async fn cmd<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> T {
        let mut c = self.r.pools.commands.get().await.expect("conn");
        cmd.query_async(&mut *c).await.expect("redis")
    }

    async fn write(&self, runs: &[Run]) -> Result<Written, StreamError> {
        let mut c = self.r.pools.commands.get().await.expect("conn");
        write_runs(&mut *c, &self.pointer, &self.versions, 7, runs).await
    }

    fn run(&self, aggregate: Uuid, from: i64, events: &[(&str, i64)]) -> Run {
        let mut run = Run::new(aggregate, from);
        for (i, (value, incr)) in events.iter().enumerate() {
            run.push(
                from + 1 + i as i64,
                vec![
                    Op::Set {
                        key: self.key(&format!("view:{aggregate}")),
                        value: (*value).into(),
                    },
                    Op::HIncrBy {
                        key: self.key("stats"),
                        field: "n".into(),
                        delta: *incr,
                    },
                ],
            );
        }
        run
    }
}

#[tokio::test]
async fn runs_write_their_events_and_versions_once() {
    let m = Model::new().await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let runs = [
        m.run(a, 0, &[("a1", 1), ("a2", 2), ("a3", 3)]),
        m.run(b, 0, &[("b1", 10)]),
    ];
    // Of a key set three times, only the last SET is sent; every counter step is.
    assert_eq!(runs[0].ops.len(), 4, "{:?}", runs[0].ops);
    assert_eq!(
        m.write(&runs).await.expect("write"),
        Written::Runs(vec![true, true])
    );
    let view: String = m
        .cmd(redis::cmd("GET").arg(m.key(&format!("view:{a}"))))
        .await;
    let n: i64 = m.cmd(redis::cmd("HGET").arg(m.key("stats")).arg("n")).await;
    let versions: Vec<i64> = m
        .cmd(
            redis::cmd("HMGET")
                .arg(&m.versions)
                .arg(a.to_string())
                .arg(b.to_string()),
        )
        .await;
    assert_eq!((view.as_str(), n, versions), ("a3", 16, vec![3, 1]));

    // Sent again (a retry after a lost reply): the versions moved on, nothing is written twice.
    assert_eq!(
        m.write(&runs).await.expect("write"),
        Written::Runs(vec![false, false])
    );
    let n: i64 = m.cmd(redis::cmd("HGET").arg(m.key("stats")).arg("n")).await;
    assert_eq!(n, 16);

    // A run planned from the version now applied goes on from there.
    let next = m.run(a, 3, &[("a4", 100)]);
    assert_eq!(
        m.write(&[next]).await.expect("write"),
        Written::Runs(vec![true])
    );
    let n: i64 = m.cmd(redis::cmd("HGET").arg(m.key("stats")).arg("n")).await;
    assert_eq!(n, 116);
}

#[tokio::test]
async fn nothing_is_written_once_the_generation_is_not_being_built() {
    let m = Model::new().await;
    let a = Uuid::now_v7();
    let _: i64 = m
        .cmd(redis::cmd("HSET").arg(&m.pointer).arg("building").arg(""))
        .await;
    assert_eq!(
        m.write(&[m.run(a, 0, &[("a1", 1)])]).await.expect("write"),
        Written::Moved
    );
    let exists: i64 = m
        .cmd(redis::cmd("EXISTS").arg(m.key(&format!("view:{a}"))))
        .await;
    let versions: i64 = m.cmd(redis::cmd("EXISTS").arg(&m.versions)).await;
    assert_eq!((exists, versions), (0, 0));
}

#[tokio::test]
async fn a_run_that_cannot_be_sent_is_left_out_and_a_half_failed_call_is_an_error() {
    let m = Model::new().await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let mut nan = Run::new(a, 0);
    nan.push(
        1,
        vec![Op::ZAdd {
            key: m.key("list"),
            score: f64::NAN,
            member: "x".into(),
        }],
    );
    let fine = m.run(b, 0, &[("b1", 1)]);
    assert_eq!(
        m.write(&[nan, fine]).await.expect("write"),
        Written::Runs(vec![false, true])
    );
    // A key of the wrong type (only projection code using one key as two types can make one)
    // fails the call in Redis, half-way: reported as such.
    let mut wrong = Run::new(a, 0);
    wrong.push(
        1,
        vec![Op::HIncrBy {
            key: m.key(&format!("view:{b}")),
            field: "n".into(),
            delta: 1,
        }],
    );
    let err = m.write(&[wrong]).await.expect_err("a wrong type");
    assert!(matches!(err, StreamError::Redis(_)), "{err:?}");
}
