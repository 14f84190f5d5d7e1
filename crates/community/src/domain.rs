//! The post aggregate and its pure rules.
//!
//! `check_access` says whether a user may run a command on a post at all (404 for a post they
//! cannot see, 403 for an edit of someone else's); `decide(post, actor, liked, command)`
//! returns the events a command causes (none when nothing would change: a second like);
//! `evolve(state, event)` folds an event into the state. The command side writes `evolve`'s
//! result as the row; the projection writes it as the view, so row and view are the same
//! function of the same events.
//!
//! Likes are events of the post itself (`community.post.liked` carries the liker), so the
//! post's version orders every like and unlike of it: the projection's version guard applies
//! each exactly once, and `like_count` is exact by construction.

use events::{DomainEvent, PayloadError, decode_payload, encode_payload};
use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// Who may see a post. Only `public` posts are seen by other users: `private` and
/// `friends_only` ones are their owner's alone (there is no friendship yet to widen them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Everyone, and the feed.
    Public,
    /// The owner only.
    Private,
    /// Friends of the owner; until friendships exist, the owner only.
    FriendsOnly,
}

impl Visibility {
    /// Every visibility.
    pub const ALL: [Self; 3] = [Self::Public, Self::Private, Self::FriendsOnly];

    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Private => "private",
            Self::FriendsOnly => "friends_only",
        }
    }

    /// Parses a wire name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// The post aggregate, as the command side stores it and the projection keeps it (the
/// PostView of http-api.md without `liked_by_me`, which depends on the caller).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // the fields are PostView's, documented in http-api.md
pub struct Post {
    pub id: Uuid,
    /// The author: the only user who edits or deletes it, and who sees it when not public.
    pub user_id: Uuid,
    pub content: String,
    pub image_urls: Vec<String>,
    pub topic: Option<String>,
    pub visibility: Visibility,
    /// The number of distinct users liking it now.
    pub like_count: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The time of the last change of content, topic, images or visibility (likes do not
    /// count: they are not an edit).
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Soft-deleted: kept as a row, gone from every read (404).
    #[serde(skip)]
    pub deleted: bool,
    /// The aggregate version: the number of events so far, likes included.
    pub version: i64,
}

impl Post {
    /// Whether `user` may see the post: it exists, and is public or theirs.
    #[must_use]
    pub fn visible_to(&self, user: Uuid) -> bool {
        !self.deleted && (self.visibility == Visibility::Public || self.user_id == user)
    }
}

/// A post as `user` reads it: PostView of http-api.md (field names are the wire format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[allow(missing_docs)] // the fields are PostView's, documented in http-api.md
pub struct PostView {
    pub id: Uuid,
    pub user_id: Uuid,
    #[schema(min_length = 1, max_length = 5000)]
    pub content: String,
    #[schema(max_items = 9)]
    pub image_urls: Vec<String>,
    #[schema(max_length = 100)]
    pub topic: Option<String>,
    pub visibility: Visibility,
    /// Distinct users liking the post now.
    #[schema(minimum = 0)]
    pub like_count: i64,
    /// Whether the caller is one of them.
    pub liked_by_me: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[schema(minimum = 1)]
    pub version: i64,
}

impl PostView {
    /// `post` as read by a caller who likes it (`liked_by_me`) or not.
    #[must_use]
    pub fn of(post: Post, liked_by_me: bool) -> Self {
        Self {
            id: post.id,
            user_id: post.user_id,
            content: post.content,
            image_urls: post.image_urls,
            topic: post.topic,
            visibility: post.visibility,
            like_count: post.like_count,
            liked_by_me,
            created_at: post.created_at,
            updated_at: post.updated_at,
            version: post.version,
        }
    }
}

/// Create a post: a `POST /v1/posts` body once validated ([`crate::input`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // the fields are the body's, validated
pub struct CreatePost {
    /// The new post's id, chosen by the server (UUIDv7).
    pub id: Uuid,
    pub content: String,
    pub image_urls: Vec<String>,
    pub topic: Option<String>,
    pub visibility: Visibility,
}

/// Edit a post: each `Some` field is a new value, `None` stays as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(missing_docs)] // the fields are [`Post`]'s
pub struct UpdatePost {
    pub content: Option<String>,
    pub image_urls: Option<Vec<String>>,
    /// `Some(None)` clears the topic.
    pub topic: Option<Option<String>>,
    pub visibility: Option<Visibility>,
}

/// A command on an existing post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostCommand {
    /// Change fields; the owner only.
    Update(UpdatePost),
    /// Soft delete; the owner only.
    Delete,
    /// The caller likes the post (nothing happens if they already do).
    Like,
    /// The caller stops liking it (nothing happens if they do not).
    Unlike,
}

