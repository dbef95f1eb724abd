-- name: get_login_failures(keys, window_seconds)
-- Failure counts still inside their window, with the seconds until each window ends.
SELECT key, failures,
       ceil(extract(epoch FROM window_start + make_interval(secs => :window_seconds) - now()))::int
           AS retry_after
FROM login_failures
WHERE key = ANY(:keys)
  AND window_start > now() - make_interval(secs => :window_seconds);

-- name: record_login_failure(key, window_seconds)!
-- One more attempt for `key` (`email:`, `device:` and `ip:` failed logins; `register:` sign-ups).
INSERT INTO login_failures AS lf (key, window_start, failures)
VALUES (:key, now(), 1)
ON CONFLICT (key) DO UPDATE SET
    failures = CASE WHEN lf.window_start > now() - make_interval(secs => :window_seconds)
                    THEN lf.failures + 1 ELSE 1 END,
    window_start = CASE WHEN lf.window_start > now() - make_interval(secs => :window_seconds)
                        THEN lf.window_start ELSE now() END;

-- name: clear_login_failures(key)!
DELETE FROM login_failures WHERE key = :key;
