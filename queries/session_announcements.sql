-- The session-list announcements (table `session_announcements`): appends, keyset reads and
-- the NOTIFY that wakes every replica's hub. Appends are serialised by database.lock_announcements.

-- name: insert_announcement(user_id, kind, session)$
INSERT INTO session_announcements (user_id, kind, session)
VALUES (:user_id, :kind, :session)
RETURNING id;

-- name: notify_announcement(user_id)!
SELECT pg_notify('webedt_session_list', :user_id);

-- name: get_last_announcement_id()$
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
