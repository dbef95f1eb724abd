"""The Managed Agents backend (AGENT_BACKEND=managed-agents) on a fake Managed Agents API: runs
rendered in the Claude Code vocabulary, follow-ups, interrupts, upstream errors, the SSE push
channel with a stream dropped mid-turn, and the deployment's agent and environment made once."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from services.agents.backend import CreateRequest
from services.agents.events import event_key
from services.agents.managed_agents.provider import ManagedAgentsProvider
from services.db import queries
from services.github import accounts
from tests.fakes.claude import REPO, post_sse, run_to_end, stored, types, wait_status
from tests.fakes.managed_agents import (
    BRANCH,
    PRIVATE_REPO_TOKEN,
    TURN_TYPES,
    FakeManagedAgents,
    Fault,
    managed_env,
    running_fake_managed_agents,
)
from tests.helpers import TestServer, register, start_app, test_env


async def wait_for(condition: Callable[[], bool], seconds: float = 15) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the condition never came true"
        await asyncio.sleep(0.02)


# What one default turn is stored as, after the prompt's `input_preview` and `title_generation`.
TURN_STORED = [
    "user",  # the prompt's echo (user.message)
    "system",  # session.status_running
    "system",  # span.model_request_start
    "assistant",  # agent.message
    "assistant",  # agent.tool_use (Bash: git checkout -b)
    "user",  # agent.tool_result
    "assistant",  # agent.tool_use (Bash: git push)
    "user",  # agent.tool_result
    "system",  # span.model_request_end
    "assistant",  # agent.message
    "system",  # agent.future_thing: unknown upstream, stored all the same
    "system",  # session.usage
    "result",  # session.status_idle (end_turn)
]


@dataclass
class Env:
    server: TestServer
    fake: FakeManagedAgents


async def clear_resources(database_url: str) -> None:
    """Forget the deployment's agent and environment (made against another fake instance)."""
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("DELETE FROM managed_agents_resources")
    finally:
        await connection.close()


@pytest.fixture(scope="module")
async def env(database_url: str) -> AsyncIterator[Env]:
    await clear_resources(database_url)
    async with running_fake_managed_agents() as fake, start_app(test_env(database_url, **managed_env(fake))) as server:
        yield Env(server, fake)
        # Everything the fake answered and emitted in this module fits the SDK's models.
        assert fake.nonconforming == []


@pytest.fixture
async def http(env: Env) -> AsyncIterator[httpx.AsyncClient]:
    env.fake.reset_knobs()
    async with httpx.AsyncClient(base_url=env.server.url, timeout=30) as client:
        await register(client)  # no Claude credentials: the deployment's key pays
        yield client


def provider(env: Env) -> ManagedAgentsProvider:
    value = env.server.ctx.runs.provider_for("managed-agents")
    assert isinstance(value, ManagedAgentsProvider)
    return value


def upstream_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["eventData"] for e in events if "managed" in e["eventData"]]


async def test_a_run_is_stored_and_streamed_in_the_claude_code_vocabulary(env: Env, http: httpx.AsyncClient) -> None:
    frames = await run_to_end(http, {"userRequest": "Fix the flaky test", "github": REPO})
    assert frames[-1].event == "completed", [f.event for f in frames]
    done = frames[-1].json()
    session_id = done["websiteSessionId"]
    assert done["branch"] == BRANCH
    assert done["totalCost"] == "0.25"
    assert done["remoteSessionId"] in env.fake.sessions
    named = [f.event for f in frames]
    assert "assistant" in named and "result" in named

    events = await stored(http, session_id)
    assert types(events) == ["input_preview", "title_generation", *TURN_STORED]
    translated = upstream_of(events)
    upstream = env.fake.sessions[done["remoteSessionId"]].events
    # Every upstream event once, in order, kept untouched under `managed`, keyed by its id.
    assert [e["managed"] for e in translated] == upstream
    assert [e["uuid"] for e in translated] == [e["id"] for e in upstream]
    assert [e["managed"]["type"] for e in translated[1:]] == TURN_TYPES
    tool_use = translated[4]["message"]["content"][0]
    assert tool_use == {
        "type": "tool_use",
        "id": upstream[4]["id"],
        "name": "Bash",
        "input": {"command": f"git checkout -b {BRANCH}"},
    }
    tool_result = translated[5]["message"]["content"][0]
    assert tool_result["type"] == "tool_result" and tool_result["tool_use_id"] == upstream[4]["id"]
    result = translated[-1]
    assert result["result"] == "Done: Fix the flaky test"
    assert result["is_error"] is False and result["subtype"] == "success"
    assert result["num_turns"] == 1
    assert result["duration_ms"] >= 0
    assert result["usage"]["input_tokens"] == 100 and result["usage"]["output_tokens"] == 20
    assert result["total_cost_usd"] == 0.25

    session = (await http.get(f"/api/sessions/{session_id}")).json()["session"]
    assert session["provider"] == "managed-agents"
    assert session["status"] == "completed"
    # The repository is mounted on its own default branch (the person chose none: no checkout,
    # never a forced `main`); without a GitHub connection there is no token.
    created = env.fake.sessions[done["remoteSessionId"]].body
    assert created["resources"] == [{"type": "github_repository", "url": "https://github.com/octo/widgets"}]
    assert created["agent"] == env.fake.agents[-1]["id"] or created["agent"].startswith("agent_")
    # The SDK authenticated its own way and sent the beta header.
    call = next(c for c in env.fake.calls if c["path"] == "/v1/sessions" and c["method"] == "POST")
    assert call["headers"]["anthropic-beta"].count("managed-agents-2026-04-01") >= 1
    assert call["headers"].get("anthropic-version")


