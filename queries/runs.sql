-- Claude Remote runs: starting them, the lease that names the one replica driving each, the
-- prompts waiting to be delivered, and how far a run has got.

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

-- name: insert_prompt(chat_session_id, content, images, upstream_uuid)^
-- A user prompt, also the driver's outbox entry until `delivered_at` is set.
INSERT INTO messages (chat_session_id, type, content, images, upstream_uuid)
VALUES (:chat_session_id, 'user', :content, :images, :upstream_uuid)
RETURNING *;

-- name: undelivered_prompts(chat_session_id)
SELECT * FROM messages
WHERE chat_session_id = :chat_session_id AND upstream_uuid IS NOT NULL AND delivered_at IS NULL
ORDER BY id
LIMIT 20;

-- name: has_undelivered_prompts(chat_session_id)$
SELECT EXISTS (SELECT 1 FROM messages
               WHERE chat_session_id = :chat_session_id AND upstream_uuid IS NOT NULL AND delivered_at IS NULL);

-- name: mark_prompt_delivered(id)!
UPDATE messages SET delivered_at = now() WHERE id = :id AND delivered_at IS NULL;

-- name: run_control(id)^
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

-- name: lock_driver_liveness(run_owner)$
-- Taken once per process on a connection of its own: held, it says the driver `run_owner` is
-- alive (see run_driver_gone in migrations/0008_run_driver_liveness.sql). False when taken.
SELECT pg_try_advisory_lock(1464156740, hashtext(:run_owner));

-- name: ping_driver_liveness()$
-- The liveness connection still answers (and so still holds its lock).
SELECT 1;

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

-- name: heartbeat_runs(run_owner)
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

-- name: max_event_id(chat_session_id)$
SELECT COALESCE(max(id), 0) FROM events WHERE chat_session_id = :chat_session_id;

-- name: run_progress(chat_session_id, after_id, end_types, quiet_types)^
-- Since the run's baseline: the latest event that ends a turn, how many turns ended, and whether
-- the agent did anything.
SELECT
    (SELECT count(*) FROM events
     WHERE chat_session_id = :chat_session_id AND id > :after_id
       AND event_data ->> 'type' = ANY(:end_types)) AS end_count,
    (SELECT event_data FROM events
     WHERE chat_session_id = :chat_session_id AND id > :after_id AND event_data ->> 'type' = ANY(:end_types)
     ORDER BY id DESC LIMIT 1) AS last_end,
    EXISTS (SELECT 1 FROM events
            WHERE chat_session_id = :chat_session_id AND id > :after_id
              AND NOT (COALESCE(event_data ->> 'type', '') = ANY(:quiet_types))) AS active;

-- name: last_error_message(chat_session_id)$
SELECT event_data ->> 'error' FROM events
WHERE chat_session_id = :chat_session_id AND event_data ->> 'type' = 'error'
ORDER BY id DESC LIMIT 1;

-- name: find_owned_session_by_event(event_id, user_id)^
-- The caller's session holding an event (a browser reconnecting to execute-remote with
-- Last-Event-ID, whose URL does not name the session it created).
SELECT c.* FROM events e JOIN chat_sessions c ON c.id = e.chat_session_id
WHERE e.id = :event_id AND c.user_id = :user_id;
