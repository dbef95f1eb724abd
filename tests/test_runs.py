"""Runs on a fake Claude Remote server: follow-ups without a stream, interrupt, abort, and an
upstream that fails, stalls, answers nonsense or rejects the access token."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from services.agents.execute import NO_REMOTE_FOR_INTERRUPT, NO_REMOTE_FOR_SEND
from tests.fakes.claude import (
    REPO,
    UPSTREAM_TYPES,
    FakeClaude,
    claude_env,
    connect_claude,
    post_sse,
    run_to_end,
    running_fake_claude,
    stored,
    types,
    wait_status,
)
from tests.helpers import TestServer, register, start_app, test_env

SETTINGS = {
    "CLAUDE_RETRY_WINDOW_SECONDS": "1.5",
    "CLAUDE_REQUEST_TIMEOUT_SECONDS": "0.4",
    "CLAUDE_ENVIRONMENT_ID": "env_x",
}


@dataclass
class Env:
    server: TestServer
    fake: FakeClaude


@pytest.fixture(scope="module")
async def env(database_url: str) -> AsyncIterator[Env]:
    async with (
        running_fake_claude() as fake,
        start_app(test_env(database_url, **claude_env(fake, **SETTINGS))) as server,
    ):
        yield Env(server, fake)


@pytest.fixture
async def http(env: Env) -> AsyncIterator[httpx.AsyncClient]:
    env.fake.reset_knobs()
    env.fake.token_requests.clear()
    async with httpx.AsyncClient(base_url=env.server.url, timeout=30) as client:
        await register(client)
        await connect_claude(client, env.fake)
        yield client


async def finished_session(http: httpx.AsyncClient, prompt: str = "Fix the flaky test") -> str:
    frames = await run_to_end(http, {"userRequest": prompt, "github": REPO})
    assert frames[-1].event == "completed", [f.event for f in frames]
    return frames[1].json()["websiteSessionId"]


def error_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["eventData"] for e in events if e["eventData"]["type"] == "error"]


async def test_send_delivers_a_follow_up_without_a_stream(env: Env, http: httpx.AsyncClient) -> None:
    session_id = await finished_session(http)
    before = await stored(http, session_id)
    env.fake.idle_polls_before_start = 2
    response = await http.post(f"/api/sessions/{session_id}/send", json={"content": "Also update the README"})
    assert response.status_code == 200
    assert response.json() == {"success": True}
    session = await wait_status(http, session_id, "completed")
    assert session["totalCost"] == "0.025"
    after = await stored(http, session_id)
    assert types(after) == [*types(before), "input_preview", *UPSTREAM_TYPES]
    preview = after[len(before)]["eventData"]
    assert preview["source"] == "user" and preview["data"]["preview"] == "Also update the README"
    remote = env.fake.sessions[session["remoteSessionId"]]
    assert remote.prompts == ["Fix the flaky test", "Also update the README"]
    sent = env.fake.api_requests("POST", rf"^/v1/sessions/{remote.id}/events$")[-1]["body"]["events"][0]
    assert sent["type"] == "user" and sent["session_id"] == remote.id and sent["parent_tool_use_id"] is None
    assert sent["message"] == {"role": "user", "content": "Also update the README"}


async def test_send_errors(env: Env, http: httpx.AsyncClient) -> None:
    session_id = await finished_session(http)
    response = await http.post(f"/api/sessions/{session_id}/send", json={"content": "  "})
    assert (response.status_code, response.json()["error"]) == (400, "Message content is required")
    response = await http.post("/api/sessions/nope/send", json={"content": "hi"})
    assert (response.status_code, response.json()["error"]) == (404, "Session not found")
    pending = await http.post(
        "/api/sessions/create-code-session",
        json={"repositoryOwner": "octo", "repositoryName": "widgets", "baseBranch": "main", "branch": "b-send"},
    )
    pending_id = pending.json()["session"]["id"]
    response = await http.post(f"/api/sessions/{pending_id}/send", json={"content": "hi"})
    assert (response.status_code, response.json()["error"]) == (400, NO_REMOTE_FOR_SEND)
    response = await http.post(f"/api/sessions/{pending_id}/interrupt")
    assert (response.status_code, response.json()["error"]) == (400, NO_REMOTE_FOR_INTERRUPT)
    async with httpx.AsyncClient(base_url=env.server.url, timeout=30) as other:
        await register(other)
        for action in ("send", "interrupt", "abort"):
            response = await other.post(f"/api/sessions/{session_id}/{action}", json={"content": "hi"})
            assert (response.status_code, response.json()["error"]) == (404, "Session not found")
    await http.delete("/api/user/claude-auth")
    response = await http.post(f"/api/sessions/{session_id}/send", json={"content": "hi"})
    assert (response.status_code, response.json()["error"]) == (401, "Claude authentication not configured")
    session = (await http.get(f"/api/sessions/{session_id}")).json()["session"]
    assert session["status"] == "completed"


async def test_interrupt_stops_the_turn_and_is_recorded(env: Env, http: httpx.AsyncClient) -> None:
    env.fake.hold_at = 3  # the turn stalls upstream after its first events
    async with post_sse(http, {"userRequest": "Rewrite everything", "github": REPO}) as stream:
        frames = await stream.until("assistant")
        session_id = frames[1].json()["websiteSessionId"]
        response = await http.post(f"/api/sessions/{session_id}/interrupt")
        assert response.status_code == 200
        assert response.json() == {"success": True, "data": {"message": "Interrupt sent", "sessionId": session_id}}
        rest = await stream.until(lambda e: e.event in ("completed", "error"))
    assert [f.event for f in rest] == ["interrupted", "completed"]
    assert rest[0].json()["source"] == "user"
    session = await wait_status(http, session_id, "completed")
    remote = env.fake.sessions[session["remoteSessionId"]]
    assert remote.interrupts == 1
    sent = env.fake.api_requests("POST", rf"^/v1/sessions/{remote.id}/events$")[-1]["body"]["events"][0]
    assert sent["type"] == "control_request" and sent["action"] == "interrupt" and sent["uuid"]
    assert "interrupted" in types(await stored(http, session_id))


async def test_abort_interrupts_upstream_and_ends_in_error(env: Env, http: httpx.AsyncClient) -> None:
    env.fake.hold_at = 3
    async with post_sse(http, {"userRequest": "Rename every variable", "github": REPO}) as stream:
        frames = await stream.until("assistant")
        session_id = frames[1].json()["websiteSessionId"]
        response = await http.post(f"/api/sessions/{session_id}/abort")
        assert response.status_code == 200
        assert response.json() == {
            "success": True,
            "data": {"message": "Session aborted", "sessionId": session_id, "remoteInterrupted": True},
        }
        stored_error = await stream.until("error")
        assert stored_error[-1].id is not None and stored_error[-1].json()["error"] == "Session aborted"
        final = await stream.next()
        assert final.event == "error" and final.id is None
    session = (await http.get(f"/api/sessions/{session_id}")).json()["session"]
    assert session["status"] == "error" and session["completedAt"] is not None
    assert env.fake.sessions[session["remoteSessionId"]].interrupts == 1
    env.fake.hold_at = None
    await asyncio.sleep(0.3)  # a driver still polling would now store the rest of the turn
    log = await stored(http, session_id)
    assert len(error_events(log)) == 1 and "result" not in types(log)


async def test_5xx_and_malformed_replies_are_retried_without_losing_or_doubling(
    env: Env, http: httpx.AsyncClient
) -> None:
    env.fake.fail(status=500, count=3, method="GET", path=r"/events$")
    env.fake.fail("malformed", count=2, method="GET", path=r"^/v1/sessions/[^/]+$")
    env.fake.flaky_every = 4
    frames = await run_to_end(http, {"userRequest": "Survive a bad upstream", "github": REPO})
    assert frames[-1].event == "completed"
    assert [f.event for f in frames[2:-1]] == ["title_generation", *UPSTREAM_TYPES]
    log = await stored(http, frames[1].json()["websiteSessionId"])
    assert types(log) == ["input_preview", "title_generation", *UPSTREAM_TYPES]
    assert all(f.count == 0 for f in env.fake.faults)


async def test_timeouts_are_retried_and_a_lost_create_reply_makes_no_second_session(
    env: Env, http: httpx.AsyncClient
) -> None:
    # The creation answers after the client gave up (0.4 s), but it did create the session.
    env.fake.fail("slow", seconds=0.7, count=1, method="POST", path=r"^/v1/sessions$")
    env.fake.fail("slow", seconds=0.7, count=2, method="GET", path=r"/events$")
    frames = await run_to_end(http, {"userRequest": "Handle the slow upstream", "github": REPO})
    assert frames[-1].event == "completed"
    titles = [s.title for s in env.fake.sessions.values()]
    assert titles.count("Handle Slow Upstream") == 1
    assert types(await stored(http, frames[1].json()["websiteSessionId"])) == [
        "input_preview",
        "title_generation",
        *UPSTREAM_TYPES,
    ]


async def test_a_lasting_outage_ends_the_run_with_one_stored_error(env: Env, http: httpx.AsyncClient) -> None:
    env.fake.hold_at = 3
    async with post_sse(http, {"userRequest": "Outlive the outage", "github": REPO}) as stream:
        frames = await stream.until("assistant")
        env.fake.fail(status=503, count=float("inf"), method="GET", path=r"^/v1/sessions/[^/]+$")
        rest = await stream.until("error", timeout=15)
        terminal = await stream.next()
    session_id = frames[1].json()["websiteSessionId"]
    error = rest[-1]
    assert error.id is not None
    assert error.json()["error"].startswith("Failed to get session: 503")
    assert terminal.event == "error" and terminal.id is None and terminal.json()["error"] == error.json()["error"]
    session = (await http.get(f"/api/sessions/{session_id}")).json()["session"]
    assert session["status"] == "error" and session["completedAt"] is not None
    assert session["remoteSessionId"]  # stored as soon as it was known, kept on failure
    assert len(error_events(await stored(http, session_id))) == 1


async def test_a_rejected_access_token_is_refreshed_and_the_run_goes_on(env: Env, http: httpx.AsyncClient) -> None:
    env.fake.hold_at = 3
    old = (await http.get("/api/user/claude-auth/credentials")).json()["data"]["claudeAuth"]
    async with post_sse(http, {"userRequest": "Keep going after a 401", "github": REPO}) as stream:
        await stream.until("assistant")
        env.fake.access_tokens.discard(old["accessToken"])  # revoked upstream
        env.fake.hold_at = None
        rest = await stream.until(lambda e: e.event in ("completed", "error"))
    assert rest[-1].event == "completed"
    assert len(env.fake.token_requests) == 1
    assert env.fake.token_requests[0]["body"]["refresh_token"] == old["refreshToken"]
    new = (await http.get("/api/user/claude-auth/credentials")).json()["data"]["claudeAuth"]
    assert new["refreshToken"] != old["refreshToken"] and new["accessToken"] in env.fake.access_tokens


async def test_an_image_prompt_is_stored_and_sent_as_blocks(env: Env, http: httpx.AsyncClient) -> None:
    prompt = [
        {"type": "text", "text": "Make it look like this"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "aGVsbG8="}},
    ]
    frames = await run_to_end(http, {"userRequest": prompt, "github": REPO})
    session_id = frames[1].json()["websiteSessionId"]
    messages = (await http.get(f"/api/sessions/{session_id}/messages")).json()["data"]["messages"]
    assert messages[0]["content"] == "Make it look like this [1 image(s)]"
    image = messages[0]["images"][0]
    assert image["data"] == "aGVsbG8=" and image["mediaType"] == "image/jpeg" and image["fileName"] == "image-1.png"
    remote = env.fake.sessions[frames[-1].json()["remoteSessionId"]]
    assert remote.prompts == [prompt]


async def test_a_token_endpoint_outage_during_a_run_is_waited_out(env: Env, http: httpx.AsyncClient) -> None:
    env.fake.hold_at = 3
    old = (await http.get("/api/user/claude-auth/credentials")).json()["data"]["claudeAuth"]
    async with post_sse(http, {"userRequest": "Ride out the token outage", "github": REPO}) as stream:
        await stream.until("assistant")
        env.fake.token_status = 503
        env.fake.access_tokens.discard(old["accessToken"])
        env.fake.hold_at = None
        while len(env.fake.token_requests) < 2:  # refused twice while the endpoint is down
            await asyncio.sleep(0.05)
        env.fake.token_status = None
        rest = await stream.until(lambda e: e.event in ("completed", "error"))
    assert rest[-1].event == "completed"
    assert [f.event for f in rest[:-1]] == UPSTREAM_TYPES[3:]


async def test_a_follow_up_sent_mid_turn_gets_its_own_result_before_the_run_ends(
    env: Env, http: httpx.AsyncClient
) -> None:
    # Claude Code queues a prompt sent while it works and answers it as a turn of its own: the run
    # may end only after that second turn's result, not at the first turn's.
    env.fake.hold_at = 4  # turn 1 stalls upstream before its result
    async with post_sse(http, {"userRequest": "Refactor the parser", "github": REPO}) as stream:
        frames = await stream.until("assistant")
        session_id = frames[1].json()["websiteSessionId"]
        response = await http.post(f"/api/sessions/{session_id}/send", json={"content": "And keep the old API"})
        assert response.status_code == 200
        remote_id = (await http.get(f"/api/sessions/{session_id}")).json()["session"]["remoteSessionId"]

        async def delivered() -> None:
            while len(env.fake.sessions[remote_id].prompts) < 2:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(delivered(), 10)
        env.fake.hold_at = None  # turn 1 goes on, then the queued turn 2
        rest = await stream.until(lambda e: e.event in ("completed", "error"), timeout=20)
    names = [f.event for f in frames + rest]
    assert names.count("result") == 2, names
    assert names[-1] == "completed" and names[-2] == "result"
    session = await wait_status(http, session_id, "completed")
    assert session["totalCost"] == "0.025"  # the second turn's result
    log = types(await stored(http, session_id))
    assert log.count("result") == 2 and log[-1] == "result"
    # The follow-up's own turn came after the first result, and nothing was left unstored.
    assert log.index("result") < len(log) - 1


async def test_a_short_lived_token_is_refreshed_once_not_on_every_use(env: Env, http: httpx.AsyncClient) -> None:
    # Tokens that live 5 minutes, under the 10-minute margin: a just-refreshed one is used until
    # it nears its own expiry instead of being refreshed (and its refresh token rotated) again.
    env.fake.token_lifetime_seconds = 300
    try:
        await connect_claude(http, env.fake, expires_in_seconds=60)
        env.fake.token_requests.clear()
        frames = await run_to_end(http, {"userRequest": "Use the short token", "github": REPO})
        assert frames[-1].event == "completed"
        assert len(env.fake.token_requests) == 1
        credentials = (await http.get("/api/user/claude-auth/credentials")).json()["data"]
        assert credentials["refreshed"] is False and len(env.fake.token_requests) == 1
        assert set(credentials["claudeAuth"]) <= {
            "accessToken",
            "refreshToken",
            "expiresAt",
            "scopes",
            "subscriptionType",
            "rateLimitTier",
        }
    finally:
        env.fake.token_lifetime_seconds = 3600
