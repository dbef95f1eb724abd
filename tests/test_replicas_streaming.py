"""Streams across replicas: two `python server.py` processes on one database.

Events are appended from this test process (a third process on the same database), as a run
driver on any replica would; every replica's hub must deliver them to its own viewers.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from services import event_log, session_list
from tests.helpers import Replica, TestServer, register, spawn_replica, test_env
from tests.sse import open_sse, stored_events


@pytest.fixture
async def replicas(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[Replica, Replica]]:
    env = test_env(database_url, SHUTDOWN_GRACE_SECONDS="5")
    first, second = await asyncio.gather(
        asyncio.to_thread(spawn_replica, env, tmp_path), asyncio.to_thread(spawn_replica, env, tmp_path)
    )
    try:
        yield first, second
    finally:
        await asyncio.gather(asyncio.to_thread(first.stop), asyncio.to_thread(second.stop))


async def running_session(server: TestServer, user_id: str) -> str:
    session_id = str(uuid.uuid4())
    await server.ctx.pool.execute(
        "INSERT INTO chat_sessions (id, user_id, user_request, status) VALUES ($1, $2, 'Across replicas', 'running')",
        session_id,
        user_id,
    )
    return session_id


async def finish(server: TestServer, session_id: str) -> None:
    await server.ctx.pool.execute("UPDATE chat_sessions SET status = 'completed' WHERE id = $1", session_id)
    await event_log.announce_status(server.ctx, session_id)


def ids(events: list) -> list[int]:
    return [int(e.id) for e in stored_events(events)]


async def test_events_reach_viewers_on_every_replica(server: TestServer, replicas: tuple[Replica, Replica]) -> None:
    first, second = replicas
    async with contextlib.AsyncExitStack() as stack:
        on_first = await stack.enter_async_context(httpx.AsyncClient(base_url=first.url, timeout=20))
        user = await register(on_first)
        on_second = await stack.enter_async_context(
            httpx.AsyncClient(base_url=second.url, cookies=on_first.cookies, timeout=20)
        )
        session_id = await running_session(server, user["id"])
        old = await event_log.append(server.ctx, session_id, [{"type": "user", "text": "go"}])
        path = f"/api/sessions/{session_id}/events/stream"
        streams = [
            await stack.enter_async_context(open_sse(on_first, path)),
            await stack.enter_async_context(open_sse(on_second, path)),
        ]
        for stream in streams:
            assert int((await stream.next()).id) == old[0]
        live = await event_log.append(server.ctx, session_id, [{"type": "assistant", "n": n} for n in range(3)])
        for stream in streams:
            received = [await stream.next() for _ in live]
            assert [int(e.id) for e in received] == live
            assert all(e.event == "assistant" and "_replayed" not in e.json() for e in received)
        await finish(server, session_id)
        for stream in streams:
            completed = await stream.next()
            assert completed.event == "completed" and completed.json()["replayed"] is False


async def test_session_list_changes_reach_every_replica(server: TestServer, replicas: tuple[Replica, Replica]) -> None:
    first, second = replicas
    async with (
        httpx.AsyncClient(base_url=first.url, timeout=20) as on_first,
        httpx.AsyncClient(base_url=second.url, timeout=20) as on_second,
    ):
        user = await register(on_first)
        on_second.cookies = on_first.cookies
        async with open_sse(on_first, "/api/sessions/updates") as a, open_sse(on_second, "/api/sessions/updates") as b:
            assert (await a.next()).event == "connected"
            assert (await b.next()).event == "connected"
            await session_list.announce(server.ctx, user["id"], "created", {"id": "s-1", "status": "pending"})
            for stream in (a, b):
                event = await stream.next()
                assert event.event == "created" and event.json()["session"] == {"id": "s-1", "status": "pending"}


async def test_reconnecting_to_another_replica_continues_where_it_stopped(
    server: TestServer, replicas: tuple[Replica, Replica]
) -> None:
    first, second = replicas
    async with (
        httpx.AsyncClient(base_url=first.url, timeout=20) as on_first,
        httpx.AsyncClient(base_url=second.url, timeout=20) as on_second,
    ):
        user = await register(on_first)
        on_second.cookies = on_first.cookies
        session_id = await running_session(server, user["id"])
        path = f"/api/sessions/{session_id}/events/stream"
        appended = await event_log.append(server.ctx, session_id, [{"type": "a", "n": n} for n in range(5)])
        async with open_sse(on_first, path) as stream:
            received = [int((await stream.next()).id) for _ in range(3)]
            last = stream.last_event_id
        appended += await event_log.append(server.ctx, session_id, [{"type": "b", "n": n} for n in range(5)])
        async with open_sse(on_second, path, last_event_id=last) as stream:
            received += [int((await stream.next()).id) for _ in range(7)]
            await finish(server, session_id)
            assert (await stream.next()).event == "completed"
        assert received == appended


async def test_a_history_fetched_on_one_replica_is_not_sent_again_by_another(
    server: TestServer, replicas: tuple[Replica, Replica]
) -> None:
    # The chat page's order, with its fetch and its stream on different replicas.
    first, second = replicas
    async with (
        httpx.AsyncClient(base_url=first.url, timeout=20) as on_first,
        httpx.AsyncClient(base_url=second.url, timeout=20) as on_second,
    ):
        user = await register(on_first)
        on_second.cookies = on_first.cookies
        session_id = await running_session(server, user["id"])
        old = await event_log.append(server.ctx, session_id, [{"type": "a", "n": n} for n in range(3)])
        history = (await on_first.get(f"/api/sessions/{session_id}/events")).json()["data"]
        assert [e["id"] for e in history["events"]] == old
        between = await event_log.append(server.ctx, session_id, [{"type": "b", "n": 0}])
        async with open_sse(on_second, f"/api/sessions/{session_id}/events/stream") as stream:
            received = [await stream.next()]
            later = await event_log.append(server.ctx, session_id, [{"type": "b", "n": 1}])
            received.append(await stream.next())
            await finish(server, session_id)
            received += await stream.until("completed")
        assert ids(received) == between + later
        assert all("_replayed" not in e.json() for e in stored_events(received))


async def test_sigterm_keeps_run_streams_fed_until_the_run_ends(
    server: TestServer, replicas: tuple[Replica, Replica]
) -> None:
    # The chat page never reconnects a stream: a draining replica keeps the streams of running
    # sessions open and fed from the shared log (the run goes on elsewhere) until `completed`;
    # the session-list stream, which a bare EventSource reconnects, ends at once.
    _, second = replicas
    async with httpx.AsyncClient(base_url=second.url, timeout=20) as on_second:
        user = await register(on_second)
        session_id = await running_session(server, user["id"])
        stalled_id = await running_session(server, user["id"])
        path = f"/api/sessions/{session_id}/events/stream"
        before = await event_log.append(server.ctx, session_id, [{"type": "a"}])
        async with (
            open_sse(on_second, path) as stream,
            open_sse(on_second, f"/api/sessions/{stalled_id}/events/stream") as stalled,
            open_sse(on_second, "/api/sessions/updates") as list_stream,
        ):
            assert int((await stream.next()).id) == before[0]
            assert (await list_stream.next()).event == "connected"
            second.process.send_signal(signal.SIGTERM)
            assert await list_stream.rest(timeout=10) == []
            # Appended by "another replica" after the SIGTERM: still delivered, live.
            after = await event_log.append(server.ctx, session_id, [{"type": "b"}, {"type": "c"}])
            assert [int((await stream.next()).id) for _ in after] == after
            await server.ctx.pool.execute("UPDATE chat_sessions SET status = 'completed' WHERE id = $1", session_id)
            await event_log.announce_status(server.ctx, session_id)
            completed = await stream.next()
            assert completed.event == "completed" and completed.json()["replayed"] is False
            # A run that outlasts SHUTDOWN_GRACE_SECONDS (5 s here) has its stream ended then.
            assert await stalled.rest(timeout=15) == []
        assert await asyncio.to_thread(second.process.wait, 15) == 0


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _gauges(client: httpx.AsyncClient) -> tuple[float, float]:
    text = (await client.get("/metrics")).text
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("webedt_sse_open_streams", "webedt_hub_subscribers"):
            values[name] = float(value)
    return values["webedt_sse_open_streams"], values["webedt_hub_subscribers"]


async def _stalled_reader(port: int, path: str, cookie: str) -> socket.socket:
    """A stream client that reads the response head and then never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\nCookie: auth_session={cookie}\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    head = b""
    while b"retry:" not in head:
        head += await asyncio.wait_for(loop.sock_recv(sock, 1024), 10)
    return sock


