-- The admin impersonation log (table `impersonations`).

-- name: insert_impersonation(admin_id, admin_email, target_user_id, target_email, client_ip)$
INSERT INTO impersonations (admin_id, admin_email, target_user_id, target_email, client_ip)
VALUES (:admin_id, :admin_email, :target_user_id, :target_email, :client_ip)
RETURNING id;

-- name: end_impersonation(id)!
UPDATE impersonations SET ended_at = now() WHERE id = :id AND ended_at IS NULL;

-- name: list_impersonations(limit, offset)
SELECT id, admin_id, admin_email, target_user_id, target_email, client_ip, started_at, ended_at
FROM impersonations
ORDER BY started_at DESC, id DESC
LIMIT :limit OFFSET :offset;

-- name: count_impersonations()$
SELECT count(*) FROM impersonations;
