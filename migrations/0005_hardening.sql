-- Hardening (issue 15): single-use GitHub OAuth states.

-- The nonce of every GitHub OAuth state once its callback has been taken, so that a second
-- callback with the same state is refused on every replica. Rows older than the state's
-- lifetime are useless (the state has expired) and are deleted as new ones arrive.
CREATE TABLE oauth_state_uses (
    nonce    text PRIMARY KEY,
    used_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX oauth_state_uses_used_at_idx ON oauth_state_uses (used_at);
