//! The galaxy module's part of the registry's contracts: what PostgreSQL says every query must
//! answer ([`expected_reads`]), a realistic history of its events ([`sample_history`]) and the
//! random commands of its users ([`traffic`]).

use std::collections::HashMap;

use events::{EventContext, EventEnvelope};
use futures::future::BoxFuture;
use module_kit::{BoxError, Expected, ExpectedRead};
use outbox::tokio_postgres::Client;
use uuid::Uuid;

use crate::domain::{
    ActivityType, MasteryUpdated, NodeCreated, NodeEvent, NodeUnlocked, NodeView, RelationCreated,
    RelationType, StudyRecorded, UserNodeEvent, raised_mastery, user_node_id,
};
use crate::http::MyGalaxy;
use crate::projection::{
    GalaxyStats, RelationView, RelationsView, STUDIES_KEPT, StudyRecordView, relation_member,
    user_node_member,
};
use crate::store;
use crate::{NODE_AGGREGATE, USER_NODE_AGGREGATE};

fn json(v: &impl serde::Serialize) -> serde_json::Value {
    events::encode_payload(v)
}

/// Every node's view and relations (asked by the first of `users`: nodes are public), and for
/// each of `users` their galaxy (progress and stats) and their study list.
pub fn expected_reads<'a>(
    client: &'a Client,
    users: &'a [Uuid],
) -> BoxFuture<'a, Result<Vec<ExpectedRead>, BoxError>> {
    Box::pin(async move {
        let mut out = Vec::new();
        if let Some(reader) = users.first() {
            let relations = store::relations(client).await?;
            // A relation's list order is its member's order (creation time, node, type).
            let list = |pick: &dyn Fn(&store::StoredRelation) -> Option<Uuid>| {
                let mut items: Vec<(String, RelationView)> = relations
                    .iter()
                    .filter_map(|r| {
                        pick(r).map(|other| {
                            (
                                relation_member(r.created_at, other, r.relation_type, r.strength),
                                RelationView {
                                    node_id: other,
                                    relation_type: r.relation_type,
                                    strength: r.strength,
                                },
                            )
                        })
                    })
                    .collect();
                items.sort_by(|a, b| a.0.cmp(&b.0));
                items.into_iter().map(|(_, v)| v).collect::<Vec<_>>()
            };
            for (node, child_count) in store::nodes_with_child_counts(client).await? {
                let id = node.id;
                out.push(ExpectedRead {
                    user: *reader,
                    path: format!("/v1/galaxy/nodes/{id}"),
                    expect: Expected::Body(json(&NodeView { node, child_count })),
                });
                let view = RelationsView {
                    outgoing: list(&|r| (r.source_node_id == id).then_some(r.target_node_id)),
                    incoming: list(&|r| (r.target_node_id == id).then_some(r.source_node_id)),
                };
                out.push(ExpectedRead {
                    user: *reader,
                    path: format!("/v1/galaxy/nodes/{id}/relations"),
                    expect: Expected::Body(json(&view)),
                });
            }
        }
        for user in users {
            let mut nodes = store::user_nodes_of(client, *user).await?;
            // Most recently unlocked first, as the list's members sort.
            nodes.sort_by_key(|n| std::cmp::Reverse(user_node_member(n)));
            let stats = GalaxyStats::of(&nodes);
            out.push(ExpectedRead {
                user: *user,
                path: "/v1/me/galaxy".into(),
                expect: Expected::Body(json(&MyGalaxy { nodes, stats })),
            });
            let mut studies: Vec<(f64, String, StudyRecordView)> = store::studies_of(client, *user)
                .await?
                .into_iter()
                .map(|s| {
                    let view = StudyRecordView {
                        id: s.id,
                        node_id: s.node_id,
                        activity_type: s.activity_type,
                        minutes: s.minutes,
                        performance_score: s.performance_score,
                        studied_at: s.studied_at,
                    };
                    let (member, score) = view.member_and_score();
                    (score, member, view)
                })
                .collect();
            // Newest first as the sorted set ranks them: score, then member, both descending.
            studies.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
            studies.truncate(STUDIES_KEPT as usize);
            out.push(ExpectedRead {
                user: *user,
                path: "/v1/me/galaxy/studies?limit=100".into(),
                expect: Expected::Items(studies.iter().map(|(_, _, v)| json(v)).collect()),
            });
        }
        Ok(out)
    })
}

/// How many events one user node's life in [`sample_history`] has: unlock, expand, then two
/// studies of two events each.
pub const USER_NODE_LIFECYCLE: usize = 6;

