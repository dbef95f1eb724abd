"""A run ends when its history is complete (issue 19, Claude Remote): under each upstream fault
of the issue's table, every upstream event of the remote session is stored exactly once, in
upstream order, reaches a viewer's stream before `completed`, and the run ends `completed` only
after its `result` is stored.

The faults are the fake's (tests/fakes/claude.py: a status ahead of its events, a socket that
stalls, one that is silent, one that flaps, 429/503 with Retry-After) and a TCP black hole
(tests/fakes/proxy.py) between the server and the fake. Also: the socket opens as soon as the
remote session exists (push from the first second), and a failed database write is not taken
for a stored event.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from services.agents.follow import MAX_FAILURES
from services.agents.run import SERVER_EVENT_TYPES
from tests.fakes.claude import (
    REPO,
    FakeClaude,
    FakeSession,
    Fault,
    claude_env,
    connect_claude,
    new_uuid,
    post_sse,
    running_fake_claude,
    stored,
    wait_status,
)
from tests.fakes.proxy import TcpProxy, running_proxy
from tests.helpers import TestServer, register, running_replicas, start_app, test_env
from tests.sse import SSEEvent, SSEStream, open_sse

SETTINGS = {
    "CLAUDE_UPSTREAM_PUSH": "auto",
    "CLAUDE_ENVIRONMENT_ID": "env_run_end",
    "CLAUDE_POLL_INTERVAL_MS": "300",
    "CLAUDE_REQUEST_TIMEOUT_SECONDS": "2",
    # Long enough that a Retry-After of a few seconds is waited out, not given up on.
    "CLAUDE_RETRY_WINDOW_SECONDS": "30",
}
# Today's driver reads the status only every 30 s while the socket looks alive (STATUS_CHECK_SECONDS):
# a run must be given longer than that to show what it does with a dead socket.
RUN_TIMEOUT = 70.0


def turn_of(steps: int) -> Callable[[FakeSession, str], list[dict[str, Any]]]:
    """A turn of `steps` assistant messages and a result."""

    def turn(session: FakeSession, prompt: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = [
            {
                "type": "assistant",
                "uuid": new_uuid(),
                "message": {"role": "assistant", "content": [{"type": "text", "text": f"step {n} of {prompt}"}]},
            }
            for n in range(steps)
        ]
        events.append({"type": "result", "subtype": "success", "uuid": new_uuid(), "total_cost_usd": 0.25})
        return events

    return turn


@dataclass
class Env:
    server: TestServer
    fake: FakeClaude
    proxy: TcpProxy


@pytest.fixture(scope="module")
async def env(database_url: str) -> AsyncIterator[Env]:
    """One server that reaches the fake through a TCP proxy (which can turn into a black hole)."""
    async with running_fake_claude() as fake, running_proxy(fake.url) as proxy:
        settings = {**SETTINGS, "CLAUDE_API_BASE_URL": proxy.url, "RUN_ADOPT_INTERVAL_SECONDS": "3600"}
        async with start_app(test_env(database_url, **claude_env(fake, **settings))) as server:
            yield Env(server, fake, proxy)


@pytest.fixture
async def http(env: Env) -> AsyncIterator[httpx.AsyncClient]:
    await arrange(env.fake)
    async with httpx.AsyncClient(base_url=env.server.url, timeout=30) as client:
        await register(client)
        await connect_claude(client, env.fake)
        yield client


async def arrange(fake: FakeClaude, steps: int = 40) -> None:
    """A healthy live upstream: one event every 50 ms, a turn of `steps` messages and a result."""
    fake.reset_knobs()
    fake.turn_factory = turn_of(steps)
    fake.release_every = 0.05


async def eventually(check: Callable[[], bool], timeout: float = 15, what: str = "the condition") -> None:
    async def wait() -> None:
        while not check():
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(wait(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


# ---- what every test checks -----------------------------------------------------------------------


def upstream_uuids_of_frames(frames: list[SSEEvent]) -> list[str]:
    """The upstream events a viewer was shown, in order (stored frames carry an `id:`)."""
    uuids = []
    for frame in frames:
        if frame.id is None or frame.event == "completed":
            continue
        data = frame.json()
        if isinstance(data, dict) and data.get("type") not in SERVER_EVENT_TYPES and isinstance(data.get("uuid"), str):
            uuids.append(data["uuid"])
    return uuids


def upstream_uuids_of_log(log: list[dict[str, Any]]) -> list[str]:
    return [e["eventData"]["uuid"] for e in log if e["eventData"]["type"] not in SERVER_EVENT_TYPES]


def assert_whole_history(got: list[str], remote: FakeSession, where: str) -> None:
    """`got` is the remote session's events, each once, in upstream order."""
    want = [e["uuid"] for e in remote.events]
    missing = [e["type"] for e in remote.events if e["uuid"] not in got]
    doubled = len(got) - len(set(got))
    assert got == want, (
        f"{where}: {len(missing)} of {len(want)} upstream events missing (types {missing}), "
        f"{doubled} stored twice, order {'kept' if [u for u in want if u in got] == got else 'broken'}"
    )


