-- Reads of the ORIGINAL server's database (its tables as CONTRACT.md section 3 "Database schema" describes
-- them), for `server.py db import-original`.
-- The connection is read-only (default_transaction_read_only) and in UTC. Timestamps are cast
-- through `timestamp` and read as UTC, so a column the original keeps as `timestamp without time
-- zone` (or as ISO text) arrives as an instant; JSON columns are cast to jsonb for the same reason.
-- Every table is read in keyset batches (`id > :after_id ORDER BY id LIMIT :limit`).

-- name: list_schema_columns()
SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema();

-- name: list_schema_tables()
SELECT table_name FROM information_schema.tables
WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'
ORDER BY table_name;

-- Exact row counts, one query per table the original is known to have (CONTRACT.md 3.2): the
-- first five are carried, the others are not. Called only for tables that exist.

-- name: count_original_users()$
SELECT count(*) FROM users;

-- name: count_original_sessions()$
SELECT count(*) FROM sessions;

-- name: count_original_chat_sessions()$
SELECT count(*) FROM chat_sessions;

-- name: count_original_messages()$
SELECT count(*) FROM messages;

-- name: count_original_events()$
SELECT count(*) FROM events;

-- name: count_original_live_chat_messages()$
SELECT count(*) FROM live_chat_messages;

-- name: count_original_workspace_presence()$
SELECT count(*) FROM workspace_presence;

-- name: count_original_workspace_events()$
SELECT count(*) FROM workspace_events;

-- name: count_original_orchestrator_jobs()$
SELECT count(*) FROM orchestrator_jobs;

-- name: count_original_orchestrator_cycles()$
SELECT count(*) FROM orchestrator_cycles;

-- name: count_original_orchestrator_tasks()$
SELECT count(*) FROM orchestrator_tasks;

-- name: estimate_row_counts(names)
-- Tables the contract does not know: PostgreSQL's own row estimate is enough for the report.
SELECT c.relname AS name, greatest(c.reltuples, 0)::bigint AS row_count
FROM pg_class c
WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY(:names::text[])
ORDER BY c.relname;

-- name: list_original_user_emails()
-- Every person's id and e-mail, oldest first: the import groups them by this server's e-mail
-- key (services/auth.email_key), and of one group keeps the oldest.
SELECT id, email FROM users ORDER BY created_at::timestamp, id;

-- name: count_original_empty_ids()
-- Rows whose id is the empty string: keyset reading (`id > ''`) never reaches them.
SELECT 'users' AS table_name, count(*) AS row_count FROM users WHERE id = ''
UNION ALL
SELECT 'sessions', count(*) FROM sessions WHERE id = ''
UNION ALL
SELECT 'chat_sessions', count(*) FROM chat_sessions WHERE id = '';

-- name: read_original_users(after_id, limit)
SELECT id, email, display_name, password_hash, github_id, github_access_token,
       claude_auth::jsonb AS claude_auth, preferred_provider, image_resize_max_dimension,
       voice_command_keywords::jsonb AS voice_command_keywords, stop_listening_after_submit,
       default_landing_page, preferred_model, chat_verbosity_level, is_admin,
       created_at::timestamp AT TIME ZONE 'UTC' AS created_at
FROM users
WHERE id > :after_id
ORDER BY id
LIMIT :limit;

-- name: read_original_login_sessions(after_id, limit)
-- The id is the `auth_session` cookie value: a bearer secret, never logged or printed.
SELECT id, user_id, expires_at::timestamptz AS expires_at
FROM sessions
WHERE id > :after_id
ORDER BY id
LIMIT :limit;

-- name: read_original_chat_sessions(after_id, limit)
SELECT id, user_id, session_path, repository_owner, repository_name, user_request, status,
       repository_url, base_branch, branch, provider, provider_session_id, remote_session_id,
       remote_web_url, total_cost::text AS total_cost, issue_number, auto_commit, locked,
       created_at::timestamp AT TIME ZONE 'UTC' AS created_at,
       completed_at::timestamp AT TIME ZONE 'UTC' AS completed_at,
       deleted_at::timestamp AT TIME ZONE 'UTC' AS deleted_at,
       worker_last_activity::timestamp AT TIME ZONE 'UTC' AS worker_last_activity
FROM chat_sessions
WHERE id > :after_id
ORDER BY id
LIMIT :limit;

-- The messages and events of one chat session are read through a cursor, in id order. The order
-- is written `id + 0` on purpose: ordered by `id` itself, PostgreSQL may walk the primary key of
-- the whole table looking for this session's rows (the original has no index on
-- (chat_session_id, id)), which makes an import quadratic; this way it reads only the session's
-- rows through its own index and sorts them.

-- name: read_original_messages(chat_session_id, after_id)
-- Images stay JSON text: they are copied, never looked into.
SELECT id, type, content, images::jsonb::text AS images,
       timestamp::timestamp AT TIME ZONE 'UTC' AS timestamp
FROM messages
WHERE chat_session_id = :chat_session_id AND id > :after_id
ORDER BY id + 0;

-- name: read_original_events(chat_session_id, after_id)
-- Events stay JSON text (copied, not decoded); the upstream uuid only when it is a string.
SELECT id,
       CASE WHEN jsonb_typeof(event_data::jsonb -> 'uuid') = 'string' THEN event_data::jsonb ->> 'uuid' END AS uuid,
       event_data::jsonb::text AS event_data,
       timestamp::timestamp AT TIME ZONE 'UTC' AS timestamp
FROM events
WHERE chat_session_id = :chat_session_id AND id > :after_id
ORDER BY id + 0;
