"""Session-list announcements: what `/api/sessions/updates` tells a person's open pages.

A NOTIFY payload is limited to 8000 bytes and is lost while a replica's LISTEN connection is
down, so an announcement is a row in `session_announcements` (migration 0002) and the NOTIFY
on `webedt_session_list` carries only the user id. Each replica's hub reads new rows once per
wake-up, catches up from the table after a reconnect, and a viewer that reconnects with
`Last-Event-ID` (the row id) is sent what it missed. Rows older than an hour are deleted by the
orphan cleanup's pass (services/cleanup.py).
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg

from services import locks
from services.clock import iso
from services.context import AppContext
from services.db import UNAVAILABLE_ERRORS, queries

log = logging.getLogger(__name__)

KINDS = frozenset({"created", "updated", "status_changed", "deleted"})
LIST_CHANNEL = "webedt_session_list"
KEEP_SECONDS = 3600


async def announce(ctx: AppContext, user_id: str, kind: str, session: dict[str, Any]) -> None:
    """Deliver a session-list change to `user_id`'s viewers on every replica.

    `kind` is created, updated, status_changed or deleted; `session` is a (partial) SessionRow
    that always has `id` (`services.chat_sessions.session_json` builds full rows). A database
    failure is logged, never raised: the change being announced has already happened.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown session-list announcement kind {kind!r}")
    if not isinstance(session, dict) or not session.get("id"):
        raise ValueError("a session-list announcement needs the session's id")
    try:
        async with ctx.pool.acquire() as conn, conn.transaction():
            await queries.database.lock_announcements(conn, key=locks.ANNOUNCEMENTS)
            await queries.session_announcements.insert_announcement(conn, user_id=user_id, kind=kind, session=session)
            await queries.session_announcements.notify_announcement(conn, user_id=user_id)
    except UNAVAILABLE_ERRORS as exc:
        # The change itself is already made; a page that missed it catches up on its next load.
        # The database being away (or the lock busy) is no bug: no traceback.
        log.warning("could not announce %s of session %s (%s)", kind, session["id"], exc.__class__.__name__)
    except asyncpg.PostgresError:
        log.warning("could not announce %s of session %s", kind, session["id"], exc_info=True)


def frame_data(row: asyncpg.Record) -> dict[str, Any]:
    """The `data` of an updates frame: `{type, session, timestamp}` (CONTRACT.md 4.5)."""
    return {"type": row["kind"], "session": row["session"], "timestamp": iso(row["created_at"])}


async def last_id(ctx: AppContext) -> int:
    return int(await queries.session_announcements.get_last_announcement_id(ctx.pool))


async def read_after(ctx: AppContext, after_id: int, limit: int) -> list[asyncpg.Record]:
    """Every user's announcements with id > after_id, oldest first."""
    return [
        r
        async for r in queries.session_announcements.read_announcements_after(ctx.pool, after_id=after_id, limit=limit)
    ]


async def read_for_user(ctx: AppContext, user_id: str, after_id: int, upto_id: int, limit: int) -> list[asyncpg.Record]:
    """One user's announcements with after_id < id <= upto_id, oldest first."""
    return [
        r
        async for r in queries.session_announcements.read_user_announcements(
            ctx.pool, user_id=user_id, after_id=after_id, upto_id=upto_id, limit=limit
        )
    ]


async def prune(ctx: AppContext, keep_seconds: float = KEEP_SECONDS) -> None:
    """Forget announcements older than `keep_seconds`."""
    await queries.session_announcements.prune_announcements(ctx.pool, keep_seconds=float(keep_seconds))
