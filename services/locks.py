"""Every PostgreSQL advisory-lock key of the server, named once.

Advisory locks share one key space per database, so each key is written here and nowhere else:
the queries take it as a parameter (`queries/database.sql`). The values are arbitrary but must
never change: replicas of different versions running side by side during a deploy must agree.
Single keys are bigints (`pg_advisory_lock(key)`); the two-key form `(key, n)` is a separate key
space, used where a second number (a run owner's hash) tells the holders apart.
"""

from __future__ import annotations

# Migrations: replicas starting together on an empty database apply each file once, in turn.
MIGRATIONS = 7_215_334_001
# The background sync of Claude sessions: the replica holding it leads the cycle.
SYNC = 7_215_334_004
# The orphaned-run cleanup: the replica holding it leads the cycle.
CLEANUP = 7_215_334_005
# `server.py db import-original`: one import at a time, held for its whole run.
IMPORT_ORIGINAL = 7_215_334_007
# The Managed Agents backend's agent and environment: one replica at a time looks or creates.
MANAGED_AGENTS_RESOURCES = 7_215_334_013

# Two-key form (ANNOUNCEMENTS, 0), transaction-scoped: serialises session-list announcements so
# that their ids become visible in id order.
ANNOUNCEMENTS = 1_095_650_883
# Two-key form (DRIVER_LIVENESS, hashtext(run_owner)), held by each process on a connection of
# its own while it lives. migrations/0008_run_driver_liveness.sql (run_driver_gone) reads this
# key as a literal; that migration is applied and checksummed, so the value can never change.
DRIVER_LIVENESS = 1_464_156_740
# Two-key form (USAGE_RECORDS, hashtext(remote_session_id)), transaction-scoped: one report of a
# remote session's usage at a time, so each row's share is the difference to the one before.
USAGE_RECORDS = 1_970_357_024
