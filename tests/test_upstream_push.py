"""Runs followed over the Claude subscribe WebSocket (issue 12): events pushed and stored once in
order, a dropped socket backfilled, a refused upgrade followed by polling, `off` polling as
before, interrupt over the socket, and with two replicas only the lease holder connecting (also
after the holder was killed mid-run)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.agents.backend import UpstreamError
from services.agents.claude_remote.client import ClaudeRemoteClient
from services.agents.claude_remote.push import ClaudeRemoteChannel, subscribe_url
from services.agents.follow import MAX_FAILURES
from services.agents.run import SERVER_EVENT_TYPES
from services.config import ConfigError, load_config
from services.metrics import REGISTRY
from tests.fakes.claude import (
    REPO,
    FakeClaude,
    FakeSession,
    claude_env,
    connect_claude,
    new_uuid,
    post_sse,
    run_to_end,
    running_fake_claude,
    stored,
    types,
    wait_status,
)
from tests.helpers import Replica, TestServer, register, running_replicas, start_app, test_env

ORGANIZATION = "org-5b1e0c2a"
SETTINGS = {
    "CLAUDE_UPSTREAM_PUSH": "auto",
    "RUN_IDLE_GRACE_SECONDS": "5",
    "CLAUDE_ORGANIZATION_UUID": ORGANIZATION,
    "CLAUDE_ENVIRONMENT_ID": "env_push",
    "CLAUDE_POLL_INTERVAL_MS": "50",
}
STEPS = 24  # assistant events in one long turn


def long_turn(session: FakeSession, prompt: str) -> list[dict[str, Any]]:
    """A turn of STEPS assistant messages and a result: long enough that polling would show."""
    events: list[dict[str, Any]] = [
        {
            "type": "assistant",
            "uuid": new_uuid(),
            "message": {"role": "assistant", "content": [{"type": "text", "text": f"step {n} of {prompt}"}]},
        }
        for n in range(STEPS)
    ]
    events.append({"type": "result", "subtype": "success", "uuid": new_uuid(), "total_cost_usd": 0.5})
    return events


# The echo of the prompt, then the turn.
LONG_TYPES = ["user", *["assistant"] * STEPS, "result"]


def counter(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


@dataclass
class Env:
    server: TestServer
    fake: FakeClaude


@pytest.fixture(scope="module")
async def env(database_url: str) -> AsyncIterator[Env]:
    async with (
        running_fake_claude() as fake,
        # This module's own server adopts nothing: its replica tests run on fakes of their own.
        start_app(test_env(database_url, **claude_env(fake, **SETTINGS, RUN_ADOPT_INTERVAL_SECONDS=3600))) as server,
    ):
        yield Env(server, fake)


@pytest.fixture
async def http(env: Env) -> AsyncIterator[httpx.AsyncClient]:
    env.fake.reset_knobs()
    env.fake.turn_factory = long_turn
    env.fake.release_every = 0.03
    async with httpx.AsyncClient(base_url=env.server.url, timeout=30) as client:
        await register(client)
        await connect_claude(client, env.fake)
        yield client


def upstream_events_stored_once_in_order(log: list[dict[str, Any]], session: FakeSession) -> None:
    """The stored upstream events are the remote session's events, the echoes of our own prompts
    included: same order, none twice."""
    upstream = [e["eventData"] for e in log if e["eventData"]["type"] not in SERVER_EVENT_TYPES]
    assert [e["uuid"] for e in upstream] == [e["uuid"] for e in session.events]
    ids = [e["id"] for e in log]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def start_run(http: httpx.AsyncClient, prompt: str) -> list[Any]:
    frames = await run_to_end(http, {"userRequest": prompt, "github": REPO})
    assert frames[-1].event == "completed", [f.event for f in frames]
    return frames


async def eventually(check: Callable[[], bool], timeout: float = 10) -> None:
    async def wait() -> None:
        while not check():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(wait(), timeout)


async def test_events_are_pushed_and_stored_once_in_order(env: Env, http: httpx.AsyncClient) -> None:
    fake = env.fake
    fake.heartbeats = True  # a non-JSON frame before every event: ignored
    fake.delay_frame(5, 0.4)  # one frame arrives late; those behind it wait for it
    latency_before = counter("webedt_upstream_event_latency_seconds_count", {"via": "push"})
    frames = await start_run(http, "Push every step")
    session_id = frames[1].json()["websiteSessionId"]
    remote = fake.sessions[frames[-1].json()["remoteSessionId"]]
    log = await stored(http, session_id)
    assert types(log) == ["input_preview", "title_generation", *LONG_TYPES]
    upstream_events_stored_once_in_order(log, remote)
    assert [f.event for f in frames[2:-1]] == ["title_generation", *LONG_TYPES]
    session = await wait_status(http, session_id, "completed")
    assert session["totalCost"] == "0.5"

    (subscribe,) = [r for r in fake.subscribe_requests if remote.id in r["path"]]
    assert subscribe["path"] == f"/v1/sessions/ws/{remote.id}/subscribe"
    assert subscribe["query"] == {"organization_uuid": ORGANIZATION}
    headers = subscribe["headers"]
    assert headers["authorization"].startswith("Bearer sk-ant-oat-")
    assert headers["anthropic-version"] == "2023-06-01" and headers["anthropic-beta"] == "ccr-byoc-2025-07-29"
    # While the socket is healthy the run does not poll the event list: the backfill on connect
    # (and at most a poll or two before the socket was up), not one read per 50 ms interval.
    assert len(fake.api_requests("GET", rf"^/v1/sessions/{remote.id}/events$")) <= 3
    # The status is read when the socket shows a status or a result, not every 50 ms either.
    status_reads = fake.api_requests("GET", rf"^/v1/sessions/{remote.id}$")
    assert len(status_reads) <= 8, len(status_reads)
    assert all(r["headers"]["x-organization-uuid"] == ORGANIZATION for r in status_reads)
    assert counter("webedt_upstream_event_latency_seconds_count", {"via": "push"}) > latency_before


async def test_a_dropped_socket_is_backfilled_without_gap_or_duplicate(env: Env, http: httpx.AsyncClient) -> None:
    fake = env.fake
    fake.release_every = 0.05
    fake.drop_after_frames, fake.drops_left = 6, 1  # the socket breaks mid-run
    reconnects = counter("webedt_upstream_push_reconnects_total")
    frames = await start_run(http, "Survive the drops")
    session_id = frames[1].json()["websiteSessionId"]
    remote = fake.sessions[frames[-1].json()["remoteSessionId"]]
    log = await stored(http, session_id)
    assert types(log) == ["input_preview", "title_generation", *LONG_TYPES]
    upstream_events_stored_once_in_order(log, remote)
    assert fake.drops_left == 0
    assert len([r for r in fake.subscribe_requests if remote.id in r["path"]]) == 2
    assert counter("webedt_upstream_push_reconnects_total") == reconnects + 1
    # Each reconnect backfilled from the last stored event, not from the start.
    after_ids = [r["query"].get("after_id") for r in fake.api_requests("GET", rf"^/v1/sessions/{remote.id}/events$")]
    assert any(after_ids)


async def test_a_refused_upgrade_falls_back_to_polling(env: Env, http: httpx.AsyncClient) -> None:
    fake = env.fake
    fake.refuse_upgrade = 403
    fallbacks = counter("webedt_upstream_push_fallbacks_total")
    frames = await start_run(http, "Poll when the socket is not allowed")
    session_id = frames[1].json()["websiteSessionId"]
    remote = fake.sessions[frames[-1].json()["remoteSessionId"]]
    upstream_events_stored_once_in_order(await stored(http, session_id), remote)
    assert len([r for r in fake.subscribe_requests if remote.id in r["path"]]) == 1  # not hammered
    assert len(fake.api_requests("GET", rf"^/v1/sessions/{remote.id}/events$")) > 5  # polled instead
    assert counter("webedt_upstream_push_fallbacks_total") == fallbacks + 1


async def remote_of(http: httpx.AsyncClient, session_id: str, fake: FakeClaude) -> FakeSession:
    async def remote_id() -> str:
        while True:
            session = (await http.get(f"/api/sessions/{session_id}")).json()["session"]
            if session["remoteSessionId"]:
                return session["remoteSessionId"]
            await asyncio.sleep(0.02)

    return fake.sessions[await asyncio.wait_for(remote_id(), 10)]


async def test_a_socket_that_keeps_failing_falls_back_to_polling(env: Env, http: httpx.AsyncClient) -> None:
    """Five sockets in a row that close before delivering anything: the run polls on, and the
    follower stops reconnecting (for RETRY_LATER_SECONDS) instead of hammering the upstream."""
    fake = env.fake
    fake.close_on_open = True
    fake.hold_at = 4
    fallbacks = counter("webedt_upstream_push_fallbacks_total")
    async with post_sse(http, {"userRequest": "Keep losing the socket", "github": REPO}) as stream:
        frames = await stream.until("title_generation")
        await eventually(lambda: counter("webedt_upstream_push_fallbacks_total") == fallbacks + 1, timeout=30)
        remote = await remote_of(http, frames[1].json()["websiteSessionId"], fake)
        assert len([r for r in fake.subscribe_requests if remote.id in r["path"]]) == MAX_FAILURES
        fake.hold_at = None
        rest = await stream.until(lambda e: e.event in ("completed", "error"), timeout=30)
    assert rest[-1].event == "completed"
    upstream_events_stored_once_in_order(await stored(http, frames[1].json()["websiteSessionId"]), remote)
    assert len([r for r in fake.subscribe_requests if remote.id in r["path"]]) == MAX_FAILURES


async def test_a_follow_up_whose_turn_starts_late_is_followed(env: Env, http: httpx.AsyncClient) -> None:
    """The remote session stays idle a few status reads after the prompt: the run keeps reading
    the status at the poll interval until the turn runs, then waits for the socket."""
    frames = await start_run(http, "First turn")
    session_id = frames[1].json()["websiteSessionId"]
    env.fake.idle_polls_before_start = 5
    response = await http.post(f"/api/sessions/{session_id}/send", json={"content": "Second turn"})
    assert response.status_code == 200
    session = await wait_status(http, session_id, "completed", timeout=20)
    remote = env.fake.sessions[session["remoteSessionId"]]
    assert remote.prompts == ["First turn", "Second turn"] and not remote.pending
    log = await stored(http, session_id)
    assert types(log) == ["input_preview", "title_generation", *LONG_TYPES, "input_preview", *LONG_TYPES]
    upstream_events_stored_once_in_order(log, remote)


async def test_an_idle_status_without_a_result_ends_the_run_only_after_the_grace(
    env: Env, http: httpx.AsyncClient
) -> None:
    """No `result`: a pushed idle status is an end signal, not an end. The run backfills, finds
    no turn end answering its prompt, and waits `RUN_IDLE_GRACE_SECONDS` (here 5 s) before it
    ends anyway, with every upstream event stored."""
    fake = env.fake
    fake.turn_factory = lambda session, prompt: long_turn(session, prompt)[:-1]
    async with post_sse(http, {"userRequest": "End without a result", "github": REPO}) as stream:
        session_id = (await stream.until("session-created"))[-1].json()["websiteSessionId"]
        await eventually(lambda: any(s.prompts == ["End without a result"] for s in fake.sessions.values()))
        remote = next(s for s in fake.sessions.values() if s.prompts == ["End without a result"])
        await eventually(lambda: remote.status == "idle" and not remote.pending)
        assert (await http.get(f"/api/sessions/{session_id}")).json()["session"]["status"] == "running"
        frames = await stream.until("completed")
    assert frames[-1].event == "completed"
    session = await wait_status(http, session_id, "completed")
    assert session["completedAt"] is not None
    upstream_events_stored_once_in_order(await stored(http, session_id), remote)


async def wait_live(env: Env, session_id: str) -> None:
    """Until this replica's driver follows the session over a backfilled socket."""

    def live() -> bool:
        follower = env.server.ctx.runs.followers.get(session_id)
        return follower is not None and follower.live

    await eventually(live)


