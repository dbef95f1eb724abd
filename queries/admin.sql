-- name: list_users_page(limit, offset)
-- The admin user list in creation order (no secret columns).
SELECT id, email, display_name, github_id, is_admin, created_at
FROM users
ORDER BY created_at, id
LIMIT :limit OFFSET :offset;

-- name: count_users()$
SELECT count(*) FROM users;

-- name: get_stats()^
-- Login sessions count only while they are unexpired (the original counted expired rows too).
SELECT (SELECT count(*) FROM users) AS total_users,
       (SELECT count(*) FROM users WHERE is_admin) AS total_admins,
       (SELECT count(*) FROM sessions WHERE expires_at > now()) AS active_sessions,
       (SELECT count(*) FROM chat_sessions WHERE deleted_at IS NULL) AS total_chat_sessions,
       (SELECT count(*) FROM chat_sessions WHERE status = 'running' AND deleted_at IS NULL) AS running_chat_sessions;

-- name: insert_user(id, email, display_name, password_hash, is_admin)^
-- NULL when the e-mail is taken (in any letter case).
INSERT INTO users (id, email, display_name, password_hash, is_admin)
VALUES (:id, :email, :display_name, :password_hash, :is_admin)
ON CONFLICT DO NOTHING
RETURNING *;

-- name: update_user(id, set_email, email, set_display_name, display_name, set_is_admin, is_admin, set_password, password_hash)^
-- A partial update: each set_* flag says whether its column changes.
UPDATE users SET
    email = CASE WHEN :set_email THEN :email ELSE email END,
    display_name = CASE WHEN :set_display_name THEN :display_name ELSE display_name END,
    is_admin = CASE WHEN :set_is_admin THEN :is_admin ELSE is_admin END,
    password_hash = CASE WHEN :set_password THEN :password_hash ELSE password_hash END
WHERE id = :id
RETURNING *;

-- name: delete_user(id)$
DELETE FROM users WHERE id = :id RETURNING id;

-- name: delete_login_sessions_except(user_id, keep_id)!
-- After a password reset: sign the person out everywhere but the admin's own session.
DELETE FROM sessions WHERE user_id = :user_id AND id <> :keep_id;

-- name: insert_impersonation(admin_id, admin_email, target_user_id, target_email, client_ip)$
INSERT INTO impersonations (admin_id, admin_email, target_user_id, target_email, client_ip)
VALUES (:admin_id, :admin_email, :target_user_id, :target_email, :client_ip)
RETURNING id;

-- name: insert_impersonation_session(id, user_id, expires_at, impersonator_id, impersonation_id)!
INSERT INTO sessions (id, user_id, expires_at, impersonator_id, impersonation_id)
VALUES (:id, :user_id, :expires_at, :impersonator_id, :impersonation_id);

-- name: get_impersonation_of_session(id)^
-- Who is behind an impersonation login session (no row when it is an ordinary one).
SELECT s.impersonator_id, s.impersonation_id, u.email AS impersonator_email
FROM sessions s JOIN users u ON u.id = s.impersonator_id
WHERE s.id = :id;

-- name: end_impersonation(id)!
UPDATE impersonations SET ended_at = now() WHERE id = :id AND ended_at IS NULL;

-- name: list_impersonations(limit, offset)
SELECT id, admin_id, admin_email, target_user_id, target_email, client_ip, started_at, ended_at
FROM impersonations
ORDER BY started_at DESC, id DESC
LIMIT :limit OFFSET :offset;

-- name: count_impersonations()$
SELECT count(*) FROM impersonations;
