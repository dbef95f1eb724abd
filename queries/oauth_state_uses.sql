-- Nonces of GitHub OAuth states already used (table `oauth_state_uses`).

-- name: use_oauth_state(nonce, keep_seconds)$
-- Marks a state's nonce as used: true the first time, false for every later use. Forgets the
-- nonces of states that have expired anyway.
WITH forgotten AS (
    DELETE FROM oauth_state_uses WHERE used_at < now() - make_interval(secs => :keep_seconds)
)
INSERT INTO oauth_state_uses (nonce) VALUES (:nonce)
ON CONFLICT (nonce) DO NOTHING
RETURNING true;
