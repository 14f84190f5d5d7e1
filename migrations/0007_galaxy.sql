-- The galaxy module: a shared graph of knowledge nodes and relations, and each user's progress
-- on each node. Schema-unqualified (the runner sets search_path).

CREATE TABLE knowledge_nodes (
    id               uuid        PRIMARY KEY,
    name             text        NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
    name_en          text        CHECK (length(name_en) <= 255),
    description      text        CHECK (length(description) <= 5000),
    keywords         text[]      NOT NULL DEFAULT '{}',
    importance_level smallint    NOT NULL CHECK (importance_level BETWEEN 1 AND 5),
    is_seed          boolean     NOT NULL DEFAULT false,
    parent_id        uuid        REFERENCES knowledge_nodes (id),
    subject_id       bigint,
    created_by       uuid        NOT NULL,
    created_at       timestamptz NOT NULL,
    -- Events of the KnowledgeNode aggregate so far: its creation and its outgoing relations.
    version          bigint      NOT NULL
);
CREATE INDEX knowledge_nodes_parent ON knowledge_nodes (parent_id) WHERE parent_id IS NOT NULL;

-- Written under the source node's row lock, as an event of the source node's aggregate.
CREATE TABLE knowledge_relations (
    source_node_id uuid             NOT NULL REFERENCES knowledge_nodes (id),
    target_node_id uuid             NOT NULL REFERENCES knowledge_nodes (id),
    relation_type  text             NOT NULL CHECK (relation_type IN ('prerequisite', 'related', 'extends')),
    strength       double precision NOT NULL CHECK (strength BETWEEN 0 AND 1),
    created_at     timestamptz      NOT NULL,
    PRIMARY KEY (source_node_id, target_node_id, relation_type),
    CHECK (source_node_id <> target_node_id)
);
CREATE INDEX knowledge_relations_target ON knowledge_relations (target_node_id);

-- One user's progress on one node: the UserNode aggregate, id = UUIDv5(user id, node id).
CREATE TABLE user_nodes (
    id                uuid             PRIMARY KEY,
    user_id           uuid             NOT NULL,
    node_id           uuid             NOT NULL REFERENCES knowledge_nodes (id),
    mastery_score     double precision NOT NULL CHECK (mastery_score BETWEEN 0 AND 100),
    total_minutes     bigint           NOT NULL,
    study_count       bigint           NOT NULL,
    is_unlocked       boolean          NOT NULL,
    is_collapsed      boolean          NOT NULL,
    first_unlocked_at timestamptz      NOT NULL,
    last_studied_at   timestamptz,
    version           bigint           NOT NULL,
    UNIQUE (user_id, node_id)
);

-- Every study session (the read side keeps each user's newest 50); id = the event id of its
-- `galaxy.study.recorded`.
CREATE TABLE study_records (
    id                uuid             PRIMARY KEY,
    user_id           uuid             NOT NULL,
    node_id           uuid             NOT NULL REFERENCES knowledge_nodes (id),
    activity_type     text             NOT NULL CHECK (activity_type IN ('study', 'practice', 'review')),
    minutes           integer          NOT NULL CHECK (minutes BETWEEN 1 AND 1440),
    performance_score double precision NOT NULL CHECK (performance_score BETWEEN 0 AND 1),
    studied_at        timestamptz      NOT NULL
);
CREATE INDEX study_records_user ON study_records (user_id, studied_at DESC);
