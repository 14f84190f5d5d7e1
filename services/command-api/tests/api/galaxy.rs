//! The galaxy commands over HTTP: their answers, the rows and events they write, and every bad
//! input of http-api.md answered with its 4xx while nothing is written.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

/// Rows of every galaxy table, then `event_store` and `outbox`.
async fn galaxy_counts(app: &TestApp) -> [i64; 6] {
    let c = app.db.pool.get().await.expect("client");
    let row = c
        .query_one(
            "SELECT (SELECT count(*) FROM knowledge_nodes), (SELECT count(*) FROM knowledge_relations),
                    (SELECT count(*) FROM user_nodes), (SELECT count(*) FROM study_records),
                    (SELECT count(*) FROM event_store), (SELECT count(*) FROM outbox)",
            &[],
        )
        .await
        .expect("counts");
    std::array::from_fn(|i| row.get(i))
}

async fn event_types(app: &TestApp, aggregate: &str) -> Vec<String> {
    let c = app.db.pool.get().await.expect("client");
    c.query(
        "SELECT event_type FROM event_store WHERE aggregate_id = $1::text::uuid ORDER BY aggregate_version",
        &[&aggregate],
    )
    .await
    .expect("events")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn node(app: &TestApp, user: Uuid, body: Value) -> Answer {
    app.send(
        Method::POST,
        "/v1/galaxy/nodes",
        Some(user),
        Some(body),
        &[],
    )
    .await
}

async fn post(app: &TestApp, user: Uuid, path: &str, body: Option<Value>) -> Answer {
    app.send(Method::POST, path, Some(user), body, &[]).await
}

fn study_body() -> Value {
    json!({"minutes": 30, "performance_score": 0.85, "activity_type": "practice"})
}

#[tokio::test]
async fn nodes_relations_unlock_expand_and_study_answer_and_write_as_documented() {
    let app = spawn_app().await;
    let user = Uuid::now_v7();

    let root = node(
        &app,
        user,
        json!({"name": " Ownership ", "keywords": ["rust"], "importance_level": 5, "is_seed": true, "subject_id": 7}),
    )
    .await;
    assert_eq!(root.status, StatusCode::CREATED, "{}", root.body);
    let root_id = id_of(&root);
    assert_eq!(
        root.headers["location"].to_str().ok(),
        Some(format!("/v1/galaxy/nodes/{root_id}").as_str())
    );
    assert_eq!(
        (
            root.body["version"].as_i64(),
            root.body["event_ids"].as_array().map(Vec::len)
        ),
        (Some(1), Some(1))
    );
    let child = node(
        &app,
        user,
        json!({"name": "Borrowing", "parent_id": root_id}),
    )
    .await;
    assert_eq!(child.status, StatusCode::CREATED);
    let child_id = id_of(&child);

    let relation = json!({"source_node_id": child_id, "target_node_id": root_id,
                          "relation_type": "prerequisite", "strength": 0.3});
    let rel = post(&app, user, "/v1/galaxy/relations", Some(relation.clone())).await;
    assert_eq!(rel.status, StatusCode::CREATED, "{}", rel.body);
    assert_eq!(
        (id_of(&rel), rel.body["version"].as_i64()),
        (child_id.clone(), Some(2)),
        "an event of the source node"
    );
    let again = post(&app, user, "/v1/galaxy/relations", Some(relation)).await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::CONFLICT, "conflict")
    );
    let other_type = json!({"source_node_id": child_id, "target_node_id": root_id,
                            "relation_type": "related"});
    assert_eq!(
        post(&app, user, "/v1/galaxy/relations", Some(other_type))
            .await
            .status,
        StatusCode::CREATED
    );

    let expand = format!("/v1/galaxy/nodes/{root_id}/expand");
    let study = format!("/v1/galaxy/nodes/{root_id}/study");
    let early = post(&app, user, &expand, None).await;
    assert_eq!(
        (early.status, early.code()),
        (StatusCode::CONFLICT, "invalid_transition")
    );
    let early = post(&app, user, &study, Some(study_body())).await;
    assert_eq!(
        (early.status, early.code()),
        (StatusCode::CONFLICT, "invalid_transition")
    );

    let unlock = format!("/v1/galaxy/nodes/{root_id}/unlock");
    let first = post(&app, user, &unlock, None).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(first.body["changed"], true);
    let progress = id_of(&first);
    assert_ne!(
        progress, root_id,
        "the caller's progress is its own aggregate"
    );
    let before = galaxy_counts(&app).await;
    let second = post(&app, user, &unlock, None).await;
    assert_eq!(
        (
            second.status,
            &second.body["changed"],
            second.body["event_ids"].as_array().map(Vec::len)
        ),
        (StatusCode::OK, &json!(false), Some(0))
    );
    assert_eq!(galaxy_counts(&app).await, before, "no event, no outbox row");

    let expanded = post(&app, user, &expand, None).await;
    assert_eq!(
        (expanded.status, &expanded.body["changed"]),
        (StatusCode::OK, &json!(true))
    );
    let before = galaxy_counts(&app).await;
    let twice = post(&app, user, &expand, None).await;
    assert_eq!(
        (twice.status, &twice.body["changed"]),
        (StatusCode::OK, &json!(false))
    );
    assert_eq!(galaxy_counts(&app).await, before);

    let studied = post(&app, user, &study, Some(study_body())).await;
    assert_eq!(studied.status, StatusCode::OK, "{}", studied.body);
    assert_eq!(studied.body["event_ids"].as_array().map(Vec::len), Some(2));
    assert_eq!(studied.body["mastery_score"], 8.5);
    assert_eq!(studied.body["version"], 4);
    for _ in 0..10 {
        post(&app, user, &study, Some(study_body())).await;
    }
    let capped = post(&app, user, &study, Some(study_body())).await;
    assert_eq!(capped.body["mastery_score"], 100.0, "clamped");

    assert_eq!(
        event_types(&app, &progress).await[..4],
        [
            "galaxy.node.unlocked",
            "galaxy.node.expanded",
            "galaxy.study.recorded",
            "galaxy.mastery.updated"
        ]
    );
    assert_eq!(
        event_types(&app, &child_id).await,
        [
            "galaxy.node.created",
            "galaxy.relation.created",
            "galaxy.relation.created"
        ]
    );
    let c = app.db.pool.get().await.expect("client");
    let row = c
        .query_one(
            "SELECT mastery_score, study_count, total_minutes, is_collapsed FROM user_nodes WHERE id = $1::text::uuid",
            &[&progress],
        )
        .await
        .expect("row");
    assert_eq!(
        (
            row.get::<_, f64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
            row.get::<_, bool>(3)
        ),
        (100.0, 12, 360, false)
    );
    let [nodes, relations, user_nodes, studies, _, _] = galaxy_counts(&app).await;
    assert_eq!((nodes, relations, user_nodes, studies), (2, 2, 1, 12));
}

