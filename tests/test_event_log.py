"""The event log service: ordered appends, uuid de-duplication, keyset reads, NOTIFY at commit,
and session-list announcements."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx
import pytest

from services import event_log, session_list
from tests.helpers import TestServer, register


async def new_session(server: TestServer, user_id: str, status: str = "completed") -> str:
    session_id = str(uuid.uuid4())
    await server.ctx.pool.execute(
        "INSERT INTO chat_sessions (id, user_id, user_request, status) VALUES ($1, $2, $3, $4)",
        session_id,
        user_id,
        "Test session",
        status,
    )
    return session_id


@pytest.fixture
async def session_id(server: TestServer, client: httpx.AsyncClient) -> str:
    user = await register(client)
    return await new_session(server, user["id"])


async def test_append_stores_in_order_and_returns_ids(server: TestServer, session_id: str) -> None:
    events = [{"type": "assistant", "n": n} for n in range(5)]
    ids = await event_log.append(server.ctx, session_id, events)
    assert len(ids) == 5 and ids == sorted(ids)
    rows = await event_log.read_after(server.ctx, session_id, 0, 100)
    assert [r["id"] for r in rows] == ids
    assert [r["event_data"]["n"] for r in rows] == list(range(5))


async def test_an_event_uuid_is_stored_once_per_session(server: TestServer, client: httpx.AsyncClient) -> None:
    user = await register(client)
    first = await new_session(server, user["id"])
    second = await new_session(server, user["id"])
    ids = await event_log.append(
        server.ctx,
        first,
        [
            {"type": "assistant", "uuid": "u-1"},
            {"type": "assistant", "uuid": "u-1"},  # repeated inside one call
            {"type": "assistant"},  # no uuid: always stored
            {"type": "assistant"},
            {"type": "assistant", "uuid": 7},  # not a string: not a uuid
        ],
    )
    assert len(ids) == 4
    # A re-poll and a takeover stored again: nothing new.
    assert await event_log.append(server.ctx, first, [{"type": "assistant", "uuid": "u-1"}]) == []
    # The same uuid in another session is another event.
    assert len(await event_log.append(server.ctx, second, [{"type": "assistant", "uuid": "u-1"}])) == 1
    rows = await event_log.read_after(server.ctx, first, 0, 100)
    assert [r["id"] for r in rows] == ids


async def test_concurrent_appends_of_one_uuid_store_one_row(server: TestServer, session_id: str) -> None:
    results = await asyncio.gather(
        *(event_log.append(server.ctx, session_id, [{"type": "result", "uuid": "same"}]) for _ in range(10))
    )
    assert sum(len(ids) for ids in results) == 1


async def test_read_after_is_a_keyset_page(server: TestServer, session_id: str) -> None:
    ids = await event_log.append(server.ctx, session_id, [{"type": "x", "n": n} for n in range(10)])
    page1 = await event_log.read_after(server.ctx, session_id, 0, 4)
    page2 = await event_log.read_after(server.ctx, session_id, page1[-1]["id"], 4)
    page3 = await event_log.read_after(server.ctx, session_id, page2[-1]["id"], 4)
    assert [r["id"] for r in page1 + page2 + page3] == ids
    assert len(page3) == 2


async def test_append_in_the_callers_transaction(server: TestServer, session_id: str) -> None:
    listener = await asyncpg.connect(server.ctx.dsn)
    received: list[str] = []
    await listener.add_listener(event_log.EVENTS_CHANNEL, lambda *args: received.append(args[3]))
    try:
        async with server.ctx.pool.acquire() as conn:
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    await event_log.append(server.ctx, session_id, [{"type": "a"}], conn=conn)
                    raise RuntimeError("roll back")
            assert await event_log.read_after(server.ctx, session_id, 0, 10) == []

            async with conn.transaction():
                ids = await event_log.append(server.ctx, session_id, [{"type": "a"}, {"type": "b"}], conn=conn)
                await asyncio.sleep(0.2)
                assert received == []  # nothing is announced before the commit
            # A connection without a transaction gets one of its own.
            ids += await event_log.append(server.ctx, session_id, [{"type": "c"}], conn=conn)
        assert [r["id"] for r in await event_log.read_after(server.ctx, session_id, 0, 10)] == ids
        for _ in range(100):
            if len(received) >= 2:
                break
            await asyncio.sleep(0.02)
        assert received == [session_id, session_id]
    finally:
        await listener.close()


async def test_announce_status_notifies(server: TestServer, session_id: str) -> None:
    listener = await asyncpg.connect(server.ctx.dsn)
    received: list[str] = []
    await listener.add_listener(event_log.STATUS_CHANNEL, lambda *args: received.append(args[3]))
    try:
        await event_log.announce_status(server.ctx, session_id)
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.02)
        assert received == [session_id]
    finally:
        await listener.close()


async def test_empty_append_does_nothing(server: TestServer, session_id: str) -> None:
    assert await event_log.append(server.ctx, session_id, []) == []


async def test_announce_checks_its_arguments(server: TestServer, client: httpx.AsyncClient) -> None:
    user = await register(client)
    with pytest.raises(ValueError):
        await session_list.announce(server.ctx, user["id"], "renamed", {"id": "x"})
    with pytest.raises(ValueError):
        await session_list.announce(server.ctx, user["id"], "created", {"title": "no id"})


async def test_announcements_are_kept_for_reconnects_and_pruned(server: TestServer, client: httpx.AsyncClient) -> None:
    user = await register(client)
    before = await session_list.last_id(server.ctx)
    big = {"id": "s-1", "userRequest": "x" * 20_000}  # far over NOTIFY's 8000-byte payload limit
    await session_list.announce(server.ctx, user["id"], "created", big)
    high = await session_list.last_id(server.ctx)
    rows = await session_list.read_for_user(server.ctx, user["id"], before, high, 10)
    assert [(r["kind"], r["session"]) for r in rows] == [("created", big)]
    await session_list.prune(server.ctx, keep_seconds=3600)
    assert len(await session_list.read_for_user(server.ctx, user["id"], before, high, 10)) == 1
    await session_list.prune(server.ctx, keep_seconds=0)
    assert await session_list.read_for_user(server.ctx, user["id"], before, high, 10) == []


async def test_appends_wait_for_a_transaction_that_holds_the_session_row(server: TestServer, session_id: str) -> None:
    """A caller that locked the session row first (as a run start does) never deadlocks with an
    appender; the appender's ids come after the caller's, in commit order."""
    async with server.ctx.pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM chat_sessions WHERE id = $1 FOR UPDATE", session_id)
        other = asyncio.create_task(event_log.append(server.ctx, session_id, [{"type": "later"}]))
        await asyncio.sleep(0.2)
        assert not other.done()  # it waits for this transaction
        first = await event_log.append(server.ctx, session_id, [{"type": "first"}], conn=conn)
    later = await asyncio.wait_for(other, 10)
    assert first[0] < later[0]
    rows = await event_log.read_after(server.ctx, session_id, 0, 10)
    assert [r["event_data"]["type"] for r in rows] == ["first", "later"]
