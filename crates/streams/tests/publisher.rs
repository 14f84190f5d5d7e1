//! What readers of the streams see of a published batch.

use std::time::Duration;

use deadpool_redis::redis;
use streams::consumer::{self, ReadFrom};
use streams::publisher::{self, StreamEntry};
use test_kit::{TestRedis, eventually};

/// A reader blocked on a stream wakes once for a batch, with all of the batch's entries in
/// that stream: Redis serves a blocked reader right after the command that fed it, so a batch
/// of plain `XADD`s would wake it with the first entry alone (and the next entries would cost
/// a read each). (Redis before 7.2 answers a reader blocked on several streams with the
/// stream that woke it only; later versions run the read again and answer with all.)
#[tokio::test]
async fn a_blocked_reader_receives_a_whole_batch_in_one_read() {
    let r = TestRedis::new().await;
    let streams = vec![format!("{}a", r.prefix)];
    let mut c = r.pools.commands.get().await.expect("conn");
    for s in &streams {
        consumer::ensure_group(&mut *c, s, "g")
            .await
            .expect("group");
    }
    let mut reader = r.pools.blocking.get().await.expect("conn");
    let id: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut *reader)
        .await
        .expect("client id");
    let read = {
        let streams = streams.clone();
        tokio::spawn(async move {
            consumer::read_group(
                &mut *reader,
                "g",
                "c",
                &streams,
                ReadFrom::New,
                100,
                Some(Duration::from_secs(10)),
            )
            .await
        })
    };
    // Publish only once the reader is blocked, as Redis itself reports it.
    eventually(Duration::from_secs(5), "the reader is blocked", || async {
        let mut c = r.pools.commands.get().await.ok()?;
        let info: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("ID")
            .arg(id)
            .query_async(&mut *c)
            .await
            .ok()?;
        info.contains("cmd=xreadgroup").then_some(())
    })
    .await;
    let bodies = ["{\"n\":1}", "{\"n\":2}", "{\"n\":3}"];
    let entries: Vec<StreamEntry<'_>> = bodies
        .iter()
        .map(|envelope| StreamEntry {
            stream: &streams[0],
            event_id: "x",
            event_type: "t",
            envelope,
        })
        .collect();
    publisher::publish(&mut *c, &entries)
        .await
        .expect("publish");
    let delivered = read.await.expect("join").expect("read");
    let got: Vec<String> = delivered
        .iter()
        .filter_map(|d| d.envelope.clone())
        .map(|e| String::from_utf8_lossy(&e).into_owned())
        .collect();
    assert_eq!(got, bodies, "one read, every entry of the batch");
}
