-- What runs cost (tables `usage_records` and `usage_budgets`, migration 0011; services/usage.py).

-- name: get_last_usage_report(chat_session_id, remote_session_id)^
-- The latest cumulative report of a chat session's remote session (its next row's share is the
-- difference); keyed by both, so a remote id that another deployment or fake reused counts apart.
SELECT total_cost_usd, total_input_tokens, total_output_tokens, total_cache_read_tokens,
       total_cache_creation_tokens
FROM usage_records
WHERE chat_session_id = :chat_session_id AND remote_session_id = :remote_session_id
ORDER BY id DESC
LIMIT 1;

-- name: has_turn_usage(chat_session_id, turn_uuid)$
SELECT EXISTS (SELECT 1 FROM usage_records WHERE chat_session_id = :chat_session_id AND turn_uuid = :turn_uuid);

-- name: insert_usage_record(user_id, chat_session_id, provider, remote_session_id, turn_uuid, cost_usd, input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens, total_cost_usd, total_input_tokens, total_output_tokens, total_cache_read_tokens, total_cache_creation_tokens)^
-- Append one report; NULL when this turn end was recorded already. The admin impersonating the
-- owner when the run started is read from the run state (the audit).
INSERT INTO usage_records (user_id, chat_session_id, provider, remote_session_id, turn_uuid, cost_usd,
                           input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens,
                           total_cost_usd, total_input_tokens, total_output_tokens, total_cache_read_tokens,
                           total_cache_creation_tokens, impersonator_id)
VALUES (:user_id, :chat_session_id, :provider, :remote_session_id, :turn_uuid, :cost_usd,
        :input_tokens, :output_tokens, :cache_read_tokens, :cache_creation_tokens,
        :total_cost_usd, :total_input_tokens, :total_output_tokens, :total_cache_read_tokens,
        :total_cache_creation_tokens,
        (SELECT run_state ->> 'impersonator_id' FROM chat_sessions WHERE id = :chat_session_id))
ON CONFLICT (chat_session_id, turn_uuid) DO NOTHING
RETURNING id;

-- name: sum_user_cost(user_id, since, until, providers)$
-- A person's spend in [since, until) on the given backends.
SELECT COALESCE(sum(cost_usd), 0)
FROM usage_records
WHERE user_id = :user_id AND recorded_at >= :since AND recorded_at < :until AND provider = ANY(:providers);

-- name: list_user_usage_by_provider(user_id, since, until)
-- A person's totals in [since, until), one row per backend.
SELECT provider, sum(cost_usd) AS cost_usd, sum(input_tokens)::bigint AS input_tokens,
       sum(output_tokens)::bigint AS output_tokens, sum(cache_read_tokens)::bigint AS cache_read_tokens,
       sum(cache_creation_tokens)::bigint AS cache_creation_tokens, count(turn_uuid) AS turns
FROM usage_records
WHERE user_id = :user_id AND recorded_at >= :since AND recorded_at < :until
GROUP BY provider
ORDER BY provider;

-- name: list_monthly_usage(since, until, sort, descending, limit, offset)
-- One page of the people who spent anything in [since, until), with their totals per backend
-- and their own budget (if an admin set one), sorted by `sort` (cost, tokens, turns, email).
WITH per_backend AS (
    SELECT user_id, provider, sum(cost_usd) AS cost_usd, sum(input_tokens)::bigint AS input_tokens,
           sum(output_tokens)::bigint AS output_tokens, sum(cache_read_tokens)::bigint AS cache_read_tokens,
           sum(cache_creation_tokens)::bigint AS cache_creation_tokens, count(turn_uuid) AS turns
    FROM usage_records
    WHERE recorded_at >= :since AND recorded_at < :until
    GROUP BY user_id, provider
), people AS (
    SELECT user_id, sum(cost_usd) AS cost_usd,
           sum(input_tokens + output_tokens + cache_read_tokens + cache_creation_tokens)::bigint AS tokens,
           sum(turns)::bigint AS turns,
           jsonb_object_agg(provider, jsonb_build_object(
               'costUsd', cost_usd, 'inputTokens', input_tokens, 'outputTokens', output_tokens,
               'cacheReadTokens', cache_read_tokens, 'cacheCreationTokens', cache_creation_tokens,
               'turns', turns)) AS backends
    FROM per_backend
    GROUP BY user_id
)
SELECT p.user_id, u.email, u.display_name, p.cost_usd, p.tokens, p.turns, p.backends,
       b.user_id IS NOT NULL AS has_own_budget, b.monthly_budget_usd
FROM people p
JOIN users u ON u.id = p.user_id
LEFT JOIN usage_budgets b ON b.user_id = p.user_id
ORDER BY
    CASE WHEN :sort = 'cost' AND NOT :descending THEN p.cost_usd END ASC,
    CASE WHEN :sort = 'cost' AND :descending THEN p.cost_usd END DESC,
    CASE WHEN :sort = 'tokens' AND NOT :descending THEN p.tokens END ASC,
    CASE WHEN :sort = 'tokens' AND :descending THEN p.tokens END DESC,
    CASE WHEN :sort = 'turns' AND NOT :descending THEN p.turns END ASC,
    CASE WHEN :sort = 'turns' AND :descending THEN p.turns END DESC,
    CASE WHEN :sort = 'email' AND NOT :descending THEN u.email END ASC,
    CASE WHEN :sort = 'email' AND :descending THEN u.email END DESC,
    p.user_id
LIMIT :limit OFFSET :offset;

-- name: count_monthly_usage_people(since, until)$
SELECT count(DISTINCT user_id) FROM usage_records WHERE recorded_at >= :since AND recorded_at < :until;

-- name: get_usage_budget(user_id)^
-- A person's own budget row (absent: the deployment default applies).
SELECT monthly_budget_usd, updated_by, updated_at FROM usage_budgets WHERE user_id = :user_id;

-- name: set_usage_budget(user_id, monthly_budget_usd, updated_by)!
INSERT INTO usage_budgets (user_id, monthly_budget_usd, updated_by)
VALUES (:user_id, :monthly_budget_usd, :updated_by)
ON CONFLICT (user_id) DO UPDATE
SET monthly_budget_usd = EXCLUDED.monthly_budget_usd, updated_by = EXCLUDED.updated_by, updated_at = now();

-- name: delete_usage_budget(user_id)!
DELETE FROM usage_budgets WHERE user_id = :user_id;
