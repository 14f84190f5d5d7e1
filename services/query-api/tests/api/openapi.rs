//! The OpenAPI document: served without credentials, complete, in agreement with the routing,
//! and true to what the API answers (schemathesis).

use std::collections::BTreeSet;

use reqwest::StatusCode;
use task::domain::TaskCommand;
use test_kit::openapi::{assert_routing_agrees, fetch_document, fuzz, operations};
use uuid::Uuid;

use crate::helpers::*;
use crate::posts::Community;

#[tokio::test]
async fn the_document_lists_every_route_and_the_routing_agrees_with_it() {
    let mut app = spawn_app().await;
    let user = Uuid::now_v7();
    let (task, created) = app.create_event(user, "Read");
    app.publish(&[created]).await;
    app.project().await;
    let mut community = Community::new(&app).await;
    let post = community
        .create(&mut app, user, community::Visibility::Public)
        .await;

    let doc = fetch_document(&app.http, &app.base).await;
    assert_eq!(doc["info"]["title"], "query-api");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let listed: BTreeSet<(String, Vec<String>)> = operations(&doc).into_iter().collect();
    let expected: BTreeSet<(String, Vec<String>)> = [
        "/v1/tasks/{id}",
        "/v1/me/tasks",
        "/v1/me/task-stats",
        "/v1/posts/{id}",
        "/v1/feed",
        "/v1/users/{user_id}/posts",
        "/v1/galaxy/nodes/{id}",
        "/v1/galaxy/nodes/{id}/relations",
        "/v1/me/galaxy",
        "/v1/me/galaxy/studies",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ]
    .into_iter()
    .map(|p| (p.to_owned(), vec!["GET".to_owned()]))
    .collect();
    assert_eq!(listed, expected);
    let schemes = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(
        (schemes["scheme"].as_str(), schemes["bearerFormat"].as_str()),
        (Some("bearer"), Some("JWT"))
    );
    for name in [
        "ErrorBody",
        "TaskView",
        "TaskStats",
        "TaskStatus",
        "PostView",
        "Visibility",
        "NodeView",
        "RelationsView",
        "UserNodeView",
        "GalaxyStats",
        "StudyRecordView",
    ] {
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{name} missing"
        );
    }
    let list = &doc["paths"]["/v1/me/tasks"]["get"];
    let params: BTreeSet<&str> = list["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for name in [
        "status",
        "limit",
        "cursor",
        "wait_ms",
        "X-Consistency-Token",
        "x-request-id",
    ] {
        assert!(params.contains(name), "{name} not documented: {params:?}");
    }

    let bearer = format!(
        "Bearer {}",
        app.jwt.issue(user, Duration::from_secs(60)).expect("token")
    );
    let id = task.id.to_string();
    let (node, node_created) = crate::galaxy::node_event(&mut app, user, "n", None);
    app.publish_to("galaxy", &[node_created]).await;
    app.project().await;
    let node = node.id.to_string();
    assert_routing_agrees(&app.http, &app.base, &doc, &bearer, async |path: &str| {
        if path.starts_with("/v1/posts/") {
            path.replace("{id}", &post.to_string())
        } else if path.starts_with("/v1/galaxy/") {
            path.replace("{id}", &node)
        } else {
            path.replace("{id}", &id)
                .replace("{user_id}", &user.to_string())
        }
    })
    .await;
}

/// schemathesis against the spawned app, whose caller owns a few tasks: no 5xx, and nothing
/// the document does not promise.
#[tokio::test]
async fn schemathesis_finds_no_answer_outside_the_document() {
    if !test_kit::openapi::python3_present() {
        eprintln!("SKIPPED: python3 is not installed, so schemathesis cannot run");
        return;
    }
    let mut app = spawn_app().await;
    let user = Uuid::now_v7();
    let mut envelopes = vec![];
    for title in ["Read", "Practise", "Plan"] {
        let (task, created) = app.create_event(user, title);
        envelopes.push(created);
        if title != "Plan" {
            let (_, started) = app.command_event(&task, TaskCommand::Start);
            envelopes.push(started);
        }
    }
    app.publish(&envelopes).await;
    // And a corner of the galaxy: a node the caller unlocked and studied.
    let (node, created) = crate::galaxy::node_event(&mut app, user, "n", None);
    let (p, mut galaxy) = crate::galaxy::progress_events(
        &mut app,
        user,
        node.id,
        None,
        galaxy::domain::UserNodeCommand::Unlock,
    );
    let study = galaxy::domain::UserNodeCommand::Study(galaxy::domain::Study {
        minutes: 5,
        performance_score: 0.5,
        activity_type: galaxy::domain::ActivityType::Study,
    });
    galaxy.extend(crate::galaxy::progress_events(&mut app, user, node.id, Some(&p), study).1);
    galaxy.insert(0, created);
    app.publish_to("galaxy", &galaxy).await;
    app.project().await;
    let mut community = Community::new(&app).await;
    for visibility in [
        community::Visibility::Public,
        community::Visibility::Private,
    ] {
        let post = community.create(&mut app, user, visibility).await;
        community
            .command(&mut app, user, post, community::domain::PostCommand::Like)
            .await;
    }
    let (status, _, body) = app.get(user, "/v1/me/task-stats", &[]).await;
    assert_eq!(
        (status, body["in_progress_tasks"].as_i64()),
        (StatusCode::OK, Some(2))
    );

    let bearer = format!(
        "Bearer {}",
        app.jwt
            .issue(user, Duration::from_secs(3600))
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
