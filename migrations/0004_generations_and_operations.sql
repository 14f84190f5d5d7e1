-- Generations, long-running operations, rollback detection and replica identity.

-- One row per long-running operation on a projection (a rebuild, a reset). Written by the
-- replica doing the work, so it survives that replica (another resumes it) and admin-api's
-- restarts (it only reads it).
CREATE TABLE operations (
    id              uuid        PRIMARY KEY,
    kind            text        NOT NULL CHECK (kind IN ('rebuild', 'reset')),
    projection      text        NOT NULL REFERENCES projections (name),
    state           text        NOT NULL DEFAULT 'running'
        CHECK (state IN ('running', 'succeeded', 'failed')),
    -- Why it started: an operator's call, or what the projector found.
    reason          text        NOT NULL,
    -- The generation being built, and how far its replay of event_store went.
    generation      bigint      NOT NULL,
    position        bigint      NOT NULL DEFAULT 0,
    events_applied  bigint      NOT NULL DEFAULT 0,
    events_total    bigint      NOT NULL DEFAULT 0,
    -- Events per second over the last page, for an ETA.
    rate            double precision NOT NULL DEFAULT 0,
    owner           text,
    started_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    error           text
);
-- At most one running operation per projection.
CREATE UNIQUE INDEX operations_one_running ON operations (projection) WHERE state = 'running';
CREATE INDEX operations_projection_started ON operations (projection, started_at DESC);

-- The canary: an epoch the projectors bump in Redis and here together. Redis answering an
-- older epoch than this row means Redis went back in time (a failover to a replica that
-- lagged, a restore of an older snapshot): what it lost is replayed from event_store.
ALTER TABLE projections
    ADD COLUMN canary_epoch bigint NOT NULL DEFAULT 0,
    ADD COLUMN canary_at    timestamptz;

-- Which process wrote a heartbeat: two live processes under one CONSUMER_NAME show as two
-- instances writing the same row.
ALTER TABLE projection_workers ADD COLUMN instance text;

-- Replaying what Redis lost after it went back in time reads event_store from a point in
-- time: a BRIN index finds it (rows are inserted in time order) for almost no write cost.
CREATE INDEX event_store_recorded_at ON event_store USING brin (recorded_at);
