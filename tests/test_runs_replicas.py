"""Runs outlive their replica: two `server.py` processes on one database, one of them killed (or
stopped) in the middle of a run, the other one carrying the run on with no event lost or doubled."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

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
from tests.helpers import Replica, register, running_replicas, test_env
from tests.sse import open_sse


@pytest.fixture
async def fake() -> AsyncIterator[FakeClaude]:
    async with running_fake_claude() as running:
        yield running


def replicas(
    database_url: str, fake: FakeClaude, tmp_path: Path
) -> contextlib.AbstractAsyncContextManager[list[Replica]]:
    env = claude_env(
        fake,
        CLAUDE_ENVIRONMENT_ID="env_replicas",
        RUN_ADOPT_INTERVAL_SECONDS="0.3",
        RUN_LEASE_SECONDS="1",
        LOG_LEVEL="INFO",
    )
    return running_replicas(test_env(database_url, **env), tmp_path)


async def run_until_stalled(client: httpx.AsyncClient, prompt: str, kill: Replica, sig: int) -> tuple[str, str | None]:
    """Start a run on `kill`'s replica, read its stream into the run, then signal the replica."""
    async with post_sse(client, {"userRequest": prompt, "github": REPO}) as stream:
        frames = await stream.until("assistant")
        session_id = frames[1].json()["websiteSessionId"]
        last_id = stream.last_event_id
        kill.process.send_signal(sig)
        with contextlib.suppress(httpx.HTTPError, AssertionError, TimeoutError):
            await stream.rest(timeout=10)
    await asyncio.to_thread(kill.process.wait, 15)
    return session_id, last_id


async def test_a_killed_replicas_run_is_finished_by_another(
    database_url: str, fake: FakeClaude, tmp_path: Path
) -> None:
    fake.hold_at = 4  # upstream stalls after three events of the turn: the run is mid-way
    async with (
        replicas(database_url, fake, tmp_path) as (first, second),
        httpx.AsyncClient(base_url=first.url, timeout=30) as on_first,
    ):
        await register(on_first)
        await connect_claude(on_first, fake)
        session_id, last_id = await run_until_stalled(on_first, "Migrate the build to Gradle", first, signal.SIGKILL)
        assert first.process.returncode == -signal.SIGKILL
        fake.hold_at = None  # upstream carries on; nobody polls it until the lease runs out

        async with httpx.AsyncClient(base_url=second.url, timeout=30, cookies=on_first.cookies) as on_second:
            session = await wait_status(on_second, session_id, "completed", timeout=30)
            log = await stored(on_second, session_id)
            assert types(log) == ["input_preview", "title_generation", *UPSTREAM_TYPES]
            ids = [e["id"] for e in log]
            assert ids == sorted(ids) and len(set(ids)) == len(ids)
            assert len({e["eventData"]["uuid"] for e in log if "uuid" in e["eventData"]}) == len(UPSTREAM_TYPES)
            assert session["totalCost"] == "0.0125" and session["branch"].startswith("claude/migrate-build-gradle-")
            assert len(fake.sessions) == 1 and fake.only_session().prompts == ["Migrate the build to Gradle"]

            # The browser reconnects (to the surviving replica) and gets exactly what it missed.
            params = {
                "userRequest": "Migrate the build to Gradle",
                "github": '{"repoUrl": "https://github.com/octo/widgets"}',
            }
            async with open_sse(on_second, "/api/execute-remote", params=params, last_event_id=last_id) as stream:
                rest = await stream.until("completed")
            assert [int(f.id) for f in rest if f.id] == [i for i in ids if i > int(last_id or 0)]
            assert rest[-1].json()["remoteSessionId"] == fake.only_session().id
    assert "adopting run of session" in second.log()


