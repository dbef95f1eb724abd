"""The event log: every event of every chat session, in PostgreSQL, in id order.

`events.id` is the SSE `id:` of the event on every stream. Appends to one chat session are
serialised by locking the session row (`FOR NO KEY UPDATE`) until commit, so a session's ids
become visible in id order; that is what lets a reader that has seen id N ask for "everything after N" and never miss
a row that commits later. After the commit a NOTIFY on `webedt_events` (payload: the chat
session id) wakes the hub of every replica, which reads the new rows itself.

Status changes of a session row travel on `webedt_session_status` (`announce_status`), so
streams that follow a live run end once the row is no longer `running`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import orjson

from services.context import AppContext
from services.db import queries
from services.pagination import whole_number

EVENTS_CHANNEL = "webedt_events"
STATUS_CHANNEL = "webedt_session_status"


def _uuid_of(event: dict[str, Any]) -> str | None:
    value = event.get("uuid") if isinstance(event, dict) else None
    return value if isinstance(value, str) else None


async def _append_locked(
    conn: asyncpg.Connection, chat_session_id: str, events: list[dict[str, Any]]
) -> list[asyncpg.Record]:
    await queries.chat_sessions.lock_session_log(conn, chat_session_id=chat_session_id)
    rows = [
        r
        async for r in queries.events.insert_events(
            conn,
            chat_session_id=chat_session_id,
            uuids=[_uuid_of(event) for event in events],
            payloads=list(events),
        )
    ]
    if rows:
        await queries.events.notify_events(conn, chat_session_id=chat_session_id)
    return rows


async def append(
    ctx: AppContext,
    chat_session_id: str,
    events: list[dict[str, Any]],
    *,
    conn: asyncpg.Connection | None = None,
) -> list[int]:
    """Store `events` in order and return the ids of the rows actually inserted.

    An event whose `uuid` is a string is stored at most once per chat session (a repeat is
    skipped silently). Runs in one transaction of its own, or inside the caller's transaction
    when `conn` is given (then the rows and the notification appear when the caller commits,
    and the session's append lock is held until then: keep that transaction short).
    """
    return [row["id"] for row in await _append_rows(ctx, chat_session_id, events, conn)]


async def append_upstream(ctx: AppContext, chat_session_id: str, events: list[dict[str, Any]]) -> set[str]:
    """Store upstream events (each with its `uuid`) in order, in a transaction of their own;
    the uuids of those that were new (the rest were stored before, by this run or another)."""
    return {row["uuid"] for row in await _append_rows(ctx, chat_session_id, events, None)}


async def _append_rows(
    ctx: AppContext, chat_session_id: str, events: list[dict[str, Any]], conn: asyncpg.Connection | None
) -> list[asyncpg.Record]:
    if not events:
        return []
    if conn is not None and conn.is_in_transaction():
        return await _append_locked(conn, chat_session_id, events)
    if conn is not None:
        async with conn.transaction():
            return await _append_locked(conn, chat_session_id, events)
    async with ctx.row_turns.turn(chat_session_id), ctx.pool.acquire() as own, own.transaction():
        return await _append_locked(own, chat_session_id, events)


async def announce_status(ctx: AppContext, chat_session_id: str, *, conn: asyncpg.Connection | None = None) -> None:
    """Tell every replica that the session row changed (its status above all).

    Call it after the change is committed, or pass the transaction's `conn` so that the
    notification goes out with the commit. Streams following a live run end with their
    `completed` frame once the row's status is no longer `running`.
    """
    await queries.events.notify_session_status(conn or ctx.pool, chat_session_id=chat_session_id)


async def read_after(ctx: AppContext, chat_session_id: str, after_id: int, limit: int) -> list[asyncpg.Record]:
    """Up to `limit` events with id > `after_id`, oldest first (`id`, `event_data`, `timestamp`)."""
    return [
        r
        async for r in queries.events.read_events_after(
            ctx.pool, chat_session_id=chat_session_id, after_id=after_id, limit=limit
        )
    ]


async def read_texts_after(ctx: AppContext, chat_session_id: str, after_id: int, limit: int) -> list[asyncpg.Record]:
    """As `read_after`, each event as its stored JSON text: `id`, `event_json`, `type` (a string or
    None) and `timestamp` (already as `iso()` writes it). For serving events as they are: the
    history and the streams embed the text instead of decoding and re-encoding every event."""
    return [
        r
        async for r in queries.events.read_event_texts_after(
            ctx.pool, chat_session_id=chat_session_id, after_id=after_id, limit=limit
        )
    ]


async def last_id(ctx: AppContext, chat_session_id: str) -> int:
    """The newest event id of the session, 0 when it has none."""
    return int(await queries.events.get_last_event_id(ctx.pool, chat_session_id=chat_session_id))


async def has_event(ctx: AppContext, chat_session_id: str, event_id: int) -> bool:
    """Whether `event_id` belongs to this session's history."""
    if event_id <= 0 or event_id >= 2**63:
        return False
    return bool(await queries.events.has_event(ctx.pool, chat_session_id=chat_session_id, id=event_id))


async def count_between(ctx: AppContext, chat_session_id: str, after_id: int, upto_id: int) -> int:
    """How many of the session's events have after_id < id <= upto_id."""
    return int(
        await queries.events.count_events_between(
            ctx.pool, chat_session_id=chat_session_id, after_id=after_id, upto_id=upto_id
        )
    )


async def session_status(ctx: AppContext, chat_session_id: str) -> str | None:
    """The session row's current status (None when the row is gone)."""
    return await queries.chat_sessions.get_session_status(ctx.pool, chat_session_id=chat_session_id)


PAGE_DEFAULT_LIMIT = 1000
PAGE_MAX_LIMIT = 5000
# Rows read (and sent) at a time when the whole history is asked for.
HISTORY_BATCH = 1000
_MAX_ID = 2**63 - 1


def page_arguments(after: str | None, limit: str | None) -> tuple[int, int]:
    """`after` (default 0) and `limit` (default 1,000, at most 5,000) from query strings, by the
    rule of services/pagination.py (a keyset `after` in place of an offset)."""
    after_id = whole_number("after", after, minimum=0, range_text="from 0 (the previous page's lastId)")
    size = whole_number("limit", limit, minimum=1, range_text=f"from 1 to {PAGE_MAX_LIMIT}")
    return after_id or 0, min(size, PAGE_MAX_LIMIT) if size is not None else PAGE_DEFAULT_LIMIT


def event_json(chat_session_id: str, row: asyncpg.Record) -> dict[str, Any]:
    """A stored event (a row of `read_texts_after`) as the events list shows it (CONTRACT.md 1.3,
    `GET /api/sessions/:id/events`);
    its data is embedded as stored (the same JSON, PostgreSQL's spacing)."""
    return {
        "id": row["id"],
        "chatSessionId": chat_session_id,
        "eventData": orjson.Fragment(row["event_json"]),
        "timestamp": row["timestamp"],
    }


async def page(ctx: AppContext, session: asyncpg.Record, after_id: int, limit: int) -> dict[str, Any]:
    """One keyset page of a session's events: the contract's shape plus paging fields.

    `total` counts every event of the session; `hasMore` says whether events follow this page
    and `lastId` is the `after` for the next page.
    """
    chat_session_id = session["id"]
    rows = await read_texts_after(ctx, chat_session_id, after_id, limit + 1)
    has_more = len(rows) > limit
    rows = rows[:limit]
    return {
        "events": [event_json(chat_session_id, row) for row in rows],
        "total": await count_between(ctx, chat_session_id, 0, _MAX_ID),
        "sessionId": chat_session_id,
        "sessionPath": session["session_path"],
        "status": session["status"],
        "after": after_id,
        "limit": limit,
        "hasMore": has_more,
        "lastId": rows[-1]["id"] if rows else after_id,
    }


async def whole_history(
    ctx: AppContext, session: asyncpg.Record, read_all: Callable[[int], Awaitable[None]] | None = None
) -> AsyncIterator[bytes]:
    """The JSON of `page()` for the whole history, in chunks of `HISTORY_BATCH` events, so that
    memory stays flat however long the session is (the website's `getEvents` never pages).

    Read in keyset batches; `total` and `lastId` describe exactly the events sent (events appended
    while it streams are included up to the last batch read). `read_all`, if given, is awaited
    with `lastId` once every event is read, before the answer's end is yielded."""
    chat_session_id = session["id"]
    yield b'{"events":['
    after_id = 0
    total = 0
    while True:
        rows = await read_texts_after(ctx, chat_session_id, after_id, HISTORY_BATCH)
        if rows:
            events = orjson.dumps([event_json(chat_session_id, row) for row in rows], option=orjson.OPT_NON_STR_KEYS)
            # The batch's array without its brackets, after a comma unless it is the first.
            yield (b"," if total else b"") + events[1:-1]
            total += len(rows)
            after_id = rows[-1]["id"]
        if len(rows) < HISTORY_BATCH:
            break
    if read_all is not None:
        await read_all(after_id)
    tail = {
        "total": total,
        "sessionId": chat_session_id,
        "sessionPath": session["session_path"],
        "status": session["status"],
        "after": 0,
        "limit": None,
        "hasMore": False,
        "lastId": after_id,
    }
    yield b"]," + orjson.dumps(tail)[1:]
