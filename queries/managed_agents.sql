-- The Managed Agents backend: the deployment's upstream agent and environment.

-- name: get_agent_resource(kind)$
SELECT upstream_id FROM managed_agents_resources WHERE kind = :kind;

-- name: insert_agent_resource(kind, upstream_id)!
INSERT INTO managed_agents_resources (kind, upstream_id) VALUES (:kind, :upstream_id);
