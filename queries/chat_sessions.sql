-- Chat sessions (table `chat_sessions`): the session list and trash, the background sync and
-- orphan cleanup, and the runs (of every agent backend) whose lease and state live on the session row.

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
-- SessionRow objects of the JSON array, each row's `row_json` (migration 0012: made by PostgreSQL
-- when the row is written, exactly as services.chat_sessions.session_json would make it), with
-- whether there is more, the cursor position of the last session shown, and the live total.
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
SELECT coalesce(string_agg(p.row_json, ',' ORDER BY p.n) FILTER (WHERE p.n <= :limit), '') AS sessions_json,
       count(*) > :limit AS has_more,
       max(p.created_at) FILTER (WHERE p.n = :limit) AS last_created_at,
       max(p.id) FILTER (WHERE p.n = :limit) AS last_id,
       -- Counted only when the page cannot tell: a first page (no cursor) holding the last session
       -- has offset + its rows (an InitPlan runs only if its value is used).
       CASE WHEN :before_created_at::timestamptz IS NULL AND count(*) <= :limit AND (count(*) > 0 OR :offset = 0)
            THEN :offset + count(*)
            ELSE (SELECT count(*) FROM chat_sessions WHERE user_id = :user_id AND deleted_at IS NULL)
       END AS total
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

-- ---- background sync and orphan cleanup --------------------------------------------------------

-- name: list_linked_remote_ids(user_id, remote_session_ids)
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

-- ---- the event log's append lock, and the status the streams watch -----------------------------

-- name: lock_session_log(chat_session_id)!
-- Serialises appends to one chat session until the transaction ends, so that the session's ids
-- become visible in id order: a reader that sees id N already sees every smaller id of that
-- session, and "everything after N" is never missing a row that commits later. The lock is the
-- session row itself (not an advisory lock): a transaction that already holds the row, say
-- `FOR UPDATE` before appending, then never waits on an appender that waits on the row.
-- FOR NO KEY UPDATE does not block the foreign-key checks of inserts into other tables.
SELECT 1 FROM chat_sessions WHERE id = :chat_session_id FOR NO KEY UPDATE;

-- name: get_session_status(chat_session_id)$
-- The session's status, or NULL when the row is gone.
SELECT status FROM chat_sessions WHERE id = :chat_session_id;

-- name: set_session_repository(id, user_id, branch, session_path, base_branch)^
-- Records the working branch and workspace path of the caller's own session.
UPDATE chat_sessions
SET branch = :branch, session_path = :session_path, base_branch = COALESCE(base_branch, :base_branch)
WHERE id = :id AND user_id = :user_id
RETURNING *;

-- ---- runs: starting them, the lease that names the one replica driving each --------------------

-- name: insert_running_session(id, user_id, user_request, provider, repository_url, repository_owner, repository_name, branch, run_owner, run_state)^
-- A new chat session whose first run starts now, its lease taken by the replica creating it.
INSERT INTO chat_sessions (id, user_id, user_request, status, provider, repository_url, repository_owner,
                           repository_name, base_branch, branch, run_owner, run_state, worker_last_activity)
VALUES (:id, :user_id, :user_request, 'running', :provider, :repository_url, :repository_owner,
        :repository_name, 'main', :branch, :run_owner, :run_state, now())
RETURNING *;

-- name: lock_session(id)^
-- The session row, locked until the end of the transaction (start, follow-up, abort).
SELECT * FROM chat_sessions WHERE id = :id FOR UPDATE;

-- name: start_run(id, run_owner, run_state, repository_url, repository_owner, repository_name)^
-- An existing session starts a new run: running, with a fresh lease, completedAt cleared.
UPDATE chat_sessions
SET status = 'running', run_owner = :run_owner, run_state = :run_state, worker_last_activity = now(),
    completed_at = NULL,
    repository_url = COALESCE(repository_url, :repository_url),
    repository_owner = COALESCE(repository_owner, :repository_owner),
    repository_name = COALESCE(repository_name, :repository_name)
WHERE id = :id
RETURNING *;

-- name: set_title_and_branch(id, user_request, branch)^
UPDATE chat_sessions SET user_request = :user_request, branch = :branch WHERE id = :id
RETURNING id, user_request, branch;

-- name: get_run_control(id)^
-- What the driver checks before each poll: still running, still its lease, prompts waiting.
SELECT status, run_owner, run_state, remote_session_id,
       EXISTS (SELECT 1 FROM messages m
               WHERE m.chat_session_id = c.id AND m.upstream_uuid IS NOT NULL AND m.delivered_at IS NULL)
           AS has_pending
