-- Relay replicas and their partition leases (outbox-relay with several replicas).

-- One row per live relay replica, refreshed every lease tick; a replica whose heartbeat is
-- older than the lease time is dead. The count of live replicas sets each one's fair share.
CREATE TABLE relay_members (
    holder       text        PRIMARY KEY,
    heartbeat_at timestamptz NOT NULL
);

-- One row per outbox partition. A replica publishes a partition only inside a transaction that
-- holds this row locked with itself as holder and an unexpired lease, so a replica taking the
-- lease over waits for the previous holder's last batch to commit or roll back.
CREATE TABLE relay_leases (
    partition  integer     PRIMARY KEY CHECK (partition >= 0),
    holder     text,
    expires_at timestamptz NOT NULL DEFAULT '-infinity'
);
