-- Administration and the sessions API: an audit trail of impersonation, login sessions that
-- remember who is impersonating, and one chat session per remote session (CONTRACT.md 9.4, 9.5).

-- Every impersonation, kept after the people involved are gone (ids nulled, e-mails kept).
CREATE TABLE impersonations (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    admin_id        text REFERENCES users (id) ON DELETE SET NULL,
    admin_email     text NOT NULL,
    target_user_id  text REFERENCES users (id) ON DELETE SET NULL,
    target_email    text NOT NULL,
    client_ip       text,
    started_at      timestamptz NOT NULL DEFAULT now(),
    ended_at        timestamptz
);
CREATE INDEX impersonations_admin_idx ON impersonations (admin_id, started_at DESC);
CREATE INDEX impersonations_target_idx ON impersonations (target_user_id, started_at DESC);

-- A login session opened by impersonation names the admin behind it and its audit row.
-- Deleting the admin ends the impersonation session with them.
ALTER TABLE sessions
    ADD COLUMN impersonator_id text REFERENCES users (id) ON DELETE CASCADE,
    ADD COLUMN impersonation_id bigint REFERENCES impersonations (id) ON DELETE SET NULL;

-- The sync's lookup key; also what stops one remote session from being imported twice.
CREATE UNIQUE INDEX chat_sessions_user_remote_session_key
    ON chat_sessions (user_id, remote_session_id)
    WHERE remote_session_id IS NOT NULL;
