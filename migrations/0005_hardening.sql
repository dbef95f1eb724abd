-- Hardening (issue 15): single-use GitHub OAuth states.

-- The nonce of every GitHub OAuth state once its callback has been taken, so that a second
-- callback with the same state is refused on every replica. Rows older than the state's
-- lifetime are useless (the state has expired) and are deleted as new ones arrive.
CREATE TABLE oauth_state_uses (
    nonce    text PRIMARY KEY,
    used_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX oauth_state_uses_used_at_idx ON oauth_state_uses (used_at);

-- A session path (`<owner>__<repo>__<branch>`) is unique per person, not across everyone: another
-- person's session on the same repository and branch must neither block nor reveal itself.
-- Existing paths were unique across everyone, so they are unique per person too; workspaces
-- move to WORKSPACE_DIR/<user id>/<session path> (scratch: re-created by init-repository).
ALTER TABLE chat_sessions DROP CONSTRAINT chat_sessions_session_path_key;
ALTER TABLE chat_sessions ADD CONSTRAINT chat_sessions_user_session_path_key UNIQUE (user_id, session_path);