/// About `n` galaxy events in the order a busy system publishes them (one aggregate's events
/// far apart): nodes, each with a parent and one relation (a tenth of the events), and users'
/// progress on them (unlock, expand, two studies with their mastery updates). 500 users.
#[must_use]
pub fn sample_history(n: usize) -> Vec<EventEnvelope> {
    let node_count = (n / 20).max(2);
    let progress_count = n.saturating_sub(2 * node_count) / USER_NODE_LIFECYCLE;
    let users: Vec<Uuid> = (0..500).map(|_| Uuid::now_v7()).collect();
    let nodes: Vec<Uuid> = (0..node_count).map(|_| Uuid::now_v7()).collect();
    let ctx = |user: Uuid| EventContext::new(Some(user), None, "bench");
    let mut out = Vec::with_capacity(2 * node_count + progress_count * USER_NODE_LIFECYCLE);
    for (i, id) in nodes.iter().enumerate() {
        let created = NodeEvent::Created(NodeCreated {
            name: format!("Concept {i}"),
            name_en: Some(format!("Concept {i}")),
            description: Some("A concept of the Rust book, with its examples.".into()),
            keywords: vec!["rust".into(), "ownership".into()],
            importance_level: 3,
            is_seed: i == 0,
            parent_id: (i > 0).then(|| nodes[i / 2]),
            subject_id: Some(1),
            created_by: users[i % users.len()],
        });
        out.push(ctx(users[0]).envelope_of(NODE_AGGREGATE, *id, 1, &created));
    }
    // Each (user, node) once: a pair is one aggregate, and a second lifecycle of it would
    // repeat its versions. Unique while i < users × nodes, which 25 n always exceeds.
    let pairs: Vec<(Uuid, Uuid)> = (0..progress_count)
        .map(|i| {
            (
                users[i % users.len()],
                nodes[(i / users.len()) % node_count],
            )
        })
        .collect();
    let mut mastery = vec![0.0; progress_count];
    for version in 1..=USER_NODE_LIFECYCLE as i64 {
        if version == 2 {
            for (i, id) in nodes.iter().enumerate() {
                let related = NodeEvent::RelationCreated(RelationCreated {
                    target_node_id: nodes[(i + 1) % node_count],
                    relation_type: RelationType::ALL[i % 3],
                    strength: 0.75,
                });
                out.push(ctx(users[0]).envelope_of(NODE_AGGREGATE, *id, 2, &related));
            }
        }
        for (i, (user, node)) in pairs.iter().enumerate() {
            let event = match version {
                1 => UserNodeEvent::Unlocked(NodeUnlocked {
                    user_id: *user,
                    node_id: *node,
                }),
                2 => UserNodeEvent::Expanded,
                3 | 5 => UserNodeEvent::StudyRecorded(StudyRecorded {
                    minutes: 25,
                    performance_score: 0.8,
                    activity_type: ActivityType::Practice,
                }),
                _ => {
                    mastery[i] = raised_mastery(mastery[i], 0.8);
                    UserNodeEvent::MasteryUpdated(MasteryUpdated {
                        mastery_score: mastery[i],
                    })
                }
            };
            out.push(ctx(*user).envelope_of(
                USER_NODE_AGGREGATE,
                user_node_id(*user, *node),
                version,
                &event,
            ));
        }
    }
    out
}

/// Random galaxy commands: users create nodes (some under a parent), relate them (the same
/// relation twice earns 409), unlock, expand and study them (before an unlock: 409). Every
/// node named exists (only nodes whose creation was answered 201 are used), and two ends of a
/// relation differ, so nothing earns a 400.
#[derive(Debug, Default)]
pub struct GalaxyTraffic {
    nodes: Vec<Uuid>,
    unlocked: HashMap<Uuid, Vec<Uuid>>,
}

/// A fresh [`GalaxyTraffic`], for the registry.
#[must_use]
pub fn traffic() -> Box<dyn module_kit::Traffic> {
    Box::new(GalaxyTraffic::default())
}