#[tokio::test]
async fn if_match_guards_relations_and_progress() {
    let app = spawn_app().await;
    let user = Uuid::now_v7();
    let a = id_of(&node(&app, user, json!({"name": "a"})).await);
    let b = id_of(&node(&app, user, json!({"name": "b"})).await);
    let rel = app
        .send(
            Method::POST,
            "/v1/galaxy/relations",
            Some(user),
            Some(json!({"source_node_id": a, "target_node_id": b, "relation_type": "extends"})),
            &[("if-match", "\"7\"")],
        )
        .await;
    assert_eq!(
        (rel.status, rel.code()),
        (StatusCode::PRECONDITION_FAILED, "version_mismatch")
    );
    let unlock = app
        .send(
            Method::POST,
            &format!("/v1/galaxy/nodes/{a}/unlock"),
            Some(user),
            None,
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(
        unlock.status,
        StatusCode::PRECONDITION_FAILED,
        "no progress yet: version 0"
    );
    post(&app, user, &format!("/v1/galaxy/nodes/{a}/unlock"), None).await;
    let stale = app
        .send(
            Method::POST,
            &format!("/v1/galaxy/nodes/{a}/expand"),
            Some(user),
            None,
            &[("if-match", "\"2\"")],
        )
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    let fresh = app
        .send(
            Method::POST,
            &format!("/v1/galaxy/nodes/{a}/expand"),
            Some(user),
            None,
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(
        (fresh.status, fresh.body["version"].as_i64()),
        (StatusCode::OK, Some(2))
    );
}

/// Every rejection of http-api.md for the galaxy: its status, code and field, and nothing
/// written.
#[tokio::test]
async fn every_bad_galaxy_input_is_rejected_with_its_code_and_writes_nothing() {
    let app = spawn_app().await;
    let user = Uuid::now_v7();
    let a = id_of(&node(&app, user, json!({"name": "a"})).await);
    let b = id_of(&node(&app, user, json!({"name": "b"})).await);
    let missing = Uuid::now_v7().to_string();
    let before = galaxy_counts(&app).await;

    let bad_nodes = [
        (json!({}), "name"),
        (json!({"name": "   "}), "name"),
        (json!({"name": "x".repeat(256)}), "name"),
        (json!({"name": "n", "name_en": "x".repeat(256)}), "name_en"),
        (
            json!({"name": "n", "description": "x".repeat(5001)}),
            "description",
        ),
        (json!({"name": "n", "keywords": vec!["k"; 21]}), "keywords"),
        (
            json!({"name": "n", "importance_level": 0}),
            "importance_level",
        ),
        (
            json!({"name": "n", "importance_level": 6}),
            "importance_level",
        ),
        (json!({"name": "n", "parent_id": missing}), "parent_id"),
        (json!({"name": "n", "parent_id": "not-a-uuid"}), "parent_id"),
        (json!({"name": "n", "subject_id": "seven"}), "subject_id"),
        (json!({"name": "n", "is_seed": "yes"}), "is_seed"),
        (json!({"name": "n", "colour": "red"}), "colour"),
    ];
    for (body, field) in bad_nodes {
        let a = node(&app, user, body.clone()).await;
        assert_eq!(
            (a.status, a.code(), a.field()),
            (StatusCode::BAD_REQUEST, "validation_failed", field),
            "{body}"
        );
    }

    let rel = |s: &str, t: &str, kind: &str, strength: Value| json!({"source_node_id": s, "target_node_id": t, "relation_type": kind, "strength": strength});
    let bad_relations = [
        (
            json!({"target_node_id": b, "relation_type": "related"}),
            "source_node_id",
        ),
        (
            json!({"source_node_id": a, "relation_type": "related"}),
            "target_node_id",
        ),
        (
            json!({"source_node_id": a, "target_node_id": b}),
            "relation_type",
        ),
        (rel(&missing, &b, "related", json!(0.5)), "source_node_id"),
        (rel(&a, &missing, "related", json!(0.5)), "target_node_id"),
        (rel(&a, &a, "related", json!(0.5)), "target_node_id"),
        (rel(&a, &b, "likes", json!(0.5)), "relation_type"),
        (rel(&a, &b, "related", json!(1.5)), "strength"),
        (rel(&a, &b, "related", json!(-0.1)), "strength"),
    ];
    for (body, field) in bad_relations {
        let r = post(&app, user, "/v1/galaxy/relations", Some(body.clone())).await;
        assert_eq!(
            (r.status, r.code(), r.field()),
            (StatusCode::BAD_REQUEST, "validation_failed", field),
            "{body}"
        );
    }

    post(&app, user, &format!("/v1/galaxy/nodes/{a}/unlock"), None).await;
    let before_study = galaxy_counts(&app).await;
    let study = format!("/v1/galaxy/nodes/{a}/study");
    let bad_studies = [
        (
            json!({"performance_score": 0.5, "activity_type": "study"}),
            "minutes",
        ),
        (
            json!({"minutes": 0, "performance_score": 0.5, "activity_type": "study"}),
            "minutes",
        ),
        (
            json!({"minutes": 1441, "performance_score": 0.5, "activity_type": "study"}),
            "minutes",
        ),
        (
            json!({"minutes": 5, "activity_type": "study"}),
            "performance_score",
        ),
        (
            json!({"minutes": 5, "performance_score": 1.01, "activity_type": "study"}),
            "performance_score",
        ),
        (
            json!({"minutes": 5, "performance_score": 0.5}),
            "activity_type",
        ),
        (
            json!({"minutes": 5, "performance_score": 0.5, "activity_type": "nap"}),
            "activity_type",
        ),
    ];
    for (body, field) in bad_studies {
        let s = post(&app, user, &study, Some(body.clone())).await;
        assert_eq!(
            (s.status, s.code(), s.field()),
            (StatusCode::BAD_REQUEST, "validation_failed", field),
            "{body}"
        );
    }
    assert_eq!(galaxy_counts(&app).await, before_study);

    for path in ["unlock", "expand"] {
        let bad_id = post(&app, user, &format!("/v1/galaxy/nodes/nope/{path}"), None).await;
        assert_eq!(
            (bad_id.status, bad_id.field()),
            (StatusCode::BAD_REQUEST, "id")
        );
        let unknown = post(
            &app,
            user,
            &format!("/v1/galaxy/nodes/{missing}/{path}"),
            None,
        )
        .await;
        assert_eq!(
            (unknown.status, unknown.code()),
            (StatusCode::NOT_FOUND, "not_found")
        );
    }
    let unknown = post(
        &app,
        user,
        &format!("/v1/galaxy/nodes/{missing}/study"),
        Some(study_body()),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let locked = post(
        &app,
        user,
        &format!("/v1/galaxy/nodes/{b}/study"),
        Some(study_body()),
    )
    .await;
    assert_eq!(
        (locked.status, locked.code()),
        (StatusCode::CONFLICT, "invalid_transition")
    );
    let raw = app
        .http
        .post(format!("{}/v1/galaxy/nodes", app.base))
        .bearer_auth(app.token(user))
        .header("content-type", "text/plain")
        .body(r#"{"name": "n"}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(raw.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let anonymous = app
        .send(
            Method::POST,
            "/v1/galaxy/nodes",
            None,
            Some(json!({"name": "n"})),
            &[],
        )
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    let after = galaxy_counts(&app).await;
    assert_eq!(
        [after[0], after[1], after[3]],
        [before[0], before[1], before[3]],
        "no node, relation or study written"
    );
    assert_eq!(
        (after[2], after[4] - before[4]),
        (1, 1),
        "only the one unlock and its event"
    );
}

/// Relations written both ways at once between the same nodes: each locks its source row,
/// and the relation row's foreign key share-locks the target. With `FOR UPDATE` on the source
/// the two orders deadlocked (500); `FOR NO KEY UPDATE` does not conflict with the key-share.
#[tokio::test]
async fn relations_written_both_ways_at_once_all_succeed() {
    let app = spawn_app().await;
    let user = Uuid::now_v7();
    let mut ids = vec![];
    for i in 0..4 {
        let created = node(&app, user, json!({"name": format!("n{i}")})).await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
        ids.push(created.body["id"].as_str().expect("id").to_owned());
    }
    let mut calls = vec![];
    for (i, a) in ids.iter().enumerate() {
        for b in ids.iter().skip(i + 1) {
            for kind in ["prerequisite", "related", "extends"] {
                for (s, t) in [(a, b), (b, a)] {
                    let body =
                        json!({"source_node_id": s, "target_node_id": t, "relation_type": kind});
                    calls.push(post(&app, user, "/v1/galaxy/relations", Some(body)));
                }
            }
        }
    }
    let answers = futures::future::join_all(calls).await;
    for a in &answers {
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    }
    let [_, relations, ..] = galaxy_counts(&app).await;
    assert_eq!(relations, 36);
}
