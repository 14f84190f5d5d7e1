//! The community module's part of the registry's contracts: what PostgreSQL says every query
//! must answer ([`expected_reads`]), a realistic history of its events ([`sample_history`]),
//! and its users' random commands ([`traffic`]).

use std::collections::{BTreeSet, HashMap};

use events::{EventContext, EventEnvelope};
use futures::future::BoxFuture;
use module_kit::{BoxError, CommandCall, Expected, ExpectedRead};
use outbox::tokio_postgres::Client;
use uuid::Uuid;

use crate::AGGREGATE_TYPE;
use crate::domain::{Post, PostCreated, PostEvent, PostLiker, PostUpdated, PostView, Visibility};
use crate::store;

/// For every post and each of `users`: the post as that user reads it (404 once deleted, or
/// when it is another user's non-public post), with `like_count` the number of its
/// `post_likes` rows and `liked_by_me` whether that user has one; and for each of `users`:
/// the whole feed and every user's post list as that user reads them, newest first.
pub fn expected_reads<'a>(
    client: &'a Client,
    users: &'a [Uuid],
) -> BoxFuture<'a, Result<Vec<ExpectedRead>, BoxError>> {
    Box::pin(async move {
        let posts = store::all(client).await?;
        let mut likers: HashMap<Uuid, BTreeSet<Uuid>> = HashMap::new();
        for (post, user) in store::likes(client).await? {
            likers.entry(post).or_default().insert(user);
        }
        // `like_count` is what post_likes says, not the column: the truth of likes.
        let view = |p: &Post, caller: Uuid| {
            let liked = likers.get(&p.id);
            let mut p = p.clone();
            p.like_count = liked.map_or(0, |l| l.len() as i64);
            json(&PostView::of(p, liked.is_some_and(|l| l.contains(&caller))))
        };
        let mut out = Vec::new();
        for p in &posts {
            let mut callers: BTreeSet<Uuid> = users.iter().copied().collect();
            callers.insert(p.user_id);
            for caller in callers {
                out.push(ExpectedRead {
                    user: caller,
                    path: format!("/v1/posts/{}", p.id),
                    expect: if p.visible_to(caller) {
                        Expected::Body(view(p, caller))
                    } else {
                        Expected::NotFound
                    },
                });
            }
        }
        // `posts` is newest first, as every list is.
        let live = || posts.iter().filter(|p| !p.deleted);
        for caller in users {
            out.push(ExpectedRead {
                user: *caller,
                path: "/v1/feed?limit=100".into(),
                expect: Expected::Items(
                    live()
                        .filter(|p| p.visibility == Visibility::Public)
                        .map(|p| view(p, *caller))
                        .collect(),
                ),
            });
            for author in users {
                out.push(ExpectedRead {
                    user: *caller,
                    path: format!("/v1/users/{author}/posts?limit=100"),
                    expect: Expected::Items(
                        live()
                            .filter(|p| p.user_id == *author && p.visible_to(*caller))
                            .map(|p| view(p, *caller))
                            .collect(),
                    ),
                });
            }
        }
        Ok(out)
    })
}

fn json(v: &impl serde::Serialize) -> serde_json::Value {
    events::encode_payload(v)
}

/// How many events one post's life in [`sample_history`] has.
pub const LIFECYCLE: usize = 5;

/// About `n` post events (rounded down to whole lifecycles: created → liked → liked → updated
/// → unliked) in the order a busy system publishes them: version 1 of every post, then
/// version 2 of every post, and so on, so one aggregate's events lie far apart. 500 users
/// write and like the posts.
#[must_use]
pub fn sample_history(n: usize) -> Vec<EventEnvelope> {
    let posts = n / LIFECYCLE;
    let users: Vec<Uuid> = (0..500).map(|_| Uuid::now_v7()).collect();
    let ids: Vec<Uuid> = (0..posts).map(|_| Uuid::now_v7()).collect();
    let mut out = Vec::with_capacity(posts * LIFECYCLE);
    for version in 1..=LIFECYCLE as i64 {
        for (i, id) in ids.iter().enumerate() {
            let author = users[i % users.len()];
            let fan = |k: usize| users[(i + k) % users.len()];
            let (actor, event) = match version {
                1 => (
                    author,
                    PostEvent::Created(PostCreated {
                        user_id: author,
                        content: format!("Day {i}: finished the chapter on ownership"),
                        image_urls: vec!["https://img.example/notes.png".into()],
                        topic: Some("rust".into()),
                        visibility: if i % 10 == 0 {
                            Visibility::Private
                        } else {
                            Visibility::Public
                        },
                    }),
                ),
                2 => (fan(1), PostEvent::Liked(PostLiker { user_id: fan(1) })),
                3 => (fan(2), PostEvent::Liked(PostLiker { user_id: fan(2) })),
                4 => (
                    author,
                    PostEvent::Updated(PostUpdated {
                        content: Some(format!("Day {i}: finished the chapter, and the exercises")),
                        ..PostUpdated::default()
                    }),
                ),
                _ => (fan(1), PostEvent::Unliked(PostLiker { user_id: fan(1) })),
            };
            out.push(EventContext::new(Some(actor), None, "bench").envelope_of(
                AGGREGATE_TYPE,
                *id,
                version,
                &event,
            ));
        }
    }
    out
}

/// What the traffic knows of a post: its id and author. Not its visibility or whether it still
/// exists: a command on a post that went private or was deleted earns a 404, as it would for
/// a real client.
#[derive(Debug, Clone)]
struct Known {
    id: String,
    author: Uuid,
}

