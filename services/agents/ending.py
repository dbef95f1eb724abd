"""How a run ends: one function for every path that ends one (the driver's verdict, the orphan
cleanup, an abort), and one mapping of remote session states to local statuses.

`end_run` locks the session row, stores the run's last events and, for an error, its ONE `error`
event, writes the final status (cost, completedAt; the lease, the run state and the outbox
cleared), and announces the change: to the streams with the commit, then to the session list.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from services import event_log, session_list
from services.agents.backend import RemoteState
from services.chat_sessions import session_json
from services.clock import now_iso
from services.context import AppContext
from services.db import queries

log = logging.getLogger(__name__)

# CONTRACT.md 5.4: the local status a remote session's state means.
STATUS_FROM_REMOTE = {
    RemoteState.IDLE: "completed",
    RemoteState.RUNNING: "running",
    RemoteState.COMPLETED: "completed",
    RemoteState.FAILED: "error",
    RemoteState.ARCHIVED: "completed",
}
# What the session list hears when a run ends.
ENDED_FIELDS = ("id", "status", "completedAt", "totalCost", "branch", "remoteSessionId", "remoteWebUrl")


def local_status(remote_state: str) -> str | None:
    """The local status for a remote state, None when the state says nothing (unknown)."""
    return STATUS_FROM_REMOTE.get(remote_state)


def error_event(message: str, source: str = "claude") -> dict[str, Any]:
    """The one `error` event a failed run stores."""
    return {"type": "error", "timestamp": now_iso(), "source": source, "error": message}


@dataclass
class Outcome:
    """How a run ended: `completed` or `error` (with the message of its one error event, and who
    reports it: `claude`, `cleanup`, `user`)."""

    status: str
    error: str | None = None
    total_cost: str | None = None
    source: str = "claude"


async def announce_ended(ctx: AppContext, row: asyncpg.Record) -> None:
    """Tell the person's session list that a session's run ended (a trashed one is on no list)."""
    if row["deleted_at"] is None:
        session = session_json(row)
        await session_list.announce(ctx, row["user_id"], "status_changed", {k: session[k] for k in ENDED_FIELDS})


async def end_run(
    ctx: AppContext,
    session_id: str,
    outcome: Outcome,
    *,
    owner: str | None,
    events: Sequence[dict[str, Any]] = (),
    unless_prompts_wait: bool = False,
) -> str:
    """End the session's run in one transaction (see the module docstring).

    `owner`: only while this driver holds the run (None: whoever drives it, and even a session
    that is not running, as an abort does). `events`: upstream events to store first. With
    `unless_prompts_wait` a completed run goes on when a prompt is waiting in the outbox (a
    follow-up recorded just before the row lock must be delivered, not dropped).

    Returns "ended", "not_ours" (not running, or another driver's) or "prompts_wait"."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        if owner is None:
            row = await queries.chat_sessions.lock_session(conn, id=session_id)
            running = row is not None and row["status"] == "running"
        else:
            row = await queries.chat_sessions.lock_owned_run(conn, id=session_id, run_owner=owner)
            running = row is not None
        if row is None:
            return "not_ours"
        if (
            unless_prompts_wait
            and outcome.status == "completed"
            and await queries.messages.has_undelivered_prompts(conn, chat_session_id=session_id)
        ):
            return "prompts_wait"
        stored = list(events)
        if outcome.status == "error" and running:
            stored.append(error_event(outcome.error or "Run failed", outcome.source))
        if stored:
            await event_log.append(ctx, session_id, stored, conn=conn)
        final = await queries.chat_sessions.finish_run(
            conn, id=session_id, status=outcome.status, total_cost=outcome.total_cost, branch=None
        )
        await event_log.announce_status(ctx, session_id, conn=conn)
    log.info("run of session %s ended: %s", session_id, outcome.status)
    await announce_ended(ctx, final)
    return "ended"
