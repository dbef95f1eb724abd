-- Login sessions (table `sessions`): the cookie's session, and the impersonation ones.

-- name: insert_auth_session(id, user_id, expires_at)!
INSERT INTO sessions (id, user_id, expires_at) VALUES (:id, :user_id, :expires_at);

-- name: get_auth_session_with_user(id)^
-- The one query behind every authenticated request: the login session and its user.
SELECT s.id AS session_id, s.expires_at, s.impersonator_id, u.*
FROM sessions s JOIN users u ON u.id = s.user_id
WHERE s.id = :id;

-- name: extend_auth_session(id, expires_at)!
UPDATE sessions SET expires_at = :expires_at WHERE id = :id;

-- name: delete_auth_session(id)!
DELETE FROM sessions WHERE id = :id;

-- name: delete_expired_auth_sessions()!
DELETE FROM sessions WHERE expires_at < now();

-- name: delete_auth_sessions_except(user_id, keep_id)!
-- After a password reset: sign the person out everywhere but the admin's own session.
DELETE FROM sessions WHERE user_id = :user_id AND id <> :keep_id;

-- name: insert_impersonation_session(id, user_id, expires_at, impersonator_id, impersonation_id)!
INSERT INTO sessions (id, user_id, expires_at, impersonator_id, impersonation_id)
VALUES (:id, :user_id, :expires_at, :impersonator_id, :impersonation_id);

-- name: get_impersonation_of_session(id)^
-- Who is behind an impersonation login session (no row when it is an ordinary one).
SELECT s.impersonator_id, s.impersonation_id, u.email AS impersonator_email
FROM sessions s JOIN users u ON u.id = s.impersonator_id
WHERE s.id = :id;

-- name: notify_login_change(payload)!
-- What the triggers of migration 0009 send; called directly only for a hub barrier (a payload
-- that is no user id), which every replica hears after the notifications committed before it.
SELECT pg_notify('webedt_auth', :payload);