async def settled(remote: FakeSession) -> None:
    """Until upstream has released the whole turn (a tail held back by the fake included)."""
    await eventually(lambda: not remote.pending and not remote.tail_in_flight, 20, "the fake to release the turn")


async def settled_log(http: httpx.AsyncClient, session_id: str, remote: FakeSession) -> list[dict[str, Any]]:
    """The stored log, once the server has had a few seconds to store what upstream sent after
    the run's end (the reconciliation of issue 19 item 5)."""
    want = [e["uuid"] for e in remote.events]
    log = await stored(http, session_id)
    for _ in range(50):
        if upstream_uuids_of_log(log) == want:
            break
        await asyncio.sleep(0.1)
        log = await stored(http, session_id)
    return log


@dataclass
class Ran:
    session_id: str
    remote: FakeSession
    frames: list[SSEEvent]


async def run(
    http: httpx.AsyncClient,
    fake: FakeClaude,
    prompt: str,
    during: Callable[[SSEStream, str, FakeSession], Awaitable[None]] | None = None,
) -> Ran:
    """Start a run and read its stream to the end; `during` acts on it once the remote session exists."""
    async with post_sse(http, {"userRequest": prompt, "github": REPO}) as stream:
        assert stream.status_code == 200
        frames = await stream.until("title_generation")
        session_id = frames[1].json()["websiteSessionId"]
        remote = await remote_of(http, session_id, fake)
        if during is not None:
            await during(stream, session_id, remote)
        frames += await stream.until(lambda e: e.event in ("completed", "error"), timeout=RUN_TIMEOUT)
    return Ran(session_id, remote, frames)


async def remote_of(http: httpx.AsyncClient, session_id: str, fake: FakeClaude) -> FakeSession:
    async def remote_id() -> str:
        while True:
            session = (await http.get(f"/api/sessions/{session_id}")).json()["session"]
            if session["remoteSessionId"]:
                return session["remoteSessionId"]
            await asyncio.sleep(0.02)

    return fake.sessions[await asyncio.wait_for(remote_id(), 15)]


async def assert_run_ended_with_its_whole_history(http: httpx.AsyncClient, ran: Ran) -> None:
    """The issue's "done when", for one run and the viewer that started it."""
    assert ran.frames[-1].event == "completed", [f.event for f in ran.frames[-3:]]
    await settled(ran.remote)
    shown = upstream_uuids_of_frames(ran.frames)
    # The viewer's stream ends with `completed`: what it was shown before is what was stored
    # before the run ended. The result must be among it.
    assert_whole_history(shown, ran.remote, "the viewer's stream, up to `completed`")
    results = [e["uuid"] for e in ran.remote.events if e["type"] == "result"]
    ended_after_result = bool(results) and results[-1] in shown
    assert ended_after_result, "the run ended `completed` before its `result` was stored"
    log = await settled_log(http, ran.session_id, ran.remote)
    assert_whole_history(upstream_uuids_of_log(log), ran.remote, "the stored log")
    ids = [e["id"] for e in log]
    assert ids == sorted(ids)
    session = await wait_status(http, ran.session_id, "completed")
    assert session["totalCost"] == "0.25"


# ---- the faults of the table -------------------------------------------------------------