/// Random post commands: users write posts (mostly public), edit and delete their own, try
/// (and fail, 403 or 404) to edit and delete others', and like and unlike everyone's, liking
/// twice and unliking what they do not like now and then. Deleted and non-public posts of
/// others answer 404.
#[derive(Debug, Default)]
pub struct CommunityTraffic {
    posts: Vec<Known>,
}

/// A fresh [`CommunityTraffic`], for the registry.
#[must_use]
pub fn traffic() -> Box<dyn module_kit::Traffic> {
    Box::new(CommunityTraffic::default())
}

const VISIBILITIES: [&str; 5] = ["public", "public", "public", "private", "friends_only"];

impl module_kit::Traffic for CommunityTraffic {
    fn next(&mut self, user: Uuid, pick: &mut dyn FnMut(usize) -> usize) -> CommandCall {
        use serde_json::json;
        let call = |method, path: String, body| CommandCall { method, path, body };
        let choice = if self.posts.is_empty() { 0 } else { pick(12) };
        if choice <= 2 {
            let mut body = json!({
                "content": format!("post {}", pick(1000)),
                "visibility": VISIBILITIES[pick(VISIBILITIES.len())],
            });
            if pick(2) == 0 {
                body["topic"] = json!("rust");
                body["image_urls"] = json!(["https://img.example/a.png"]);
            }
            return call("POST", "/v1/posts".to_owned(), Some(body));
        }
        // Mostly the user's own posts for edits and deletes, anyone's for likes.
        let mine: Vec<&Known> = self.posts.iter().filter(|p| p.author == user).collect();
        let own = |pick: &mut dyn FnMut(usize) -> usize| match mine.len() {
            0 => None,
            n => Some(mine[pick(n)].id.clone()),
        };
        let any = &self.posts[pick(self.posts.len())].id;
        match choice {
            3 | 4 => {
                let id = own(pick).unwrap_or_else(|| any.clone());
                let body = match pick(3) {
                    0 => json!({"content": format!("edited {}", pick(1000))}),
                    1 => json!({"visibility": VISIBILITIES[pick(VISIBILITIES.len())]}),
                    _ => json!({"topic": null, "image_urls": []}),
                };
                call("PATCH", format!("/v1/posts/{id}"), Some(body))
            }
            5 => {
                let id = if pick(4) == 0 {
                    any.clone()
                } else {
                    own(pick).unwrap_or_else(|| any.clone())
                };
                call("DELETE", format!("/v1/posts/{id}"), None)
            }
            6..=9 => call("PUT", format!("/v1/posts/{any}/like"), None),
            _ => call("DELETE", format!("/v1/posts/{any}/like"), None),
        }
    }

    fn answered(&mut self, user: Uuid, call: &CommandCall, status: u16, body: &serde_json::Value) {
        if status == 201
            && call.path == "/v1/posts"
            && let Some(id) = body["id"].as_str()
        {
            self.posts.push(Known {
                id: id.to_owned(),
                author: user,
            });
        }
        // A deleted post stays known: commands on it keep answering 404, as they must.
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
        let events = sample_history(LIFECYCLE * 50 + 3);
        assert_eq!(events.len(), LIFECYCLE * 50);
        let keys = KeySpace::new("").read_model("community", 1);
        let mut model = MemoryModel::default();
        let refs: Vec<&EventEnvelope> = events.iter().collect();
        let reads: Vec<String> = refs
            .iter()
            .flat_map(|e| crate::CommunityProjection.reads(e, &keys))
            .collect();
        let mut state = model.state(&reads);
        let plans = plan(
            &crate::CommunityProjection,
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
        assert_eq!(model.strings.len(), 50, "one view per post");
        for v in model.strings.values() {
            let post: Post = serde_json::from_str(v).expect("view");
            assert_eq!(post.like_count, 1, "two likes, one taken back");
        }
    }

    #[test]
    fn the_traffic_sends_only_documented_commands() {
        let mut t = CommunityTraffic::default();
        let users = [Uuid::from_u128(1), Uuid::from_u128(2)];
        let mut n = 0usize;
        let mut pick = |k: usize| {
            n = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (n >> 33) % k.max(1)
        };
        let mut methods = BTreeSet::new();
        for i in 0..400 {
            let user = users[i % 2];
            let call = t.next(user, &mut pick);
            assert!(call.path.starts_with("/v1/posts"), "{call:?}");
            methods.insert((call.method, call.path.ends_with("/like")));
            if call.method == "POST" {
                let body = call.body.clone().expect("body");
                let cmd = serde_json::from_value::<crate::input::CreatePostBody>(body)
                    .expect("a valid body")
                    .validate(Uuid::nil());
                assert!(cmd.is_ok(), "{cmd:?}");
                t.answered(user, &call, 201, &serde_json::json!({"id": Uuid::now_v7()}));
            }
            if call.method == "PATCH" {
                let body = call.body.clone().expect("body");
                let cmd = serde_json::from_value::<crate::input::UpdatePostBody>(body)
                    .expect("a valid body")
                    .validate();
                assert!(cmd.is_ok(), "{cmd:?}");
            }
        }
        for m in [
            ("POST", false),
            ("PATCH", false),
            ("DELETE", false),
            ("PUT", true),
            ("DELETE", true),
        ] {
            assert!(methods.contains(&m), "{m:?} never sent");
        }
    }
}