async def test_a_follow_up_runs_a_second_turn(env: Env, http: httpx.AsyncClient) -> None:
    frames = await run_to_end(http, {"userRequest": "Fix the flaky test", "github": REPO})
    session_id = frames[-1].json()["websiteSessionId"]
    response = await http.post(f"/api/sessions/{session_id}/send", json={"content": "Also update the README"})
    assert response.status_code == 200, response.text
    session = await wait_status(http, session_id, "completed")
    assert session["totalCost"] == "0.5"
    events = await stored(http, session_id)
    results = [e["eventData"] for e in events if e["eventData"]["type"] == "result"]
    assert [r["result"] for r in results] == ["Done: Fix the flaky test", "Done: Also update the README"]
    assert len({e["eventData"]["uuid"] for e in events if "managed" in e["eventData"]}) == len(upstream_of(events))


async def test_an_interrupt_sends_user_interrupt_and_ends_the_turn(env: Env, http: httpx.AsyncClient) -> None:
    env.fake.hold = asyncio.Event()
    env.fake.hold_at = 4
    async with post_sse(http, {"userRequest": "Refactor everything", "github": REPO}) as stream:
        frames = await stream.until("assistant")
        session_id = frames[1].json()["websiteSessionId"]
        response = await http.post(f"/api/sessions/{session_id}/interrupt")
        assert response.status_code == 200, response.text
        rest = await stream.until(lambda e: e.event in ("completed", "error"))
    assert rest[-1].event == "completed"
    events = await stored(http, session_id)
    remote_id = rest[-1].json()["remoteSessionId"]
    upstream_types = [e["type"] for e in env.fake.sessions[remote_id].events]
    assert "user.interrupt" in upstream_types
    result = [e["eventData"] for e in events if e["eventData"]["type"] == "result"]
    assert len(result) == 1 and result[0]["interrupted"] is True
    assert "interrupted" in types(events)  # the server's own record of the request


async def test_a_session_terminated_by_an_error_ends_the_run_in_error(env: Env, http: httpx.AsyncClient) -> None:
    env.fake.hold = asyncio.Event()
    async with post_sse(http, {"userRequest": "Break the container", "github": REPO}) as stream:
        frames = await stream.until("assistant")
        session_id = frames[1].json()["websiteSessionId"]
        remote_id = (await http.get(f"/api/sessions/{session_id}")).json()["session"]["remoteSessionId"]
        await env.fake.terminate(remote_id)
        rest = await stream.until(lambda e: e.event in ("completed", "error"))
    assert rest[-1].event == "error"
    assert "container crashed" in rest[-1].json()["error"]
    events = await stored(http, session_id)
    assert [e["eventData"]["type"] for e in events].count("error") == 1
    assert (await http.get(f"/api/sessions/{session_id}")).json()["session"]["status"] == "error"


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        ("requires_action", "requires_action"),
        ("retries_exhausted", "retries_exhausted"),
        ("budget_reached", "budget"),
        ("refusal", "refused"),
    ],
)
async def test_a_turn_that_stops_early_ends_the_run_with_a_clear_error(
    env: Env, http: httpx.AsyncClient, reason: str, words: str
) -> None:
    env.fake.stop_reason = {"type": reason, **({"event_ids": ["sevt_x"]} if reason == "requires_action" else {})}
    frames = await run_to_end(http, {"userRequest": "Try it", "github": REPO})
    assert frames[-1].event == "error"
    assert words in frames[-1].json()["error"]


