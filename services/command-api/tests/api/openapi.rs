//! The OpenAPI document: served without credentials, complete, in agreement with the routing,
//! and true to what the API answers (schemathesis).

use std::collections::BTreeSet;

use reqwest::StatusCode;
use test_kit::openapi::{assert_routing_agrees, fetch_document, fuzz, operations};
use uuid::Uuid;

use crate::helpers::*;

#[tokio::test]
async fn the_document_lists_every_route_and_the_routing_agrees_with_it() {
    let app = spawn_app().await;
    let user = Uuid::now_v7();
    let doc = fetch_document(&app.http, &app.base).await;
    assert_eq!(doc["info"]["title"], "command-api");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let listed: BTreeSet<(String, Vec<String>)> = operations(&doc).into_iter().collect();
    let expected: BTreeSet<(String, Vec<String>)> = [
        ("/v1/tasks", &["POST"][..]),
        ("/v1/tasks/{id}", &["PATCH", "DELETE"]),
        ("/v1/tasks/{id}/start", &["POST"]),
        ("/v1/tasks/{id}/complete", &["POST"]),
        ("/v1/tasks/{id}/abandon", &["POST"]),
        ("/v1/posts", &["POST"]),
        ("/v1/posts/{id}", &["PATCH", "DELETE"]),
        ("/v1/posts/{id}/like", &["PUT", "DELETE"]),
        ("/v1/galaxy/nodes", &["POST"]),
        ("/v1/galaxy/relations", &["POST"]),
        ("/v1/galaxy/nodes/{id}/unlock", &["POST"]),
        ("/v1/galaxy/nodes/{id}/expand", &["POST"]),
        ("/v1/galaxy/nodes/{id}/study", &["POST"]),
        ("/healthz", &["GET"]),
        ("/readyz", &["GET"]),
        ("/metrics", &["GET"]),
        ("/openapi.json", &["GET"]),
    ]
    .into_iter()
    .map(|(p, m)| (p.to_owned(), m.iter().map(|m| (*m).to_owned()).collect()))
    .collect();
    assert_eq!(listed, expected);
    let schemes = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(
        (schemes["scheme"].as_str(), schemes["bearerFormat"].as_str()),
        (Some("bearer"), Some("JWT"))
    );
    for name in [
        "ErrorBody",
        "CommandAccepted",
        "CreateTaskBody",
        "UpdateTaskBody",
        "CreatePostBody",
        "UpdatePostBody",
        "CreateNodeBody",
        "CreateRelationBody",
        "StudyBody",
        "StudyAccepted",
    ] {
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{name} missing"
        );
    }
    let create = &doc["components"]["schemas"]["CreateTaskBody"]["properties"];
    assert_eq!(create["title"]["maxLength"], 255);
    assert_eq!(create["estimated_minutes"]["maximum"], 1440);

    // A path with an id gets a task, post or node of its own for each call: a call may delete
    // it.
    let bearer = format!("Bearer {}", app.token(user));
    assert_routing_agrees(&app.http, &app.base, &doc, &bearer, async |path: &str| {
        let owner = if path.starts_with("/v1/posts/{id}") {
            Some(("/v1/posts", serde_json::json!({"content": "hello"})))
        } else if path.starts_with("/v1/galaxy/nodes/{id}") {
            Some(("/v1/galaxy/nodes", serde_json::json!({"name": "n"})))
        } else {
            None
        };
        if let Some((collection, body)) = owner {
            let created = app
                .send(
                    reqwest::Method::POST,
                    collection,
                    Some(user),
                    Some(body),
                    &[],
                )
                .await;
            assert_eq!(created.status, StatusCode::CREATED);
            path.replace("{id}", &id_of(&created))
        } else if path.contains("{id}") {
            let created = app.create(user).await;
            assert_eq!(created.status, StatusCode::CREATED);
            path.replace("{id}", &id_of(&created))
        } else {
            path.to_owned()
        }
    })
    .await;
}

/// schemathesis against the spawned app: no 5xx, and nothing the document does not promise.
#[tokio::test]
async fn schemathesis_finds_no_answer_outside_the_document() {
    if !test_kit::openapi::python3_present() {
        eprintln!("SKIPPED: python3 is not installed, so schemathesis cannot run");
        return;
    }
    let app = spawn_app().await;
    let bearer = format!(
        "Bearer {}",
        app.jwt
            .issue(Uuid::now_v7(), Duration::from_secs(3600))
            .expect("token")
    );
    let outcome = fuzz(&app.base, &bearer, 30, Duration::from_secs(600)).await;
    println!(
        "{}\nschemathesis took {:?}",
        outcome.report, outcome.elapsed
    );
    assert!(
        outcome.passed,
        "schemathesis found problems:\n{}",
        outcome.report
    );
}
