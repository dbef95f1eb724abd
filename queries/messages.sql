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
