//! The atomic apply script and stream primitives against a real Redis.

use streams::consumer::{self, ReadFrom};
use streams::publisher::{self, StreamEntry};
use streams::redis;
use streams::{ApplyItem, ApplyOutcome, Op, apply_batch};
use test_kit::TestRedis;
use uuid::Uuid;

async fn get(r: &TestRedis, key: &str) -> Option<String> {
    let mut c = r.pools.commands.get().await.expect("conn");
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut c)
        .await
        .expect("get")
}

/// A plain `SET`, for tests that plant a key of the wrong type.
async fn raw_set(c: &mut impl redis::aio::ConnectionLike, key: &str, value: &str) {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(c)
        .await
        .expect("set");
}

fn item(
    r: &TestRedis,
    aggregate: Uuid,
    version: i64,
    ops: Vec<Op>,
    ack: Option<(String, String, String)>,
) -> ApplyItem {
    ApplyItem {
        ack,
        ..ApplyItem::new(format!("{}versions", r.prefix), aggregate, version, ops)
    }
}

fn set(r: &TestRedis, k: &str, v: &str) -> Op {
    Op::Set {
        key: format!("{}{k}", r.prefix),
        value: v.into(),
    }
}

#[tokio::test]
async fn applies_in_order_and_ignores_duplicates_and_gaps() {
    let r = TestRedis::new().await;
    let a = Uuid::now_v7();
    let mut c = r.pools.commands.get().await.expect("conn");
    let outcomes = apply_batch(
        &mut *c,
        &[
            item(&r, a, 1, vec![set(&r, "v", "one")], None),
            item(&r, a, 2, vec![set(&r, "v", "two")], None),
            item(&r, a, 2, vec![set(&r, "v", "dup")], None),
            item(&r, a, 4, vec![set(&r, "v", "gap")], None),
        ],
    )
    .await
    .expect("apply");
    assert_eq!(
        outcomes,
        vec![
            ApplyOutcome::Applied,
            ApplyOutcome::Applied,
            ApplyOutcome::Duplicate { current: 2 },
            ApplyOutcome::Gap { current: 2 }
        ]
    );
    assert_eq!(
        get(&r, &format!("{}v", r.prefix)).await.as_deref(),
        Some("two")
    );
    let v = streams::apply::applied_version(&mut *c, &format!("{}versions", r.prefix), a)
        .await
        .expect("version");
    assert_eq!(v, 2);
}

#[tokio::test]
async fn a_refused_change_writes_nothing_at_all() {
    let r = TestRedis::new().await;
    let a = Uuid::now_v7();
    let mut c = r.pools.commands.get().await.expect("conn");
    let hash = format!("{}h", r.prefix);
    raw_set(&mut *c, &hash, "not a hash").await;
    // The first op would succeed, the second hits a key of the wrong type: neither may land.
    let ops = vec![
        set(&r, "first", "x"),
        Op::HIncrBy {
            key: hash,
            field: "f".into(),
            delta: 1,
        },
    ];
    let out = apply_batch(&mut *c, &[item(&r, a, 1, ops, None)])
        .await
        .expect("apply");
    assert!(
        matches!(&out[0], ApplyOutcome::Rejected(m) if m.contains("WRONGTYPE")),
        "{out:?}"
    );
    assert_eq!(get(&r, &format!("{}first", r.prefix)).await, None);
    let v = streams::apply::applied_version(&mut *c, &format!("{}versions", r.prefix), a)
        .await
        .expect("version");
    assert_eq!(v, 0, "the version does not move either");
    let bad = item(
        &r,
        a,
        1,
        vec![Op::ZAdd {
            key: format!("{}z", r.prefix),
            score: f64::NAN,
            member: "m".into(),
        }],
        None,
    );
    let out = apply_batch(&mut *c, &[bad]).await.expect("apply");
    assert!(matches!(&out[0], ApplyOutcome::Rejected(_)));
    // Two ops that want one (absent) key as two types: the second could only fail after the
    // first had written, so the whole change is refused up front.
    let both = format!("{}both", r.prefix);
    let clash = item(
        &r,
        a,
        1,
        vec![
            set(&r, "second", "y"),
            Op::HIncrBy {
                key: both.clone(),
                field: "f".into(),
                delta: 1,
            },
            Op::ZAdd {
                key: both.clone(),
                score: 1.0,
                member: "m".into(),
            },
        ],
        None,
    );
    let out = apply_batch(&mut *c, &[clash]).await.expect("apply");
    assert!(
        matches!(&out[0], ApplyOutcome::Rejected(m) if m.contains("WRONGTYPE")),
        "{out:?}"
    );
    assert_eq!(get(&r, &format!("{}second", r.prefix)).await, None);
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&both)
        .query_async(&mut *c)
        .await
        .expect("exists");
    assert_eq!(exists, 0, "nothing written");
}

