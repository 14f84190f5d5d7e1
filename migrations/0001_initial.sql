-- The first schema: history, outbox, the task module, idempotency keys and projection control.
-- Names are schema-unqualified: the runner sets search_path to the configured schema.

-- Every event ever committed, in commit order per aggregate. Never trimmed: it is the source
-- of truth that projections are rebuilt from.
CREATE TABLE event_store (
    position          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id          uuid        NOT NULL UNIQUE,
    event_type        text        NOT NULL,
    schema_version    integer     NOT NULL CHECK (schema_version >= 1),
    aggregate_type    text        NOT NULL,
    aggregate_id      uuid        NOT NULL,
    aggregate_version bigint      NOT NULL CHECK (aggregate_version >= 1),
    occurred_at       timestamptz NOT NULL,
    payload           jsonb       NOT NULL,
    metadata          jsonb       NOT NULL,
    recorded_at       timestamptz NOT NULL DEFAULT now(),
    -- One writer per (aggregate, version): a second concurrent writer fails instead of forking
    -- the aggregate's history.
    UNIQUE (aggregate_id, aggregate_version)
);
CREATE INDEX event_store_aggregate_type_position ON event_store (aggregate_type, position);

-- Events committed but not yet published. A queue table: rows live for milliseconds, so
-- autovacuum is told to visit it by row count rather than by a fraction of its size, and not
-- to truncate its (usually empty) tail: truncation takes an ACCESS EXCLUSIVE lock that stalls
-- every writer and the relay for its duration.
CREATE TABLE outbox (
    seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id   uuid        NOT NULL,
    event_type text        NOT NULL,
    module     text        NOT NULL,
    partition  integer     NOT NULL CHECK (partition >= 0),
    -- The whole envelope as sent to Redis; `json` keeps the text as written (no re-encoding).
    envelope   json        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
) WITH (
    autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0,
    vacuum_truncate = false
);
CREATE INDEX outbox_partition_seq ON outbox (partition, seq);

-- The task module's business rows.
CREATE TABLE tasks (
    id                uuid        PRIMARY KEY,
    user_id           uuid        NOT NULL,
    title             text        NOT NULL,
    type              text        NOT NULL,
    tags              text[]      NOT NULL DEFAULT '{}',
    estimated_minutes integer     NOT NULL,
    priority          smallint    NOT NULL,
    difficulty        smallint    NOT NULL,
    status            text        NOT NULL
        CHECK (status IN ('pending', 'in_progress', 'completed', 'abandoned')),
    due_date          date,
    started_at        timestamptz,
    completed_at      timestamptz,
    actual_minutes    integer,
    note              text,
    abandon_reason    text,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    deleted_at        timestamptz,
    version           bigint      NOT NULL CHECK (version >= 1)
);
CREATE INDEX tasks_user_live ON tasks (user_id, created_at DESC) WHERE deleted_at IS NULL;

-- Answers to commands sent with an Idempotency-Key, replayed for 24 hours.
CREATE TABLE idempotency_keys (
    user_id     uuid        NOT NULL,
    key         text        NOT NULL,
    fingerprint text        NOT NULL,
    status_code smallint    NOT NULL,
    response    jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

-- Per-projection control: what operators want (desired_state) and what workers report.
CREATE TABLE projections (
    name          text        PRIMARY KEY,
    desired_state text        NOT NULL DEFAULT 'running' CHECK (desired_state IN ('running', 'paused')),
    status        text        NOT NULL DEFAULT 'running',
    generation    bigint      NOT NULL DEFAULT 1,
    last_error    text,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
INSERT INTO projections (name) VALUES ('task_projection');
