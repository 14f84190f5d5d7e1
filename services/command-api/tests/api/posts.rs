//! Community commands over HTTP: what each writes and answers, ownership and visibility, and
//! every bad input of http-api.md refused with nothing written.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

fn post_body() -> Value {
    json!({"content": "Finished chapter 3", "image_urls": ["https://img.example/a.png"], "topic": "rust"})
}

/// Rows of the community tables and of the event pipeline: (posts, post_likes, events,
/// outbox).
async fn post_counts(app: &TestApp) -> (i64, i64, i64, i64) {
    let c = app.db.pool.get().await.expect("client");
    let row = c
        .query_one(
            "SELECT (SELECT count(*) FROM posts), (SELECT count(*) FROM post_likes),
                    (SELECT count(*) FROM event_store), (SELECT count(*) FROM outbox)",
            &[],
        )
        .await
        .expect("counts");
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

async fn create_post(app: &TestApp, user: Uuid, body: Value) -> String {
    let a = app
        .send(Method::POST, "/v1/posts", Some(user), Some(body), &[])
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    id_of(&a)
}

#[tokio::test]
async fn create_commits_row_event_and_outbox_entry_and_answers_where_the_post_is() {
    let app = spawn_app().await;
    let user = Uuid::now_v7();
    let a = app
        .send(
            Method::POST,
            "/v1/posts",
            Some(user),
            Some(post_body()),
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    let id = id_of(&a);
    assert_eq!(a.headers["location"], format!("/v1/posts/{id}").as_str());
    assert_eq!(
        (a.body["version"].as_i64(), a.body["changed"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(a.body["event_ids"].as_array().map(Vec::len), Some(1));
    let token =
        events::ConsistencyToken::decode(a.body["consistency_token"].as_str().expect("token"))
            .expect("decode");
    assert_eq!((token.module.as_str(), token.version), ("community", 1));
    assert_eq!(post_counts(&app).await, (1, 0, 1, 1));
    let c = app.db.pool.get().await.expect("client");
    let row = c
        .query_one(
            "SELECT p.visibility, p.user_id, e.event_type, e.aggregate_type, e.payload
             FROM posts p JOIN event_store e ON e.aggregate_id = p.id WHERE p.id = $1::text::uuid",
            &[&id],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, &str>(0), "public", "public by default");
    assert_eq!(row.get::<_, Uuid>(1), user);
    assert_eq!(
        (row.get::<_, &str>(2), row.get::<_, &str>(3)),
        ("community.post.created", "Post")
    );
    let payload: Value = row.get(4);
    assert_eq!(payload["content"], "Finished chapter 3");
    assert_eq!(payload["image_urls"], json!(["https://img.example/a.png"]));
}

#[tokio::test]
async fn a_second_like_and_an_unlike_without_a_like_change_nothing_and_write_nothing() {
    let app = spawn_app().await;
    let (author, fan) = (Uuid::now_v7(), Uuid::now_v7());
    let id = create_post(&app, author, post_body()).await;
    let like = format!("/v1/posts/{id}/like");

    let first = app.send(Method::PUT, &like, Some(fan), None, &[]).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    assert_eq!(
        (
            first.body["version"].as_i64(),
            first.body["changed"].as_bool()
        ),
        (Some(2), Some(true))
    );
    assert_eq!(post_counts(&app).await, (1, 1, 2, 2));

    let again = app.send(Method::PUT, &like, Some(fan), None, &[]).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(
        (
            again.body["version"].as_i64(),
            again.body["changed"].as_bool(),
            again.body["event_ids"].as_array().map(Vec::len)
        ),
        (Some(2), Some(false), Some(0))
    );
    assert_eq!(
        post_counts(&app).await,
        (1, 1, 2, 2),
        "no event, no outbox row"
    );

    let unlike = app.send(Method::DELETE, &like, Some(fan), None, &[]).await;
    assert_eq!(
        (unlike.status, unlike.body["changed"].as_bool()),
        (StatusCode::OK, Some(true))
    );
    let again = app.send(Method::DELETE, &like, Some(fan), None, &[]).await;
    assert_eq!(
        (again.status, again.body["changed"].as_bool()),
        (StatusCode::OK, Some(false))
    );
    assert_eq!(post_counts(&app).await, (1, 0, 3, 3));

    // The author may like their own post, too.
    let own = app.send(Method::PUT, &like, Some(author), None, &[]).await;
    assert_eq!(
        (own.status, own.body["changed"].as_bool()),
        (StatusCode::OK, Some(true))
    );
    let c = app.db.pool.get().await.expect("client");
    let row = c
        .query_one(
            "SELECT like_count, version FROM posts WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .expect("row");
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (1, 4));
}

#[tokio::test]
async fn an_edit_changes_only_what_differs_and_a_delete_makes_the_post_gone() {
    let app = spawn_app().await;
    let author = Uuid::now_v7();
    let id = create_post(&app, author, post_body()).await;
    let path = format!("/v1/posts/{id}");
    let same = app
        .send(
            Method::PATCH,
            &path,
            Some(author),
            Some(json!({"content": "Finished chapter 3"})),
            &[],
        )
        .await;
    assert_eq!(
        (same.status, same.body["changed"].as_bool()),
        (StatusCode::OK, Some(false))
    );
    let edit = app
        .send(
            Method::PATCH,
            &path,
            Some(author),
            Some(json!({"topic": null, "visibility": "private"})),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(
        (edit.status, edit.body["version"].as_i64()),
        (StatusCode::OK, Some(2)),
        "{:?}",
        edit.body
    );
    let c = app.db.pool.get().await.expect("client");
    let payload: Value = c
        .query_one(
            "SELECT payload FROM event_store WHERE aggregate_id = $1::text::uuid AND aggregate_version = 2",
            &[&id],
        )
        .await
        .expect("event")
        .get(0);
    assert_eq!(payload, json!({"topic": null, "visibility": "private"}));

    let deleted = app
        .send(Method::DELETE, &path, Some(author), None, &[])
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    let before = post_counts(&app).await;
    for (method, p) in [
        (Method::DELETE, path.clone()),
        (Method::PUT, format!("{path}/like")),
        (Method::DELETE, format!("{path}/like")),
    ] {
        let a = app.send(method, &p, Some(author), None, &[]).await;
        assert_eq!((a.status, a.code()), (StatusCode::NOT_FOUND, "not_found"));
    }
    let a = app
        .send(
            Method::PATCH,
            &path,
            Some(author),
            Some(json!({"content": "x"})),
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(post_counts(&app).await, before);
}

#[tokio::test]
async fn another_users_post_is_403_to_change_when_public_and_404_to_anything_when_not() {
    let app = spawn_app().await;
    let (author, stranger) = (Uuid::now_v7(), Uuid::now_v7());
    let public = create_post(&app, author, post_body()).await;
    let mut hidden = Vec::new();
    for visibility in ["private", "friends_only"] {
        let mut b = post_body();
        b["visibility"] = json!(visibility);
        hidden.push(create_post(&app, author, b).await);
    }
    let before = post_counts(&app).await;

    let edit = Some(json!({"content": "mine now"}));
    let a = app
        .send(
            Method::PATCH,
            &format!("/v1/posts/{public}"),
            Some(stranger),
            edit.clone(),
            &[],
        )
        .await;
    assert_eq!((a.status, a.code()), (StatusCode::FORBIDDEN, "forbidden"));
    let a = app
        .send(
            Method::DELETE,
            &format!("/v1/posts/{public}"),
            Some(stranger),
            None,
            &[],
        )
        .await;
    assert_eq!((a.status, a.code()), (StatusCode::FORBIDDEN, "forbidden"));
    for id in &hidden {
        let path = format!("/v1/posts/{id}");
        for (method, p, body) in [
            (Method::PATCH, path.clone(), edit.clone()),
            (Method::DELETE, path.clone(), None),
            (Method::PUT, format!("{path}/like"), None),
            (Method::DELETE, format!("{path}/like"), None),
        ] {
            let a = app
                .send(method.clone(), &p, Some(stranger), body, &[])
                .await;
            assert_eq!(
                (a.status, a.code()),
                (StatusCode::NOT_FOUND, "not_found"),
                "{method} {p}"
            );
        }
    }
    assert_eq!(post_counts(&app).await, before, "nothing written");
    // The author still may.
    let a = app
        .send(
            Method::PUT,
            &format!("/v1/posts/{}/like", hidden[0]),
            Some(author),
            None,
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
}

/// Every rejection of http-api.md for posts: its status, code and field, and nothing written.
#[tokio::test]
async fn every_bad_post_input_is_rejected_with_its_code_and_writes_nothing() {
    let app = spawn_app().await;
    let author = Uuid::now_v7();
    let id = create_post(&app, author, post_body()).await;
    let path = format!("/v1/posts/{id}");
    let before = post_counts(&app).await;
    assert_eq!(before, (1, 0, 1, 1));

    let with = |k: &str, v: Value| {
        let mut b = post_body();
        b[k] = v;
        b
    };
    let bad_creates = [
        (json!({}), "content"),
        (with("content", json!("   ")), "content"),
        (with("content", json!("c".repeat(5001))), "content"),
        (with("content", json!(7)), "content"),
        (
            with("image_urls", json!(vec!["https://img.example/a.png"; 10])),
            "image_urls",
        ),
        (
            with("image_urls", json!(["http://img.example/a.png"])),
            "image_urls",
        ),
        (with("image_urls", json!(["not a url"])), "image_urls"),
        (with("topic", json!("t".repeat(101))), "topic"),
        (with("visibility", json!("everyone")), "visibility"),
        (with("colour", json!("red")), "colour"),
    ];
    for (body, field) in bad_creates {
        let a = app
            .send(
                Method::POST,
                "/v1/posts",
                Some(author),
                Some(body.clone()),
                &[],
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {:?}", a.body);
        assert!(
            matches!(a.code(), "validation_failed" | "invalid_json"),
            "{body}: {:?}",
            a.body
        );
        if a.code() == "validation_failed" {
            // A missing field is named in the message only (serde reports no path for it).
            let named = a.field() == field
                || (a.field().is_empty()
                    && a.body["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(field)));
            assert!(named, "{body}: {:?}", a.body);
        }
    }
    let bad_edits = [
        (json!({}), "body"),
        (json!({"content": null}), "content"),
        (json!({"content": ""}), "content"),
        (json!({"image_urls": null}), "image_urls"),
        (json!({"image_urls": ["ftp://x"]}), "image_urls"),
        (json!({"visibility": null}), "visibility"),
        (json!({"visibility": "friends"}), "visibility"),
        (json!({"topic": "t".repeat(101)}), "topic"),
    ];
    for (body, field) in bad_edits {
        let a = app
            .send(Method::PATCH, &path, Some(author), Some(body.clone()), &[])
            .await;
        assert_eq!(
            (a.status, a.code(), a.field()),
            (StatusCode::BAD_REQUEST, "validation_failed", field),
            "{body}"
        );
    }
    for (method, p) in [
        (Method::PATCH, "/v1/posts/nope".to_owned()),
        (Method::DELETE, "/v1/posts/nope".to_owned()),
        (Method::PUT, "/v1/posts/nope/like".to_owned()),
        (Method::DELETE, "/v1/posts/nope/like".to_owned()),
    ] {
        let body = (method == Method::PATCH).then(|| json!({"content": "x"}));
        let a = app.send(method.clone(), &p, Some(author), body, &[]).await;
        assert_eq!(
            (a.status, a.code(), a.field()),
            (StatusCode::BAD_REQUEST, "validation_failed", "id"),
            "{method} {p}"
        );
    }
    let unknown = format!("/v1/posts/{}", Uuid::now_v7());
    for (method, p) in [
        (Method::DELETE, unknown.clone()),
        (Method::PUT, format!("{unknown}/like")),
    ] {
        let a = app.send(method, &p, Some(author), None, &[]).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND);
    }
    let stale = app
        .send(
            Method::PUT,
            &format!("{path}/like"),
            Some(author),
            None,
            &[("if-match", "\"7\"")],
        )
        .await;
    assert_eq!(
        (stale.status, stale.code()),
        (StatusCode::PRECONDITION_FAILED, "version_mismatch")
    );
    let no_token = app
        .send(Method::POST, "/v1/posts", None, Some(post_body()), &[])
        .await;
    assert_eq!(no_token.status, StatusCode::UNAUTHORIZED);
    let text = app
        .http
        .post(format!("{}/v1/posts", app.base))
        .bearer_auth(app.token(author))
        .header("content-type", "text/plain")
        .body(post_body().to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(text.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let big = app
        .send(
            Method::POST,
            "/v1/posts",
            Some(author),
            Some(json!({"content": "c".repeat(70 * 1024)})),
            &[],
        )
        .await;
    assert_eq!(
        (big.status, big.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    assert_eq!(post_counts(&app).await, before, "nothing written");
}

#[tokio::test]
async fn forty_users_liking_one_post_at_once_count_exactly_once_each() {
    let app = spawn_app().await;
    let author = Uuid::now_v7();
    let id = create_post(&app, author, post_body()).await;
    let like = format!("/v1/posts/{id}/like");
    let fans: Vec<Uuid> = (0..40).map(|_| Uuid::now_v7()).collect();
    // Each fan likes twice, all at once: 40 likes change the post, 40 change nothing.
    let answers = futures::future::join_all(
        fans.iter()
            .chain(fans.iter())
            .map(|fan| app.send(Method::PUT, &like, Some(*fan), None, &[])),
    )
    .await;
    let mut changed = 0;
    for a in &answers {
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        changed += usize::from(a.body["changed"] == json!(true));
    }
    assert_eq!(changed, 40);
    let c = app.db.pool.get().await.expect("client");
    let row = c
        .query_one(
            "SELECT like_count, version, (SELECT count(*) FROM post_likes WHERE post_id = $1::text::uuid)
             FROM posts WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .expect("row");
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2)
        ),
        (40, 41, 40)
    );
}

#[tokio::test]
async fn a_retried_post_with_its_idempotency_key_is_written_once() {
    let app = spawn_app().await;
    let user = Uuid::now_v7();
    let key = [("idempotency-key", "post-1")];
    let first = app
        .send(
            Method::POST,
            "/v1/posts",
            Some(user),
            Some(post_body()),
            &key,
        )
        .await;
    let again = app
        .send(
            Method::POST,
            "/v1/posts",
            Some(user),
            Some(post_body()),
            &key,
        )
        .await;
    assert_eq!(
        (first.status, again.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert_eq!(first.body, again.body, "the first answer, again");
    assert_eq!(post_counts(&app).await, (1, 0, 1, 1), "written once");
    let other = app
        .send(
            Method::POST,
            "/v1/posts",
            Some(user),
            Some(json!({"content": "something else"})),
            &key,
        )
        .await;
    assert_eq!(
        (other.status, other.code()),
        (StatusCode::CONFLICT, "idempotency_key_reused")
    );
    // A like retried with its key answers as the first time, though a second like without a
    // key would say `changed: false`.
    let id = id_of(&first);
    let like = format!("/v1/posts/{id}/like");
    let key = [("idempotency-key", "like-1")];
    let liked = app.send(Method::PUT, &like, Some(user), None, &key).await;
    let retried = app.send(Method::PUT, &like, Some(user), None, &key).await;
    assert_eq!(liked.body, retried.body);
    assert_eq!(retried.body["changed"], true);
    assert_eq!(post_counts(&app).await, (1, 1, 2, 2));
}