#[tokio::test]
async fn the_script_acknowledges_applied_and_duplicate_entries_but_not_gaps() {
    let r = TestRedis::new().await;
    let stream = format!("{}s", r.prefix);
    let mut c = r.pools.commands.get().await.expect("conn");
    consumer::ensure_group(&mut *c, &stream, "g")
        .await
        .expect("group");
    assert!(
        !consumer::ensure_group(&mut *c, &stream, "g")
            .await
            .expect("again"),
        "idempotent"
    );
    let entries: Vec<_> = ["1", "2", "3"]
        .iter()
        .map(|n| StreamEntry {
            stream: &stream,
            event_id: n,
            event_type: "t",
            envelope: "{}",
        })
        .collect();
    publisher::publish(&mut *c, &entries)
        .await
        .expect("publish");
    let got = consumer::read_group(
        &mut *c,
        "g",
        "me",
        std::slice::from_ref(&stream),
        ReadFrom::New,
        10,
        None,
    )
    .await
    .expect("read");
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].envelope.as_deref(), Some(&b"{}"[..]));
    let a = Uuid::now_v7();
    let ack = |i: usize| Some((stream.clone(), "g".to_owned(), got[i].entry_id.clone()));
    let out = apply_batch(
        &mut *c,
        &[
            item(&r, a, 1, vec![], ack(0)),
            item(&r, a, 1, vec![], ack(1)),
            item(&r, a, 3, vec![], ack(2)),
        ],
    )
    .await
    .expect("apply");
    assert_eq!(out[0], ApplyOutcome::Applied);
    assert_eq!(out[1], ApplyOutcome::Duplicate { current: 1 });
    assert_eq!(out[2], ApplyOutcome::Gap { current: 1 });
    let pending = consumer::read_group(
        &mut *c,
        "g",
        "me",
        std::slice::from_ref(&stream),
        ReadFrom::Pending,
        10,
        None,
    )
    .await
    .expect("pending");
    let ids: Vec<_> = pending.iter().map(|d| d.entry_id.clone()).collect();
    assert_eq!(
        ids,
        vec![got[2].entry_id.clone()],
        "only the gap stays pending"
    );
}

#[tokio::test]
async fn the_script_is_reloaded_after_a_script_flush() {
    let r = TestRedis::new().await;
    let mut c = r.pools.commands.get().await.expect("conn");
    // SCRIPT FLUSH affects only the script cache, not other tests' keys.
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut *c)
        .await
        .expect("flush");
    let out = apply_batch(
        &mut *c,
        &[item(&r, Uuid::now_v7(), 1, vec![set(&r, "k", "v")], None)],
    )
    .await
    .expect("apply");
    assert_eq!(out, vec![ApplyOutcome::Applied]);
}

#[tokio::test]
async fn a_missing_group_is_reported_as_nogroup() {
    let r = TestRedis::new().await;
    let mut c = r.pools.commands.get().await.expect("conn");
    let err = consumer::read_group(
        &mut *c,
        "g",
        "me",
        &[format!("{}nothing", r.prefix)],
        ReadFrom::New,
        1,
        None,
    )
    .await
    .expect_err("no group");
    assert!(matches!(err, streams::StreamError::NoGroup), "{err:?}");
}

