-- GitHub connections of users and the repository state of chat sessions.

-- name: get_github_connection(id)^
SELECT id, github_id, github_access_token FROM users WHERE id = :id;

-- name: link_github_account(id, github_id, github_access_token)^
-- Links only when no other account holds this GitHub id; the unique index on github_id
-- settles a race between two such links.
UPDATE users SET github_id = :github_id, github_access_token = :github_access_token
WHERE id = :id
  AND NOT EXISTS (SELECT 1 FROM users other WHERE other.github_id = :github_id AND other.id <> :id)
RETURNING id;

-- name: unlink_github_account(id)!
UPDATE users SET github_id = NULL, github_access_token = NULL WHERE id = :id;

-- name: set_session_repository(id, user_id, branch, session_path, base_branch)^
-- Records the working branch and workspace path of the caller's own session.
UPDATE chat_sessions
SET branch = :branch, session_path = :session_path, base_branch = COALESCE(base_branch, :base_branch)
WHERE id = :id AND user_id = :user_id
RETURNING *;

-- name: use_oauth_state(nonce, keep_seconds)$
-- Marks a state's nonce as used: true the first time, false for every later use. Forgets the
-- nonces of states that have expired anyway.
WITH forgotten AS (
    DELETE FROM oauth_state_uses WHERE used_at < now() - make_interval(secs => :keep_seconds)
)
INSERT INTO oauth_state_uses (nonce) VALUES (:nonce)
ON CONFLICT (nonce) DO NOTHING
RETURNING true;
