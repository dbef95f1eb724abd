-- The migration bookkeeping (table `schema_migrations`): which files of migrations/ are applied,
-- with the checksum each had then. The table is created here, not by a migration, so that it
-- exists before any; services/migrations.py runs these under the migrations advisory lock.

-- name: create_schema_migrations()!
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- name: list_applied_migrations()
SELECT version, checksum FROM schema_migrations ORDER BY version;

-- name: record_migration(version, name, checksum)!
INSERT INTO schema_migrations (version, name, checksum) VALUES (:version, :name, :checksum);
