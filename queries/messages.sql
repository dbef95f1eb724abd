-- Chat messages (table `messages`); a user prompt is also the run driver's outbox entry until
-- `delivered_at` is set.

-- name: insert_message(chat_session_id, type, content, images)^
INSERT INTO messages (chat_session_id, type, content, images)
VALUES (:chat_session_id, :type, :content, :images)
RETURNING *;

-- name: list_messages(chat_session_id, limit, offset)
-- A page of one session's messages, oldest first.
SELECT * FROM messages
WHERE chat_session_id = :chat_session_id
ORDER BY timestamp, id
LIMIT :limit OFFSET :offset;

-- name: count_messages(chat_session_id)$
SELECT count(*) FROM messages WHERE chat_session_id = :chat_session_id;

-- name: insert_prompt(chat_session_id, content, images, upstream_uuid)^
-- A user prompt, also the driver's outbox entry until `delivered_at` is set.
INSERT INTO messages (chat_session_id, type, content, images, upstream_uuid)
VALUES (:chat_session_id, 'user', :content, :images, :upstream_uuid)
RETURNING *;

-- name: get_undelivered_prompts(chat_session_id, limit)
-- The outbox, oldest first, a batch at a time.
SELECT * FROM messages
WHERE chat_session_id = :chat_session_id AND upstream_uuid IS NOT NULL AND delivered_at IS NULL
ORDER BY id
LIMIT :limit;

-- name: has_undelivered_prompts(chat_session_id)$
SELECT EXISTS (SELECT 1 FROM messages
               WHERE chat_session_id = :chat_session_id AND upstream_uuid IS NOT NULL AND delivered_at IS NULL);

-- name: mark_prompt_delivered(id)!
UPDATE messages SET delivered_at = now() WHERE id = :id AND delivered_at IS NULL;