@pytest.mark.parametrize("list_lags_status", [False, True], ids=["listed-with-status", "listed-late"])
async def test_a_status_ahead_of_its_events(env: Env, http: httpx.AsyncClient, list_lags_status: bool) -> None:
    """The socket (and GET /v1/sessions/{id}) say idle 2 s before the turn's last three events,
    the result among them, are pushed; REST lists them with the status, or only when pushed."""
    env.fake.status_ahead_seconds = 2.0
    env.fake.list_lags_status = list_lags_status
    ran = await run(http, env.fake, "Status before events")
    await assert_run_ended_with_its_whole_history(http, ran)


async def test_a_socket_that_stalls_mid_run_with_pings_answered(env: Env, http: httpx.AsyncClient) -> None:
    """After five event frames the socket sends nothing more; it stays up and answers pings,
    while upstream goes on (REST lists the events)."""
    env.fake.stall_after_frames, env.fake.stalls_left = 5, 1
    ran = await run(http, env.fake, "Stall after five")
    assert ran.remote.events, "the fake never released anything"
    await assert_run_ended_with_its_whole_history(http, ran)


async def test_a_socket_accepted_but_silent(env: Env, http: httpx.AsyncClient) -> None:
    env.fake.silent_sockets = 1
    ran = await run(http, env.fake, "Never a frame")
    await assert_run_ended_with_its_whole_history(http, ran)


async def test_a_black_holed_socket(env: Env, http: httpx.AsyncClient) -> None:
    """A few events into the run, the socket's TCP connection stops carrying anything either way
    (no FIN, no RST, no pong); new connections work."""

    async def black_hole(stream: SSEStream, session_id: str, remote: FakeSession) -> None:
        await eventually(lambda: env.fake.subscriber_count(remote.id) == 1, what="the socket")
        await eventually(lambda: len(remote.events) >= 6, what="a few events")
        assert env.proxy.blackhole(f"/ws/{remote.id}/subscribe".encode()) == 1

    ran = await run(http, env.fake, "Into the void", during=black_hole)
    await assert_run_ended_with_its_whole_history(http, ran)


async def test_a_flapping_socket_falls_back_to_polling(env: Env, http: httpx.AsyncClient) -> None:
    """Every socket closes right after one event frame: that is a failing socket, and after
    MAX_FAILURES of them the run polls instead of reconnecting again and again."""
    await arrange(env.fake, steps=100)  # five seconds of events
    env.fake.close_after_frames = 1
    ran = await run(http, env.fake, "Flap")
    await assert_run_ended_with_its_whole_history(http, ran)
    upgrades = env.fake.upgrades(ran.remote.id)
    assert len(upgrades) <= MAX_FAILURES + 1, (
        f"{len(upgrades)} upgrades and {len(env.fake.gets(ran.remote.id))} GETs in one run of a flapping socket"
    )
    # The end of the turn came by polling.
    assert env.fake.delivered_by[ran.remote.events[-1]["uuid"]] == "list"


# A request that arrives this soon after a refusal was on its way before the refusal was read.
IN_FLIGHT_SECONDS = 0.05