async def test_a_stopping_replica_hands_its_run_over_and_its_viewer_sees_the_end(
    database_url: str, fake: FakeClaude, tmp_path: Path
) -> None:
    # SIGTERM mid-run: the run is handed over at once, and the viewer connected to the stopping
    # replica (the chat page, which never reconnects) still receives every event and a live
    # `completed`, fed from the shared log while the other replica drives.
    fake.hold_at = 4
    async with (
        replicas(database_url, fake, tmp_path) as (first, second),
        httpx.AsyncClient(base_url=first.url, timeout=30) as on_first,
    ):
        await register(on_first)
        await connect_claude(on_first, fake)
        async with post_sse(on_first, {"userRequest": "Split the monolith", "github": REPO}) as stream:
            frames = await stream.until("assistant")
            session_id = frames[1].json()["websiteSessionId"]
            first.process.send_signal(signal.SIGTERM)
            fake.hold_at = None
            frames += await stream.until(lambda e: e.event in ("completed", "error"), timeout=30)
        assert [f.event for f in frames] == [
            "input_preview",
            "session-created",
            "title_generation",
            *UPSTREAM_TYPES,
            "completed",
        ]
        ids = [int(f.id) for f in frames if f.id]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert frames[-1].json()["totalCost"] == "0.0125" and "_replayed" not in frames[-1].json()
        assert await asyncio.to_thread(first.process.wait, 15) == 0
        async with httpx.AsyncClient(base_url=second.url, timeout=30, cookies=on_first.cookies) as on_second:
            await wait_status(on_second, session_id, "completed", timeout=30)
            log = await stored(on_second, session_id)
            assert [e["id"] for e in log] == ids
            assert types(log) == ["input_preview", "title_generation", *UPSTREAM_TYPES]
            # A follow-up sent through the survivor is delivered once.
            response = await on_second.post(f"/api/sessions/{session_id}/send", json={"content": "And the tests"})
            assert response.status_code == 200
            await wait_status(on_second, session_id, "completed", timeout=30)
            log = await stored(on_second, session_id)
    assert "adopting run of session" in second.log()
    assert fake.only_session().prompts == ["Split the monolith", "And the tests"]
    assert types(log)[-len(UPSTREAM_TYPES) - 1 :] == ["input_preview", *UPSTREAM_TYPES]


async def test_a_stalled_driver_keeps_its_run_and_a_dead_one_loses_it_at_once(
    database_url: str, fake: FakeClaude, tmp_path: Path
) -> None:
    # Liveness is PostgreSQL's to judge: a driver that is merely stalled (SIGSTOP, far past its
    # lease) still holds its connection and its run, so there are never two drivers; once it is
    # dead (SIGKILL) the other replica carries the run on within a check or two, not a lease.
    fake.hold_at = 4
    async with (
        replicas(database_url, fake, tmp_path) as (first, second),
        httpx.AsyncClient(base_url=first.url, timeout=30) as on_first,
    ):
        await register(on_first)
        await connect_claude(on_first, fake)
        async with post_sse(on_first, {"userRequest": "Stall and die", "github": REPO}) as stream:
            frames = await stream.until("assistant")
            session_id = frames[1].json()["websiteSessionId"]
            first.process.send_signal(signal.SIGSTOP)
        try:
            polls_before = len(fake.api_requests("GET", r"/events$"))
            await asyncio.sleep(4)  # four leases (RUN_LEASE_SECONDS=1), and past the old 3 s lease
            # Nobody else drove it meanwhile: upstream saw no reads of its events.
            assert len(fake.api_requests("GET", r"/events$")) == polls_before
        finally:
            first.process.send_signal(signal.SIGKILL)
            first.process.send_signal(signal.SIGCONT)
        await asyncio.to_thread(first.process.wait, 15)
        fake.hold_at = None
        async with httpx.AsyncClient(base_url=second.url, timeout=30, cookies=on_first.cookies) as on_second:
            # Carried on within about a second (bench/adoption.py); the bound leaves room for a
            # busy machine and for runs left by earlier tests that the survivor adopts as well.
            await wait_status(on_second, session_id, "completed", timeout=45)
            log = await stored(on_second, session_id)
    assert types(log) == ["input_preview", "title_generation", *UPSTREAM_TYPES]
    assert "adopting run of session" in second.log()
