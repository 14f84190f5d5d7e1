//! The galaxy reads over HTTP, against read models the real projector built from a stream.

use events::{Committed, EventEnvelope, commit};
use galaxy::domain::{
    ActivityType, CreateNode, CreateRelation, RelationType, Study, UserNodeCommand,
    decide_create_node, decide_relation, decide_user_node, user_node_id,
};
use galaxy::{KnowledgeNode, UserNode};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;

/// A node's creation (not yet published).
pub fn node_event(
    app: &mut TestApp,
    user: Uuid,
    name: &str,
    parent: Option<Uuid>,
) -> (KnowledgeNode, EventEnvelope) {
    let cmd = CreateNode {
        id: Uuid::now_v7(),
        name: name.into(),
        name_en: None,
        description: Some("d".into()),
        keywords: vec!["k".into()],
        importance_level: 2,
        parent_id: parent,
        subject_id: Some(3),
        is_seed: false,
    };
    let events = decide_create_node(user, &cmd);
    let ctx = app.clock.context(user);
    let Committed {
        state,
        mut envelopes,
    } = commit::<KnowledgeNode>(None, 0, cmd.id, &events, &ctx).expect("evolve");
    (state.expect("node"), envelopes.remove(0))
}

/// `cmd` of `user` on `node`, given the progress so far (not yet published).
pub fn progress_events(
    app: &mut TestApp,
    user: Uuid,
    node: Uuid,
    progress: Option<&UserNode>,
    cmd: UserNodeCommand,
) -> (UserNode, Vec<EventEnvelope>) {
    let events = decide_user_node(user, node, progress, cmd).expect("allowed");
    let ctx = app.clock.context(user);
    let version = progress.map_or(0, |p| p.version);
    let Committed { state, envelopes } = commit(
        progress.cloned(),
        version,
        user_node_id(user, node),
        &events,
        &ctx,
    )
    .expect("evolve");
    (state.expect("progress"), envelopes)
}

fn study(minutes: i32, score: f64) -> UserNodeCommand {
    UserNodeCommand::Study(Study {
        minutes,
        performance_score: score,
        activity_type: ActivityType::Review,
    })
}

#[tokio::test]
async fn nodes_relations_progress_and_studies_read_as_projected() {
    let mut app = spawn_app().await;
    let user = Uuid::now_v7();
    let (root, e1) = node_event(&mut app, user, "root", None);
    let (child, e2) = node_event(&mut app, user, "child", Some(root.id));
    let events = decide_relation(
        &CreateRelation {
            source_node_id: child.id,
            target_node_id: root.id,
            relation_type: RelationType::Extends,
            strength: 0.1 + 0.2,
        },
        false,
    )
    .expect("ok");
    let ctx = app.clock.context(user);
    let Committed { envelopes: rel, .. } =
        commit(Some(child.clone()), 1, child.id, &events, &ctx).expect("evolve");
    let (p, unlock) = progress_events(&mut app, user, root.id, None, UserNodeCommand::Unlock);
    let (p, first) = progress_events(&mut app, user, root.id, Some(&p), study(20, 0.5));
    let (p, second) = progress_events(&mut app, user, root.id, Some(&p), study(40, 0.9));
    let mut all = vec![e1, e2];
    all.extend(rel);
    all.extend(unlock);
    all.extend(first.clone());
    all.extend(second.clone());
    app.publish_to("galaxy", &all).await;
    app.project().await;

    let (status, _, view) = app
        .get(user, &format!("/v1/galaxy/nodes/{}", root.id), &[])
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(
        (
            view["name"].as_str(),
            view["child_count"].as_i64(),
            view["version"].as_i64()
        ),
        (Some("root"), Some(1), Some(1))
    );
    // Nodes are shared: another user reads the same view.
    let (status, _, other) = app
        .get(
            Uuid::now_v7(),
            &format!("/v1/galaxy/nodes/{}", child.id),
            &[],
        )
        .await;
    assert_eq!(
        (
            status,
            other["version"].as_i64(),
            other["parent_id"].as_str()
        ),
        (StatusCode::OK, Some(2), Some(root.id.to_string().as_str()))
    );

    let (_, _, rels) = app
        .get(
            user,
            &format!("/v1/galaxy/nodes/{}/relations", root.id),
            &[],
        )
        .await;
    assert_eq!(
        rels,
        json!({"outgoing": [], "incoming": [
            {"node_id": child.id, "relation_type": "extends", "strength": 0.1 + 0.2}
        ]})
    );
    let (_, _, rels) = app
        .get(
            user,
            &format!("/v1/galaxy/nodes/{}/relations", child.id),
            &[],
        )
        .await;
    assert_eq!(rels["outgoing"][0]["node_id"], json!(root.id));

    let (status, _, me) = app.get(user, "/v1/me/galaxy", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["nodes"], json!([p]));
    assert_eq!(
        me["stats"],
        json!({"unlocked_nodes": 1, "mastered_nodes": 0, "total_study_minutes": 60})
    );
    assert_eq!(me["nodes"][0]["mastery_score"], 14.0);

    let (status, _, studies) = app.get(user, "/v1/me/galaxy/studies", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let items = studies["items"].as_array().expect("items");
    assert_eq!(
        items
            .iter()
            .map(|i| i["minutes"].as_i64())
            .collect::<Vec<_>>(),
        [Some(40), Some(20)],
        "newest first"
    );
    assert_eq!(items[0]["id"], json!(second[0].event_id));
    assert_eq!(studies["next_cursor"], json!(null));
    let (_, _, one) = app.get(user, "/v1/me/galaxy/studies?limit=1", &[]).await;
    assert_eq!(one["items"].as_array().map(Vec::len), Some(1));

    // A user with nothing: empty progress, zero stats, no studies.
    let (_, _, empty) = app.get(Uuid::now_v7(), "/v1/me/galaxy", &[]).await;
    assert_eq!(
        empty,
        json!({"nodes": [], "stats": {"unlocked_nodes": 0, "mastered_nodes": 0, "total_study_minutes": 0}})
    );
}

#[tokio::test]
async fn unknown_nodes_are_404_and_bad_parameters_400_naming_them() {
    let app = spawn_app().await;
    let user = Uuid::now_v7();
    let missing = Uuid::now_v7();
    for path in [
        format!("/v1/galaxy/nodes/{missing}"),
        format!("/v1/galaxy/nodes/{missing}/relations"),
    ] {
        let (status, _, body) = app.get(user, &path, &[]).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (StatusCode::NOT_FOUND, &json!("not_found"))
        );
    }
    for path in ["/v1/galaxy/nodes/nope", "/v1/galaxy/nodes/nope/relations"] {
        let (status, _, body) = app.get(user, path, &[]).await;
        assert_eq!(
            (status, &body["error"]["details"]["field"]),
            (StatusCode::BAD_REQUEST, &json!("id"))
        );
    }
    for limit in ["0", "101", "x"] {
        let (status, _, body) = app
            .get(user, &format!("/v1/me/galaxy/studies?limit={limit}"), &[])
            .await;
        assert_eq!(
            (status, &body["error"]["details"]["field"]),
            (StatusCode::BAD_REQUEST, &json!("limit"))
        );
    }
}
