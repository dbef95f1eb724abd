"""Orphan cleanup: running sessions whose driver is gone (CONTRACT.md 6.2, without defects 11, 12).

The original's cleanup failed finished runs whose `completed` was never stored (defect 11) and
judged by `created_at` rather than activity, soft-deleted rows included (defect 12).

A run's driver renews `worker_last_activity` (its lease heartbeat) every few seconds on whichever
replica drives it, so a running session whose heartbeat is older than
`ORPHAN_SESSION_TIMEOUT_MINUTES` has no driver anywhere. For each such session (never a pending
one, never one whose lease is fresh):

- when upstream says the remote session has ended, its remaining events are stored and the
  session finishes with the status upstream reports (completed, or error for a failed session);
- when the remote session is gone (404) or the person's Claude credentials are gone, it finishes
  as error with one error event saying why;
- otherwise (still running upstream, not created yet, or upstream unreachable) the run driver
  adopts it and carries it on.

Finishing takes the session's lease first with a conditional UPDATE, so a replica that adopted
the run meanwhile keeps it and the cleanup leaves it alone. One replica leads each cycle.

The same pass deletes what has expired elsewhere: login sessions, positions of fetched histories
(services/fetched_history.py) and session-list announcements (services/session_list.py).
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import asyncpg

from services import fetched_history, locks, session_list
from services.agents.backend import UpstreamError
from services.agents.ending import Outcome, end_run, local_status
from services.agents.events import fetch_all_events, session_cost, stored_event
from services.context import AppContext
from services.db import UNAVAILABLE_ERRORS, database_outage, leading, queries
from services.errors import ServiceError
from services.periodic import PeriodicTask

log = logging.getLogger(__name__)

BATCH = 100
REMOTE_GONE = "The remote session no longer exists"
FAILED = "Claude reported that the session failed"


async def _finish(
    ctx: AppContext,
    row: asyncpg.Record,
    status: str,
    events: list[dict[str, Any]],
    error: str | None,
    total_cost: str | None = None,
) -> bool:
    """Take the lease (only if it is still stale) and end the run; False when someone holds it."""
    owner = f"orphan-cleanup:{secrets.token_hex(6)}"
    timeout = ctx.config.orphan_session_timeout_minutes * 60
    claimed = await queries.chat_sessions.claim_run(ctx.pool, id=row["id"], run_owner=owner, lease_seconds=timeout)
    if claimed is None:
        return False
    outcome = Outcome(status, error, total_cost=total_cost, source="cleanup")
    ended = await end_run(ctx, row["id"], outcome, owner=owner, events=[stored_event(e) for e in events])
    if ended == "ended":
        log.info("orphaned session %s finished as %s", row["id"], status)
    return ended == "ended"


async def _adopt(ctx: AppContext, row: asyncpg.Record) -> str:
    """Give the run to this replica's run driver: take its lease for the driver (only while it is
    still stale), then have the driver start on it."""
    if ctx.runs is None:
        return "skipped"
    timeout = ctx.config.orphan_session_timeout_minutes * 60
    claimed = await queries.chat_sessions.claim_run(
        ctx.pool, id=row["id"], run_owner=ctx.runs.owner, lease_seconds=timeout
    )
    if claimed is None:
        return "alive"
    await ctx.runs.ensure_driving(row["id"])
    return "adopted"


async def handle_orphan(ctx: AppContext, row: asyncpg.Record) -> str:
    """Finish or hand over one orphaned session; returns what was done."""
    remote_id = row["remote_session_id"]
    if not remote_id:
        # Never reached upstream (or its creation reply was lost): the driver creates or finds it.
        return await _adopt(ctx, row)
    if ctx.runs is None:
        return "skipped"
    provider = ctx.runs.provider_for(row["provider"])
    try:
        token = await provider.authenticate(row["user_id"])
    except ServiceError as exc:
        if exc.status >= 500:
            return await _adopt(ctx, row)
        return "finished" if await _finish(ctx, row, "error", [], exc.message) else "alive"
    try:
        remote = await provider.get(token, remote_id)
        status = local_status(remote.state)
        if status in (None, "running"):
            return await _adopt(ctx, row)
        events = await fetch_all_events(provider, token, remote_id)
    except UpstreamError as exc:
        if exc.not_found:
            return "finished" if await _finish(ctx, row, "error", [], REMOTE_GONE) else "alive"
        return await _adopt(ctx, row)
    error = FAILED if status == "error" else None
    cost = session_cost(provider, events)
    return "finished" if await _finish(ctx, row, status, events, error, cost) else "alive"


async def run_once(ctx: AppContext) -> dict[str, int] | None:
    """One cleanup pass if this replica leads it (None if another one does)."""
    async with leading(ctx.dsn, locks.CLEANUP) as leader:
        if not leader:
            return None
        timeout = ctx.config.orphan_session_timeout_minutes * 60
        rows = [
            r
            async for r in queries.chat_sessions.list_orphaned_runs(
                ctx.pool, timeout_seconds=float(timeout), limit=BATCH
            )
        ]
        totals = {"finished": 0, "adopted": 0, "alive": 0, "skipped": 0}
        # Expired login sessions are refused when presented; this keeps them from piling up.
        await queries.auth_sessions.delete_expired_auth_sessions(ctx.pool)
        await fetched_history.prune(ctx)
        # Session-list announcements older than an hour are past any reconnect's Last-Event-ID.
        await session_list.prune(ctx)
        for row in rows:
            try:
                totals[await handle_orphan(ctx, row)] += 1
            except UNAVAILABLE_ERRORS as exc:
                database_outage.failed(f"orphan cleanup of session {row['id']}", exc)
                totals["skipped"] += 1
            except asyncpg.PostgresError:
                log.warning("orphan cleanup of session %s failed", row["id"], exc_info=True)
                totals["skipped"] += 1
        return totals


def orphan_cleanup(ctx: AppContext) -> PeriodicTask:
    """The background loop: a pass at start, then every ORPHAN_CLEANUP_INTERVAL_MINUTES."""
    return PeriodicTask(
        "orphan cleanup",
        lambda: run_once(ctx),
        interval=ctx.config.orphan_cleanup_interval_minutes * 60,
        worth_logging=lambda totals: bool(totals and (totals["finished"] or totals["adopted"])),
    )