#[tokio::test]
async fn an_unreachable_redis_is_unavailable_not_a_bug() {
    let settings = streams::RedisSettings::new(
        format!("redis://127.0.0.1:{}", test_kit::process::free_port()),
        "x:",
    );
    let pools = streams::RedisPools::connect(&settings).expect("pools");
    let err = pools.ping().await.expect_err("nothing listens there");
    assert!(err.is_unavailable(), "{err:?}");
}

#[tokio::test]
async fn a_replica_without_the_lease_cannot_apply() {
    let r = TestRedis::new().await;
    let a = Uuid::now_v7();
    let lease = format!("{}lease", r.prefix);
    let mut c = r.pools.commands.get().await.expect("conn");
    raw_set(&mut *c, &lease, "replica-b").await;
    let mut stale = item(&r, a, 1, vec![set(&r, "v", "from a")], None);
    stale.fence = Some((lease.clone(), "replica-a".into()));
    let mut current = item(&r, a, 1, vec![set(&r, "v", "from b")], None);
    current.fence = Some((lease, "replica-b".into()));
    let out = apply_batch(&mut *c, &[stale, current])
        .await
        .expect("apply");
    assert_eq!(out, vec![ApplyOutcome::Fenced, ApplyOutcome::Applied]);
    assert_eq!(
        get(&r, &format!("{}v", r.prefix)).await.as_deref(),
        Some("from b")
    );
}

#[tokio::test]
async fn one_refused_item_leaves_the_others_of_its_call_applied() {
    let r = TestRedis::new().await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let mut c = r.pools.commands.get().await.expect("conn");
    let hash = format!("{}h", r.prefix);
    raw_set(&mut *c, &hash, "not a hash").await;
    let refused = item(
        &r,
        b,
        1,
        vec![
            set(&r, "b", "x"),
            Op::HSet {
                key: hash,
                field: "f".into(),
                value: "v".into(),
            },
        ],
        None,
    );
    let out = apply_batch(
        &mut *c,
        &[
            item(&r, a, 1, vec![set(&r, "a", "one")], None),
            refused,
            item(&r, a, 2, vec![set(&r, "a", "two")], None),
        ],
    )
    .await
    .expect("apply");
    assert_eq!(out[0], ApplyOutcome::Applied);
    assert!(
        matches!(&out[1], ApplyOutcome::Rejected(m) if m.contains("WRONGTYPE")),
        "{out:?}"
    );
    assert_eq!(out[2], ApplyOutcome::Applied);
    assert_eq!(
        get(&r, &format!("{}a", r.prefix)).await.as_deref(),
        Some("two")
    );
    assert_eq!(get(&r, &format!("{}b", r.prefix)).await, None);
    let versions = format!("{}versions", r.prefix);
    let v = streams::apply::applied_version(&mut *c, &versions, b)
        .await
        .expect("version");
    assert_eq!(v, 0, "the refused item's version does not move");
}

#[tokio::test]
async fn a_batch_longer_than_one_script_call_applies_in_order() {
    let r = TestRedis::new().await;
    let a = Uuid::now_v7();
    let mut c = r.pools.commands.get().await.expect("conn");
    // 300 versions of one aggregate span three script calls; each call must see the last.
    let items: Vec<ApplyItem> = (1..=300)
        .map(|v| item(&r, a, v, vec![set(&r, "n", &v.to_string())], None))
        .collect();
    let out = apply_batch(&mut *c, &items).await.expect("apply");
    assert_eq!(out, vec![ApplyOutcome::Applied; 300]);
    assert_eq!(
        get(&r, &format!("{}n", r.prefix)).await.as_deref(),
        Some("300")
    );
    let again = apply_batch(&mut *c, &items[..2]).await.expect("apply");
    assert_eq!(
        again,
        vec![ApplyOutcome::Duplicate { current: 300 }; 2],
        "replays change nothing"
    );
}