async def test_rate_limits_and_outages_are_retried(env: Env, http: httpx.AsyncClient) -> None:
    env.fake.faults = [
        Fault(429, "POST", re.compile(r"^/v1/sessions$"), count=2),
        Fault(503, "GET", re.compile(r"/events$"), count=3),
    ]
    frames = await run_to_end(http, {"userRequest": "Fix the flaky test", "github": REPO})
    assert frames[-1].event == "completed", frames[-1].data
    assert all(f.count == 0 for f in env.fake.faults)


async def test_a_private_repository_needs_the_persons_github_token(env: Env, http: httpx.AsyncClient) -> None:
    secret = {"repoUrl": "https://github.com/octo/secret"}
    frames = await run_to_end(http, {"userRequest": "Look at the secret repo", "github": secret})
    assert frames[-1].event == "error"
    assert "refused the GitHub repository octo/secret" in frames[-1].json()["error"]

    user = await register(http)  # a new person, logged in on this client
    assert await accounts.link(env.server.ctx, user["id"], str(uuid.uuid4()), PRIVATE_REPO_TOKEN)
    frames = await run_to_end(http, {"userRequest": "Look at the secret repo again", "github": secret})
    assert frames[-1].event == "completed", frames[-1].data
    remote_id = frames[-1].json()["remoteSessionId"]
    assert env.fake.sessions[remote_id].body["resources"][0]["authorization_token"] == PRIVATE_REPO_TOKEN
    everything = str(await stored(http, frames[-1].json()["websiteSessionId"]))
    assert PRIVATE_REPO_TOKEN not in everything


async def test_a_refused_api_key_names_the_setting_never_the_key(env: Env, database_url: str) -> None:
    bad_key = "sk-ant-not-the-right-key-0123"
    settings = managed_env(
        env.fake,
        ANTHROPIC_API_KEY=bad_key,
        MANAGED_AGENTS_AGENT_ID="agent_conf1",
        MANAGED_AGENTS_ENVIRONMENT_ID="env_conf1",
    )
    async with (
        start_app(test_env(database_url, **settings)) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as client,
    ):
        await register(client)
        # The configured agent is read (and checked) before the session is made: a 502.
        response = await client.post("/api/execute-remote", json={"userRequest": "Fix it", "github": REPO})
    assert response.status_code == 502, response.text
    message = response.json()["error"]
    assert "ANTHROPIC_API_KEY" in message
    assert bad_key not in message


async def test_the_agent_and_environment_are_created_once_under_concurrent_start(env: Env) -> None:
    await provider(env).deployment_resources()  # the start-up preparation is over
    await clear_resources(env.server.ctx.config.database_url)
    agents, environments = len(env.fake.agents), len(env.fake.environments)
    env.fake.create_delay = 0.2
    replicas = [ManagedAgentsProvider(env.server.ctx) for _ in range(5)]
    try:
        found = await asyncio.gather(*(p.deployment_resources() for p in replicas))
    finally:
        for replica in replicas:
            await replica.aclose()
    assert len(set(found)) == 1
    # A new agent; the environment named `webedt` exists upstream already: adopted, not made again.
    assert len(env.fake.agents) == agents + 1 and len(env.fake.environments) == environments
    assert found[0].environment_id == env.fake.environments[-1]["id"]
    assert found[0].agent_id == env.fake.agents[-1]["id"]
    stored_ids = {
        kind: await queries.managed_agents.get_agent_resource(env.server.ctx.pool, kind=kind)
        for kind in ("agent", "environment")
    }
    assert stored_ids == {"agent": found[0].agent_id, "environment": found[0].environment_id}
    agent = env.fake.agents[-1]
    assert agent["model"] == {"id": env.server.ctx.config.claude_default_model}
    assert agent["tools"][0]["type"] == "agent_toolset_20260401"
    assert "claude/" in agent["system"]
    # The provider that runs sessions made its own before: drop its cache to use the new ones.
    provider(env)._resources = None


