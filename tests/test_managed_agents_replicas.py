"""Managed Agents runs across `server.py` processes on one database: replicas that start together
make the deployment's agent and environment once, and a run whose replica is killed mid-turn is
finished by another with no event lost or doubled."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.fakes.claude import REPO, post_sse, stored, types, wait_status
from tests.fakes.managed_agents import BRANCH, FakeManagedAgents, managed_env, running_fake_managed_agents
from tests.helpers import Replica, register, running_replicas, test_env
from tests.test_managed_agents import TURN_STORED


@pytest.fixture
async def fake() -> AsyncIterator[FakeManagedAgents]:
    async with running_fake_managed_agents() as running:
        yield running


def replicas(
    database_url: str, fake: FakeManagedAgents, tmp_path: Path
) -> contextlib.AbstractAsyncContextManager[list[Replica]]:
    env = managed_env(fake, RUN_ADOPT_INTERVAL_SECONDS="0.3", LOG_LEVEL="INFO")
    return running_replicas(test_env(database_url, **env), tmp_path, count=3)


async def test_replicas_made_together_create_one_agent_and_one_environment_and_survive_a_kill(
    database_url: str, fake: FakeManagedAgents, tmp_path: Path
) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("DELETE FROM managed_agents_resources")
    finally:
        await connection.close()
    fake.create_delay = 0.3  # a slow upstream widens the window for a race
    fake.hold = asyncio.Event()
    fake.hold_at = 4  # the turn stalls mid-way until released
    async with replicas(database_url, fake, tmp_path) as (first, second, third):
        deadline = time.monotonic() + 20
        while not (fake.agents and fake.environments) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # let any second creation show itself
        assert len(fake.agents) == 1 and len(fake.environments) == 1

        async with httpx.AsyncClient(base_url=first.url, timeout=30) as on_first:
            await register(on_first)
            async with post_sse(on_first, {"userRequest": "Fix the flaky test", "github": REPO}) as stream:
                frames = await stream.until("assistant")
                session_id = frames[1].json()["websiteSessionId"]
                first.process.send_signal(signal.SIGKILL)
                with contextlib.suppress(httpx.HTTPError, AssertionError, TimeoutError):
                    await stream.rest(timeout=10)
            await asyncio.to_thread(first.process.wait, 15)
            fake.hold.set()  # upstream carries on; another replica must notice and adopt the run

            async with httpx.AsyncClient(base_url=second.url, timeout=30, cookies=on_first.cookies) as on_second:
                session = await wait_status(on_second, session_id, "completed", timeout=40)
                log = await stored(on_second, session_id)
    assert first.process.returncode == -signal.SIGKILL
    assert types(log) == ["input_preview", "title_generation", *TURN_STORED]
    (remote,) = fake.sessions.values()
    assert [e["eventData"]["managed"] for e in log if "managed" in e["eventData"]] == remote.events
    assert session["branch"] == BRANCH and session["totalCost"] == "0.25"
    assert "adopting run of session" in second.log() + third.log()