def next_same_request(fake: FakeClaude, answered_at: float) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The request answered at `answered_at`, and the next one to the same method and path sent
    after the answer could have been read."""
    (refused,) = [r for r in fake.requests if r["at"] == answered_at]
    later = [
        r
        for r in fake.requests
        if r["at"] > answered_at + IN_FLIGHT_SECONDS
        and r["method"] == refused["method"]
        and r["path"] == refused["path"]
    ]
    return refused, (later[0] if later else None)


async def test_retry_after_is_honoured_for_polls(env: Env, http: httpx.AsyncClient) -> None:
    """A 429 on the event list and a 503 on the session status, each with `Retry-After: 2`: the
    same request is not sent again before the two seconds are over (by the fake's clock). The
    socket is refused, so that the run follows by polling and asks for both again."""
    fake = env.fake
    fake.refuse_upgrade = 403
    fake.hold_at = 8  # the run is mid-way while the upstream refuses
    faults: list[Fault] = []

    def refuse_polls(session: FakeSession) -> None:
        path = f"^/v1/sessions/{session.id}"
        faults.append(fake.fail(status=429, retry_after=2, method="GET", path=path + "/events$"))
        faults.append(fake.fail(status=503, retry_after=2, method="GET", path=path + "$"))

    fake.on_create = refuse_polls

    async def refused_then_asked_again(stream: SSEStream, session_id: str, remote: FakeSession) -> None:
        def asked_again() -> bool:
            return all(fault.answered and next_same_request(fake, fault.answered[0])[1] for fault in faults)

        await eventually(asked_again, timeout=20, what="each refused request to be sent again")
        fake.hold_at = None

    ran = await run(http, fake, "Rate limited", during=refused_then_asked_again)
    for fault in faults:
        refused, again = next_same_request(fake, fault.answered[0])
        assert again is not None
        waited = again["at"] - refused["at"]
        assert waited >= 2, f"{refused['method']} {refused['path']} asked again {waited:.2f} s after Retry-After: 2"
    await assert_run_ended_with_its_whole_history(http, ran)


async def test_retry_after_is_honoured_for_reconnects(env: Env, http: httpx.AsyncClient) -> None:
    """The first upgrade is answered 429, the second 503, both with `Retry-After: 2`: each next
    upgrade waits the two seconds (the run polls meanwhile)."""
    fake = env.fake
    fake.hold_at = 8

    def refuse_upgrades(session: FakeSession) -> None:
        fake.fail(status=429, retry_after=2, path=f"/ws/{session.id}/subscribe$")
        fake.fail(status=503, retry_after=2, path=f"/ws/{session.id}/subscribe$")

    fake.on_create = refuse_upgrades

    async def third_upgrade(stream: SSEStream, session_id: str, remote: FakeSession) -> None:
        await eventually(lambda: len(fake.upgrades(remote.id)) >= 3, timeout=20, what="a third upgrade")
        fake.hold_at = None

    ran = await run(http, fake, "Upgrade later", during=third_upgrade)
    times = [r["at"] for r in fake.upgrades(ran.remote.id)]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times[:3])]
    assert all(gap >= 2 for gap in gaps), f"upgrades {[f'{g:.2f}' for g in gaps]} s apart after Retry-After: 2"
    await assert_run_ended_with_its_whole_history(http, ran)


# ---- two replicas ----------------------------------------------------------------------------------


async def test_a_status_ahead_of_its_events_on_a_viewer_of_the_other_replica(database_url: str, tmp_path: Path) -> None:
    """The run is driven by the replica that took the prompt; a viewer on the other replica sees
    the whole history before `completed`."""
    async with running_fake_claude() as fake:
        await arrange(fake)
        fake.status_ahead_seconds = 2.0
        env = claude_env(fake, **{**SETTINGS, "RUN_ADOPT_INTERVAL_SECONDS": "0.5", "LOG_LEVEL": "INFO"})
        async with (
            running_replicas(test_env(database_url, **env), tmp_path) as (first, second),
            httpx.AsyncClient(base_url=first.url, timeout=30) as on_first,
        ):
            await register(on_first)
            await connect_claude(on_first, fake)
            async with httpx.AsyncClient(base_url=second.url, timeout=30, cookies=on_first.cookies) as on_second:

                async def watch_from_second(stream: SSEStream, session_id: str, remote: FakeSession) -> None:
                    viewer_frames.append(
                        asyncio.create_task(follow_to_completed(on_second, f"/api/sessions/{session_id}/events/stream"))
                    )

                viewer_frames: list[asyncio.Task[list[SSEEvent]]] = []
                ran = await run(on_first, fake, "Seen from afar", during=watch_from_second)
                shown = await asyncio.wait_for(viewer_frames[0], RUN_TIMEOUT)
                assert_whole_history(upstream_uuids_of_frames(shown), ran.remote, "the other replica's viewer")
                await assert_run_ended_with_its_whole_history(on_second, ran)
        assert "adopting run" not in second.log()


async def follow_to_completed(client: httpx.AsyncClient, path: str) -> list[SSEEvent]:
    async with open_sse(client, path, timeout=RUN_TIMEOUT) as stream:
        assert stream.status_code == 200
        return await stream.until("completed", timeout=RUN_TIMEOUT)


# ---- push from the first second ------------------------------------------------------------------


async def test_the_socket_opens_as_the_remote_session_exists(database_url: str) -> None:
    """With a 5-second poll interval the first events of the turn (which starts 1.5 s after the
    session is created, as Claude Code's container boots) come over the socket, not by a poll:
    the socket was opened before the first poll interval was over."""
    async with running_fake_claude() as fake:
        await arrange(fake, steps=10)
        fake.turn_delay = 1.5
        settings = {**SETTINGS, "CLAUDE_POLL_INTERVAL_MS": "5000", "RUN_ADOPT_INTERVAL_SECONDS": "3600"}
        async with (
            start_app(test_env(database_url, **claude_env(fake, **settings))) as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as http,
        ):
            await register(http)
            await connect_claude(http, fake)
            ran = await run(http, fake, "Push from the start")
            await assert_run_ended_with_its_whole_history(http, ran)
        remote = ran.remote
        turn = remote.events[1:]  # after the echo of the prompt
        ways = [fake.delivered_by.get(e["uuid"]) for e in turn[:3]]
        assert ways == ["push"] * 3, f"the first events of the turn came by {ways}"
        first_upgrade = fake.upgrades(remote.id)[0]["at"] - remote.created_at_mono
        assert first_upgrade < 5.0, f"the socket opened {first_upgrade:.1f} s after the session, one poll interval"


# ---- a failed write is not marked seen --------------------------------------------------------------


async def waiting_for_events_lock(conn: asyncpg.Connection) -> set[int]:
    """The backends that wait for a lock on the events table."""
    rows = await conn.fetch(
        "SELECT l.pid FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
        "WHERE c.relname = 'events' AND NOT l.granted"
    )
    return {r["pid"] for r in rows}


async def test_a_failed_write_is_not_marked_seen(database_url: str) -> None:
    """One pushed event's write fails (the events table is locked by someone else longer than the
    server's lock_timeout); once the lock is gone the event is stored, once.

    The pool's command timeout is 30 s and no variable sets it (services/db.py); PostgreSQL's
    `lock_timeout`, given as a DATABASE_URL parameter (asyncpg makes unknown URL parameters
    server settings), makes the same write fail after 1 s instead."""
    separator = "&" if "?" in database_url else "?"
    server_url = f"{database_url}{separator}lock_timeout=1000"
    async with running_fake_claude() as fake:
        await arrange(fake)
        fake.hold_at = 6  # the echo and five messages, then upstream waits
        settings = {**SETTINGS, "RUN_ADOPT_INTERVAL_SECONDS": "3600"}
        async with (
            start_app(test_env(server_url, **claude_env(fake, **settings))) as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as http,
        ):
            await register(http)
            await connect_claude(http, fake)
            locker = await asyncpg.connect(database_url)

            async def fail_one_write(stream: SSEStream, session_id: str, remote: FakeSession) -> None:
                def live() -> bool:
                    follower = server.ctx.runs.followers.get(session_id)
                    return follower is not None and follower.live

                await eventually(live, what="the socket to be live")
                await eventually(lambda: len(remote.events) == 6, what="the first events")
                log_has_them = asyncio.get_running_loop().time() + 15
                while len(upstream_uuids_of_log(await stored(http, session_id))) < 6:
                    assert asyncio.get_running_loop().time() < log_has_them, "the first events were never stored"
                    await asyncio.sleep(0.05)
                transaction = locker.transaction()
                await transaction.start()
                try:
                    await locker.execute("LOCK TABLE events IN EXCLUSIVE MODE")
                    fake.hold_at = 7  # one more event: pushed, and its write waits for the lock
                    monitor = await asyncpg.connect(database_url)
                    try:
                        deadline = asyncio.get_running_loop().time() + 15
                        while not (writers := await waiting_for_events_lock(monitor)):
                            assert asyncio.get_running_loop().time() < deadline, "the server never tried to write"
                            await asyncio.sleep(0.02)
                        # Until lock_timeout cancels that write (a later write, waiting now, gets the lock).
                        while writers & await waiting_for_events_lock(monitor):
                            assert asyncio.get_running_loop().time() < deadline, "the write never gave up"
                            await asyncio.sleep(0.01)
                    finally:
                        await monitor.close()
                finally:
                    await transaction.rollback()
                fake.hold_at = None

            try:
                ran = await run(http, fake, "Write me twice", during=fail_one_write)
            finally:
                await locker.close()
            await assert_run_ended_with_its_whole_history(http, ran)