# ---- the push channel and the event list, on their own -------------------------------------------


async def start_remote(env: Env, prompt: str) -> str:
    managed = provider(env)
    request = CreateRequest(
        title=prompt,
        content=prompt,
        environment_id=await managed.environment(""),
        repo_url="https://github.com/octo/widgets",
        repo_full_name="octo/widgets",
        branch_prefix="claude/x",
        model="m",
        message_uuid=f"uuid-{prompt}",
        base_branch="main",
    )
    return (await managed.create("", request)).id


@pytest.mark.parametrize("ignore_since", [False, True])
async def test_the_event_list_pages_through_shared_timestamps_without_gaps_or_repeats(
    env: Env, ignore_since: bool
) -> None:
    env.fake.reset_knobs()
    env.fake.page_size = 2
    env.fake.ignore_since = ignore_since  # True: every read starts from the beginning again
    results: list[dict[str, Any]] = []
    managed = provider(env)
    remote_id = await start_remote(env, "list me")
    cursor: str | None = None
    seen: list[str] = []
    for _ in range(400):
        batch = await managed.events_after("", remote_id, cursor)
        cursor = batch.cursor
        seen.extend(event_key(e) for e in batch.events)
        results.extend(e for e in batch.events if e["type"] == "result")
        if results:
            break
        await asyncio.sleep(0.01)
    upstream = [e["id"] for e in env.fake.sessions[remote_id].events]
    assert seen == upstream
    # Nothing translated twice either: the turn's accounting counts each event once.
    assert results[0]["num_turns"] == 1 and results[0]["usage"]["input_tokens"] == 100
    # A fresh reader (an adopting replica) translates the history to the same events.
    again = await managed.events_after("", remote_id, None)
    assert [event_key(e) for e in again.events] == upstream


async def test_the_push_channel_survives_a_dropped_stream_with_nothing_lost_or_doubled(env: Env) -> None:
    env.fake.reset_knobs()
    env.fake.drop_stream_after = 3
    env.fake.step_seconds = 0.03
    managed = provider(env)
    remote_id = await start_remote(env, "push me")
    delivered: dict[str, dict[str, Any]] = {}  # what a follower stores, keyed by event_key
    connections = 0
    heartbeats = 0
    while "result" not in {e["type"] for e in delivered.values()}:
        connections += 1
        assert connections < 50
        channel = await managed.open_push("", remote_id)
        assert channel is not None
        from_this_channel: list[str] = []
        try:
            while (item := await channel.receive()) is not None:
                if item.event is None:
                    heartbeats += 1
                    continue
                key = event_key(item.event)
                from_this_channel.append(key)
                if key in delivered:
                    assert delivered[key] == item.event  # the same translation every time
                delivered[key] = item.event
        finally:
            await channel.close()
        assert len(from_this_channel) == len(set(from_this_channel))  # one channel never repeats
    assert connections > 1  # the stream was dropped mid-turn
    upstream = env.fake.sessions[remote_id].events
    assert list(delivered) == [e["id"] for e in upstream]
    assert [e["managed"] for e in delivered.values()] == upstream
    result = list(delivered.values())[-1]
    assert result["type"] == "result" and result["result"] == "Done: push me"
    # What the polling backfill reads agrees with what was pushed.
    backfill = await managed.events_after("", remote_id, None)
    assert [event_key(e) for e in backfill.events] == list(delivered)


async def test_the_push_channel_sends_heartbeats_and_unknown_types(env: Env) -> None:
    env.fake.reset_knobs()
    env.fake.hold = asyncio.Event()
    env.fake.hold_at = 9  # before agent.future_thing
    managed = provider(env)
    remote_id = await start_remote(env, "wait for me")
    channel = await managed.open_push("", remote_id)
    assert channel is not None
    try:
        items = []
        while len([i for i in items if i.event is None]) < 2:
            item = await asyncio.wait_for(channel.receive(), 5)
            assert item is not None
            items.append(item)
        env.fake.hold.set()
        while True:
            item = await asyncio.wait_for(channel.receive(), 5)
            assert item is not None
            if item.event is not None and item.event["managed"]["type"] == "agent.future_thing":
                assert item.event["type"] == "system"
                assert item.event["managed"]["detail"] == {"kept": True}
                break
    finally:
        await channel.close()
    assert dataclasses.is_dataclass(items[0])


# ---- both backends on one deployment -------------------------------------------------------------


