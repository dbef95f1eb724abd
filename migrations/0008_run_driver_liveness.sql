-- Run drivers prove they are alive with a PostgreSQL advisory lock, not only a heartbeat.
--
-- Each server process holds, on a connection of its own outside the pool, the session-level
-- advisory lock (1464156740, hashtext(run_owner)) for as long as it lives; PostgreSQL releases it
-- by itself when that connection ends, however the process ended. A run whose owner's lock is
-- free has no live driver and may be adopted at once; a driver that holds its lock keeps its
-- runs even while stalled, so two replicas never drive one run. Owners named without the `live:`
-- prefix (a server from before this migration, during a rolling update) keep the old rule: their
-- runs are adopted once the heartbeat is older than the lease.
CREATE FUNCTION run_driver_gone(owner text, heartbeat timestamptz, lease_seconds double precision)
RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT CASE
        WHEN owner IS NULL THEN true
        WHEN owner LIKE 'live:%' THEN NOT EXISTS (
            SELECT 1 FROM pg_locks l
            WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
              AND l.classid = 1464156740 AND l.objid = hashtext(owner)::oid)
        ELSE heartbeat IS NULL OR heartbeat < now() - make_interval(secs => lease_seconds)
    END
$$;
