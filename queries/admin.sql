-- Admin queries that span tables.

-- name: get_admin_stats()^
-- Login sessions count only while they are unexpired (the original counted expired rows too).
SELECT (SELECT count(*) FROM users) AS total_users,
       (SELECT count(*) FROM users WHERE is_admin) AS total_admins,
       (SELECT count(*) FROM sessions WHERE expires_at > now()) AS active_sessions,
       (SELECT count(*) FROM chat_sessions WHERE deleted_at IS NULL) AS total_chat_sessions,
       (SELECT count(*) FROM chat_sessions WHERE status = 'running' AND deleted_at IS NULL) AS running_chat_sessions;
