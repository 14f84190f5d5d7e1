//! Retention never removes an entry some group still needs.

use streams::consumer::{self, ReadFrom};
use streams::publisher::{self, StreamEntry};
use streams::retention::{length, trim_acknowledged};
use test_kit::TestRedis;

async fn publish(r: &TestRedis, stream: &str, n: usize) {
    let mut c = r.pools.commands.get().await.expect("conn");
    let bodies: Vec<String> = (0..n).map(|i| format!("{{\"n\":{i}}}")).collect();
    let entries: Vec<_> = bodies
        .iter()
        .map(|b| StreamEntry {
            stream,
            event_id: "x",
            event_type: "t",
            envelope: b,
        })
        .collect();
    publisher::publish(&mut *c, &entries)
        .await
        .expect("publish");
}

#[tokio::test]
async fn trimming_keeps_every_entry_a_group_has_not_acknowledged() {
    let r = TestRedis::new().await;
    let stream = format!("{}s", r.prefix);
    let mut c = r.pools.commands.get().await.expect("conn");
    publish(&r, &stream, 10).await;
    assert_eq!(
        trim_acknowledged(&mut *c, &stream)
            .await
            .expect("trim")
            .removed,
        0,
        "no groups: nothing is trimmed"
    );

    consumer::ensure_group(&mut *c, &stream, "fast")
        .await
        .expect("group");
    consumer::ensure_group(&mut *c, &stream, "slow")
        .await
        .expect("group");
    let one = std::slice::from_ref(&stream);
    // fast reads and acknowledges everything.
    let all = consumer::read_group(&mut *c, "fast", "f", one, ReadFrom::New, 100, None)
        .await
        .expect("read");
    let ids: Vec<String> = all.iter().map(|d| d.entry_id.clone()).collect();
    consumer::ack(&mut *c, &stream, "fast", &ids)
        .await
        .expect("ack");
    // slow reads 6, acknowledges the first 2 and the 5th; 3rd, 4th and 6th stay pending; 4 unread.
    let got = consumer::read_group(&mut *c, "slow", "s", one, ReadFrom::New, 6, None)
        .await
        .expect("read");
    consumer::ack(
        &mut *c,
        &stream,
        "slow",
        &[
            got[0].entry_id.clone(),
            got[1].entry_id.clone(),
            got[4].entry_id.clone(),
        ],
    )
    .await
    .expect("ack");

    let t = trim_acknowledged(&mut *c, &stream).await.expect("trim");
    assert_eq!(t.removed, 2, "only what both groups acknowledged goes");
    assert_eq!(t.floor, got[2].entry_id);
    assert_eq!(length(&mut *c, &stream).await.expect("len"), 8);
    // The pending entries are still readable with their payloads, and the unread ones arrive.
    let pending = consumer::read_group(&mut *c, "slow", "s", one, ReadFrom::Pending, 100, None)
        .await
        .expect("pending");
    let pending_ids: Vec<_> = pending.iter().map(|d| d.entry_id.clone()).collect();
    assert_eq!(
        pending_ids,
        vec![
            got[2].entry_id.clone(),
            got[3].entry_id.clone(),
            got[5].entry_id.clone()
        ]
    );
    assert!(
        pending.iter().all(|d| d.envelope.is_some()),
        "pending entries keep their payloads"
    );
    let rest = consumer::read_group(&mut *c, "slow", "s", one, ReadFrom::New, 100, None)
        .await
        .expect("rest");
    assert_eq!(rest.len(), 4);

    // Once slow acknowledges everything, the stream empties entirely.
    let mut everything: Vec<String> = pending_ids;
    everything.extend(rest.iter().map(|d| d.entry_id.clone()));
    consumer::ack(&mut *c, &stream, "slow", &everything)
        .await
        .expect("ack");
    let t = trim_acknowledged(&mut *c, &stream).await.expect("trim");
    assert_eq!(
        (t.removed, length(&mut *c, &stream).await.expect("len")),
        (8, 0)
    );
    // A group that has read nothing yet holds everything back.
    publish(&r, &stream, 3).await;
    consumer::ensure_group(&mut *c, &stream, "late")
        .await
        .expect("group");
    let _ = c;
    let mut c = r.pools.commands.get().await.expect("conn");
    redis_setid(&mut c, &stream, "late").await;
    assert_eq!(
        trim_acknowledged(&mut *c, &stream)
            .await
            .expect("trim")
            .removed,
        0
    );
    assert_eq!(length(&mut *c, &stream).await.expect("len"), 3);
}

/// Points `group` at the start of the stream, as a freshly created group is.
async fn redis_setid(c: &mut streams::deadpool_redis::Connection, stream: &str, group: &str) {
    let _: () = streams::redis::cmd("XGROUP")
        .arg("SETID")
        .arg(stream)
        .arg(group)
        .arg("0")
        .query_async(&mut **c)
        .await
        .expect("setid");
}
