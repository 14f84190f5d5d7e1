-- The operator's surface: an audit log of every mutating admin call, snapshots of read models,
-- holds (a pause with an expiry, taken by a snapshot), and operations started from a snapshot.

-- Every mutating admin call, refused ones included. `actor` names the token (its configured
-- name, or a fingerprint), never the token itself.
CREATE TABLE audit (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text        NOT NULL,
    action      text        NOT NULL,
    target      text        NOT NULL,
    -- accepted, refused (403, 409…), failed (an error after it was accepted)
    outcome     text        NOT NULL,
    reason      text,
    details     jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_at ON audit (at DESC, id DESC);

-- A stored copy of one generation of a projection's read model (its keys and its applied
-- versions), taken while every replica held still, and the event_store position up to which
-- it holds every event: a rebuild loads it and replays only what follows.
CREATE TABLE snapshots (
    id          uuid        PRIMARY KEY,
    projection  text        NOT NULL REFERENCES projections (name),
    generation  bigint      NOT NULL,
    position    bigint      NOT NULL,
    keys        bigint      NOT NULL,
    bytes       bigint      NOT NULL,
    -- The build that wrote it: a snapshot holds what that projection code made of history.
    app_version text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Written last: a snapshot whose copy did not finish is never loaded.
    complete    boolean     NOT NULL DEFAULT false
);
CREATE INDEX snapshots_projection_created ON snapshots (projection, created_at DESC);

-- The copy, in bounded chunks (a few thousand keys each) so neither side ever holds a whole
-- read model in memory.
CREATE TABLE snapshot_chunks (
    snapshot_id uuid    NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE,
    seq         integer NOT NULL,
    data        bytea   NOT NULL,
    PRIMARY KEY (snapshot_id, seq)
);

-- A hold: the projection is paused until `hold_until` whatever its desired state, so a crashed
-- holder (admin-api taking a snapshot) never leaves it paused for good.
ALTER TABLE projections
    ADD COLUMN hold_until timestamptz,
    ADD COLUMN hold_by    text;

DROP TRIGGER projections_control_changed ON projections;
CREATE TRIGGER projections_control_changed
    AFTER UPDATE OF desired_state, generation, hold_until ON projections
    FOR EACH ROW EXECUTE FUNCTION notify_projection_control();

-- A rebuild may start from a snapshot instead of the first event.
ALTER TABLE operations ADD COLUMN snapshot_id uuid REFERENCES snapshots (id) ON DELETE SET NULL;

-- Events an operator discarded from the dead letters: a rebuild or a repair that meets one
-- again marks its version applied without applying it, instead of dead-lettering it anew.
CREATE TABLE discarded_events (
    projection        text        NOT NULL REFERENCES projections (name),
    event_id          uuid        NOT NULL,
    aggregate_id      uuid        NOT NULL,
    aggregate_version bigint      NOT NULL,
    discarded_at      timestamptz NOT NULL DEFAULT now(),
    actor             text        NOT NULL,
    reason            text        NOT NULL,
    PRIMARY KEY (projection, event_id)
);
