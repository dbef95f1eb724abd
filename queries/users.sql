-- People (table `users`): accounts, credentials, settings, the GitHub link.

-- name: get_user_by_id(id)^
SELECT * FROM users WHERE id = :id;

-- name: get_user_by_email(email)^
SELECT * FROM users WHERE lower(email) = lower(:email);

-- name: set_claude_auth(id, claude_auth)!
UPDATE users SET claude_auth = :claude_auth WHERE id = :id;

-- name: lock_claude_auth(id)$
-- Taken inside a transaction so that token refreshes for one user run one at a time.
SELECT claude_auth FROM users WHERE id = :id FOR UPDATE;

-- name: set_github_connection(id, github_id, github_access_token)!
UPDATE users SET github_id = :github_id, github_access_token = :github_access_token WHERE id = :id;

-- name: update_user_setting(id, setting)!
-- One personal setting (services/users.SETTINGS): `setting` is {column: value}. The columns
-- listed are the only ones it can change; each one not named in `setting` keeps its value,
-- because jsonb_populate_record fills the fields the object lacks from the row itself.
UPDATE users AS u
SET (preferred_provider, image_resize_max_dimension, display_name, voice_command_keywords,
     stop_listening_after_submit, default_landing_page, preferred_model, chat_verbosity_level) =
    (SELECT s.preferred_provider, s.image_resize_max_dimension, s.display_name, s.voice_command_keywords,
            s.stop_listening_after_submit, s.default_landing_page, s.preferred_model, s.chat_verbosity_level
     FROM jsonb_populate_record(u, :setting) AS s)
WHERE id = :id;

-- name: set_admin_by_email(email, is_admin)$
UPDATE users SET is_admin = :is_admin WHERE lower(email) = lower(:email) RETURNING id;

-- name: list_users(after_created_at, after_id, limit)
-- Keyset pagination in creation order.
SELECT id, email, display_name, github_id, is_admin, created_at
FROM users
WHERE (created_at, id) > (:after_created_at, :after_id)
ORDER BY created_at, id
LIMIT :limit;

-- name: delete_user_by_email(email)$
DELETE FROM users WHERE lower(email) = lower(:email) RETURNING id;

-- name: upgrade_password_hash(id, old_hash, new_hash)!
-- A stronger hash of the same password, unless the password was changed meanwhile.
UPDATE users SET password_hash = :new_hash WHERE id = :id AND password_hash = :old_hash;

-- name: list_users_page(limit, offset)
-- The admin user list in creation order (no secret columns).
SELECT id, email, display_name, github_id, is_admin, created_at
FROM users
ORDER BY created_at, id
LIMIT :limit OFFSET :offset;

-- name: count_users()$
SELECT count(*) FROM users;

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

-- name: list_claude_users(after_id, limit)
-- People with Claude credentials, in id order (keyset pages).
SELECT id FROM users
WHERE claude_auth IS NOT NULL AND id > :after_id
ORDER BY id
LIMIT :limit;

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
