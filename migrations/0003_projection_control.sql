-- Projection control plane: what each worker reports, and a notification when operators
-- change a projection's desired state.

-- One row per (projection, worker): written by the worker every second.
CREATE TABLE projection_workers (
    projection      text        NOT NULL REFERENCES projections (name),
    worker          text        NOT NULL,
    status          text        NOT NULL,
    partitions      integer[]   NOT NULL DEFAULT '{}',
    events_applied  bigint      NOT NULL DEFAULT 0,
    last_event_id   uuid,
    last_applied_at timestamptz,
    last_error      text,
    heartbeat_at    timestamptz NOT NULL,
    PRIMARY KEY (projection, worker)
);

-- Workers LISTEN on cqrs_control_<schema>; the payload is the projection's name. They also
-- poll, because notifications sent while a worker is disconnected are lost.
CREATE FUNCTION notify_projection_control() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('cqrs_control_' || current_schema(), NEW.name);
    RETURN NEW;
END
$$;

CREATE TRIGGER projections_control_changed
    AFTER UPDATE OF desired_state, generation ON projections
    FOR EACH ROW EXECUTE FUNCTION notify_projection_control();
