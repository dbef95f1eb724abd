-- Queries about the database itself rather than a table: the ping and the advisory locks.
-- Lock keys are never written here: each is named once in services/locks.py and passed in.

-- name: ping_database()$
-- Whether a connection still answers (health probe, hub listener, run-driver liveness).
SELECT 1;

-- name: try_advisory_lock(key)$
-- Session-level, without waiting: true when taken. Held on a connection of its own (see
-- services/db.leading and the import), never on a pooled one; it ends with that connection.
SELECT pg_try_advisory_lock(:key);

-- name: wait_advisory_lock(key)!
-- Session-level, waiting for it (migrations: replicas starting together take turns).
SELECT pg_advisory_lock(:key);

-- name: release_advisory_lock(key)$
SELECT pg_advisory_unlock(:key);

-- name: lock_transaction(key)$
-- Transaction-level: held until commit or rollback, so safe on a pooled connection.
SELECT pg_advisory_xact_lock(:key) IS NOT NULL;

-- name: lock_announcements(key)!
-- Serialises announcements until commit, so their ids become visible in id order (see
-- lock_session_log in chat_sessions.sql). Two-key form (key, 0), as it has always been taken.
SELECT pg_advisory_xact_lock(:key, 0);

-- name: try_driver_liveness_lock(key, run_owner)$
-- Taken once per process on a connection of its own: held, it says the driver `run_owner` is
-- alive (see run_driver_gone in migrations/0008_run_driver_liveness.sql, which reads the same
-- key as a literal). False when taken.
SELECT pg_try_advisory_lock(:key, hashtext(:run_owner));

-- name: allow_slow_transaction(lock_timeout, idle_timeout)$
-- Transaction-scoped (set_config(..., true) is SET LOCAL): longer lock and idle-in-transaction
-- timeouts than the pool's, for a transaction that waits on an upstream call. Ends with it.
SELECT set_config('lock_timeout', :lock_timeout, true)
    || set_config('idle_in_transaction_session_timeout', :idle_timeout, true);

-- name: lock_transaction_named(key, name)!
-- Transaction-level, two-key form (key, hashtext(name)): one holder per name at a time.
SELECT pg_advisory_xact_lock(:key, hashtext(:name));
