//! Community reads over HTTP: a post as each caller sees it (visibility, `like_count`,
//! `liked_by_me`), the feed and the user lists newest first with exact cursors, and every bad
//! input of http-api.md refused. The read model is built by a real community projector from
//! events played as the command side plays them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use community::domain::{
    CreatePost, PostCommand, PostEvent, UpdatePost, Visibility, decide, decide_create,
};
use community::{CommunityProjection, Post};
use events::{Committed, EventEnvelope, commit};
use projection::{Projector, ProjectorSettings};
use reqwest::StatusCode;
use serde_json::Value;
use streams::publisher::{self, StreamEntry};
use uuid::Uuid;

use crate::helpers::*;

/// Plays post commands as command-api does (the rules, versions, likes) and projects them
/// through a community projector beside the app.
pub struct Community {
    projector: Projector,
    pub posts: BTreeMap<Uuid, Post>,
    likes: BTreeMap<Uuid, BTreeSet<Uuid>>,
}

impl Community {
    pub async fn new(app: &TestApp) -> Self {
        let projector = Projector::new(
            app.redis.pools.clone(),
            None,
            Arc::new(CommunityProjection),
            ProjectorSettings::new("q"),
        );
        projector.ensure_groups().await.expect("groups");
        projector.tick_leases().await.expect("leases");
        Self {
            projector,
            posts: BTreeMap::new(),
            likes: BTreeMap::new(),
        }
    }

    fn play(
        &mut self,
        app: &mut TestApp,
        user: Uuid,
        id: Uuid,
        events: &[PostEvent],
    ) -> Vec<EventEnvelope> {
        let ctx = app.clock.context(user);
        let state = self.posts.get(&id).cloned();
        let version = state.as_ref().map_or(0, |p| p.version);
        let Committed { state, envelopes } =
            commit(state, version, id, events, &ctx).expect("evolve");
        self.posts.insert(id, state.expect("exists"));
        for e in events {
            match e {
                PostEvent::Liked(l) => {
                    self.likes.entry(id).or_default().insert(l.user_id);
                }
                PostEvent::Unliked(l) => {
                    self.likes.entry(id).or_default().remove(&l.user_id);
                }
                _ => {}
            }
        }
        envelopes
    }

    /// A new post of `user`, projected.
    pub async fn create(&mut self, app: &mut TestApp, user: Uuid, visibility: Visibility) -> Uuid {
        let cmd = CreatePost {
            id: Uuid::now_v7(),
            content: format!("post {}", self.posts.len()),
            image_urls: vec![],
            topic: Some("rust".into()),
            visibility,
        };
        let events = decide_create(user, &cmd);
        let envelopes = self.play(app, user, cmd.id, &events);
        self.publish_and_project(app, &envelopes).await;
        cmd.id
    }

    /// `cmd` of `user` on post `id`, projected.
    pub async fn command(&mut self, app: &mut TestApp, user: Uuid, id: Uuid, cmd: PostCommand) {
        let liked = self.likes.get(&id).is_some_and(|l| l.contains(&user));
        let events = decide(&self.posts[&id], user, liked, &cmd).expect("allowed");
        let envelopes = self.play(app, user, id, &events);
        self.publish_and_project(app, &envelopes).await;
    }

    async fn publish_and_project(&self, app: &TestApp, envelopes: &[EventEnvelope]) {
        let stream = app.redis.pools.keys.routing(1).stream("community", 0);
        let json: Vec<String> = envelopes.iter().map(EventEnvelope::to_json).collect();
        let entries: Vec<_> = json
            .iter()
            .map(|e| StreamEntry {
                stream: &stream,
                event_id: "x",
                event_type: "t",
                envelope: e,
            })
            .collect();
        {
            let mut c = app.redis.pools.commands.get().await.expect("conn");
            publisher::publish(&mut *c, &entries)
                .await
                .expect("publish");
        }
        while self
            .projector
            .consume_once(None)
            .await
            .expect("consume")
            .delivered
            > 0
        {}
    }

    /// Post `id` as `caller` must read it.
    pub fn expected(&self, id: Uuid, caller: Uuid) -> Value {
        let liked = self.likes.get(&id).is_some_and(|l| l.contains(&caller));
        serde_json::to_value(community::PostView::of(self.posts[&id].clone(), liked)).expect("json")
    }
}

/// Every item of a list, page by page from the first, following `next_cursor`.
async fn all_pages(app: &TestApp, user: Uuid, path: &str) -> Vec<Value> {
    let mut items = vec![];
    let mut cursor: Option<String> = None;
    loop {
        let page_path = match &cursor {
            Some(c) => format!("{path}&cursor={c}"),
            None => path.to_owned(),
        };
        let (status, _, page) = app.get(user, &page_path, &[]).await;
        assert_eq!(status, StatusCode::OK, "{page_path}: {page}");
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return items,
        }
    }
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn a_post_reads_with_its_exact_like_count_and_each_callers_liked_by_me() {
    let mut app = spawn_app().await;
    let mut c = Community::new(&app).await;
    let (author, fan, other) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let id = c.create(&mut app, author, Visibility::Public).await;
    c.command(&mut app, fan, id, PostCommand::Like).await;
    c.command(&mut app, other, id, PostCommand::Like).await;
    c.command(&mut app, other, id, PostCommand::Unlike).await;

    for (caller, liked) in [(author, false), (fan, true), (other, false)] {
        let (status, _, body) = app.get(caller, &format!("/v1/posts/{id}"), &[]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, c.expected(id, caller));
        assert_eq!(
            (body["like_count"].as_i64(), body["liked_by_me"].as_bool()),
            (Some(1), Some(liked))
        );
        assert_eq!(body["version"], 4);
    }
}