#[tokio::test]
async fn each_event_is_checked_against_its_own_earlier_ops() {
    let r = TestRedis::new().await;
    let mut c = r.pools.commands.get().await.expect("conn");
    let h = format!("{}h", r.prefix);
    let _: () = redis::cmd("HSET")
        .arg(&h)
        .arg("text")
        .arg("abc")
        .arg("half")
        .arg("1.5")
        .query_async(&mut *c)
        .await
        .expect("hset");
    let hincr = |field: &str| Op::HIncrBy {
        key: h.clone(),
        field: field.into(),
        delta: 1,
    };
    let cases: Vec<(Vec<Op>, bool)> = vec![
        // HINCRBY would fail on a field an earlier op of the same event set to text.
        (
            vec![
                Op::HSet {
                    key: h.clone(),
                    field: "n".into(),
                    value: "x".into(),
                },
                hincr("n"),
            ],
            false,
        ),
        // Only integers: Lua's tonumber would accept "1.5", HINCRBY does not (and the HSET
        // before it must not land either).
        (
            vec![
                Op::HSet {
                    key: h.clone(),
                    field: "m".into(),
                    value: "1".into(),
                },
                hincr("half"),
            ],
            false,
        ),
        // A SET makes the key a string: a later hash op of the event would fail.
        (
            vec![
                set(&r, "h", "now a string"),
                Op::HSet {
                    key: h.clone(),
                    field: "f".into(),
                    value: "v".into(),
                },
            ],
            false,
        ),
        // A DEL frees the key: the stored text field is gone, so the HINCRBY is fine.
        (vec![Op::Del { key: h.clone() }, hincr("text")], true),
    ];
    for (n, (ops, fits)) in cases.into_iter().enumerate() {
        let out = apply_batch(&mut *c, &[item(&r, Uuid::now_v7(), 1, ops, None)])
            .await
            .expect("apply");
        if fits {
            assert_eq!(out, vec![ApplyOutcome::Applied], "case {n}");
        } else {
            assert!(
                matches!(&out[0], ApplyOutcome::Rejected(_)),
                "case {n}: {out:?}"
            );
            let fields: Vec<String> = redis::cmd("HKEYS")
                .arg(&h)
                .query_async(&mut *c)
                .await
                .expect("hkeys");
            assert_eq!(fields.len(), 2, "case {n} wrote nothing: {fields:?}");
        }
    }
    let text: Option<i64> = redis::cmd("HGET")
        .arg(&h)
        .arg("text")
        .query_async(&mut *c)
        .await
        .expect("hget");
    assert_eq!(text, Some(1), "DEL then HINCRBY applied");
}

#[tokio::test]
async fn an_error_no_check_foresaw_stays_with_its_own_event() {
    let r = TestRedis::new().await;
    let mut c = r.pools.commands.get().await.expect("conn");
    let (a, b, d, e) = (
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
    );
    // The acknowledgement of `b` names a "stream" that is a string: XACK raises, which no
    // check of the script foresees. A corrupt applied version for `d` is refused politely.
    let not_a_stream = format!("{}not-a-stream", r.prefix);
    let versions = format!("{}versions", r.prefix);
    raw_set(&mut *c, &not_a_stream, "x").await;
    let _: () = redis::cmd("HSET")
        .arg(&versions)
        .arg(d.to_string())
        .arg("garbage")
        .query_async(&mut *c)
        .await
        .expect("hset");
    let out = apply_batch(
        &mut *c,
        &[
            item(&r, a, 1, vec![set(&r, "a", "1")], None),
            item(
                &r,
                b,
                1,
                vec![set(&r, "b", "1")],
                Some((not_a_stream, "g".into(), "1-1".into())),
            ),
            item(&r, d, 1, vec![set(&r, "d", "1")], None),
            item(&r, e, 1, vec![set(&r, "e", "1")], None),
        ],
    )
    .await
    .expect("apply");
    assert!(
        matches!(
            out[0],
            ApplyOutcome::Applied | ApplyOutcome::Duplicate { current: 1 }
        ),
        "{out:?}"
    );
    assert!(
        matches!(&out[1], ApplyOutcome::Rejected(m) if m.contains("WRONGTYPE")),
        "{out:?}"
    );
    assert!(
        matches!(&out[2], ApplyOutcome::Rejected(m) if m.contains("not a number")),
        "{out:?}"
    );
    assert_eq!(out[3], ApplyOutcome::Applied, "{out:?}");
    for (k, want) in [("a", Some("1")), ("d", None), ("e", Some("1"))] {
        assert_eq!(
            get(&r, &format!("{}{k}", r.prefix)).await.as_deref(),
            want,
            "{k}"
        );
    }
}

