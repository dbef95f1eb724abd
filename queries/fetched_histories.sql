-- Positions a login session has just fetched of a chat session's history (table
-- `fetched_histories`, migration 0009): written by the whole-history fetch, taken once by the
-- session's event stream, expired after a few seconds.

-- name: upsert_fetched_history(login_session_id, chat_session_id, last_event_id, seconds)!
-- An unexpired position that no stream has taken yet is kept (with its expiry): it is the older
-- one, and a stream that starts after it misses nothing of either fetch.
INSERT INTO fetched_histories AS f (login_session_id, chat_session_id, last_event_id, expires_at)
VALUES (:login_session_id, :chat_session_id, :last_event_id, now() + make_interval(secs => :seconds))
ON CONFLICT (login_session_id, chat_session_id) DO UPDATE
SET last_event_id = EXCLUDED.last_event_id, expires_at = EXCLUDED.expires_at
WHERE f.expires_at <= now();

-- name: take_fetched_history(login_session_id, chat_session_id)$
-- The position, unless expired; the row goes either way (a position serves one stream).
WITH taken AS (
    DELETE FROM fetched_histories
    WHERE login_session_id = :login_session_id AND chat_session_id = :chat_session_id
    RETURNING last_event_id, expires_at
)
SELECT last_event_id FROM taken WHERE expires_at > now();

-- name: delete_expired_fetched_histories()!
DELETE FROM fetched_histories WHERE expires_at <= now();
