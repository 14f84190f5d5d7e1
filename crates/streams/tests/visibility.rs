//! Announcements of applied writes wake exactly the readers waiting for them.

use std::time::Duration;

use streams::visibility::{AppliedWatch, announce};
use test_kit::{TestRedis, eventually};
use tokio::sync::oneshot::error::TryRecvError;
use uuid::Uuid;

#[tokio::test]
async fn an_announcement_wakes_the_readers_of_that_version_and_no_others() {
    let r = TestRedis::new().await;
    let watch = AppliedWatch::start(&test_kit::redis_url(), &r.pools.keys).expect("watch");
    eventually(Duration::from_secs(5), "subscribed", || async {
        watch.is_live().then_some(())
    })
    .await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let a1 = watch.wait_for(a, 1);
    let mut a2 = watch.wait_for(a, 2);
    let mut b1 = watch.wait_for(b, 1);
    assert_eq!(watch.waiting(), 3);

    let mut c = r.pools.commands.get().await.expect("conn");
    announce(&mut *c, &r.pools.keys, &[(a, 1)])
        .await
        .expect("announce");
    tokio::time::timeout(Duration::from_secs(5), a1)
        .await
        .expect("woken")
        .expect("sent");
    // One message is handled at once: who was not woken with a1 was not due.
    assert_eq!(
        a2.try_recv(),
        Err(TryRecvError::Empty),
        "version 2 is not visible yet"
    );
    assert_eq!(b1.try_recv(), Err(TryRecvError::Empty), "another aggregate");

    // Another deployment's announcements are not heard: published first, it would have been
    // handled before the next one of ours.
    let other = TestRedis::new().await;
    announce(&mut *c, &other.pools.keys, &[(b, 1)])
        .await
        .expect("announce elsewhere");
    // A later version covers every earlier wait.
    announce(&mut *c, &r.pools.keys, &[(a, 3)])
        .await
        .expect("announce");
    tokio::time::timeout(Duration::from_secs(5), &mut a2)
        .await
        .expect("woken")
        .expect("sent");
    assert_eq!(b1.try_recv(), Err(TryRecvError::Empty), "not our prefix");
    announce(&mut *c, &r.pools.keys, &[(b, 1)])
        .await
        .expect("announce");
    tokio::time::timeout(Duration::from_secs(5), &mut b1)
        .await
        .expect("woken")
        .expect("sent");
    assert_eq!(watch.waiting(), 0, "woken waiters are forgotten");

    // A reader that gives up is forgotten too, so the map stays bounded.
    drop(watch.wait_for(a, 9));
    assert_eq!(watch.waiting(), 0);
}
