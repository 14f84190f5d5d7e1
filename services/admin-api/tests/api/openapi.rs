//! admin-api's OpenAPI document: complete, in agreement with the routing, and true to what the
//! API answers (schemathesis).

use std::collections::BTreeSet;
use std::time::Duration;

use test_kit::openapi::{assert_routing_agrees, fetch_document, fuzz_with, operations};

use crate::helpers::*;

#[tokio::test]
async fn the_document_lists_every_route_and_the_routing_agrees_with_it() {
    let app = spawn_app().await;
    let doc = fetch_document(&app.http, &app.base).await;
    assert_eq!(doc["info"]["title"], "admin-api");
    let listed: BTreeSet<(String, Vec<String>)> = operations(&doc).into_iter().collect();
    let expected: BTreeSet<(String, Vec<String>)> = [
        ("/health/cqrs", &["GET"][..]),
        ("/admin/cqrs/projections", &["GET"]),
        ("/admin/cqrs/projections/{name}", &["GET"]),
        ("/admin/cqrs/projections/{name}/pause", &["POST"]),
        ("/admin/cqrs/projections/{name}/resume", &["POST"]),
        ("/admin/cqrs/projections/{name}/reset", &["POST"]),
        ("/admin/cqrs/projections/{name}/rebuild", &["POST"]),
        ("/admin/cqrs/projections/{name}/snapshot", &["POST"]),
        ("/admin/cqrs/snapshots/{name}/count", &["GET"]),
        ("/admin/cqrs/operations/{id}", &["GET"]),
        ("/admin/cqrs/dlq", &["GET"]),
        ("/admin/cqrs/dlq/stats", &["GET"]),
        ("/admin/cqrs/dlq/retry", &["POST"]),
        ("/admin/cqrs/dlq/{id}/retry", &["POST"]),
        ("/admin/cqrs/dlq/{id}", &["DELETE"]),
        ("/admin/cqrs/outbox/stats", &["GET"]),
        ("/admin/cqrs/streams", &["GET"]),
        ("/admin/cqrs/audit", &["GET"]),
        ("/healthz", &["GET"]),
        ("/readyz", &["GET"]),
        ("/metrics", &["GET"]),
        ("/openapi.json", &["GET"]),
    ]
    .into_iter()
    .map(|(p, m)| (p.to_owned(), m.iter().map(|m| (*m).to_owned()).collect()))
    .collect();
    assert_eq!(listed, expected);
    let scheme = &doc["components"]["securitySchemes"]["admin_token"];
    assert_eq!(scheme["scheme"], "bearer");
    for name in [
        "ProjectionStatus",
        "OperationView",
        "DeadLetterPage",
        "CqrsHealth",
        "AuditPage",
        "ErrorBody",
    ] {
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{name} missing"
        );
    }
    // Every admin route needs the token; health and the document do not.
    for (path, methods) in operations(&doc) {
        for method in methods {
            let op = &doc["paths"][&path][method.to_lowercase()];
            let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
            assert_eq!(secured, path.starts_with("/admin/"), "{method} {path}");
        }
    }

    // Concrete paths that exist: a known projection, a dead letter (a lone one that still
    // fails, so a retry leaves it in place) and, for the operation, the dead letter's id is
    // not a UUID: 400 shows the route is there.
    let letter = app.plant_dead_letter().await;
    let bearer = app.operator();
    assert_routing_agrees(&app.http, &app.base, &doc, &bearer, async |path: &str| {
        path.replace("{name}", "task_projection")
            .replace("{id}", &letter)
    })
    .await;
}

/// schemathesis against the spawned app, with the operator token: no 5xx, and nothing the
/// document does not promise.
#[tokio::test]
async fn schemathesis_finds_no_answer_outside_the_document() {
    if !test_kit::openapi::python3_present() {
        eprintln!("SKIPPED: python3 is not installed, so schemathesis cannot run");
        return;
    }
    let app = spawn_app().await;
    // A dead letter to find, re-drive and discard.
    app.plant_dead_letter().await;
    // /health/cqrs rightly answers 503 here (no relay, no projector runs): the pipeline tests
    // check it against live processes.
    let outcome = fuzz_with(
        &app.base,
        &app.operator(),
        30,
        Duration::from_secs(600),
        &["--exclude-path", "/health/cqrs"],
    )
    .await;
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

/// A dead letter with no aggregate (its envelope was unreadable) is re-driven (still failing:
/// 409, and it stays) and discarded like any other.
#[tokio::test]
async fn a_lone_dead_letter_is_retried_and_discarded() {
    let app = spawn_app().await;
    let letter = app.plant_dead_letter().await;
    let call = |method: reqwest::Method, path: String| {
        app.http
            .request(method, format!("{}{path}", app.base))
            .header("authorization", app.operator())
            .send()
    };
    let retried = call(
        reqwest::Method::POST,
        format!("/admin/cqrs/dlq/{letter}/retry"),
    )
    .await
    .expect("retry");
    assert_eq!(retried.status(), 409);
    let listed: serde_json::Value = call(reqwest::Method::GET, "/admin/cqrs/dlq".into())
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(listed["items"][0]["id"], letter.as_str());
    assert_eq!(listed["items"][0]["error_type"], "malformed_envelope");

    let discarded = call(
        reqwest::Method::DELETE,
        format!("/admin/cqrs/dlq/{letter}?reason=unreadable"),
    )
    .await
    .expect("discard");
    assert_eq!(discarded.status(), 200);
    let body: serde_json::Value = discarded.json().await.expect("json");
    assert_eq!(body["discarded"], 1);
    let listed: serde_json::Value = call(reqwest::Method::GET, "/admin/cqrs/dlq".into())
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(listed["items"], serde_json::json!([]));
}
