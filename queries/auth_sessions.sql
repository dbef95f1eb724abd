-- name: insert_auth_session(id, user_id, expires_at)!
INSERT INTO sessions (id, user_id, expires_at) VALUES (:id, :user_id, :expires_at);

-- name: get_auth_session_with_user(id)^
-- The one query behind every authenticated request: the login session and its user.
SELECT s.id AS session_id, s.expires_at, u.*
FROM sessions s JOIN users u ON u.id = s.user_id
WHERE s.id = :id;

-- name: extend_auth_session(id, expires_at)!
UPDATE sessions SET expires_at = :expires_at WHERE id = :id;

-- name: delete_auth_session(id)!
DELETE FROM sessions WHERE id = :id;

-- name: delete_expired_auth_sessions()!
DELETE FROM sessions WHERE expires_at < now();