async def test_sessions_of_both_backends_live_side_by_side_after_switching_the_backend(
    env: Env, database_url: str
) -> None:
    from tests.fakes.claude import claude_env, connect_claude, running_fake_claude

    async with running_fake_claude() as claude:
        both = {**claude_env(claude, CLAUDE_ENVIRONMENT_ID="env_both"), **managed_env(env.fake)}
        before = {**both, "AGENT_BACKEND": "remote-sessions"}
        async with (
            start_app(test_env(database_url, **before)) as old_server,
            httpx.AsyncClient(base_url=old_server.url, timeout=30) as old_client,
        ):
            await register(old_client)
            await connect_claude(old_client, claude)
            frames = await run_to_end(old_client, {"userRequest": "On Remote Sessions", "github": REPO})
            assert frames[-1].event == "completed"
            claude_session = frames[-1].json()["websiteSessionId"]
            cookies = old_client.cookies

        # The deployment switches to Managed Agents; the person's older session keeps its backend.
        async with (
            start_app(test_env(database_url, **both)) as new_server,
            httpx.AsyncClient(base_url=new_server.url, timeout=30, cookies=cookies) as client,
        ):
            frames = await run_to_end(client, {"userRequest": "On Managed Agents", "github": REPO})
            assert frames[-1].event == "completed"
            managed_session = frames[-1].json()["websiteSessionId"]
            managed_remote = frames[-1].json()["remoteSessionId"]
            assert managed_remote in env.fake.sessions

            listed = (await client.get("/api/sessions")).json()["data"]["sessions"]
            providers = {s["id"]: s["provider"] for s in listed}
            assert providers[claude_session] == "claude" and providers[managed_session] == "managed-agents"

            # A follow-up of the Remote Sessions session still goes to Claude Remote.
            claude_remote = (await client.get(f"/api/sessions/{claude_session}")).json()["session"]["remoteSessionId"]
            turns_before = claude.sessions[claude_remote].turns
            response = await client.post(f"/api/sessions/{claude_session}/send", json={"content": "One more thing"})
            assert response.status_code == 200, response.text
            await wait_status(client, claude_session, "completed")
            assert claude.sessions[claude_remote].turns == turns_before + 1
            assert types(await stored(client, claude_session)).count("result") == 2

            # Deleting archives each upstream session on its own backend.
            for session_id in (claude_session, managed_session):
                response = await client.delete(f"/api/sessions/{session_id}")
                assert response.status_code == 200, response.text
                assert response.json()["data"]["cleanup"]["remoteSession"]["success"] is True
            assert claude.sessions[claude_remote].archived
            assert env.fake.sessions[managed_remote].archived_at is not None


async def test_deleting_a_managed_session_archives_it_without_claude_credentials(
    env: Env, http: httpx.AsyncClient
) -> None:
    frames = await run_to_end(http, {"userRequest": "Delete me afterwards", "github": REPO})
    done = frames[-1].json()
    response = await http.delete(f"/api/sessions/{done['websiteSessionId']}")
    assert response.status_code == 200, response.text
    assert response.json()["data"]["cleanup"]["remoteSession"] == {
        "success": True,
        "message": "Remote session archived",
    }
    assert env.fake.sessions[done["remoteSessionId"]].archived_at is not None


# ---- configuration -------------------------------------------------------------------------------


def test_managed_agents_without_an_api_key_refuses_to_start_with_a_clear_message() -> None:
    from tests.test_startup import run_cli

    result = run_cli([], {"AGENT_BACKEND": "managed-agents", "SESSION_SECRET": "x" * 32, "ANTHROPIC_API_KEY": ""})
    assert result.returncode == 2
    assert "ANTHROPIC_API_KEY (or ANTHROPIC_API_KEY_FILE) is required when AGENT_BACKEND=managed" in result.stderr


def test_backend_settings_are_read_and_checked(tmp_path: Path) -> None:
    from services.config import ConfigError, load_config

    base = {"SESSION_SECRET": "a-development-secret"}
    assert load_config(base).agent_backend == "remote-sessions"
    assert load_config(base).new_session_provider == "claude"
    with pytest.raises(ConfigError, match="AGENT_BACKEND must be remote-sessions or managed-agents"):
        load_config({**base, "AGENT_BACKEND": "codex"})
    key_file = tmp_path / "key"
    key_file.write_text("sk-ant-from-a-file\n")
    config = load_config({**base, "AGENT_BACKEND": "managed-agents", "ANTHROPIC_API_KEY_FILE": str(key_file)})
    assert config.anthropic_api_key == "sk-ant-from-a-file"
    assert config.new_session_provider == "managed-agents"
    assert "sk-ant-from-a-file" not in repr(config)
    with pytest.raises(ConfigError, match="MANAGED_AGENTS_API_BASE_URL must be a URL"):
        load_config({**base, "MANAGED_AGENTS_API_BASE_URL": "nowhere"})


