"""A frozen replica or a stalled database never takes the service down (issue 21).

(a) Another connection holds a transaction on a session row, as a replica frozen (SIGSTOP)
mid-transaction does: follow-ups and aborts on that session answer within a few seconds (503
with Retry-After, nothing recorded; an abort whose upstream interrupt went through says so and
ends the run once the row is free), and other people on the same server are served as usual
however many of them pile up.

(b) PostgreSQL frozen with SIGSTOP (its own server, never the suite's): /health answers 503
within its probe time, the liveness endpoint /live (and so the image's HEALTHCHECK) still says
200, no traceback is logged, and everything works again once it resumes.

The client timeouts below are far above the bounds under test (2 s lock waits) and far below
what the unbounded waits cost before (asyncpg's 30 s command timeout): they tell the two apart,
they do not measure speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from handlers.base import BUSY_MESSAGE
from services.agents.execute import ABORT_PENDING
from tests.fakes.claude import REPO, FakeClaude, claude_env, connect_claude, post_sse, running_fake_claude, wait_status
from tests.helpers import TestServer, register, spawn_replica, start_app, test_env
from tests.test_deploy_files import dockerfile_healthcheck
from tests.test_faults import new_database, own_postgres, wait_until

__all__ = ["own_postgres"]  # the fixture, used by name

# Well under the 30 s an unbounded wait took, well over the 2 s bound.
BOUNDED = 10.0
POOL_MAX = 3


@pytest.fixture(scope="module")
async def fake() -> AsyncIterator[FakeClaude]:
    async with running_fake_claude() as fake:
        yield fake


@pytest.fixture(scope="module")
async def server(database_url: str, fake: FakeClaude) -> AsyncIterator[TestServer]:
    # A small pool, so the follow-ups piled up below outnumber its connections.
    env = test_env(
        database_url, DB_POOL_MIN="1", DB_POOL_MAX=str(POOL_MAX), **claude_env(fake, CLAUDE_ENVIRONMENT_ID="env_x")
    )
    async with start_app(env) as server:
        yield server


@pytest.fixture
async def person(server: TestServer, fake: FakeClaude) -> AsyncIterator[httpx.AsyncClient]:
    fake.reset_knobs()
    async with httpx.AsyncClient(base_url=server.url, timeout=BOUNDED) as client:
        await register(client)
        await connect_claude(client, fake)
        yield client


@contextlib.asynccontextmanager
async def row_held(database_url: str, session_id: str) -> AsyncIterator[None]:
    """A transaction holding the session row, as a replica frozen in the middle of one does."""
    conn = await asyncpg.connect(database_url)
    transaction = conn.transaction()
    await transaction.start()
    try:
        await conn.execute("SELECT 1 FROM chat_sessions WHERE id = $1 FOR UPDATE", session_id)
        yield
    finally:
        await transaction.rollback()
        await conn.close()


async def prompts_of(database_url: str, session_id: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM messages WHERE chat_session_id = $1", session_id))
    finally:
        await conn.close()


async def running_session(person: httpx.AsyncClient, fake: FakeClaude) -> str:
    """A session whose run goes on upstream (its turn stalls after a few events)."""
    fake.hold_at = 3
    async with post_sse(person, {"userRequest": "Refactor the parser", "github": REPO}) as stream:
        frames = await stream.until("assistant")
    return frames[1].json()["websiteSessionId"]


def assert_busy(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json() == {"success": False, "error": BUSY_MESSAGE}
    assert response.headers["Retry-After"] == "2"


async def test_pool_connections_bound_lock_waits_and_idle_transactions(server: TestServer) -> None:
    # A frozen replica's open transaction is ended by PostgreSQL after the idle timeout, which
    # frees its rows; every statement of ours waits for a lock at most the lock timeout.
    async with server.ctx.pool.acquire() as conn:
        assert await conn.fetchval("SHOW lock_timeout") == "2s"
        assert await conn.fetchval("SHOW idle_in_transaction_session_timeout") == "10s"


async def test_a_held_session_row_answers_503_quickly_and_spares_everyone_else(
    server: TestServer, fake: FakeClaude, person: httpx.AsyncClient, database_url: str
) -> None:
    session_id = await running_session(person, fake)
    prompts = await prompts_of(database_url, session_id)
    async with httpx.AsyncClient(base_url=server.url, timeout=BOUNDED) as other:
        await register(other)
        async with row_held(database_url, session_id):
            # Far more follow-ups than the pool has connections, all waiting on the held row...
            follow_ups = [
                asyncio.ensure_future(person.post(f"/api/sessions/{session_id}/send", json={"content": f"n{n}"}))
                for n in range(4 * POOL_MAX)
            ]
            await asyncio.sleep(0.2)  # let them reach the server first
            # ...and someone else's requests on the same server are served as usual.
            for _ in range(3):
                assert (await other.get("/api/sessions")).status_code == 200
                assert (await other.post("/api/user/display-name", json={"displayName": "Ada"})).status_code == 200
                assert (await other.get("/api/auth/session")).status_code == 200
            for response in await asyncio.gather(*follow_ups):
                assert_busy(response)
        # Nothing half-done: not one of the refused follow-ups was recorded.
        assert await prompts_of(database_url, session_id) == prompts
    # Once the row is free, the session takes follow-ups again.
    response = await person.post(f"/api/sessions/{session_id}/send", json={"content": "now"})
    assert response.status_code == 200, response.text


async def test_an_abort_that_interrupted_upstream_ends_the_run_once_the_row_is_free(
    fake: FakeClaude, person: httpx.AsyncClient, database_url: str
) -> None:
    session_id = await running_session(person, fake)
    async with row_held(database_url, session_id):
        response = await person.post(f"/api/sessions/{session_id}/abort")
        assert response.status_code == 202, response.text
        assert response.json() == {
            "success": True,
            "data": {"message": ABORT_PENDING, "sessionId": session_id, "remoteInterrupted": True, "pending": True},
        }
        session = (await person.get(f"/api/sessions/{session_id}")).json()["session"]
        assert session["status"] == "running"  # the row is still held
    session = await wait_status(person, session_id, "error")
    assert fake.sessions[session["remoteSessionId"]].interrupts == 1


async def test_an_abort_that_did_nothing_yet_answers_503_and_changes_nothing(
    person: httpx.AsyncClient, database_url: str
) -> None:
    pending = await person.post(
        "/api/sessions/create-code-session",
        json={"repositoryOwner": "octo", "repositoryName": "widgets", "baseBranch": "main", "branch": "b-stall"},
    )
    session_id = pending.json()["session"]["id"]
    async with row_held(database_url, session_id):
        assert_busy(await person.post(f"/api/sessions/{session_id}/abort"))
    session = (await person.get(f"/api/sessions/{session_id}")).json()["session"]
    assert session["status"] == "pending"


# ---- (b) PostgreSQL frozen ----------------------------------------------------------------------------


@contextlib.contextmanager
def frozen(server: Any) -> Iterator[None]:
    """Every process of the PostgreSQL `server` stopped (SIGSTOP), as a paused container is; always
    continued afterwards."""
    import psutil

    postmaster = psutil.Process(server.get_pid())
    processes = [postmaster, *postmaster.children(recursive=True)]
    try:
        for process in processes:  # the postmaster first, so it starts no one meanwhile
            process.send_signal(signal.SIGSTOP)
        yield
    finally:
        for process in reversed(processes):
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGCONT)


async def image_probe(port: int) -> int:
    """The exit code of the image's HEALTHCHECK command against `port`."""
    probe = dockerfile_healthcheck()
    env = {**os.environ, "PORT": str(port)}
    env.pop("API_PORT", None)
    process = await asyncio.create_subprocess_exec(sys.executable, *probe[1:], env=env)
    return await asyncio.wait_for(process.wait(), 30)


