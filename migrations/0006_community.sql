-- The community module's business rows: posts, and who likes them.
--
-- `post_likes` is the truth of likes: one row per user currently liking a post (an unlike
-- deletes it). `posts.like_count` is kept equal to its row count in the same transaction, and
-- the read side's `like_count` must equal both.
CREATE TABLE posts (
    id          uuid        PRIMARY KEY,
    user_id     uuid        NOT NULL,
    content     text        NOT NULL,
    image_urls  text[]      NOT NULL DEFAULT '{}',
    topic       text,
    visibility  text        NOT NULL
        CHECK (visibility IN ('public', 'private', 'friends_only')),
    like_count  bigint      NOT NULL DEFAULT 0 CHECK (like_count >= 0),
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    deleted_at  timestamptz,
    version     bigint      NOT NULL CHECK (version >= 1)
);
CREATE INDEX posts_user_live ON posts (user_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX posts_feed ON posts (created_at DESC, id DESC)
    WHERE deleted_at IS NULL AND visibility = 'public';

CREATE TABLE post_likes (
    post_id   uuid        NOT NULL REFERENCES posts (id),
    user_id   uuid        NOT NULL,
    liked_at  timestamptz NOT NULL,
    PRIMARY KEY (post_id, user_id)
);
CREATE INDEX post_likes_user ON post_likes (user_id);

INSERT INTO projections (name) VALUES ('community_projection') ON CONFLICT (name) DO NOTHING;