async def test_a_refused_key_while_making_the_agent_is_a_502_naming_the_setting(env: Env, database_url: str) -> None:
    bad_key = "sk-ant-wrong-one-987"
    await provider(env).deployment_resources()  # the start-up preparation is over
    await clear_resources(database_url)
    try:
        async with (
            start_app(test_env(database_url, **managed_env(env.fake, ANTHROPIC_API_KEY=bad_key))) as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
        ):
            await register(client)
            response = await client.post("/api/execute-remote", json={"userRequest": "Fix it", "github": REPO})
    finally:
        provider(env)._resources = None  # the module's server makes them again when it needs them
    assert response.status_code == 502, response.text
    body = response.json()
    assert body["success"] is False and "ANTHROPIC_API_KEY" in body["error"]
    assert bad_key not in response.text


def test_the_sdk_never_logs_request_bodies_even_at_debug() -> None:
    import logging

    from services.logs import setup_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("anthropic").level)
    try:
        setup_logging("DEBUG", production=False)
        assert root.isEnabledFor(logging.DEBUG)
        # "Request options: {... json_data ...}" is logged at DEBUG by anthropic._base_client.
        assert not logging.getLogger("anthropic._base_client").isEnabledFor(logging.DEBUG)
    finally:
        root.handlers[:], level, sdk_level = saved
        root.setLevel(level)
        logging.getLogger("anthropic").setLevel(sdk_level)


async def test_a_session_whose_creation_reply_was_lost_is_found_not_made_twice(
    env: Env, http: httpx.AsyncClient
) -> None:
    env.fake.create_reply_delay = 2.5  # longer than CLAUDE_REQUEST_TIMEOUT_SECONDS (2)
    before = set(env.fake.sessions)
    frames = await run_to_end(http, {"userRequest": "Create me exactly once", "github": REPO})
    assert frames[-1].event == "completed", frames[-1].data
    made = [s for s in env.fake.sessions.values() if s.id not in before]
    assert len(made) == 1 and frames[-1].json()["remoteSessionId"] == made[0].id


async def test_a_follow_up_through_execute_remote_and_an_abort(env: Env, http: httpx.AsyncClient) -> None:
    frames = await run_to_end(http, {"userRequest": "Fix the flaky test", "github": REPO})
    session_id = frames[-1].json()["websiteSessionId"]
    remote_id = frames[-1].json()["remoteSessionId"]
    env.fake.hold = asyncio.Event()
    async with post_sse(http, {"userRequest": "Now the docs", "websiteSessionId": session_id}) as stream:
        await stream.until("assistant")
        response = await http.post(f"/api/sessions/{session_id}/abort")
        assert response.status_code == 200, response.text
        assert response.json()["data"]["remoteInterrupted"] is True
        rest = await stream.until(lambda e: e.event in ("completed", "error"))
    assert rest[-1].event == "error" and rest[-1].json()["error"] == "Session aborted"
    upstream = env.fake.sessions[remote_id]
    assert [e["type"] for e in upstream.events].count("user.message") == 2
    assert "user.interrupt" in [e["type"] for e in upstream.events]
    # The interrupted turn ends upstream with its own idle, after the interrupt returned.
    await wait_for(lambda: upstream.events[-1]["type"] == "session.status_idle")


async def test_an_upstream_that_stays_broken_ends_the_run_within_the_retry_window(
    env: Env, http: httpx.AsyncClient
) -> None:
    env.fake.faults = [Fault(503, "GET", re.compile(r"/events$"), count=float("inf"))]
    frames = await run_to_end(http, {"userRequest": "Fix the flaky test", "github": REPO})
    assert frames[-1].event == "error"
    assert frames[-1].json()["error"].startswith("Failed to get events: 503")


# ---- the translation on its own ------------------------------------------------------------------