/// `community.post.created`: the new post's fields. A shipped payload shape never changes (a
/// new shape is a new `schema_version` with an upcaster).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)] // the fields are [`Post`]'s
pub struct PostCreated {
    pub user_id: Uuid,
    pub content: String,
    pub image_urls: Vec<String>,
    pub topic: Option<String>,
    pub visibility: Visibility,
}

/// `community.post.updated`: only the fields that changed, with their new values (absent:
/// unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)] // the fields are [`Post`]'s
pub struct PostUpdated {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_urls: Option<Vec<String>>,
    /// New topic; `Some(None)` (JSON `null`) cleared it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub topic: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<Visibility>,
}

/// A field that is present deserialises to `Some` even when it is `null` (absence is the
/// `default`): how a cleared topic stays apart from an unchanged one.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// `community.post.liked` and `community.post.unliked`: who.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostLiker {
    /// The user who liked or unliked the post.
    pub user_id: Uuid,
}

/// A post event's payload. `community.post.deleted` carries nothing beyond the envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostEvent {
    /// `community.post.created`.
    Created(PostCreated),
    /// `community.post.updated`.
    Updated(PostUpdated),
    /// `community.post.deleted`.
    Deleted,
    /// `community.post.liked`.
    Liked(PostLiker),
    /// `community.post.unliked`.
    Unliked(PostLiker),
}

/// Why a post command was refused, or a post event could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// Bad input. # Handling: 400 `validation_failed`.
    #[error("{message}")]
    Invalid {
        /// Field.
        field: &'static str,
        /// Why.
        message: String,
    },
    /// Unknown, deleted, or another user's non-public post. # Handling: 404.
    #[error("post not found")]
    NotFound,
    /// A visible post of another user that only its owner may change. # Handling: 403.
    #[error("only the author may {0} a post")]
    Forbidden(&'static str),
    /// `If-Match` differs. # Handling: 412.
    #[error("version mismatch")]
    VersionMismatch {
        /// Sent.
        expected: i64,
        /// Current.
        current: i64,
    },
    /// A stored event (or row) does not parse, or a history that cannot happen. # Handling:
    /// dead-letter it (a 500 on the command side).
    #[error("malformed {event_type} payload: {reason}")]
    MalformedEvent {
        /// Its type.
        event_type: String,
        /// Why.
        reason: String,
    },
    /// PostgreSQL failed. # Handling: 503 or 500 by kind.
    #[error(transparent)]
    Store(#[from] outbox::OutboxError),
}

impl From<outbox::tokio_postgres::Error> for PostError {
    fn from(e: outbox::tokio_postgres::Error) -> Self {
        Self::Store(e.into())
    }
}

impl From<module_kit::input::Invalid> for PostError {
    fn from(e: module_kit::input::Invalid) -> Self {
        Self::Invalid {
            field: e.field,
            message: e.message,
        }
    }
}

impl From<PayloadError> for PostError {
    fn from(e: PayloadError) -> Self {
        Self::MalformedEvent {
            event_type: e.event_type,
            reason: e.reason,
        }
    }
}

impl DomainEvent for PostEvent {
    const TYPES: &'static [&'static str] = &[
        "community.post.created",
        "community.post.updated",
        "community.post.deleted",
        "community.post.liked",
        "community.post.unliked",
    ];

    fn event_type(&self) -> &'static str {
        match self {
            Self::Created(_) => "community.post.created",
            Self::Updated(_) => "community.post.updated",
            Self::Deleted => "community.post.deleted",
            Self::Liked(_) => "community.post.liked",
            Self::Unliked(_) => "community.post.unliked",
        }
    }

    fn payload(&self) -> serde_json::Value {
        match self {
            Self::Created(p) => encode_payload(p),
            Self::Updated(p) => encode_payload(p),
            Self::Liked(p) | Self::Unliked(p) => encode_payload(p),
            Self::Deleted => serde_json::json!({}),
        }
    }

    fn from_payload(event_type: &str, payload: &serde_json::Value) -> Result<Self, PayloadError> {
        let p = payload;
        Ok(match event_type {
            "community.post.created" => Self::Created(decode_payload(event_type, p)?),
            "community.post.updated" => Self::Updated(decode_payload(event_type, p)?),
            "community.post.deleted" => Self::Deleted,
            "community.post.liked" => Self::Liked(decode_payload(event_type, p)?),
            "community.post.unliked" => Self::Unliked(decode_payload(event_type, p)?),
            other => return Err(PayloadError::unknown(other)),
        })
    }
}

