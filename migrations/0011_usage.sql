-- What each run costs (issue 24): one append-only row per recorded report of a remote session's
-- usage, attributed to the person who owns the chat session. Upstream reports cumulative figures
-- (Claude Code's `result`, the Managed Agents session's `usage`); a row keeps that report
-- (`total_*`) and its own share (`cost_usd`, `*_tokens`): the difference to the session's
-- previous report, so a month's spend is a plain SUM.
--
-- `turn_uuid` is the upstream uuid of the turn's end event: a turn end is recorded once (the
-- unique key), whichever replica or retry records it. A reading taken mid-turn (a Managed Agents
-- run's status check) has none. No foreign key to chat_sessions: spend stays counted after a
-- session is deleted for good; a deleted person's rows go with them.
CREATE TABLE usage_records (
    id                     bigserial PRIMARY KEY,
    user_id                text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    chat_session_id        text NOT NULL,
    provider               text NOT NULL,
    remote_session_id      text NOT NULL,
    turn_uuid              text,
    cost_usd               numeric(16, 6) NOT NULL DEFAULT 0,
    input_tokens           bigint NOT NULL DEFAULT 0,
    output_tokens          bigint NOT NULL DEFAULT 0,
    cache_read_tokens      bigint NOT NULL DEFAULT 0,
    cache_creation_tokens  bigint NOT NULL DEFAULT 0,
    total_cost_usd         numeric(16, 6),
    total_input_tokens     bigint NOT NULL DEFAULT 0,
    total_output_tokens    bigint NOT NULL DEFAULT 0,
    total_cache_read_tokens      bigint NOT NULL DEFAULT 0,
    total_cache_creation_tokens  bigint NOT NULL DEFAULT 0,
    -- The admin who started the run while impersonating its owner (the audit), else NULL.
    impersonator_id        text,
    recorded_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (chat_session_id, turn_uuid)
);
CREATE INDEX usage_records_user_month ON usage_records (user_id, recorded_at);
CREATE INDEX usage_records_remote ON usage_records (remote_session_id, id);
CREATE INDEX usage_records_month ON usage_records (recorded_at);

-- A person's own monthly budget, set by an admin: a row overrides the deployment default
-- (USAGE_MONTHLY_BUDGET_USD); a row whose budget is NULL means no budget for that person.
CREATE TABLE usage_budgets (
    user_id             text PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    monthly_budget_usd  numeric(16, 2) CHECK (monthly_budget_usd >= 0),
    updated_by          text,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