/// A target writing `v` = `value` into generation `g` under `r`'s prefix.
fn target(r: &TestRedis, g: i64, value: &str, marker: bool) -> streams::Target {
    let base = format!("{}g{g}:", r.prefix);
    streams::Target {
        versions_key: format!("{base}versions"),
        marker: marker.then(|| format!("{base}marker")),
        ops: vec![Op::Set {
            key: format!("{base}v"),
            value: value.into(),
        }],
    }
}

async fn version(r: &TestRedis, g: i64, a: Uuid) -> Option<String> {
    let mut c = r.pools.commands.get().await.expect("conn");
    redis::cmd("HGET")
        .arg(format!("{}g{g}:versions", r.prefix))
        .arg(a.to_string())
        .query_async(&mut c)
        .await
        .expect("hget")
}

#[tokio::test]
async fn an_event_goes_to_every_generation_all_or_nothing() {
    let r = TestRedis::new().await;
    let a = Uuid::now_v7();
    let mut c = r.pools.commands.get().await.expect("conn");
    let two = |version: i64, value: &str| ApplyItem {
        targets: vec![target(&r, 1, value, false), target(&r, 2, value, false)],
        ..ApplyItem::new(String::new(), a, version, vec![])
    };
    // Both generations take version 1.
    let out = apply_batch(&mut *c, &[two(1, "one")]).await.expect("apply");
    assert_eq!(out, vec![ApplyOutcome::Applied]);
    assert_eq!(
        (version(&r, 1, a).await, version(&r, 2, a).await),
        (Some("1".into()), Some("1".into()))
    );
    // Generation 2 misses version 2 (a build catching up): version 3 goes nowhere, not even to
    // generation 1, which could take it.
    let only_first = ApplyItem {
        targets: vec![target(&r, 1, "two", false)],
        ..ApplyItem::new(String::new(), a, 2, vec![])
    };
    apply_batch(&mut *c, &[only_first]).await.expect("apply");
    let out = apply_batch(&mut *c, &[two(3, "three")])
        .await
        .expect("apply");
    assert_eq!(
        out,
        vec![ApplyOutcome::Gap { current: 1 }],
        "the gap of the generation that has it"
    );
    assert_eq!(version(&r, 1, a).await.as_deref(), Some("2"));
    assert_eq!(
        get(&r, &format!("{}g1:v", r.prefix)).await.as_deref(),
        Some("two")
    );
    // Once generation 2 has version 2, version 3 applies in both; a duplicate where present.
    let catch_up = ApplyItem {
        targets: vec![target(&r, 2, "two", false)],
        ..ApplyItem::new(String::new(), a, 2, vec![])
    };
    apply_batch(&mut *c, &[catch_up]).await.expect("apply");
    let out = apply_batch(&mut *c, &[two(3, "three"), two(3, "three")])
        .await
        .expect("apply");
    assert_eq!(
        out,
        vec![
            ApplyOutcome::Applied,
            ApplyOutcome::Duplicate { current: 3 }
        ]
    );
    assert_eq!(
        get(&r, &format!("{}g2:v", r.prefix)).await.as_deref(),
        Some("three")
    );
}

