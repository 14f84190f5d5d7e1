-- A rebuild asked for by what only one replica saw: Redis lost the canary, or a stream (with
-- whatever it held that nobody had applied yet). Those signals vanish as soon as they are
-- seen (the canary and the group are recreated at once), so the request is kept here, where
-- a replica killed before acting on it cannot lose it. A rebuild answers the requests made
-- before it started (its snapshot then holds every event the loss took); a later one stays
-- and is answered by the next rebuild.
ALTER TABLE projections
    ADD COLUMN rebuild_requested    text,
    ADD COLUMN rebuild_requested_at timestamptz;