async def test_interrupt_goes_over_the_socket(env: Env, http: httpx.AsyncClient) -> None:
    fake = env.fake
    fake.hold_at = 6
    async with post_sse(http, {"userRequest": "Stop half-way", "github": REPO}) as stream:
        frames = await stream.until("assistant")
        session_id = frames[1].json()["websiteSessionId"]
        await wait_live(env, session_id)
        response = await http.post(f"/api/sessions/{session_id}/interrupt")
        assert response.status_code == 200, response.text
        rest = await stream.until(lambda e: e.event in ("completed", "error"))
    # Recorded before the socket answered (events already on their way may follow it).
    assert "interrupted" in [f.event for f in rest] and rest[-1].event == "completed"
    remote = fake.only_session() if len(fake.sessions) == 1 else fake.sessions[rest[-1].json()["remoteSessionId"]]
    assert remote.socket_interrupts == 1 and remote.interrupts == 1
    assert not [
        r for r in fake.api_requests("POST", rf"^/v1/sessions/{remote.id}/events$") if "control_request" in str(r)
    ]
    (request,) = [m for m in fake.socket_messages if m.get("type") == "control_request"]
    assert request["request"] == {"subtype": "interrupt"} and request["request_id"]


async def test_an_interrupt_the_socket_refuses_goes_the_usual_way(env: Env, http: httpx.AsyncClient) -> None:
    fake = env.fake
    fake.hold_at = 6
    fake.control_answer = "error"
    async with post_sse(http, {"userRequest": "Stop another way", "github": REPO}) as stream:
        frames = await stream.until("assistant")
        session_id = frames[1].json()["websiteSessionId"]
        await wait_live(env, session_id)
        response = await http.post(f"/api/sessions/{session_id}/interrupt")
        assert response.status_code == 200, response.text
        rest = await stream.until(lambda e: e.event in ("completed", "error"))
    remote = fake.sessions[rest[-1].json()["remoteSessionId"]]
    assert rest[-1].event == "completed"
    assert remote.socket_interrupts == 0 and remote.interrupts == 1  # by REST