#[tokio::test]
async fn an_apply_planned_for_other_generations_or_a_model_without_its_marker_writes_nothing() {
    let r = TestRedis::new().await;
    let a = Uuid::now_v7();
    let mut c = r.pools.commands.get().await.expect("conn");
    let pointer = format!("{}pointer", r.prefix);
    let guarded = |active: Option<i64>, building: Option<i64>| ApplyItem {
        targets: vec![target(&r, 1, "x", false)],
        guard: Some(streams::GenerationGuard {
            key: pointer.clone(),
            expected: streams::GenerationState { active, building },
        }),
        ..ApplyItem::new(String::new(), a, 1, vec![])
    };
    let _: i64 = redis::cmd("HSET")
        .arg(&pointer)
        .arg("active")
        .arg(1)
        .arg("building")
        .arg(2)
        .query_async(&mut *c)
        .await
        .expect("hset");
    // Planned before the build began: refused, so generation 2 cannot miss it.
    let out = apply_batch(&mut *c, &[guarded(Some(1), None)])
        .await
        .expect("apply");
    assert_eq!(out, vec![ApplyOutcome::Moved]);
    assert_eq!(version(&r, 1, a).await, None);
    // The served generation lost its marker: held back, nothing written, not acknowledged.
    let marked = ApplyItem {
        targets: vec![target(&r, 1, "x", true)],
        ..guarded(Some(1), Some(2))
    };
    let out = apply_batch(&mut *c, std::slice::from_ref(&marked))
        .await
        .expect("apply");
    assert_eq!(out, vec![ApplyOutcome::NotReady]);
    assert_eq!(version(&r, 1, a).await, None);
    raw_set(&mut *c, &format!("{}g1:marker", r.prefix), "{}").await;
    let out = apply_batch(&mut *c, &[marked]).await.expect("apply");
    assert_eq!(out, vec![ApplyOutcome::Applied]);
}

/// `ZKeepHighest` after each `ZADD` keeps the top N whatever order the adds come in, and a
/// key of another type is refused before anything is written.
#[tokio::test]
async fn keep_highest_keeps_the_top_members_in_any_order_of_adds() {
    let r = TestRedis::new().await;
    let key = format!("{}recent", r.prefix);
    let add = |score: f64, member: &str| {
        vec![
            Op::ZAdd {
                key: key.clone(),
                score,
                member: member.into(),
            },
            Op::ZKeepHighest {
                key: key.clone(),
                count: 3,
            },
        ]
    };
    let mut c = r.pools.commands.get().await.expect("conn");
    // Five aggregates add one member each, newest first: the reverse of time order.
    let scores = [5.0, 4.0, 1.0, 3.0, 2.0];
    let items: Vec<ApplyItem> = scores
        .iter()
        .map(|s| item(&r, Uuid::now_v7(), 1, add(*s, &format!("m{s}")), None))
        .collect();
    let outcomes = apply_batch(&mut *c, &items).await.expect("apply");
    assert!(
        outcomes.iter().all(|o| *o == ApplyOutcome::Applied),
        "{outcomes:?}"
    );
    let kept: Vec<String> = redis::cmd("ZREVRANGE")
        .arg(&key)
        .arg(0)
        .arg(-1)
        .query_async(&mut *c)
        .await
        .expect("zrange");
    assert_eq!(kept, vec!["m5", "m4", "m3"]);

    raw_set(&mut *c, &format!("{}plain", r.prefix), "x").await;
    let wrong = item(
        &r,
        Uuid::now_v7(),
        1,
        vec![
            set(&r, "untouched", "y"),
            Op::ZKeepHighest {
                key: format!("{}plain", r.prefix),
                count: 1,
            },
        ],
        None,
    );
    let outcomes = apply_batch(&mut *c, &[wrong]).await.expect("apply");
    assert!(
        matches!(outcomes[0], ApplyOutcome::Rejected(_)),
        "{outcomes:?}"
    );
    assert_eq!(get(&r, &format!("{}untouched", r.prefix)).await, None);
}
