-- Writes of `server.py db import-original` into this server's database, and its bookkeeping
-- (table `import_original`, migration 0007). Reads of the original are in original.sql.

-- name: get_import_progress(kind, original_ids)
SELECT original_id, fingerprint, last_message_id, last_event_id
FROM import_original
WHERE kind = :kind AND original_id = ANY(:original_ids::text[]);

-- name: save_import_progress(kind, original_id, fingerprint, last_message_id, last_event_id)!
INSERT INTO import_original (kind, original_id, fingerprint, last_message_id, last_event_id)
VALUES (:kind, :original_id, :fingerprint, :last_message_id, :last_event_id)
ON CONFLICT (kind, original_id) DO UPDATE
SET fingerprint = excluded.fingerprint, last_message_id = excluded.last_message_id,
    last_event_id = excluded.last_event_id, imported_at = now();

-- name: list_imported_user_ids()
-- People imported by an earlier run who still exist here.
SELECT p.original_id AS id
FROM import_original p JOIN users u ON u.id = p.original_id
WHERE p.kind = 'user';

-- name: find_users_by_ids_or_emails(ids, email_keys)
SELECT *, lower(email) AS email_key FROM users
WHERE id = ANY(:ids::text[]) OR lower(email) = ANY(:email_keys::text[]);

-- name: insert_original_user(id, email, display_name, password_hash, github_id, github_access_token, claude_auth, preferred_provider, image_resize_max_dimension, voice_command_keywords, stop_listening_after_submit, default_landing_page, preferred_model, chat_verbosity_level, is_admin, created_at)!
INSERT INTO users (id, email, display_name, password_hash, github_id, github_access_token, claude_auth,
                   preferred_provider, image_resize_max_dimension, voice_command_keywords,
                   stop_listening_after_submit, default_landing_page, preferred_model,
                   chat_verbosity_level, is_admin, created_at)
VALUES (:id, :email, :display_name, :password_hash, :github_id, :github_access_token, :claude_auth,
        :preferred_provider, :image_resize_max_dimension, :voice_command_keywords,
        :stop_listening_after_submit, :default_landing_page, :preferred_model,
        :chat_verbosity_level, :is_admin, :created_at);

-- name: update_original_user(id, email, display_name, password_hash, github_id, github_access_token, claude_auth, preferred_provider, image_resize_max_dimension, voice_command_keywords, stop_listening_after_submit, default_landing_page, preferred_model, chat_verbosity_level, is_admin, created_at)!
UPDATE users
SET email = :email, display_name = :display_name, password_hash = :password_hash, github_id = :github_id,
    github_access_token = :github_access_token, claude_auth = :claude_auth,
    preferred_provider = :preferred_provider, image_resize_max_dimension = :image_resize_max_dimension,
    voice_command_keywords = :voice_command_keywords, stop_listening_after_submit = :stop_listening_after_submit,
    default_landing_page = :default_landing_page, preferred_model = :preferred_model,
    chat_verbosity_level = :chat_verbosity_level, is_admin = :is_admin, created_at = :created_at
WHERE id = :id;

-- name: insert_original_login_sessions(ids, user_ids, expires_ats)$
-- Login sessions by the SHA-256 of their cookie token, with their bookkeeping rows; returns how
-- many were new here.
WITH written AS (
    INSERT INTO sessions (id, user_id, expires_at)
    SELECT item.id, item.user_id, item.expires_at
    FROM unnest(:ids::text[], :user_ids::text[], :expires_ats::timestamptz[]) AS item (id, user_id, expires_at)
    ON CONFLICT (id) DO NOTHING
    RETURNING id
), noted AS (
    INSERT INTO import_original (kind, original_id, fingerprint)
    SELECT 'login_session', id, '' FROM unnest(:ids::text[]) AS item (id)
    ON CONFLICT (kind, original_id) DO NOTHING
)
SELECT count(*) FROM written;