/// The events creating a post causes.
#[must_use]
pub fn decide_create(user_id: Uuid, cmd: &CreatePost) -> Vec<PostEvent> {
    vec![PostEvent::Created(PostCreated {
        user_id,
        content: cmd.content.clone(),
        image_urls: cmd.image_urls.clone(),
        topic: cmd.topic.clone(),
        visibility: cmd.visibility,
    })]
}

/// Whether `actor` may run `cmd` on `post` at all. Checked before `If-Match` and the rules,
/// so a post the actor cannot see is indistinguishable from a missing one.
///
/// # Errors
/// [`PostError::NotFound`] for a deleted post or another user's non-public one;
/// [`PostError::Forbidden`] for an edit or delete of another user's public post.
pub fn check_access(post: &Post, actor: Uuid, cmd: &PostCommand) -> Result<(), PostError> {
    if !post.visible_to(actor) {
        return Err(PostError::NotFound);
    }
    match cmd {
        PostCommand::Update(_) if post.user_id != actor => Err(PostError::Forbidden("edit")),
        PostCommand::Delete if post.user_id != actor => Err(PostError::Forbidden("delete")),
        _ => Ok(()),
    }
}

/// The events `cmd` of `actor` causes on `post`, `liked` saying whether `actor` likes it now:
/// empty when nothing would change (an edit to the same values, a second like, an unlike of
/// a post not liked).
///
/// # Errors
/// As [`check_access`].
pub fn decide(
    post: &Post,
    actor: Uuid,
    liked: bool,
    cmd: &PostCommand,
) -> Result<Vec<PostEvent>, PostError> {
    check_access(post, actor, cmd)?;
    Ok(match cmd {
        PostCommand::Update(u) => {
            let changed = PostUpdated {
                content: u.content.clone().filter(|c| *c != post.content),
                image_urls: u.image_urls.clone().filter(|i| *i != post.image_urls),
                topic: u.topic.clone().filter(|t| *t != post.topic),
                visibility: u.visibility.filter(|v| *v != post.visibility),
            };
            if changed == PostUpdated::default() {
                vec![]
            } else {
                vec![PostEvent::Updated(changed)]
            }
        }
        PostCommand::Delete => vec![PostEvent::Deleted],
        PostCommand::Like if liked => vec![],
        PostCommand::Like => vec![PostEvent::Liked(PostLiker { user_id: actor })],
        PostCommand::Unlike if liked => vec![PostEvent::Unliked(PostLiker { user_id: actor })],
        PostCommand::Unlike => vec![],
    })
}