impl module_kit::Traffic for GalaxyTraffic {
    fn next(
        &mut self,
        user: Uuid,
        pick: &mut dyn FnMut(usize) -> usize,
    ) -> module_kit::CommandCall {
        use serde_json::json;
        let call = |method, path: String, body| module_kit::CommandCall { method, path, body };
        let choice = if self.nodes.len() < 2 { 0 } else { pick(12) };
        if choice <= 1 {
            let parent = (!self.nodes.is_empty() && pick(2) == 0)
                .then(|| self.nodes[pick(self.nodes.len())]);
            return call(
                "POST",
                "/v1/galaxy/nodes".to_owned(),
                Some(json!({
                    "name": format!("node {}", pick(1000)),
                    "keywords": ["k"],
                    "importance_level": 1 + pick(5),
                    "parent_id": parent,
                    "is_seed": pick(4) == 0,
                })),
            );
        }
        let any = self.nodes[pick(self.nodes.len())];
        match choice {
            2 => {
                let source = any;
                // A different node: the one after it in creation order, wrapping around.
                let at = self.nodes.iter().position(|n| *n == source).unwrap_or(0);
                let target = self.nodes[(at + 1 + pick(self.nodes.len() - 1)) % self.nodes.len()];
                let kind = pick(3);
                call(
                    "POST",
                    "/v1/galaxy/relations".to_owned(),
                    Some(json!({
                        "source_node_id": source,
                        "target_node_id": target,
                        "relation_type": RelationType::ALL[kind].as_str(),
                        "strength": pick(101) as f64 / 100.0,
                    })),
                )
            }
            3..=5 => call("POST", format!("/v1/galaxy/nodes/{any}/unlock"), None),
            6 => call("POST", format!("/v1/galaxy/nodes/{any}/expand"), None),
            _ => {
                // Mostly a node the user unlocked; sometimes any node (409 if locked).
                let mine = self
                    .unlocked
                    .get(&user)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let node = if mine.is_empty() || pick(5) == 0 {
                    any
                } else {
                    mine[pick(mine.len())]
                };
                call(
                    "POST",
                    format!("/v1/galaxy/nodes/{node}/study"),
                    Some(json!({
                        "minutes": 1 + pick(120),
                        "performance_score": pick(11) as f64 / 10.0,
                        "activity_type": ActivityType::ALL[pick(3)].as_str(),
                    })),
                )
            }
        }
    }

    fn answered(
        &mut self,
        user: Uuid,
        call: &module_kit::CommandCall,
        status: u16,
        body: &serde_json::Value,
    ) {
        if status == 201
            && call.path == "/v1/galaxy/nodes"
            && let Some(id) = body["id"].as_str().and_then(|s| Uuid::parse_str(s).ok())
        {
            self.nodes.push(id);
        }
        if status == 200
            && let Some(node) = call
                .path
                .strip_prefix("/v1/galaxy/nodes/")
                .and_then(|rest| rest.strip_suffix("/unlock"))
                .and_then(|s| Uuid::parse_str(s).ok())
        {
            let mine = self.unlocked.entry(user).or_default();
            if !mine.contains(&node) {
                mine.push(node);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use module_kit::Traffic as _;
    use module_kit::testing::MemoryModel;
    use projection::{Projection, plan};
    use streams::KeySpace;

    #[test]
    fn the_sample_history_projects_without_a_failure() {
        let events = sample_history(1000);
        assert!(
            events.len() > 900 && events.len() <= 1000,
            "{}",
            events.len()
        );
        let keys = KeySpace::new("").read_model("galaxy", 1);
        let mut model = MemoryModel::default();
        let refs: Vec<&EventEnvelope> = events.iter().collect();
        let reads: Vec<String> = refs
            .iter()
            .flat_map(|e| crate::GalaxyProjection.reads(e, &keys))
            .collect();
        let mut state = model.state(&reads);
        let plans = plan(
            &crate::GalaxyProjection,
            &keys,
            &refs,
            &Default::default(),
            &mut state,
        );
        for p in plans {
            let projection::PlanOutcome::Apply(ops) = p else {
                panic!("{p:?}")
            };
            model.run(&ops);
        }
        assert!(model.strings.len() > 50, "node and progress views");
    }

    #[test]
    fn the_traffic_never_relates_a_node_to_itself_and_only_names_created_nodes() {
        let mut t = GalaxyTraffic::default();
        let user = Uuid::now_v7();
        let mut seed = 7usize;
        let mut pick = move |n: usize| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) % n.max(1)
        };
        for _ in 0..500 {
            let call = t.next(user, &mut pick);
            if call.path == "/v1/galaxy/relations" {
                let body = call.body.clone().expect("body");
                assert_ne!(body["source_node_id"], body["target_node_id"]);
            }
            if call.path == "/v1/galaxy/nodes" {
                let id = Uuid::now_v7();
                t.answered(user, &call, 201, &serde_json::json!({"id": id}));
            } else {
                t.answered(user, &call, 200, &serde_json::json!({}));
            }
        }
        assert!(t.nodes.len() >= 2);
    }
}
