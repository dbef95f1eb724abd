-- The event log (table `events`) and the session-list announcements (table
-- `session_announcements`): appends, keyset reads, and the NOTIFYs that wake every replica's hub.
-- Reads are keyset pages (`id > :after_id ORDER BY id LIMIT :limit`), never a whole history.

-- name: lock_session_log(chat_session_id)!
-- Serialises appends to one chat session until the transaction ends, so that the session's ids
-- become visible in id order: a reader that sees id N already sees every smaller id of that
-- session, and "everything after N" is never missing a row that commits later. The lock is the
-- session row itself (not an advisory lock): a transaction that already holds the row, say
-- `FOR UPDATE` before appending, then never waits on an appender that waits on the row.
-- FOR NO KEY UPDATE does not block the foreign-key checks of inserts into other tables.
SELECT 1 FROM chat_sessions WHERE id = :chat_session_id FOR NO KEY UPDATE;

-- name: insert_events(chat_session_id, uuids, payloads)
-- Appends events in array order; an event with a uuid already stored for the session is skipped.
WITH new_rows AS (
    INSERT INTO events (chat_session_id, uuid, event_data)
    SELECT :chat_session_id, item.uuid, item.event_data
    FROM unnest(:uuids::text[], :payloads::jsonb[]) WITH ORDINALITY AS item (uuid, event_data, position)
    ORDER BY item.position
    ON CONFLICT (chat_session_id, uuid) WHERE uuid IS NOT NULL DO NOTHING
    RETURNING id
)
SELECT id FROM new_rows ORDER BY id;

-- name: notify_events(chat_session_id)!
-- Sent at commit; identical notifications of one transaction fold into one.
SELECT pg_notify('webedt_events', :chat_session_id);

-- name: notify_session_status(chat_session_id)!
SELECT pg_notify('webedt_session_status', :chat_session_id);

-- name: read_events_after(chat_session_id, after_id, limit)
SELECT id, event_data, timestamp
FROM events
WHERE chat_session_id = :chat_session_id AND id > :after_id
ORDER BY id
LIMIT :limit;

-- name: last_event_id(chat_session_id)$
-- The newest event id of a session (0 when it has none).
SELECT coalesce(max(id), 0) FROM events WHERE chat_session_id = :chat_session_id;

-- name: event_exists(chat_session_id, id)$
SELECT EXISTS (SELECT 1 FROM events WHERE chat_session_id = :chat_session_id AND id = :id);

-- name: count_events_between(chat_session_id, after_id, upto_id)$
SELECT count(*) FROM events
WHERE chat_session_id = :chat_session_id AND id > :after_id AND id <= :upto_id;

-- name: get_session_status(chat_session_id)$
-- The session's status, or NULL when the row is gone.
SELECT status FROM chat_sessions WHERE id = :chat_session_id;

-- name: lock_announcements()!
-- Serialises announcements until commit, so their ids become visible in id order (see above).
SELECT pg_advisory_xact_lock(1095650883, 0);

-- name: insert_announcement(user_id, kind, session)$
INSERT INTO session_announcements (user_id, kind, session)
VALUES (:user_id, :kind, :session)
RETURNING id;

-- name: notify_announcement(user_id)!
SELECT pg_notify('webedt_session_list', :user_id);

-- name: last_announcement_id()$
SELECT coalesce(max(id), 0) FROM session_announcements;

-- name: read_announcements_after(after_id, limit)
-- Every user's announcements after a position: the hub reads each one once per process.
SELECT id, user_id, kind, session, created_at
FROM session_announcements
WHERE id > :after_id
ORDER BY id
LIMIT :limit;

-- name: read_user_announcements(user_id, after_id, upto_id, limit)
-- One user's announcements in a window, for a viewer that reconnects with Last-Event-ID.
SELECT id, user_id, kind, session, created_at
FROM session_announcements
WHERE user_id = :user_id AND id > :after_id AND id <= :upto_id
ORDER BY id
LIMIT :limit;

-- name: prune_announcements(keep_seconds)!
DELETE FROM session_announcements WHERE created_at < now() - make_interval(secs => :keep_seconds);