FROM chat_sessions c
WHERE id = :id;

-- name: patch_run_state(id, patch)!
-- Merge keys into a running session's run state.
UPDATE chat_sessions SET run_state = COALESCE(run_state, '{}'::jsonb) || :patch
WHERE id = :id AND status = 'running';

-- name: claim_run(id, run_owner, lease_seconds)^
-- Take the run of a running session unless another live replica drives it.
UPDATE chat_sessions SET run_owner = :run_owner, worker_last_activity = now()
WHERE id = :id AND status = 'running'
  AND (run_owner = :run_owner OR run_driver_gone(run_owner, worker_last_activity, :lease_seconds))
RETURNING id;

-- name: claim_orphan_runs(run_owner, lease_seconds, limit)
-- Running sessions whose driver is gone (none, or one whose liveness lock is free), taken over.
-- Only runs a driver can carry on: started by one (a run state) or linked to a remote session.
-- SKIP LOCKED and the repeated condition make two replicas adopting at once split the rows.
UPDATE chat_sessions SET run_owner = :run_owner, worker_last_activity = now()
WHERE id IN (
        SELECT id FROM chat_sessions
        WHERE status = 'running'
          AND (run_state IS NOT NULL OR remote_session_id IS NOT NULL)
          AND run_driver_gone(run_owner, worker_last_activity, :lease_seconds)
        ORDER BY worker_last_activity NULLS FIRST
        LIMIT :limit
        FOR UPDATE SKIP LOCKED)
  AND status = 'running'
  AND run_driver_gone(run_owner, worker_last_activity, :lease_seconds)
RETURNING id;

-- name: renew_run_leases(run_owner)
-- Renew every lease this replica holds; the ids returned are the runs it still owns.
UPDATE chat_sessions SET worker_last_activity = now()
WHERE run_owner = :run_owner AND status = 'running'
RETURNING id;

-- name: release_runs(run_owner)!
-- On shutdown: give the runs up so that another replica adopts them at once.
UPDATE chat_sessions SET run_owner = NULL WHERE run_owner = :run_owner AND status = 'running';

-- name: set_remote_session(id, remote_session_id, remote_web_url)^
-- Store the remote session as soon as it exists (only if none is stored yet).
UPDATE chat_sessions SET remote_session_id = :remote_session_id, remote_web_url = :remote_web_url
WHERE id = :id AND remote_session_id IS NULL
RETURNING id, user_id, remote_session_id, remote_web_url;

-- name: set_branch(id, branch)^
UPDATE chat_sessions SET branch = :branch WHERE id = :id AND branch IS DISTINCT FROM :branch
RETURNING id, user_id, branch;

-- name: lock_owned_run(id, run_owner)^
-- The session, locked, only while this replica still drives its run.
SELECT * FROM chat_sessions WHERE id = :id AND run_owner = :run_owner AND status = 'running' FOR UPDATE;

-- name: finish_run(id, status, total_cost, branch)^
-- The run is over: final status, cost and branch, completedAt, lease and run state cleared.
-- Prompts it never delivered leave the outbox (they stay in the history), so that the next run
-- does not send them out of the blue.
WITH dropped AS (
    UPDATE messages SET upstream_uuid = NULL
    WHERE chat_session_id = :id AND upstream_uuid IS NOT NULL AND delivered_at IS NULL
)
UPDATE chat_sessions
SET status = :status, total_cost = COALESCE(:total_cost, total_cost), branch = COALESCE(:branch, branch),
    completed_at = now(), run_owner = NULL, run_state = NULL
WHERE id = :id
RETURNING *;

-- name: find_owned_session_by_event(event_id, user_id)^
-- The caller's session holding an event (a browser reconnecting to execute-remote with
-- Last-Event-ID, whose URL does not name the session it created).
SELECT c.* FROM events e JOIN chat_sessions c ON c.id = e.chat_session_id
WHERE e.id = :event_id AND c.user_id = :user_id;

-- name: set_ended_session_cost(id, total_cost)^
-- The cost upstream reported after a run's verdict (the last reconciliation); never reopens it.
UPDATE chat_sessions
SET total_cost = :total_cost
WHERE id = :id AND status <> 'running' AND total_cost IS DISTINCT FROM :total_cost
RETURNING id, user_id, total_cost;
