-- The Managed Agents backend (AGENT_BACKEND=managed-agents): the agent and the environment this
-- deployment created upstream, once for all replicas (upstream has no uniqueness rule for them).
-- `chat_sessions.provider` already says which backend each session runs on.
CREATE TABLE managed_agents_resources (
    kind         text PRIMARY KEY CHECK (kind IN ('agent', 'environment')),
    upstream_id  text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
