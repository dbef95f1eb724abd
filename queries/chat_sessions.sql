-- name: get_owned_session(id, user_id)^
-- A chat session by id or session path, only when it belongs to user_id (trash included).
SELECT * FROM chat_sessions
WHERE (id = :id OR session_path = :id) AND user_id = :user_id
LIMIT 1;

-- name: get_session_by_id(id)^
SELECT * FROM chat_sessions WHERE id = :id;
