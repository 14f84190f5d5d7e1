//! Reads of the community read model: each query is a command built from the keys of the
//! generation read (so it can ride in the round trip of a consistency check) and a parser of
//! its reply.

use module_kit::paging::PageRequest;
use streams::redis::{self, Value};
use streams::{ReadModelKeys, StreamError};
use uuid::Uuid;

use crate::domain::{Post, PostView, Visibility};
use crate::projection::CommunityKeys;

/// The read of one post's view.
#[must_use]
pub fn view_cmd(keys: &ReadModelKeys, id: Uuid) -> redis::Cmd {
    let mut cmd = redis::cmd("GET");
    cmd.arg(CommunityKeys(keys).view(id));
    cmd
}

fn parse_json(raw: &str, what: &str) -> Result<Post, StreamError> {
    serde_json::from_str(raw).map_err(|e| StreamError::Malformed(format!("{what}: {e}")))
}

/// The post in a reply to [`view_cmd`] (`None` when unknown or deleted).
///
/// # Errors
/// [`StreamError`] for an error reply or a corrupt view.
pub fn parse_view(id: Uuid, reply: Value) -> Result<Option<Post>, StreamError> {
    let what = format!("post view {id}");
    let raw: Option<String> = streams::error::from_reply(reply, &what)?;
    raw.map(|s| parse_json(&s, &what)).transpose()
}

/// The read of whether `user` likes each of `ids`, in order.
#[must_use]
pub fn liked_cmd(keys: &ReadModelKeys, user: Uuid, ids: &[Uuid]) -> redis::Cmd {
    let mut cmd = redis::cmd("HMGET");
    cmd.arg(CommunityKeys(keys).liked(user))
        .arg(ids.iter().map(Uuid::to_string).collect::<Vec<_>>());
    cmd
}

/// The answers in a reply to [`liked_cmd`].
///
/// # Errors
/// [`StreamError`] for an error reply.
pub fn parse_liked(reply: Value) -> Result<Vec<bool>, StreamError> {
    let values: Vec<Option<String>> = streams::error::from_reply(reply, "liked posts")?;
    Ok(values.iter().map(Option::is_some).collect())
}

/// Which list a page is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostList {
    /// The feed: every live public post.
    Feed,
    /// One user's live posts, as the caller may see them: all of them for their author, the
    /// public ones for everyone else.
    ByUser {
        /// Whose posts.
        author: Uuid,
        /// Whether the caller is someone else.
        public_only: bool,
    },
}

impl PostList {
    /// The list `caller` reads of `author`'s posts.
    #[must_use]
    pub fn by_user(author: Uuid, caller: Uuid) -> Self {
        Self::ByUser {
            author,
            public_only: author != caller,
        }
    }

    /// Whether a post belongs on this list, as read by `caller`: checked again on the views
    /// fetched, since a post may change between the list read and the view read.
    #[must_use]
    pub fn admits(self, post: &Post, caller: Uuid) -> bool {
        match self {
            Self::Feed => !post.deleted && post.visibility == Visibility::Public,
            Self::ByUser { author, .. } => post.user_id == author && post.visible_to(caller),
        }
    }
}

/// The read of a page of `list`.
#[must_use]
pub fn list_cmd(keys: &ReadModelKeys, list: PostList, page: &PageRequest) -> redis::Cmd {
    let keys = CommunityKeys(keys);
    page.cmd(&match list {
        PostList::Feed => keys.feed(),
        PostList::ByUser {
            author,
            public_only,
        } => keys.posts(author, public_only),
    })
}

/// The read of the views of `ids`, in order.
#[must_use]
pub fn views_cmd(keys: &ReadModelKeys, ids: &[Uuid]) -> redis::Cmd {
    let keys = CommunityKeys(keys);
    let mut cmd = redis::cmd("MGET");
    cmd.arg(ids.iter().map(|id| keys.view(*id)).collect::<Vec<_>>());
    cmd
}

/// The posts in a reply to [`views_cmd`]; a view deleted in between is left out.
///
/// # Errors
/// [`StreamError`] for an error reply or a corrupt view.
pub fn parse_views(reply: Value) -> Result<Vec<Post>, StreamError> {
    let views: Vec<Option<String>> = streams::error::from_reply(reply, "post views")?;
    views
        .into_iter()
        .flatten()
        .map(|s| parse_json(&s, "post view"))
        .collect()
}

/// `posts` as `caller` reads them, `liked` being [`parse_liked`] of the same ids.
#[must_use]
pub fn views_of(posts: Vec<Post>, liked: &[bool]) -> Vec<PostView> {
    posts
        .into_iter()
        .zip(liked.iter().copied().chain(std::iter::repeat(false)))
        .map(|(p, l)| PostView::of(p, l))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn post(author: Uuid, visibility: Visibility, deleted: bool) -> Post {
        Post {
            id: Uuid::now_v7(),
            user_id: author,
            content: "c".into(),
            image_urls: vec![],
            topic: None,
            visibility,
            like_count: 0,
            created_at: datetime!(2026-11-24 10:00 UTC),
            updated_at: datetime!(2026-11-24 10:00 UTC),
            deleted,
            version: 1,
        }
    }

    #[test]
    fn lists_admit_only_what_their_reader_may_see() {
        let (author, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let public = post(author, Visibility::Public, false);
        let private = post(author, Visibility::Private, false);
        let gone = post(author, Visibility::Public, true);
        let mine = PostList::by_user(author, author);
        let theirs = PostList::by_user(author, other);
        assert_eq!(
            theirs,
            PostList::ByUser {
                author,
                public_only: true
            }
        );
        assert!(PostList::Feed.admits(&public, other));
        assert!(
            !PostList::Feed.admits(&private, author),
            "the feed is public posts"
        );
        assert!(mine.admits(&private, author) && !theirs.admits(&private, other));
        assert!(theirs.admits(&public, other));
        for list in [PostList::Feed, mine, theirs] {
            assert!(!list.admits(&gone, author));
        }
        assert!(
            !PostList::by_user(other, other).admits(&public, other),
            "not the author's"
        );
    }

    #[test]
    fn liked_by_me_pairs_each_post_with_its_answer() {
        let reply = Value::Array(vec![Value::BulkString(b"1".to_vec()), Value::Nil]);
        let liked = parse_liked(reply).expect("reply");
        assert_eq!(liked, vec![true, false]);
        let a = post(Uuid::nil(), Visibility::Public, false);
        let b = post(Uuid::nil(), Visibility::Public, false);
        let views = views_of(vec![a.clone(), b], &liked);
        assert_eq!(
            views.iter().map(|v| v.liked_by_me).collect::<Vec<_>>(),
            vec![true, false]
        );
        assert_eq!(views[0], PostView::of(a, true));
    }
}