async def _drop_stalled_readers(
    server: TestServer, client: httpx.AsyncClient, port: int, session_id: str, baseline: tuple[float, float]
) -> None:
    """20 stalled readers at once, dropped for overflow; returns once the gauges are back."""
    path = f"/api/sessions/{session_id}/events/stream"
    readers = [await _stalled_reader(port, path, client.cookies["auth_session"]) for _ in range(20)]
    try:
        assert (await _gauges(client))[0] == baseline[0] + 20
        payload = "x" * 6000
        for start in range(0, 3000, 500):
            batch = [{"type": "assistant", "n": n, "text": payload} for n in range(start, start + 500)]
            await event_log.append(server.ctx, session_id, batch)
        # Each one is dropped (its queue overflowed) and must let go of everything at once.
        deadline = asyncio.get_running_loop().time() + 20
        while await _gauges(client) != baseline:
            assert asyncio.get_running_loop().time() < deadline, await _gauges(client)
            await asyncio.sleep(0.1)
    finally:
        for reader in readers:
            reader.close()


async def test_stalled_readers_dropped_for_overflow_release_everything(
    server: TestServer, replicas: tuple[Replica, Replica]
) -> None:
    first, _ = replicas
    port = int(first.url.rsplit(":", 1)[1])
    async with httpx.AsyncClient(base_url=first.url, timeout=20) as client:
        user = await register(client)
        baseline = await _gauges(client)
        # The first round brings the process to its working size (allocator pools, buffers).
        await _drop_stalled_readers(server, client, port, await running_session(server, user["id"]), baseline)
        settled = _rss_kib(first.process.pid)
        await _drop_stalled_readers(server, client, port, await running_session(server, user["id"]), baseline)
        grown_mib = (_rss_kib(first.process.pid) - settled) / 1024
        # A leak of the handler, subscriber and queue was about 12 MiB per drop: 250 MiB here.
        assert grown_mib < 25, f"RSS grew by {grown_mib:.0f} MiB over 20 more drops"