-- name: extend_original_login_sessions(ids, expires_ats)$
-- Login sessions imported before that are still here take a later expiry from the original;
-- one ended here (logout, expiry) stays ended. Returns how many were extended.
WITH extended AS (
    UPDATE sessions s SET expires_at = item.expires_at
    FROM unnest(:ids::text[], :expires_ats::timestamptz[]) AS item (id, expires_at)
    WHERE s.id = item.id AND s.expires_at < item.expires_at
    RETURNING s.id
)
SELECT count(*) FROM extended;

-- name: insert_original_chat_session(id, user_id, session_path, repository_owner, repository_name, user_request, status, repository_url, base_branch, branch, provider, provider_session_id, remote_session_id, remote_web_url, total_cost, issue_number, auto_commit, locked, created_at, completed_at, deleted_at, worker_last_activity)!
-- A session imported as `running` has no run owner: the run driver adopts it (claim_orphan_runs).
INSERT INTO chat_sessions (id, user_id, session_path, repository_owner, repository_name, user_request, status,
                           repository_url, base_branch, branch, provider, provider_session_id,
                           remote_session_id, remote_web_url, total_cost, issue_number, auto_commit,
                           locked, created_at, completed_at, deleted_at, worker_last_activity)
VALUES (:id, :user_id, :session_path, :repository_owner, :repository_name, :user_request, :status,
        :repository_url, :base_branch, :branch, :provider, :provider_session_id,
        :remote_session_id, :remote_web_url, :total_cost, :issue_number, :auto_commit,
        :locked, :created_at, :completed_at, :deleted_at, :worker_last_activity);

-- name: update_original_chat_session(id, user_id, session_path, repository_owner, repository_name, user_request, status, repository_url, base_branch, branch, provider, provider_session_id, remote_session_id, remote_web_url, total_cost, issue_number, auto_commit, locked, created_at, completed_at, deleted_at)!
-- The original changed a session that nobody changed here since the last import.
UPDATE chat_sessions
SET user_id = :user_id, session_path = :session_path, repository_owner = :repository_owner,
    repository_name = :repository_name, user_request = :user_request, status = :status,
    repository_url = :repository_url, base_branch = :base_branch, branch = :branch, provider = :provider,
    provider_session_id = :provider_session_id, remote_session_id = :remote_session_id,
    remote_web_url = :remote_web_url, total_cost = :total_cost, issue_number = :issue_number,
    auto_commit = :auto_commit, locked = :locked, created_at = :created_at, completed_at = :completed_at,
    deleted_at = :deleted_at,
    -- A run the original ended is no longer this server's to drive.
    run_owner = CASE WHEN :status = 'running' THEN run_owner END,
    run_state = CASE WHEN :status = 'running' THEN run_state END
WHERE id = :id;

-- name: insert_original_messages(chat_session_id, types, contents, images, timestamps)$
-- New ids from this server's sequence, in array order.
WITH written AS (
    INSERT INTO messages (chat_session_id, type, content, images, timestamp)
    SELECT :chat_session_id, item.type, item.content, item.images::jsonb, item.timestamp
    FROM unnest(:types::text[], :contents::text[], :images::text[], :timestamps::timestamptz[])
         WITH ORDINALITY AS item (type, content, images, timestamp, position)
    ORDER BY item.position
    RETURNING 1
)
SELECT count(*) FROM written;

-- name: insert_original_events(chat_session_id, uuids, payloads, timestamps)$
-- New ids from this server's sequence, in array order; the first of each upstream uuid is kept
-- (a repeat, in this batch or stored before, is left out). Returns how many rows were stored.
WITH written AS (
    INSERT INTO events (chat_session_id, uuid, event_data, timestamp)
    SELECT :chat_session_id, item.uuid, item.event_data::jsonb, item.timestamp
    FROM unnest(:uuids::text[], :payloads::text[], :timestamps::timestamptz[])
         WITH ORDINALITY AS item (uuid, event_data, timestamp, position)
    ORDER BY item.position
    ON CONFLICT (chat_session_id, uuid) WHERE uuid IS NOT NULL DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM written;
