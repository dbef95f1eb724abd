-- The Managed Agents backend: the deployment's upstream agent and environment.

-- name: lock_resources(key)$
-- Transaction-level advisory lock: one replica at a time looks for or creates the resources.
SELECT pg_advisory_xact_lock(:key) IS NOT NULL;

-- name: get_resource(kind)$
SELECT upstream_id FROM managed_agents_resources WHERE kind = :kind;

-- name: insert_resource(kind, upstream_id)!
INSERT INTO managed_agents_resources (kind, upstream_id) VALUES (:kind, :upstream_id);
