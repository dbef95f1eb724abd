-- name: get_owned_session(id, user_id)^
-- A chat session by id or session path, only when it belongs to user_id (trash included).
SELECT * FROM chat_sessions
WHERE (id = :id OR session_path = :id) AND user_id = :user_id
LIMIT 1;

-- name: get_session_by_id(id)^
SELECT * FROM chat_sessions WHERE id = :id;

-- name: insert_code_session(id, user_id, session_path, repository_owner, repository_name, user_request, repository_url, base_branch, branch, provider)^
-- A pending session for later execution; NULL when the person's session path is taken.
INSERT INTO chat_sessions (id, user_id, session_path, repository_owner, repository_name, user_request,
                           status, repository_url, base_branch, branch, provider)
VALUES (:id, :user_id, :session_path, :repository_owner, :repository_name, :user_request,
        'pending', :repository_url, :base_branch, :branch, :provider)
ON CONFLICT DO NOTHING
RETURNING *;

-- name: get_session_by_path(user_id, session_path)^
-- The person's own session holding a session path, with what the path was made from.
SELECT id, repository_owner, repository_name, branch, deleted_at FROM chat_sessions
WHERE user_id = :user_id AND session_path = :session_path;

-- name: list_live_sessions(user_id, before_created_at, before_id, limit, offset)^
-- A page of the caller's sessions outside the trash, newest first; the cursor is the last row seen.
-- The list route is the heaviest read, so the query returns the page as the comma-separated
-- SessionRow objects of the JSON array, exactly as services.chat_sessions.session_json would
-- make them (same keys; timestamps as services.users.iso writes them), with whether there is
-- more, the cursor position of the last session shown, and the live total.
WITH page AS (
    SELECT c.*, row_number() OVER (ORDER BY c.created_at DESC, c.id DESC) AS n
    FROM (
        SELECT * FROM chat_sessions
        WHERE user_id = :user_id AND deleted_at IS NULL
          AND (:before_created_at::timestamptz IS NULL OR (created_at, id) < (:before_created_at, :before_id))
        ORDER BY created_at DESC, id DESC
        LIMIT :limit + 1 OFFSET :offset
    ) c
)
SELECT coalesce(string_agg((
           SELECT row_to_json(r) FROM (
               SELECT p.id, p.user_id AS "userId", p.session_path AS "sessionPath",
                      p.repository_owner AS "repositoryOwner", p.repository_name AS "repositoryName",
                      p.user_request AS "userRequest", p.status, p.repository_url AS "repositoryUrl",
                      p.base_branch AS "baseBranch", p.branch, p.provider,
                      p.provider_session_id AS "providerSessionId", p.remote_session_id AS "remoteSessionId",
                      p.remote_web_url AS "remoteWebUrl", p.total_cost AS "totalCost",
                      p.issue_number AS "issueNumber", p.auto_commit AS "autoCommit", p.locked,
                      to_char(p.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS "createdAt",
                      to_char(p.completed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS "completedAt",
                      to_char(p.deleted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS "deletedAt",
                      to_char(p.worker_last_activity AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
                          AS "workerLastActivity"
           ) r)::text, ',' ORDER BY p.n) FILTER (WHERE p.n <= :limit), '') AS sessions_json,
       count(*) > :limit AS has_more,
       max(p.created_at) FILTER (WHERE p.n = :limit) AS last_created_at,
       max(p.id) FILTER (WHERE p.n = :limit) AS last_id,
       (SELECT count(*) FROM chat_sessions WHERE user_id = :user_id AND deleted_at IS NULL) AS total
FROM page p;

-- name: list_deleted_sessions(user_id, limit, offset)
SELECT * FROM chat_sessions
WHERE user_id = :user_id AND deleted_at IS NOT NULL
ORDER BY deleted_at DESC, id DESC
LIMIT :limit OFFSET :offset;

-- name: count_deleted_sessions(user_id)$
SELECT count(*) FROM chat_sessions WHERE user_id = :user_id AND deleted_at IS NOT NULL;

-- name: update_session_fields(id, user_request, branch)^
-- Rename and/or change the branch; a NULL argument keeps the column.
UPDATE chat_sessions
SET user_request = COALESCE(:user_request, user_request),
    branch = COALESCE(:branch, branch)
WHERE id = :id
RETURNING *;

-- name: unlock_session(id)^
UPDATE chat_sessions SET locked = false WHERE id = :id RETURNING *;

-- name: count_other_sessions_on_branch(user_id, id, repository_owner, repository_name, branch)$
-- Live sessions of the same person that still use a branch (so deleting one keeps the branch).
SELECT count(*) FROM chat_sessions
WHERE user_id = :user_id AND id <> :id AND deleted_at IS NULL
  AND repository_owner = :repository_owner AND repository_name = :repository_name AND branch = :branch;

-- name: lock_owned_sessions(ids, user_id, in_trash)
-- The caller's sessions among ids, in or out of the trash, locked for a bulk change.
SELECT * FROM chat_sessions
WHERE id = ANY(:ids) AND user_id = :user_id AND (deleted_at IS NOT NULL) = :in_trash
ORDER BY id
FOR UPDATE;

-- name: soft_delete_sessions(ids, user_id)
UPDATE chat_sessions SET deleted_at = now()
WHERE id = ANY(:ids) AND user_id = :user_id AND deleted_at IS NULL
RETURNING *;

-- name: restore_sessions(ids, user_id)
UPDATE chat_sessions SET deleted_at = NULL
WHERE id = ANY(:ids) AND user_id = :user_id AND deleted_at IS NOT NULL
RETURNING *;

-- name: delete_sessions_permanently(ids, user_id)
-- Hard delete of trashed sessions; their events and messages go with them (ON DELETE CASCADE).
DELETE FROM chat_sessions
WHERE id = ANY(:ids) AND user_id = :user_id AND deleted_at IS NOT NULL
RETURNING id;

-- ---- background sync and orphan cleanup -------------------------------------------------------

-- name: try_maintenance_lock(key)$
-- Session-level advisory lock, on a connection of its own (services/db.leading): the replica
-- that gets it leads this cycle (sync or cleanup); the lock ends with that connection.
SELECT pg_try_advisory_lock(:key);

-- name: list_claude_users(after_id, limit)
-- People with Claude credentials, in id order (keyset pages).
SELECT id FROM users
WHERE claude_auth IS NOT NULL AND id > :after_id
ORDER BY id
LIMIT :limit;

-- name: linked_remote_ids(user_id, remote_session_ids)
-- Which of these remote sessions already have a row of this person (trash included).
SELECT remote_session_id FROM chat_sessions
WHERE user_id = :user_id AND remote_session_id = ANY(:remote_session_ids);

-- name: find_session_by_prompt_uuid(user_id, uuids)^
-- A session of this person that sent one of these upstream uuids as a prompt: a remote session
-- carrying it was started by a run of ours (whose remote id may not be stored yet).
SELECT c.id FROM messages m JOIN chat_sessions c ON c.id = m.chat_session_id
WHERE c.user_id = :user_id AND m.upstream_uuid = ANY(:uuids)
LIMIT 1;

-- name: insert_imported_session(id, user_id, session_path, repository_owner, repository_name, user_request, status, repository_url, branch, remote_session_id, remote_web_url, total_cost, created_at, completed_at)^
-- A session found upstream; NULL when a unique key (remote id or session path) is taken.
INSERT INTO chat_sessions (id, user_id, session_path, repository_owner, repository_name, user_request, status,
                           repository_url, base_branch, branch, provider, remote_session_id, remote_web_url,
                           total_cost, created_at, completed_at)
VALUES (:id, :user_id, :session_path, :repository_owner, :repository_name, :user_request, :status,
        :repository_url, 'main', :branch, 'claude', :remote_session_id, :remote_web_url,
        :total_cost, :created_at, :completed_at)
ON CONFLICT DO NOTHING
RETURNING *;

-- name: count_event_uuids(chat_session_id)$
SELECT count(DISTINCT uuid) FROM events WHERE chat_session_id = :chat_session_id AND uuid IS NOT NULL;

-- name: apply_remote_status(id, status, total_cost)^
-- Sync-events on a session that no run drives: the remote status and cost; completedAt when it
-- newly ends, cleared when it runs again (then the run driver adopts it).
UPDATE chat_sessions
SET status = :status,
    total_cost = COALESCE(:total_cost, total_cost),
    completed_at = CASE WHEN :status IN ('completed', 'error') AND status NOT IN ('completed', 'error') THEN now()
                        WHEN :status IN ('completed', 'error') THEN completed_at
                        ELSE NULL END,
    run_owner = NULL,
    run_state = NULL
WHERE id = :id AND status <> 'running'
RETURNING *;

-- name: list_orphaned_runs(timeout_seconds, limit)
-- Running sessions without a heartbeat for longer than the timeout: their driver is gone.
-- (Pending sessions have never started and are left alone.)
SELECT * FROM chat_sessions
WHERE status = 'running'
  AND COALESCE(worker_last_activity, created_at) < now() - make_interval(secs => :timeout_seconds)
ORDER BY COALESCE(worker_last_activity, created_at)
LIMIT :limit;
