"""The Managed Agents backend against what the real API does where a kinder fake would hide it
(issue 20, and the Managed Agents part of issue 19): environment names taken, the cost from the
session object, 409s that are final, Retry-After, the polling budget, a stop for a confirmation,
a lost create reply among many sessions, the console's workspace, the agent kept current,
repository errors that go on, no forced checkout, empty-id interrupt echoes, queued and merged
turns and the late idle after an interrupt."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator

import anthropic
import httpx
import pytest

from services.agents.backend import CreateRequest, TurnUsage, UpstreamError
from services.agents.managed_agents.client import RequestBudget
from services.agents.managed_agents.provider import ManagedAgentsProvider
from services.agents.managed_agents.resources import SYSTEM_PROMPT, confirmation_risk
from tests.fakes.claude import REPO, post_sse, run_to_end, stored, types, wait_status
from tests.fakes.managed_agents import (
    API_KEY,
    DEFAULT_BRANCHES,
    WORKSPACE_ID,
    Fault,
    managed_env,
    running_fake_managed_agents,
)
from tests.helpers import register, start_app, test_env
from tests.test_managed_agents import Env, clear_resources, provider, upstream_of, wait_for


@pytest.fixture(scope="module")
async def env(database_url: str) -> AsyncIterator[Env]:
    await clear_resources(database_url)
    async with running_fake_managed_agents() as fake, start_app(test_env(database_url, **managed_env(fake))) as server:
        yield Env(server, fake)
        assert fake.nonconforming == []


@pytest.fixture
async def http(env: Env) -> AsyncIterator[httpx.AsyncClient]:
    env.fake.reset_knobs()
    async with httpx.AsyncClient(base_url=env.server.url, timeout=30) as client:
        await register(client)
        yield client


def sdk(env: Env) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key=API_KEY, base_url=env.fake.url, max_retries=0)


def request(prompt: str, base_branch: str | None = None) -> CreateRequest:
    return CreateRequest(
        title=prompt,
        content=prompt,
        environment_id="",
        repo_url="https://github.com/octo/widgets",
        repo_full_name="octo/widgets",
        branch_prefix="claude/x",
        model="m",
        message_uuid=f"uuid-{prompt}-{uuid.uuid4()}",
        base_branch=base_branch,
    )


async def create(env: Env, prompt: str, base_branch: str | None = None) -> tuple[str, CreateRequest]:
    managed = provider(env)
    made = request(prompt, base_branch)
    made.environment_id = await managed.environment("")
    return (await managed.create("", made)).id, made


async def remote_of(http: httpx.AsyncClient, session_id: str) -> str:
    return (await http.get(f"/api/sessions/{session_id}")).json()["session"]["remoteSessionId"]


# ---- 1. the environment's name is taken ----------------------------------------------------------


async def test_an_environment_whose_name_exists_upstream_is_adopted_not_a_502(
    env: Env, http: httpx.AsyncClient
) -> None:
    await provider(env).deployment_resources()
    existing = [e["id"] for e in env.fake.environments if e["name"] == "webedt"]
    assert len(existing) == 1
    # The database forgets it (a reset, a lost create reply): creating `webedt` again answers 409.
    await clear_resources(env.server.ctx.config.database_url)
    provider(env)._resources = None
    frames = await run_to_end(http, {"userRequest": "After a database reset", "github": REPO})
    assert frames[-1].event == "completed", frames[-1].data
    assert env.fake.sessions[frames[-1].json()["remoteSessionId"]].body["environment_id"] == existing[0]
    assert [e["id"] for e in env.fake.environments if e["name"] == "webedt"] == existing


# ---- 2. the cost is what Anthropic bills -----------------------------------------------------------


async def test_the_cost_and_tokens_come_from_the_session_object_after_each_turn(
    env: Env, http: httpx.AsyncClient
) -> None:
    frames = await run_to_end(http, {"userRequest": "Cost me", "github": REPO})
    done = frames[-1].json()
    # The `session.usage` snapshots carry no list cost here: only the session object has it.
    upstream = env.fake.sessions[done["remoteSessionId"]]
    assert all("list_cost" not in e["usage"] for e in upstream.events if e["type"] == "session.usage")
    assert done["totalCost"] == "0.25"
    result = [
        e["eventData"] for e in await stored(http, done["websiteSessionId"]) if e["eventData"]["type"] == "result"
    ]
    assert result[-1]["session_usage"] == {
        "cost_usd": 0.25,
        "input_tokens": 100,
        "output_tokens": 20,
        "cache_read_input_tokens": 5,
        "cache_creation_input_tokens": 7,
    }
    usage = await provider(env).turn_usage("", done["remoteSessionId"], {})
    assert usage == TurnUsage(0.25, 100, 20, 5, 7)
    # Absent until cost tracking is available: no cost, tokens all the same.
    env.fake.cost_tracking = False
    usage = await provider(env).turn_usage("", done["remoteSessionId"], {})
    assert usage is not None and usage.cost_usd is None and usage.input_tokens == 100


# ---- 3. errors that cannot be retried, Retry-After, the polling budget -------------------------------


async def test_a_follow_up_to_a_terminated_session_fails_at_once_with_a_message_a_person_can_act_on(
    env: Env, http: httpx.AsyncClient
) -> None:
    frames = await run_to_end(http, {"userRequest": "Run once", "github": REPO})
    done = frames[-1].json()
    await env.fake.terminate(done["remoteSessionId"])
    sends_before = len([c for c in env.fake.calls if c["method"] == "POST" and c["path"].endswith("/events")])
    response = await http.post(f"/api/sessions/{done['websiteSessionId']}/send", json={"content": "And more"})
    assert response.status_code == 200, response.text
    session = await wait_status(http, done["websiteSessionId"], "error")
    assert session["status"] == "error"
    errors = [e["eventData"] for e in await stored(http, done["websiteSessionId"]) if e["eventData"]["type"] == "error"]
    assert "start a new chat session" in str(errors[-1])
    # Sent once, not retried for the retry window.
    sends = [c for c in env.fake.calls if c["method"] == "POST" and c["path"].endswith("/events")]
    assert len(sends) == sends_before + 1


async def test_retry_after_is_read_from_the_reply(env: Env) -> None:
    remote_id, _ = await create(env, "throttle me", "main")
    env.fake.faults = [Fault(429, "GET", re.compile(rf"^/v1/sessions/{remote_id}$"), retry_after="7")]
    with pytest.raises(UpstreamError) as caught:
        await provider(env).get("", remote_id)
    assert caught.value.status == 429 and caught.value.retryable and caught.value.retry_after == 7.0


async def test_polling_shares_one_request_budget_per_process(env: Env) -> None:
    remote_id, _ = await create(env, "budget", "main")
    managed = provider(env)
    saved = managed.budget
    managed.budget = RequestBudget(60)  # one a second, a burst of five
    try:
        calls_before = len(env.fake.calls)
        # Twenty runs polling at once: the requests beyond the burst wait for the budget.
        polls = [asyncio.create_task(managed.get("", remote_id)) for _ in range(20)]
        await asyncio.sleep(1.0)
        made = len(env.fake.calls) - calls_before
        for poll in polls:
            poll.cancel()
        await asyncio.gather(*polls, return_exceptions=True)
    finally:
        managed.budget = saved
    # Five at once, then one a second at most (two, with the second that has passed and rounding).
    assert 5 <= made <= 7, made


# ---- 4. a stop for a confirmation ------------------------------------------------------------------


async def test_a_stop_for_a_confirmation_ends_the_run_and_interrupts_the_session(
    env: Env, http: httpx.AsyncClient
) -> None:
    env.fake.stop_reason = {"type": "requires_action", "event_ids": []}
    frames = await run_to_end(http, {"userRequest": "Ask me first", "github": REPO})
    assert frames[-1].event == "error" and "requires_action" in frames[-1].json()["error"]
    remote_id = await remote_of(http, frames[1].json()["websiteSessionId"])
    # The session is told to stop waiting, so a follow-up is not held behind the confirmation.
    await wait_for(lambda: "user.interrupt" in [e["type"] for e in env.fake.sessions[remote_id].events])
    assert env.fake.sessions[remote_id].events[-1]["type"] == "session.status_idle"
    # The idle that interrupt brings ends no turn of the person's: one result, the error.
    translated = (await provider(env).events_after("", remote_id, None)).events
    assert [e["is_error"] for e in translated if e["type"] == "result"] == [True]
    assert translated[-1]["type"] == "system" and translated[-1]["status"] == "idle"


async def test_a_configured_agent_that_asks_for_confirmations_is_refused_naming_the_setting(
    env: Env, database_url: str
) -> None:
    client = sdk(env)
    asking = await client.beta.agents.create(
        name="asks",
        model="claude-x",
        tools=[{"type": "agent_toolset_20260401", "default_config": {"permission_policy": {"type": "always_ask"}}}],
    )
    await client.close()
    settings = managed_env(env.fake, MANAGED_AGENTS_AGENT_ID=asking.id, MANAGED_AGENTS_ENVIRONMENT_ID="env_conf1")
    async with (
        start_app(test_env(database_url, **settings)) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        await register(http)
        response = await http.post("/api/execute-remote", json={"userRequest": "Fix it", "github": REPO})
    assert response.status_code == 502, response.text
    assert "MANAGED_AGENTS_AGENT_ID" in response.json()["error"]
    assert "always_ask" in response.json()["error"]
    assert confirmation_risk({"tools": [{"type": "custom", "name": "lookup"}]})
    assert confirmation_risk({"tools": [{"type": "mcp_toolset", "mcp_server_name": "x"}]})  # MCP asks by default
    assert confirmation_risk({"tools": [{"type": "agent_toolset_20260401"}]}) is None


# ---- 5. the smaller ones ----------------------------------------------------------------------------


async def test_a_lost_create_reply_is_found_among_many_newer_sessions(env: Env) -> None:
    managed = provider(env)
    remote_id, made = await create(env, "lost among many", "main")
    client = sdk(env)
    try:
        for index in range(12):  # newer sessions of other agents in the workspace
            await client.beta.sessions.create(agent="agent_conf_other", environment_id="env_x", title=f"other {index}")
    finally:
        await client.close()
    found = await managed.find_created("", made)
    assert found is not None and found.id == remote_id
    listing = [c for c in env.fake.calls if c["path"] == "/v1/sessions" and c["method"] == "GET"][-1]
    assert "agent_id=" in listing["query"] and "created_at%5Bgte%5D=" in listing["query"]


async def test_the_console_link_uses_the_keys_workspace(env: Env, http: httpx.AsyncClient) -> None:
    frames = await run_to_end(http, {"userRequest": "Link me", "github": REPO})
    done = frames[-1].json()
    session = (await http.get(f"/api/sessions/{done['websiteSessionId']}")).json()["session"]
    assert session["remoteWebUrl"] == (
        f"https://platform.claude.com/workspaces/{WORKSPACE_ID}/sessions/{done['remoteSessionId']}"
    )


async def test_the_agent_gets_a_new_version_when_the_model_changes(env: Env, database_url: str) -> None:
    agent_id = (await provider(env).deployment_resources()).agent_id
    agent = next(a for a in env.fake.agents if a["id"] == agent_id)
    assert "/workspace/widgets" in SYSTEM_PROMPT and agent["system"] == SYSTEM_PROMPT
    version = agent["version"]
    settings = managed_env(env.fake, CLAUDE_DEFAULT_MODEL="claude-newer-1")
    async with start_app(test_env(database_url, **settings)) as server:
        managed = server.ctx.runs.provider_for("managed-agents")
        assert isinstance(managed, ManagedAgentsProvider)
        resources = await managed.deployment_resources()
    assert resources.agent_id == agent["id"]
    assert agent["version"] == version + 1 and agent["model"] == {"id": "claude-newer-1"}
    assert env.fake.agent_updates[-1]["version"] == version


# ---- issue 19: repository errors, the checkout, empty-id echoes, the turn rule ---------------------


async def test_a_retrying_repository_error_is_shown_and_the_turn_goes_on_to_its_answer(
    env: Env, http: httpx.AsyncClient
) -> None:
    env.fake.repository_error = "repository_clone_error"
    frames = await run_to_end(http, {"userRequest": "Clone fails, go on", "github": REPO})
    assert frames[-1].event == "completed", frames[-1].data
    events = await stored(http, frames[-1].json()["websiteSessionId"])
    shown = [e["eventData"] for e in events if e["eventData"].get("subtype") == "managed_error"]
    assert len(shown) == 1 and "could not clone" in shown[0]["error"]
    result = [e["eventData"] for e in events if e["eventData"]["type"] == "result"]
    assert len(result) == 1 and result[0]["result"] == "Done: Clone fails, go on" and not result[0]["is_error"]


async def test_without_a_chosen_branch_the_repository_default_branch_is_mounted(env: Env) -> None:
    remote_id, _ = await create(env, "no branch chosen", None)
    session = env.fake.sessions[remote_id]
    assert "checkout" not in session.body["resources"][0]
    mounted = env.fake.session_json(session)["resources"][0]
    assert mounted["checkout"] == {"type": "branch", "name": DEFAULT_BRANCHES["https://github.com/octo/widgets"]}
    remote_id, _ = await create(env, "branch chosen", "develop")
    assert env.fake.sessions[remote_id].body["resources"][0]["checkout"] == {"type": "branch", "name": "develop"}


async def test_an_interrupt_echo_with_an_empty_id_is_stored_and_marks_the_result(
    env: Env, http: httpx.AsyncClient
) -> None:
    env.fake.empty_interrupt_ids = True
    env.fake.hold = asyncio.Event()
    env.fake.hold_at = 4
    async with post_sse(http, {"userRequest": "Stop me", "github": REPO}) as stream:
        frames = await stream.until("assistant")
        session_id = frames[1].json()["websiteSessionId"]
        response = await http.post(f"/api/sessions/{session_id}/interrupt")
        assert response.status_code == 200, response.text
        await stream.until(lambda e: e.event in ("completed", "error"))
    remote_id = await remote_of(http, session_id)
    await wait_for(lambda: env.fake.sessions[remote_id].events[-1]["type"] == "session.status_idle")
    events = await stored(http, session_id)
    echoes = [e["eventData"] for e in events if e["eventData"].get("managed", {}).get("type") == "user.interrupt"]
    assert len(echoes) == 1 and echoes[0]["managed"]["id"] == ""
    assert echoes[0]["uuid"].startswith("managed-digest:")
    # Read again from the start (an adopting replica): the same key, so stored once.
    again = await provider(env).events_after("", remote_id, None)
    assert [e["uuid"] for e in again.events if e["managed"]["type"] == "user.interrupt"] == [echoes[0]["uuid"]]
    results = [e for e in again.events if e["type"] == "result"]
    assert results[0]["interrupted"] is True


async def test_session_status_terminated_is_stored(env: Env, http: httpx.AsyncClient) -> None:
    env.fake.hold = asyncio.Event()
    async with post_sse(http, {"userRequest": "Terminate me", "github": REPO}) as stream:
        frames = await stream.until("assistant")
        session_id = frames[1].json()["websiteSessionId"]
        await env.fake.terminate(await remote_of(http, session_id))
        await stream.until(lambda e: e.event in ("completed", "error"))
    # The terminal error ends the run; the status that follows is stored all the same.
    remote_id = await remote_of(http, session_id)
    translated = (await provider(env).events_after("", remote_id, None)).events
    assert translated[-1]["managed"]["type"] == "session.status_terminated"
    assert translated[-1]["type"] == "system" and translated[-1]["status"] == "terminated"


async def test_a_follow_up_queued_into_a_merged_turn_ends_its_run(env: Env, http: httpx.AsyncClient) -> None:
    env.fake.merge_queued = True
    env.fake.hold = asyncio.Event()
    env.fake.hold_at = 4
    async with post_sse(http, {"userRequest": "First", "github": REPO}) as stream:
        frames = await stream.until("assistant")
        session_id = frames[1].json()["websiteSessionId"]
        for text in ("Second", "Third"):
            response = await http.post(f"/api/sessions/{session_id}/send", json={"content": text})
            assert response.status_code == 200, response.text
        remote_id = await remote_of(http, session_id)
        await wait_for(lambda: len(env.fake.sessions[remote_id].queued) == 2)
        env.fake.hold.set()
    session = await wait_status(http, session_id, "completed", timeout=20)
    assert session["status"] == "completed"
    upstream = [e["type"] for e in env.fake.sessions[remote_id].events]
    assert upstream.count("user.message") == 3 and upstream.count("session.status_idle") == 1
    events = await stored(http, session_id)
    assert types(events).count("result") == 1
    assert [e["managed"]["type"] for e in upstream_of(events)][-1] == "session.status_idle"


async def test_after_an_abort_the_next_prompt_shows_its_own_answer(env: Env, http: httpx.AsyncClient) -> None:
    env.fake.hold = asyncio.Event()
    env.fake.hold_at = 4
    async with post_sse(http, {"userRequest": "Abort me", "github": REPO}) as stream:
        frames = await stream.until("assistant")
        session_id = frames[1].json()["websiteSessionId"]
        response = await http.post(f"/api/sessions/{session_id}/abort")
        assert response.status_code == 200, response.text
        await stream.until(lambda e: e.event in ("completed", "error"))
    env.fake.hold = None
    # The next prompt at once: the aborted turn's own idle arrives after it.
    frames = await run_to_end(http, {"userRequest": "The real question", "websiteSessionId": session_id})
    assert frames[-1].event == "completed", frames[-1].data
    events = await stored(http, session_id)
    results = [e["eventData"] for e in events if e["eventData"]["type"] == "result"]
    assert results[-1]["result"] == "Done: The real question"


async def test_a_new_chat_from_execute_remote_starts_on_the_repository_default_branch(
    env: Env, http: httpx.AsyncClient
) -> None:
    """execute-remote's new sessions show baseBranch "main" (the contract), but the person chose
    no branch: the remote session is created without a checkout, so upstream mounts the
    repository's own default branch (never a forced `main`)."""
    frames = await run_to_end(http, {"userRequest": "Default branch please", "github": REPO})
    done = frames[-1].json()
    session = env.fake.sessions[done["remoteSessionId"]]
    assert "checkout" not in session.body["resources"][0]
    row = (await http.get(f"/api/sessions/{done['websiteSessionId']}")).json()["session"]
    assert row["baseBranch"] == "main"