/// Folds one event into the state. `id`, `version` and `at` come from the envelope.
///
/// # Errors
/// [`PostError::MalformedEvent`] for a history that cannot happen: an event of a post that
/// does not exist, a creation of one that does, or more unlikes than likes.
pub fn evolve(
    state: Option<Post>,
    event: &PostEvent,
    id: Uuid,
    version: i64,
    at: OffsetDateTime,
) -> Result<Post, PostError> {
    let impossible = |reason: String| PostError::MalformedEvent {
        event_type: event.event_type().into(),
        reason,
    };
    let mut post = match (state, event) {
        (None, PostEvent::Created(c)) => Post {
            id,
            user_id: c.user_id,
            content: c.content.clone(),
            image_urls: c.image_urls.clone(),
            topic: c.topic.clone(),
            visibility: c.visibility,
            like_count: 0,
            created_at: at,
            updated_at: at,
            deleted: false,
            version,
        },
        (Some(_), PostEvent::Created(_)) => {
            return Err(impossible(format!("post {id} already exists")));
        }
        (None, _) => return Err(impossible(format!("post {id} does not exist"))),
        (Some(mut p), PostEvent::Updated(u)) => {
            if let Some(v) = &u.content {
                p.content.clone_from(v);
            }
            if let Some(v) = &u.image_urls {
                p.image_urls.clone_from(v);
            }
            if let Some(v) = &u.topic {
                p.topic.clone_from(v);
            }
            if let Some(v) = u.visibility {
                p.visibility = v;
            }
            p.updated_at = at;
            p
        }
        (Some(mut p), PostEvent::Deleted) => {
            p.deleted = true;
            p.updated_at = at;
            p
        }
        (Some(mut p), PostEvent::Liked(_)) => {
            p.like_count += 1;
            p
        }
        (Some(mut p), PostEvent::Unliked(_)) => {
            if p.like_count == 0 {
                return Err(impossible(format!("post {id} has no like to take back")));
            }
            p.like_count -= 1;
            p
        }
    };
    post.version = version;
    Ok(post)
}

impl events::Aggregate for Post {
    type Event = PostEvent;
    type Error = PostError;
    const TYPE: &'static str = crate::AGGREGATE_TYPE;