def test_errors_and_branches_in_the_translation() -> None:
    from services.agents.managed_agents.translate import Translator, branch_of, cost_usd

    translator = Translator()
    at = "2026-12-01T12:00:00Z"
    translator.translate(
        {"id": "e1", "type": "user.message", "content": [{"type": "text", "text": "hi"}], "processed_at": at}
    )
    retrying = translator.translate(
        {
            "id": "e2",
            "type": "session.error",
            "error": {"type": "model_overloaded_error", "message": "busy", "retry_status": {"type": "retrying"}},
            "processed_at": at,
        }
    )
    assert retrying["type"] == "system" and retrying["error"] == "busy (model_overloaded_error)"
    repository = translator.translate(
        {
            "id": "e3",
            "type": "session.error",
            "error": {
                "type": "repository_not_found_error",
                "message": "no such repo",
                "retry_status": {"type": "retrying"},
            },
            "processed_at": at,
        }
    )
    # Repository errors are always retrying: shown, and the turn goes on (its idle ends it).
    assert repository["type"] == "system" and "no such repo" in repository["error"]
    assert repository["retry_status"] == "retrying"
    ended = translator.translate(
        {"id": "e3b", "type": "session.status_idle", "stop_reason": {"type": "end_turn"}, "processed_at": at}
    )
    assert ended["type"] == "result" and ended["is_error"] is False
    # Once the turn is over, a terminated session is only a status.
    assert (
        translator.translate({"id": "e4", "type": "session.status_terminated", "processed_at": at})["type"] == "system"
    )
    # The state survives a round trip through JSON (the cursor, an adopting replica).
    again = Translator(orjson.loads(orjson.dumps(translator.state)))
    assert again.state == translator.state

    assert branch_of("git checkout -b claude/a-b && git add .") == "claude/a-b"
    assert branch_of("cd /workspace/widgets; git switch -c claude/x") == "claude/x"
    assert branch_of("git push -u origin claude/pushed") == "claude/pushed"
    assert branch_of("git push origin HEAD:claude/head") == "claude/head"
    assert branch_of("git push") is None
    assert branch_of("git status") is None
    assert cost_usd({"amount": "1234", "currency": "USD"}) == 12.34
    assert cost_usd({"amount": "-1", "currency": "USD"}) is None
    assert cost_usd(None) is None


async def test_the_run_driver_follows_the_sse_stream_and_survives_its_drops(env: Env, http: httpx.AsyncClient) -> None:
    # The driver follows a Managed Agents run over the session's event stream (the push channel),
    # reconnecting and backfilling from the list when the stream drops mid-turn: every upstream
    # event stored once, in order.
    env.fake.drop_stream_after = 3
    env.fake.hold = asyncio.Event()
    env.fake.hold_at = 6  # the turn waits mid-way until the driver has followed the stream
    async with post_sse(http, {"userRequest": "Follow the stream", "github": REPO}) as stream:
        frames = await stream.until("assistant")
        remote_id = (await http.get(f"/api/sessions/{frames[1].json()['websiteSessionId']}")).json()["session"][
            "remoteSessionId"
        ]
        path = f"/v1/sessions/{remote_id}/events/stream"
        deadline = asyncio.get_running_loop().time() + 15
        while not [c for c in env.fake.calls if c["path"] == path]:
            assert asyncio.get_running_loop().time() < deadline, "the driver never opened the event stream"
            await asyncio.sleep(0.05)
        env.fake.hold.set()
        frames += await stream.until(lambda e: e.event in ("completed", "error"), timeout=30)
    assert frames[-1].event == "completed", [f.event for f in frames]
    done = frames[-1].json()
    # Dropped after three events; polling fills the gap until the stream is open again.
    events = await stored(http, done["websiteSessionId"])
    assert types(events) == ["input_preview", "title_generation", *TURN_STORED]
    translated = upstream_of(events)
    assert [e["managed"] for e in translated] == env.fake.sessions[remote_id].events
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_renaming_a_managed_session_renames_it_upstream(env: Env, http: httpx.AsyncClient) -> None:
    frames = await run_to_end(http, {"userRequest": "Rename me later", "github": REPO})
    done = frames[-1].json()
    response = await http.patch(f"/api/sessions/{done['websiteSessionId']}", json={"userRequest": "A better title"})
    assert response.status_code == 200, response.text
    assert env.fake.sessions[done["remoteSessionId"]].body["title"] == "A better title"