async def test_a_frozen_database_gets_health_503_quickly_and_liveness_200(own_postgres: Any, tmp_path: Path) -> None:
    database_url = await new_database(own_postgres.get_uri(), "webedt_frozen")
    env = test_env(database_url, LOG_LEVEL="INFO", RUN_ADOPT_INTERVAL_SECONDS="0.5")
    replica = await asyncio.to_thread(spawn_replica, env, tmp_path)
    try:
        async with httpx.AsyncClient(base_url=replica.url, timeout=BOUNDED) as client:
            await register(client)
            assert (await client.get("/health")).status_code == 200
            before = len(replica.log().splitlines())
            with frozen(own_postgres):
                await asyncio.sleep(1.5)  # the probe's cached answer is older than its 1 s by now
                for _ in range(3):
                    # The probe's own bound is 2 s; the client's timeout would fail a hang.
                    health = await client.get("/health", timeout=3)
                    assert health.status_code == 503, health.text
                    assert health.json()["data"]["database"] == "unavailable"
                    assert (await client.get("/live", timeout=3)).status_code == 200
                    await asyncio.sleep(1)
                assert await image_probe(int(replica.url.rsplit(":", 1)[1])) == 0
            await wait_until(lambda: _status_is(client, "/health", 200), 60, "/health to say 200 after the freeze")
            assert (await client.get("/api/sessions")).status_code == 200
    finally:
        replica.stop()
    text = "\n".join(replica.log().splitlines()[before:])
    assert "Traceback" not in text, text


async def _status_is(client: httpx.AsyncClient, path: str, status: int) -> bool:
    try:
        return (await client.get(path)).status_code == status
    except httpx.HTTPError:
        return False