#[tokio::test]
async fn a_non_public_post_is_its_authors_alone_and_a_deleted_one_nobodys() {
    let mut app = spawn_app().await;
    let mut c = Community::new(&app).await;
    let (author, other) = (Uuid::now_v7(), Uuid::now_v7());
    let private = c.create(&mut app, author, Visibility::Private).await;
    let friends = c.create(&mut app, author, Visibility::FriendsOnly).await;
    let public = c.create(&mut app, author, Visibility::Public).await;
    for id in [private, friends] {
        let path = format!("/v1/posts/{id}");
        let (status, _, body) = app.get(author, &path, &[]).await;
        assert_eq!((status, &body), (StatusCode::OK, &c.expected(id, author)));
        let (status, _, body) = app.get(other, &path, &[]).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found"))
        );
    }
    assert_eq!(
        ids(&all_pages(&app, other, "/v1/feed?limit=10").await),
        vec![public.to_string()]
    );
    assert_eq!(
        ids(&all_pages(&app, other, &format!("/v1/users/{author}/posts?limit=10")).await),
        vec![public.to_string()],
        "others see the public ones"
    );
    assert_eq!(
        ids(&all_pages(&app, author, &format!("/v1/users/{author}/posts?limit=10")).await),
        vec![public.to_string(), friends.to_string(), private.to_string()],
        "the author sees all, newest first"
    );

    // Going private takes a post out of the feed; deleting it takes it out of everything.
    c.command(
        &mut app,
        author,
        public,
        PostCommand::Update(UpdatePost {
            visibility: Some(Visibility::Private),
            ..UpdatePost::default()
        }),
    )
    .await;
    assert!(all_pages(&app, other, "/v1/feed?limit=10").await.is_empty());
    let (status, _, _) = app.get(other, &format!("/v1/posts/{public}"), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    c.command(&mut app, author, public, PostCommand::Delete)
        .await;
    let (status, _, _) = app.get(author, &format!("/v1/posts/{public}"), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        ids(&all_pages(&app, author, &format!("/v1/users/{author}/posts?limit=10")).await),
        vec![friends.to_string(), private.to_string()]
    );
}

#[tokio::test]
async fn feed_pages_skip_and_repeat_nothing_while_posts_are_created() {
    let mut app = spawn_app().await;
    let mut c = Community::new(&app).await;
    let users = [Uuid::now_v7(), Uuid::now_v7()];
    let reader = Uuid::now_v7();
    let mut older = vec![];
    for i in 0..7 {
        older.push(c.create(&mut app, users[i % 2], Visibility::Public).await);
    }
    c.create(&mut app, users[0], Visibility::Private).await;
    c.command(&mut app, reader, older[3], PostCommand::Like)
        .await;

    // Page through the feed 3 at a time, posting a new one before each next page.
    let mut seen: Vec<Value> = vec![];
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cur) => format!("/v1/feed?limit=3&cursor={cur}"),
            None => "/v1/feed?limit=3".to_owned(),
        };
        let (status, _, page) = app.get(reader, &path, &[]).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(page["items"].as_array().cloned().unwrap_or_default());
        c.create(&mut app, users[1], Visibility::Public).await;
        match page["next_cursor"].as_str() {
            Some(cur) => cursor = Some(cur.to_owned()),
            None => break,
        }
    }
    let expected: Vec<Value> = older
        .iter()
        .rev()
        .map(|id| c.expected(*id, reader))
        .collect();
    assert_eq!(seen, expected, "every older post once, newest first");
    assert_eq!(seen[3]["liked_by_me"], true);
}

#[tokio::test]
async fn bad_ids_limits_and_cursors_answer_400_naming_the_field() {
    let app = spawn_app().await;
    let user = Uuid::now_v7();
    for (path, field) in [
        ("/v1/posts/nope".to_owned(), "id"),
        ("/v1/users/nope/posts".to_owned(), "user_id"),
        ("/v1/feed?limit=0".to_owned(), "limit"),
        ("/v1/feed?limit=101".to_owned(), "limit"),
        ("/v1/feed?cursor=nope".to_owned(), "cursor"),
        (format!("/v1/users/{user}/posts?limit=x"), "limit"),
        (format!("/v1/users/{user}/posts?cursor=%25"), "cursor"),
    ] {
        let (status, _, body) = app.get(user, &path, &[]).await;
        assert_eq!(
            (
                status,
                body["error"]["code"].as_str(),
                body["error"]["details"]["field"].as_str()
            ),
            (
                StatusCode::BAD_REQUEST,
                Some("validation_failed"),
                Some(field)
            ),
            "{path}: {body}"
        );
    }
    let (status, _, _) = app
        .get(user, &format!("/v1/posts/{}", Uuid::now_v7()), &[])
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let res = app
        .http
        .get(format!("{}/v1/feed", app.base))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}
