-- The event log (table `events`): appends, keyset reads, how far a run has got, and the
-- NOTIFYs that wake every replica's hub. Appends hold chat_sessions.lock_session_log.
-- Reads are keyset pages (`id > :after_id ORDER BY id LIMIT :limit`), never a whole history.

-- name: insert_events(chat_session_id, uuids, payloads)
-- Appends events in array order; an event with a uuid already stored for the session is skipped.
WITH new_rows AS (
    INSERT INTO events (chat_session_id, uuid, event_data)
    SELECT :chat_session_id, item.uuid, item.event_data
    FROM unnest(:uuids::text[], :payloads::jsonb[]) WITH ORDINALITY AS item (uuid, event_data, position)
    ORDER BY item.position
    ON CONFLICT (chat_session_id, uuid) WHERE uuid IS NOT NULL DO NOTHING
    RETURNING id, uuid
)
SELECT id, uuid FROM new_rows ORDER BY id;

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

-- name: read_event_texts_after(chat_session_id, after_id, limit)
-- As read_events_after, ready to serve without decoding and re-encoding: the event as its stored
-- JSON text, its `type` when that is a string (the SSE event name), and the timestamp as
-- services/clock.iso writes it (UTC, milliseconds cut, not rounded, like Python's isoformat).
SELECT id,
       event_data::text AS event_json,
       CASE WHEN jsonb_typeof(event_data -> 'type') = 'string' THEN event_data ->> 'type' END AS type,
       to_char(timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS timestamp
FROM events
WHERE chat_session_id = :chat_session_id AND id > :after_id
ORDER BY id
LIMIT :limit;

-- name: get_last_event_id(chat_session_id)$
-- The newest event id of a session (0 when it has none).
SELECT coalesce(max(id), 0) FROM events WHERE chat_session_id = :chat_session_id;

-- name: has_event(chat_session_id, id)$
SELECT EXISTS (SELECT 1 FROM events WHERE chat_session_id = :chat_session_id AND id = :id);

-- name: count_events_between(chat_session_id, after_id, upto_id)$
SELECT count(*) FROM events
WHERE chat_session_id = :chat_session_id AND id > :after_id AND id <= :upto_id;

-- name: count_event_uuids(chat_session_id)$
SELECT count(DISTINCT uuid) FROM events WHERE chat_session_id = :chat_session_id AND uuid IS NOT NULL;

-- name: get_run_progress(chat_session_id, after_id, end_types, quiet_types)^
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

-- name: get_last_error_message(chat_session_id)$
SELECT event_data ->> 'error' FROM events
WHERE chat_session_id = :chat_session_id AND event_data ->> 'type' = 'error'
ORDER BY id DESC LIMIT 1;
