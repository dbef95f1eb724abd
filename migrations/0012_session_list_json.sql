-- The session list's JSON made when a row is written, not each time the list is read (issue 23).
-- GET /api/sessions is the heaviest read on the one shared PostgreSQL: building 100 SessionRow
-- objects per request with row_to_json cost it about 550 µs of its 700-800 µs per request, while
-- reading the same page of plain rows costs about 150. A session row is written a few times in
-- its life (status, lease renewals) and listed on every page load, so each row now carries its
-- SessionRow object as JSON text, kept exact by PostgreSQL itself (a stored generated column),
-- and the list joins those texts.
--
-- The object is services.chat_sessions.session_json's, byte for byte as the list sends it: the
-- same keys in the same order, timestamps as services.clock.iso writes them (UTC, milliseconds,
-- `Z`). A change to either is a change to both (tests/test_sessions_api.py compares them).
--
-- IMMUTABLE is true here although to_char and row_to_json are only STABLE in general: a
-- timestamptz taken AT TIME ZONE 'UTC' is a fixed timestamp, this to_char pattern has no
-- locale-dependent field, and text, integer and boolean print the same under any setting.
CREATE FUNCTION session_row_json(
    id text, user_id text, session_path text, repository_owner text, repository_name text,
    user_request text, status text, repository_url text, base_branch text, branch text,
    provider text, provider_session_id text, remote_session_id text, remote_web_url text,
    total_cost text, issue_number integer, auto_commit boolean, locked boolean,
    created_at timestamptz, completed_at timestamptz, deleted_at timestamptz,
    worker_last_activity timestamptz
) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT row_to_json(r)::text FROM (
        SELECT id, user_id AS "userId", session_path AS "sessionPath",
               repository_owner AS "repositoryOwner", repository_name AS "repositoryName",
               user_request AS "userRequest", status, repository_url AS "repositoryUrl",
               base_branch AS "baseBranch", branch, provider,
               provider_session_id AS "providerSessionId", remote_session_id AS "remoteSessionId",
               remote_web_url AS "remoteWebUrl", total_cost AS "totalCost",
               issue_number AS "issueNumber", auto_commit AS "autoCommit", locked,
               to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS "createdAt",
               to_char(completed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS "completedAt",
               to_char(deleted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS "deletedAt",
               to_char(worker_last_activity AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
                   AS "workerLastActivity"
    ) r
$$;

ALTER TABLE chat_sessions ADD COLUMN row_json text NOT NULL GENERATED ALWAYS AS (session_row_json(
    id, user_id, session_path, repository_owner, repository_name, user_request, status, repository_url,
    base_branch, branch, provider, provider_session_id, remote_session_id, remote_web_url, total_cost,
    issue_number, auto_commit, locked, created_at, completed_at, deleted_at, worker_last_activity
)) STORED;
