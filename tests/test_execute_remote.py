"""POST and GET /api/execute-remote against a fake Claude Remote server (CONTRACT.md 1.2, 4.2)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from services.agents.claude_remote.provider import ENVIRONMENT_NOT_FOUND
from tests.fakes.claude import (
    FAKE_ENVIRONMENT,
    REPO,
    UPSTREAM_TYPES,
    FakeClaude,
    claude_env,
    connect_claude,
    run_to_end,
    running_fake_claude,
    stored,
    types,
    wait_status,
)
from tests.helpers import TestServer, register, start_app, test_env
from tests.sse import open_sse


@dataclass
class Env:
    server: TestServer
    fake: FakeClaude


@pytest.fixture(scope="module")
async def env(database_url: str) -> AsyncIterator[Env]:
    async with running_fake_claude() as fake, start_app(test_env(database_url, **claude_env(fake))) as server:
        fake.seed_session()  # the environment to detect
        yield Env(server, fake)


@pytest.fixture
async def http(env: Env) -> AsyncIterator[httpx.AsyncClient]:
    env.fake.reset_knobs()
    async with httpx.AsyncClient(base_url=env.server.url, timeout=30) as client:
        yield client


@pytest.fixture
async def person(http: httpx.AsyncClient, env: Env) -> dict[str, Any]:
    """A logged-in person with Claude connected."""
    user = await register(http)
    await connect_claude(http, env.fake)
    return user


async def test_a_new_session_runs_to_completion(env: Env, http: httpx.AsyncClient, person: dict[str, Any]) -> None:
    prompt = "Please add a dark mode toggle to the settings page"
    frames = await run_to_end(http, {"userRequest": prompt, "github": REPO})

    preview, created, *rest = frames
    assert preview.event == "input_preview" and preview.id is not None
    assert preview.json()["message"] == f"Request received: {prompt}"
    assert preview.json()["data"] == {"preview": prompt, "originalLength": len(prompt), "truncated": False}
    assert created.event == "session-created" and created.id is None
    session_id = created.json()["websiteSessionId"]
    completed = rest.pop()
    assert [e.event for e in rest] == ["title_generation", *UPSTREAM_TYPES]
    ids = [int(e.id) for e in [preview, *rest] if e.id is not None]
    assert len(ids) == len(rest) + 1 and ids == sorted(ids) and len(set(ids)) == len(ids)
    # The whole run is live to this client, even what was stored before its stream caught up.
    assert not any("_replayed" in e.json() for e in rest)
    title = rest[0].json()
    assert title["title"] == "Add Dark Mode Toggle Settings" and title["branch_name"] == "claude/add-dark-mode-toggle"

    remote = env.fake.sessions[completed.json()["remoteSessionId"]]
    branch = f"claude/add-dark-mode-toggle-{remote.id[-6:].lower()}"
    assert completed.event == "completed" and completed.id is None
    assert completed.json() == {
        "websiteSessionId": session_id,
        "completed": True,
        "branch": branch,
        "totalCost": "0.0125",
        "remoteSessionId": remote.id,
        "remoteWebUrl": f"https://claude.ai/code/{remote.id}",
    }

    # What upstream was asked for.
    create = env.fake.api_requests("POST", r"^/v1/sessions$")[-1]
    assert create["headers"]["anthropic-version"] == "2023-06-01"
    assert create["headers"]["anthropic-beta"] == "ccr-byoc-2025-07-29"
    body = create["body"]
    assert body["title"] == "Add Dark Mode Toggle Settings"
    assert body["environment_id"] == FAKE_ENVIRONMENT
    assert body["session_context"]["sources"] == [{"type": "git_repository", "url": "https://github.com/octo/widgets"}]
    assert body["session_context"]["outcomes"][0]["git_info"] == {
        "type": "github",
        "repo": "octo/widgets",
        "branches": ["claude/add-dark-mode-toggle"],
    }
    assert body["events"][0]["data"]["message"] == {"role": "user", "content": prompt}

    # The row and the log say the same.
    session = (await http.get(f"/api/sessions/{session_id}")).json()["session"]
    assert session["status"] == "completed" and session["completedAt"] is not None
    assert session["remoteSessionId"] == remote.id and session["remoteWebUrl"] == completed.json()["remoteWebUrl"]
    assert session["branch"] == branch and session["totalCost"] == "0.0125"
    assert session["userRequest"] == "Add Dark Mode Toggle Settings"
    assert session["repositoryOwner"] == "octo" and session["repositoryName"] == "widgets"
    assert session["repositoryUrl"] == "https://github.com/octo/widgets" and session["baseBranch"] == "main"
    log = await stored(http, session_id)
    assert [e["id"] for e in log] == ids
    # The log holds every upstream event, the echo of the prompt included; the server's own
    # input_preview carries no upstream uuid, so nobody mistakes one for the other.
    assert types(log) == ["input_preview", "title_generation", *UPSTREAM_TYPES]
    assert "uuid" not in log[0]["eventData"]
    echo = log[2]["eventData"]
    prompt_uuid = remote.events[0]["uuid"]
    assert echo["type"] == "user" and echo["uuid"] == prompt_uuid and echo["message"]["content"] == prompt
    messages = (await http.get(f"/api/sessions/{session_id}/messages")).json()["data"]["messages"]
    assert [(m["type"], m["content"]) for m in messages] == [("user", prompt)]


async def test_a_follow_up_streams_only_new_events(env: Env, http: httpx.AsyncClient, person: dict[str, Any]) -> None:
    first = await run_to_end(http, {"userRequest": "Fix the login bug", "github": REPO})
    session_id = first[1].json()["websiteSessionId"]
    before = await stored(http, session_id)
    # Right after the prompt the remote session still reads idle for a while (defect 15).
    env.fake.idle_polls_before_start = 3

    frames = await run_to_end(http, {"userRequest": "Now add a test for it", "websiteSessionId": session_id})
    assert frames[0].event == "input_preview" and frames[-1].event == "completed"
    assert "session-created" not in [f.event for f in frames]
    assert [f.event for f in frames[1:-1]] == UPSTREAM_TYPES
    assert min(int(f.id) for f in frames if f.id) > max(e["id"] for e in before)
    assert frames[-1].json()["totalCost"] == "0.025"

    remote = env.fake.sessions[frames[-1].json()["remoteSessionId"]]
    assert remote.prompts == ["Fix the login bug", "Now add a test for it"]
    after = await stored(http, session_id)
    assert types(after) == [*types(before), "input_preview", *UPSTREAM_TYPES]
    assert len({e["id"] for e in after}) == len(after)
    messages = (await http.get(f"/api/sessions/{session_id}/messages")).json()["data"]["messages"]
    assert [m["content"] for m in messages] == ["Fix the login bug", "Now add a test for it"]


async def test_someone_elses_session_is_not_found_and_unchanged(
    env: Env, http: httpx.AsyncClient, person: dict[str, Any]
) -> None:
    frames = await run_to_end(http, {"userRequest": "Refactor the parser", "github": REPO})
    session_id = frames[1].json()["websiteSessionId"]
    sends = len(env.fake.api_requests("POST", r"/events$"))
    async with httpx.AsyncClient(base_url=env.server.url, timeout=30) as other:
        await register(other)
        await connect_claude(other, env.fake)
        for method in ("GET", "POST"):
            if method == "GET":
                response = await other.get(
                    "/api/execute-remote",
                    params={"userRequest": "steal", "websiteSessionId": session_id},
                    headers={"Accept": "text/event-stream"},
                )
            else:
                response = await other.post(
                    "/api/execute-remote", json={"userRequest": "steal", "websiteSessionId": session_id}
                )
            assert response.status_code == 404
            assert response.json() == {"success": False, "error": "Session not found"}
    session = (await http.get(f"/api/sessions/{session_id}")).json()["session"]
    assert session["status"] == "completed"
    assert len(await stored(http, session_id)) == len(frames) - 2
    assert len(env.fake.api_requests("POST", r"/events$")) == sends


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "userRequest or websiteSessionId is required"),
        ({"userRequest": "Do it"}, "github.repoUrl is required for new sessions"),
        ({"userRequest": "Do it", "github": "{not json"}, "github.repoUrl is required for new sessions"),
        (
            {"userRequest": "   ", "github": '{"repoUrl": "https://github.com/o/r"}'},
            "userRequest or websiteSessionId is required",
        ),
    ],
)
async def test_input_errors_are_json_400s(
    http: httpx.AsyncClient, person: dict[str, Any], params: dict, message: str
) -> None:
    response = await http.get("/api/execute-remote", params=params, headers={"Accept": "text/event-stream"})
    assert response.status_code == 400
    assert response.json() == {"success": False, "error": message}


async def test_other_input_errors(env: Env, http: httpx.AsyncClient) -> None:
    assert (await http.get("/api/execute-remote", params={"userRequest": "x"})).status_code == 401
    await register(http)
    body = {"userRequest": "Do it", "github": REPO}
    response = await http.post("/api/execute-remote", json=body)
    assert response.status_code == 400
    assert (
        response.json()["error"]
        == "Claude authentication not configured. Please connect your Claude account in settings."
    )
    await connect_claude(http, env.fake)
    response = await http.post(
        "/api/execute-remote", json={"userRequest": "Do it", "github": {"repoUrl": "not a repo"}}
    )
    assert response.status_code == 400 and "github.repoUrl must be a GitHub repository URL" in response.json()["error"]
    response = await http.post("/api/execute-remote", json={"userRequest": [{"type": "video"}], "github": REPO})
    assert response.status_code == 400 and response.json()["error"].startswith("userRequest must be")
    response = await http.post("/api/execute-remote", json={"websiteSessionId": "no-such-session"})
    assert response.status_code == 404
    # A link on another site must not start a paid run.
    for header in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Mode": "navigate"}):
        response = await http.get(
            "/api/execute-remote", params={"userRequest": "x", "github": '{"repoUrl": "x"}'}, headers=header
        )
        assert response.status_code == 403
    assert (await http.head("/api/execute-remote", params={"userRequest": "x"})).status_code == 405


async def test_a_refused_token_refresh_is_a_401(env: Env, http: httpx.AsyncClient) -> None:
    await register(http)
    _, refresh = await connect_claude(http, env.fake, expires_in_seconds=60)
    env.fake.refresh_tokens[refresh] = False  # already used elsewhere
    response = await http.post("/api/execute-remote", json={"userRequest": "Do it", "github": REPO})
    assert response.status_code == 401
    assert response.json()["error"] == "Claude token expired. Please reconnect your Claude account."


async def test_a_token_refused_while_finding_the_environment_is_a_401(
    env: Env, http: httpx.AsyncClient, person: dict[str, Any]
) -> None:
    # Stored credentials that look valid but that Claude no longer accepts.
    far = 4_102_444_800_000
    await http.post("/api/user/claude-auth", json={"accessToken": "revoked", "refreshToken": "r", "expiresAt": far})
    response = await http.post("/api/execute-remote", json={"userRequest": "Do it", "github": REPO})
    assert response.status_code == 401
    assert response.json()["error"] == "Claude token expired. Please reconnect your Claude account."
    assert not any(r["headers"].get("authorization") == "Bearer revoked" for r in env.fake.api_requests("POST"))


async def test_no_environment_is_a_400_with_the_contract_message(database_url: str) -> None:
    async with (
        running_fake_claude() as fake,
        start_app(test_env(database_url, **claude_env(fake))) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        await register(http)
        await connect_claude(http, fake)
        response = await http.post("/api/execute-remote", json={"userRequest": "Do it", "github": REPO})
        assert response.status_code == 400
        assert response.json() == {"success": False, "error": ENVIRONMENT_NOT_FOUND}
        assert fake.api_requests("POST") == []
    async with (
        running_fake_claude() as fake,
        start_app(test_env(database_url, **claude_env(fake, CLAUDE_ENVIRONMENT_ID="env_configured"))) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        await register(http)
        await connect_claude(http, fake)
        frames = await run_to_end(http, {"userRequest": "Do it", "github": REPO})
        assert frames[-1].event == "completed"
        assert fake.only_session().environment_id == "env_configured"


async def test_closing_the_stream_never_stops_the_run_and_a_reconnect_joins_it(
    env: Env, http: httpx.AsyncClient, person: dict[str, Any]
) -> None:
    env.fake.events_per_read = 1
    sessions_before = len(env.fake.sessions)
    params = {"userRequest": "Write the changelog", "github": '{"repoUrl": "https://github.com/octo/widgets"}'}
    async with open_sse(http, "/api/execute-remote", params=params) as stream:
        assert stream.status_code == 200
        preview = await stream.next()
        created = await stream.next()
        first = await stream.next()
        assert (preview.event, created.event, first.event) == ("input_preview", "session-created", "title_generation")
        last_id = stream.last_event_id
    session_id = created.json()["websiteSessionId"]
    # The browser is gone; the run goes on and everything lands in the log.
    session = await wait_status(http, session_id, "completed")
    assert types(await stored(http, session_id)) == ["input_preview", "title_generation", *UPSTREAM_TYPES]

    # The EventSource reconnects with the same URL (which does not name the session) and its
    # Last-Event-ID: it gets what it missed and `completed`, and nothing is started again.
    async with open_sse(http, "/api/execute-remote", params=params, last_event_id=last_id) as stream:
        frames = await stream.until("completed")
    assert [f.event for f in frames] == [*UPSTREAM_TYPES, "completed"]
    assert frames[-1].json()["remoteSessionId"] == session["remoteSessionId"]
    assert len(env.fake.sessions) == sessions_before + 1
    assert len(await stored(http, session_id)) == 2 + len(UPSTREAM_TYPES)
    messages = (await http.get(f"/api/sessions/{session_id}/messages")).json()["data"]["messages"]
    assert len(messages) == 1


async def test_a_reconnect_during_the_run_joins_the_same_run(
    env: Env, http: httpx.AsyncClient, person: dict[str, Any]
) -> None:
    env.fake.hold_at = 3  # the run stalls upstream after two events until released
    params = {"userRequest": "Update the docs", "github": '{"repoUrl": "https://github.com/octo/widgets"}'}
    async with open_sse(http, "/api/execute-remote", params=params) as stream:
        frames = await stream.until(lambda e: e.event == "assistant")
        session_id = frames[1].json()["websiteSessionId"]
        last_id = stream.last_event_id
    creates = len(env.fake.api_requests("POST", r"^/v1/sessions$"))
    async with open_sse(
        http, "/api/execute-remote", params={**params, "websiteSessionId": session_id}, last_event_id=last_id
    ) as stream:
        env.fake.hold_at = None
        rest = await stream.until("completed")
    assert [f.event for f in rest] == [*UPSTREAM_TYPES[3:], "completed"]
    assert len(env.fake.api_requests("POST", r"^/v1/sessions$")) == creates
    remote = env.fake.sessions[rest[-1].json()["remoteSessionId"]]
    assert remote.prompts == ["Update the docs"]


async def test_a_pending_session_starts_its_first_run(
    env: Env, http: httpx.AsyncClient, person: dict[str, Any]
) -> None:
    response = await http.post(
        "/api/sessions/create-code-session",
        json={
            "title": "Tidy up imports",
            "repositoryOwner": "octo",
            "repositoryName": "widgets",
            "baseBranch": "main",
            "branch": "tidy",
        },
    )
    assert response.status_code == 200, response.text
    session_id = response.json()["session"]["id"]
    params = {
        "websiteSessionId": session_id,
        "userRequest": "Tidy up imports",
        "github": '{"repoUrl": "https://github.com/octo/widgets"}',
    }
    async with open_sse(http, "/api/execute-remote", params=params) as stream:
        frames = await stream.until(lambda e: e.event in ("completed", "error"))
    assert [f.event for f in frames] == ["input_preview", "title_generation", *UPSTREAM_TYPES, "completed"]
    session = (await http.get(f"/api/sessions/{session_id}")).json()["session"]
    assert session["status"] == "completed" and session["remoteSessionId"]
    assert re.fullmatch(r"claude/tidy-imports-[0-9a-f]{6}", session["branch"])


async def test_the_session_list_hears_every_change(env: Env, http: httpx.AsyncClient, person: dict[str, Any]) -> None:
    async with open_sse(http, "/api/sessions/updates") as updates:
        assert (await updates.next()).event == "connected"  # subscribed from here on
        frames = await run_to_end(http, {"userRequest": "Cache the API responses", "github": REPO})
        session_id = frames[1].json()["websiteSessionId"]
        seen = await updates.until(lambda e: e.event == "status_changed" and e.json()["session"]["status"] != "running")
    changes = [(e.event, e.json()["session"]) for e in seen if e.json()["session"]["id"] == session_id]
    kinds = [kind for kind, _ in changes]
    assert kinds == ["created", "updated", "updated", "status_changed"]
    created = changes[0][1]
    assert created["status"] == "running" and created["userRequest"] == "Cache Api Responses"
    assert created["branch"] == "claude/cache-api-responses" and created["userId"] == person["id"]
    remote = frames[-1].json()
    assert changes[1][1] == {
        "id": session_id,
        "remoteSessionId": remote["remoteSessionId"],
        "remoteWebUrl": remote["remoteWebUrl"],
    }
    assert changes[2][1] == {"id": session_id, "branch": remote["branch"]}
    final = changes[3][1]
    assert final["status"] == "completed" and final["totalCost"] == "0.0125" and final["completedAt"]
