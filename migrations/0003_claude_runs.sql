-- Claude Remote runs: a lease so that exactly one replica drives a run, the run's own state, and
-- user prompts as an outbox so that a follow-up is delivered exactly once whoever drives the run.

-- The replica driving this session's run (NULL: nobody). `worker_last_activity` is the lease
-- heartbeat: another replica may take the run over once it is older than the lease.
ALTER TABLE chat_sessions
    ADD COLUMN run_owner text,
    -- What a replica adopting the run needs to carry it on: the event id after which a `result`
    -- ends the run, the environment for a session still to be created, an interrupt request.
    ADD COLUMN run_state jsonb;

-- A prompt's upstream event uuid, and when it reached the remote session. A row with an uuid and
-- no `delivered_at` is still to be sent by the run driver.
ALTER TABLE messages
    ADD COLUMN upstream_uuid text,
    ADD COLUMN delivered_at timestamptz;
CREATE INDEX messages_undelivered_idx ON messages (chat_session_id, id)
    WHERE upstream_uuid IS NOT NULL AND delivered_at IS NULL;

-- Adoption looks for running sessions by lease age.
CREATE INDEX chat_sessions_running_lease_idx ON chat_sessions (worker_last_activity)
    WHERE status = 'running';