    fn evolve(
        state: Option<Self>,
        event: &PostEvent,
        id: Uuid,
        version: i64,
        at: OffsetDateTime,
    ) -> Result<Self, PostError> {
        evolve(state, event, id, version, at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-11-24 10:00:00 UTC);
    const T1: OffsetDateTime = datetime!(2026-11-24 11:00:00 UTC);

    fn owner() -> Uuid {
        Uuid::from_u128(1)
    }

    fn other() -> Uuid {
        Uuid::from_u128(2)
    }

    fn post(visibility: Visibility) -> Post {
        let cmd = CreatePost {
            id: Uuid::now_v7(),
            content: "Finished chapter 3".into(),
            image_urls: vec!["https://img.example/a.png".into()],
            topic: Some("rust".into()),
            visibility,
        };
        let [created] = decide_create(owner(), &cmd).try_into().expect("one event");
        evolve(None, &created, cmd.id, 1, T0).expect("created")
    }

    fn edit() -> PostCommand {
        PostCommand::Update(UpdatePost {
            content: Some("new".into()),
            ..UpdatePost::default()
        })
    }

    #[test]
    fn creation_makes_a_live_unliked_post() {
        let p = post(Visibility::Public);
        assert_eq!((p.version, p.like_count, p.deleted), (1, 0, false));
        assert_eq!((p.created_at, p.updated_at), (T0, T0));
        assert_eq!(p.user_id, owner());
    }

    #[test]
    fn the_owner_may_do_everything_and_each_command_emits_its_event() {
        let p = post(Visibility::Private);
        let cases = [
            (edit(), false, "community.post.updated"),
            (PostCommand::Delete, false, "community.post.deleted"),
            (PostCommand::Like, false, "community.post.liked"),
            (PostCommand::Unlike, true, "community.post.unliked"),
        ];
        for (cmd, liked, event_type) in cases {
            let events = decide(&p, owner(), liked, &cmd).expect("allowed");
            assert_eq!(events.len(), 1, "{cmd:?}");
            assert_eq!(events[0].event_type(), event_type);
        }
    }

    #[test]
    fn another_user_may_like_a_public_post_but_not_change_it() {
        let p = post(Visibility::Public);
        assert_eq!(
            decide(&p, other(), false, &PostCommand::Like).expect("like"),
            vec![PostEvent::Liked(PostLiker { user_id: other() })]
        );
        assert_eq!(
            decide(&p, other(), true, &PostCommand::Unlike).expect("unlike"),
            vec![PostEvent::Unliked(PostLiker { user_id: other() })]
        );
        for cmd in [edit(), PostCommand::Delete] {
            assert!(
                matches!(
                    decide(&p, other(), false, &cmd),
                    Err(PostError::Forbidden(_))
                ),
                "{cmd:?}"
            );
        }
    }

    #[test]
    fn a_non_public_post_does_not_exist_for_anyone_but_its_owner() {
        for visibility in [Visibility::Private, Visibility::FriendsOnly] {
            let p = post(visibility);
            for cmd in [
                edit(),
                PostCommand::Delete,
                PostCommand::Like,
                PostCommand::Unlike,
            ] {
                assert!(
                    matches!(decide(&p, other(), false, &cmd), Err(PostError::NotFound)),
                    "{visibility:?} {cmd:?}"
                );
            }
            assert!(!p.visible_to(other()) && p.visible_to(owner()));
        }
    }

    #[test]
    fn a_deleted_post_refuses_every_command_with_not_found() {
        let p = post(Visibility::Public);
        let gone = evolve(Some(p), &PostEvent::Deleted, Uuid::nil(), 2, T1).expect("deleted");
        assert!(gone.deleted && !gone.visible_to(owner()));
        for cmd in [
            edit(),
            PostCommand::Delete,
            PostCommand::Like,
            PostCommand::Unlike,
        ] {
            for actor in [owner(), other()] {
                assert!(
                    matches!(decide(&gone, actor, true, &cmd), Err(PostError::NotFound)),
                    "{cmd:?}"
                );
            }
        }
    }

    #[test]
    fn a_second_like_or_an_unlike_without_a_like_changes_nothing() {
        let p = post(Visibility::Public);
        assert!(
            decide(&p, other(), true, &PostCommand::Like)
                .expect("ok")
                .is_empty()
        );
        assert!(
            decide(&p, other(), false, &PostCommand::Unlike)
                .expect("ok")
                .is_empty()
        );
    }

    #[test]
    fn an_edit_emits_only_changed_fields_and_nothing_when_equal() {
        let p = post(Visibility::Public);
        let same = PostCommand::Update(UpdatePost {
            content: Some(p.content.clone()),
            image_urls: Some(p.image_urls.clone()),
            topic: Some(p.topic.clone()),
            visibility: Some(p.visibility),
        });
        assert!(decide(&p, owner(), false, &same).expect("ok").is_empty());
        let change = PostCommand::Update(UpdatePost {
            content: Some(p.content.clone()),
            topic: Some(None),
            visibility: Some(Visibility::Private),
            ..UpdatePost::default()
        });
        let events = decide(&p, owner(), false, &change).expect("ok");
        assert_eq!(
            events,
            vec![PostEvent::Updated(PostUpdated {
                topic: Some(None),
                visibility: Some(Visibility::Private),
                ..PostUpdated::default()
            })]
        );
        let after = evolve(Some(p), &events[0], Uuid::nil(), 2, T1).expect("evolve");
        assert_eq!(
            (
                after.topic,
                after.visibility,
                after.updated_at,
                after.version
            ),
            (None, Visibility::Private, T1, 2)
        );
        assert_eq!(after.content, "Finished chapter 3");
    }

    #[test]
    fn likes_count_up_and_down_without_touching_updated_at() {
        let p = post(Visibility::Public);
        let liked = PostEvent::Liked(PostLiker { user_id: other() });
        let p = evolve(Some(p), &liked, Uuid::nil(), 2, T1).expect("liked");
        assert_eq!((p.like_count, p.version, p.updated_at), (1, 2, T0));
        let unliked = PostEvent::Unliked(PostLiker { user_id: other() });
        let p = evolve(Some(p), &unliked, Uuid::nil(), 3, T1).expect("unliked");
        assert_eq!((p.like_count, p.version), (0, 3));
        assert!(
            evolve(Some(p), &unliked, Uuid::nil(), 4, T1).is_err(),
            "more unlikes than likes cannot happen"
        );
    }

    #[test]
    fn evolve_refuses_impossible_histories() {
        assert!(evolve(None, &PostEvent::Deleted, Uuid::nil(), 2, T1).is_err());
        let created = decide_create(
            owner(),
            &CreatePost {
                id: Uuid::nil(),
                content: "x".into(),
                image_urls: vec![],
                topic: None,
                visibility: Visibility::Public,
            },
        )
        .remove(0);
        assert!(evolve(Some(post(Visibility::Public)), &created, Uuid::nil(), 2, T1).is_err());
    }

    #[test]
    fn payloads_round_trip_including_a_cleared_topic() {
        let events = [
            decide_create(
                owner(),
                &CreatePost {
                    id: Uuid::nil(),
                    content: "x".into(),
                    image_urls: vec!["https://a.example/b".into()],
                    topic: None,
                    visibility: Visibility::FriendsOnly,
                },
            )
            .remove(0),
            PostEvent::Updated(PostUpdated {
                topic: Some(None),
                ..PostUpdated::default()
            }),
            PostEvent::Updated(PostUpdated {
                topic: Some(Some("t".into())),
                content: Some("c".into()),
                image_urls: Some(vec![]),
                visibility: Some(Visibility::Public),
            }),
            PostEvent::Deleted,
            PostEvent::Liked(PostLiker { user_id: other() }),
            PostEvent::Unliked(PostLiker { user_id: other() }),
        ];
        for e in events {
            let back = PostEvent::from_payload(e.event_type(), &e.payload()).expect("parse");
            assert_eq!(back, e);
        }
        let cleared = PostEvent::Updated(PostUpdated {
            topic: Some(None),
            ..PostUpdated::default()
        });
        assert_eq!(cleared.payload(), serde_json::json!({"topic": null}));
        assert!(PostEvent::from_payload("community.post.shared", &serde_json::json!({})).is_err());
        assert!(
            PostEvent::from_payload("community.post.liked", &serde_json::json!({"user_id": 3}))
                .is_err()
        );
    }

    #[test]
    fn the_view_has_the_documented_fields() {
        let v =
            serde_json::to_value(PostView::of(post(Visibility::FriendsOnly), true)).expect("json");
        let mut fields: Vec<_> = v.as_object().expect("object").keys().cloned().collect();
        fields.sort();
        let mut expected = vec![
            "id",
            "user_id",
            "content",
            "image_urls",
            "topic",
            "visibility",
            "like_count",
            "liked_by_me",
            "created_at",
            "updated_at",
            "version",
        ];
        expected.sort_unstable();
        assert_eq!(fields, expected);
        assert_eq!(v["visibility"], "friends_only");
        assert_eq!(v["liked_by_me"], true);
        assert_eq!(v["created_at"], "2026-11-24T10:00:00Z");
    }
}