async def test_off_polls_as_before(database_url: str) -> None:
    async with (
        running_fake_claude() as fake,
        start_app(test_env(database_url, **claude_env(fake, CLAUDE_ENVIRONMENT_ID="env_off"))) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        await register(http)
        await connect_claude(http, fake)
        frames = await start_run(http, "Poll like before")
        remote = fake.only_session()
        upstream_events_stored_once_in_order(await stored(http, frames[1].json()["websiteSessionId"]), remote)
        assert fake.subscribe_requests == []
        assert len(fake.api_requests("GET", rf"^/v1/sessions/{remote.id}/events$")) >= 3


def test_the_subscribe_url_follows_the_api_base() -> None:
    assert subscribe_url("https://api.anthropic.com/", "session_1") == (
        "wss://api.anthropic.com/v1/sessions/ws/session_1/subscribe"
    )
    assert subscribe_url("http://127.0.0.1:8080", "s/2", "org 1") == (
        "ws://127.0.0.1:8080/v1/sessions/ws/s%2F2/subscribe?organization_uuid=org+1"
    )


def test_claude_upstream_push_is_auto_or_off(database_url: str) -> None:
    base = test_env(database_url)
    assert load_config(base).claude_upstream_push == "auto"
    assert load_config({**base, "CLAUDE_UPSTREAM_PUSH": "OFF"}).claude_upstream_push == "off"
    with pytest.raises(ConfigError, match="CLAUDE_UPSTREAM_PUSH must be auto or off"):
        load_config({**base, "CLAUDE_UPSTREAM_PUSH": "sometimes"})


# ---- two replicas ---------------------------------------------------------------------------------


def replicas(
    database_url: str, fake: FakeClaude, tmp_path: Path
) -> contextlib.AbstractAsyncContextManager[list[Replica]]:
    env = claude_env(fake, **{**SETTINGS, "RUN_ADOPT_INTERVAL_SECONDS": "0.3", "LOG_LEVEL": "INFO"})
    return running_replicas(test_env(database_url, **env), tmp_path)


async def test_two_replicas_only_the_lease_holder_connects(database_url: str, tmp_path: Path) -> None:
    async with running_fake_claude() as fake:
        fake.turn_factory, fake.release_every, fake.hold_at = long_turn, 0.03, 8
        async with (
            replicas(database_url, fake, tmp_path) as (first, second),
            httpx.AsyncClient(base_url=first.url, timeout=30) as on_first,
        ):
            await register(on_first)
            await connect_claude(on_first, fake)
            async with post_sse(on_first, {"userRequest": "Drive me on one replica", "github": REPO}) as stream:
                frames = await stream.until("assistant")
                session_id = frames[1].json()["websiteSessionId"]
                remote = fake.only_session()
                await eventually(lambda: fake.subscriber_count(remote.id) == 1)
                # A follow-up through the other replica: it records it, the holder delivers it.
                async with httpx.AsyncClient(base_url=second.url, timeout=30, cookies=on_first.cookies) as on_second:
                    response = await on_second.post(f"/api/sessions/{session_id}/send", json={"content": "And more"})
                    assert response.status_code == 200, response.text
                fake.hold_at = None
                await stream.until("completed", timeout=30)
            await wait_status(on_first, session_id, "completed", timeout=30)
            log = await stored(on_first, session_id)
        upstream_events_stored_once_in_order(log, remote)
        assert remote.prompts == ["Drive me on one replica", "And more"]
        assert len(fake.subscribe_requests) == 1  # one socket, from one replica, for the whole run
    assert "adopting run" not in second.log()


async def test_a_killed_replicas_run_is_followed_by_the_adopter(database_url: str, tmp_path: Path) -> None:
    async with running_fake_claude() as fake:
        fake.turn_factory, fake.release_every, fake.hold_at = long_turn, 0.03, 8
        async with (
            replicas(database_url, fake, tmp_path) as (first, second),
            httpx.AsyncClient(base_url=first.url, timeout=30) as on_first,
        ):
            await register(on_first)
            await connect_claude(on_first, fake)
            async with post_sse(on_first, {"userRequest": "Outlive my replica", "github": REPO}) as stream:
                frames = await stream.until("assistant")
                session_id = frames[1].json()["websiteSessionId"]
                remote = fake.only_session()
                await eventually(lambda: fake.subscriber_count(remote.id) == 1)
                first.process.send_signal(signal.SIGKILL)
                with contextlib.suppress(httpx.HTTPError, AssertionError, TimeoutError):
                    await stream.rest(timeout=10)
            await asyncio.to_thread(first.process.wait, 15)
            await eventually(lambda: fake.subscriber_count(remote.id) == 0)
            fake.hold_at = None  # upstream carries on while nobody listens
            # The adopter connects again (and backfills what was released meanwhile).
            await eventually(lambda: len(fake.subscribe_requests) == 2, timeout=30)
            async with httpx.AsyncClient(base_url=second.url, timeout=30, cookies=on_first.cookies) as on_second:
                session = await wait_status(on_second, session_id, "completed", timeout=30)
                log = await stored(on_second, session_id)
        assert session["totalCost"] == "0.5"
        assert types(log) == ["input_preview", "title_generation", *LONG_TYPES]
        upstream_events_stored_once_in_order(log, remote)
    assert "adopting run of session" in second.log()


# ---- the channel itself, against the fake -------------------------------------------------------


async def test_the_channel_reads_every_frame_kind_and_keeps_alive() -> None:
    async with running_fake_claude() as fake:
        access, _ = fake.issue_tokens()
        fake.turn_factory, fake.hold_at, fake.heartbeats = long_turn, 1, True
        remote = fake.sessions[fake.create_session(create_body())["id"]]
        provider_headers = await rest_headers(fake, access)
        channel = await ClaudeRemoteChannel.open(
            subscribe_url(fake.url, remote.id), provider_headers, 2, keep_alive_seconds=0.05
        )
        try:
            await eventually(lambda: fake.subscriber_count(remote.id) == 1)
            fake.hold_at = 4
            items = [await asyncio.wait_for(channel.receive(), 5) for _ in range(6)]
            # heartbeat, event (wrapped), heartbeat, event (bare), heartbeat, event (wrapped)
            assert [item.event is None and item.status is None for item in items] == [True, False] * 3
            assert [item.event["uuid"] for item in items if item.event] == [e["uuid"] for e in remote.events[1:4]]
            assert [item.cursor for item in items if item.event] == [e["uuid"] for e in remote.events[1:4]]
            fake.interrupt(remote)
            assert (await asyncio.wait_for(channel.receive(), 5)).status == "idle"
            await eventually(lambda: {"type": "keep_alive"} in fake.socket_messages)
        finally:
            await channel.close()
        assert await channel.receive() is None and not await channel.interrupt()


async def test_an_unanswered_or_refused_interrupt_returns_false() -> None:
    async with running_fake_claude() as fake:
        access, _ = fake.issue_tokens()
        remote = fake.sessions[fake.create_session(create_body())["id"]]
        headers = await rest_headers(fake, access)
        for answer in (None, "error"):
            fake.control_answer = answer
            channel = await ClaudeRemoteChannel.open(
                subscribe_url(fake.url, remote.id), headers, 2, control_timeout_seconds=0.3
            )
            reader = asyncio.create_task(drain(channel))
            try:
                assert await channel.interrupt() is False
            finally:
                await channel.close()
                await reader
        assert remote.socket_interrupts == 0
        with pytest.raises(UpstreamError, match="401 upgrade refused"):
            await ClaudeRemoteChannel.open(subscribe_url(fake.url, remote.id), {**headers, "Authorization": "x"}, 2)


async def rest_headers(fake: FakeClaude, access_token: str) -> dict[str, str]:
    """The headers of the REST client, which the socket sends too."""
    client = ClaudeRemoteClient(fake.url, 2)
    await client.aclose()
    return client.headers(access_token)


async def drain(channel: ClaudeRemoteChannel) -> None:
    while await channel.receive() is not None:
        pass


def create_body() -> dict[str, Any]:
    return {
        "title": "Channel",
        "environment_id": "env_channel",
        "events": [
            {
                "type": "event",
                "data": {"uuid": new_uuid(), "type": "user", "message": {"role": "user", "content": "Hello"}},
            }
        ],
        "session_context": {
            "sources": [{"type": "git_repository", "url": "https://github.com/o/r"}],
            "outcomes": [{"type": "git_repository", "git_info": {"type": "github", "repo": "o/r", "branches": ["b"]}}],
            "model": "m",
        },
    }
