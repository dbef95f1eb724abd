"""What each run costs and a budget per person (issue 24), on the fakes of both backends, which
report usage as the real APIs do: Claude Code's `result` (cumulative `total_cost_usd` and
`usage`), the Managed Agents session object's cumulative `usage` (tokens, `list_cost` in cents).

Usage recorded per turn, the totals, the refusal before anything goes upstream, the mid-turn
interrupt, the admin's budgets, the log lines at 80 % and 100 %, the metrics, and that nobody
sees anybody else's usage."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

from services import usage
from services.agents.backend import TurnUsage
from services.db import queries
from tests.fakes.claude import (
    REPO,
    FakeClaude,
    claude_env,
    connect_claude,
    post_sse,
    run_to_end,
    running_fake_claude,
    stored,
    wait_status,
)
from tests.fakes.managed_agents import FakeManagedAgents, managed_env, running_fake_managed_agents
from tests.helpers import TestServer, register, start_app, test_env
from tests.test_admin import login, make_admin
from tests.test_managed_agents import clear_resources

MONTH = usage.Month.of(datetime.now(UTC))


@dataclass
class Managed:
    server: TestServer
    fake: FakeManagedAgents


@dataclass
class Remote:
    server: TestServer
    fake: FakeClaude


@pytest.fixture(scope="module")
async def managed(database_url: str) -> AsyncIterator[Managed]:
    await clear_resources(database_url)
    async with running_fake_managed_agents() as fake:
        env = test_env(database_url, **managed_env(fake, USAGE_MONTHLY_BUDGET_USD="100"))
        async with start_app(env) as server:
            yield Managed(server, fake)


@pytest.fixture(scope="module")
async def remote(database_url: str) -> AsyncIterator[Remote]:
    async with (
        running_fake_claude() as fake,
        start_app(test_env(database_url, **claude_env(fake, CLAUDE_ENVIRONMENT_ID="env_x"))) as server,
    ):
        yield Remote(server, fake)


@pytest.fixture
async def ma_http(managed: Managed) -> AsyncIterator[httpx.AsyncClient]:
    managed.fake.reset_knobs()
    async with httpx.AsyncClient(base_url=managed.server.url, timeout=30) as client:
        await register(client)
        yield client


@pytest.fixture
async def admin_http(managed: Managed) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=managed.server.url, timeout=30) as client:
        await make_admin(managed.server, client)
        yield client


async def me(client: httpx.AsyncClient) -> str:
    return (await client.get("/api/auth/session")).json()["data"]["user"]["id"]


async def my_usage(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/api/user/usage")
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def set_budget(admin: httpx.AsyncClient, user_id: str, amount: float | None) -> dict[str, Any]:
    response = await admin.put(f"/api/admin/users/{user_id}/budget", json={"monthlyBudgetUsd": amount})
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def records(server: TestServer, user_id: str) -> list[dict[str, Any]]:
    async with server.ctx.pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM usage_records WHERE user_id = $1 ORDER BY id", user_id)
    return [dict(r) for r in rows]


def over_budget_message(used: str, limit: str) -> str:
    return (
        f"You have used {used} of your {limit} budget for {MONTH.name}; it resets on {MONTH.resets}. "
        "An admin can raise your budget."
    )


# ---- recorded per turn ---------------------------------------------------------------------------


async def test_managed_agents_usage_is_recorded_per_turn(managed: Managed, ma_http: httpx.AsyncClient) -> None:
    frames = await run_to_end(ma_http, {"userRequest": "Fix the flaky test", "github": REPO})
    assert frames[-1].event == "completed", [f.event for f in frames]
    session_id = frames[-1].json()["websiteSessionId"]
    response = await ma_http.post(f"/api/sessions/{session_id}/send", json={"content": "Also the README"})
    assert response.status_code == 200, response.text
    session = await wait_status(ma_http, session_id, "completed")
    assert session["totalCost"] == "0.5"  # kept as the website shows it

    user_id = await me(ma_http)
    rows = await records(managed.server, user_id)
    turn_rows = [r for r in rows if r["turn_uuid"] is not None]
    assert len(turn_rows) == 2, [dict(r) for r in rows]
    assert all(r["chat_session_id"] == session_id and r["provider"] == "managed-agents" for r in rows)
    assert sum(r["cost_usd"] for r in rows) == Decimal("0.5"), [dict(r) for r in rows]
    # The session object's cumulative usage, as the last report saw it.
    assert turn_rows[-1]["total_cost_usd"] == Decimal("0.5")
    assert turn_rows[-1]["total_input_tokens"] == 200 and turn_rows[-1]["total_cache_creation_tokens"] == 14

    data = await my_usage(ma_http)
    this_month = data["thisMonth"]
    assert this_month["month"] == MONTH.key and this_month["costUsd"] == 0.5
    assert this_month["backends"] == {
        "managed-agents": {
            "costUsd": 0.5,
            "inputTokens": 200,
            "outputTokens": 40,
            "cacheReadTokens": 10,
            "cacheCreationTokens": 14,
            "turns": 2,
        }
    }
    assert data["lastMonth"] == {"month": MONTH.previous().key, "costUsd": 0.0, "backends": {}}
    # USAGE_MONTHLY_BUDGET_USD applies to whoever has no budget of their own.
    assert data["budget"] == {
        "monthlyBudgetUsd": 100.0,
        "usedUsd": 0.5,
        "remainingUsd": 99.5,
        "source": "default",
        "appliesTo": ["managed-agents"],
        "month": MONTH.key,
        "resetsAt": data["budget"]["resetsAt"],
    }
    assert data["budget"]["resetsAt"].startswith(MONTH.end.strftime("%Y-%m-01T00:00:00"))

    metrics = (await ma_http.get("/metrics")).text
    assert 'webedt_usage_cost_usd_total{backend="managed-agents"}' in metrics
    assert 'webedt_usage_tokens_total{backend="managed-agents",kind="input"}' in metrics


async def test_claude_remote_usage_is_recorded_per_turn(remote: Remote) -> None:
    remote.fake.reset_knobs()
    async with httpx.AsyncClient(base_url=remote.server.url, timeout=30) as http:
        await register(http)
        await connect_claude(http, remote.fake)
        frames = await run_to_end(http, {"userRequest": "Fix the flaky test", "github": REPO})
        assert frames[-1].event == "completed", [f.event for f in frames]
        session_id = frames[-1].json()["websiteSessionId"]
        response = await http.post(f"/api/sessions/{session_id}/send", json={"content": "Also the README"})
        assert response.status_code == 200, response.text
        session = await wait_status(http, session_id, "completed")
        assert session["totalCost"] == "0.025"

        rows = await records(remote.server, await me(http))
        assert [r["turn_uuid"] is not None for r in rows] == [True, True]  # one row per turn end
        assert [r["cost_usd"] for r in rows] == [Decimal("0.0125"), Decimal("0.0125")]
        results = [e["eventData"] for e in await stored(http, session_id) if e["eventData"]["type"] == "result"]
        assert [r["turn_uuid"] for r in rows] == [r["uuid"] for r in results]
        assert [r["input_tokens"] for r in rows] == [1000, 1000]

        data = await my_usage(http)
    assert data["thisMonth"]["backends"] == {
        "claude": {
            "costUsd": 0.025,
            "inputTokens": 2000,
            "outputTokens": 400,
            "cacheReadTokens": 100,
            "cacheCreationTokens": 20,
            "turns": 2,
        }
    }
    # Remote Sessions are paid by the person's own subscription: no budget applies to them here.
    assert data["budget"]["monthlyBudgetUsd"] is None and data["budget"]["appliesTo"] == ["managed-agents"]


async def test_a_turn_end_is_recorded_once_and_each_row_holds_its_share(managed: Managed) -> None:
    ctx = managed.server.ctx
    async with httpx.AsyncClient(base_url=managed.server.url, timeout=30) as http:
        user_id = (await register(http))["id"]
    remote_id = f"sesn_once_{user_id}"

    async def report(cost: float, tokens: int, turn: str | None) -> bool:
        return await usage.record(
            ctx,
            session_id=f"chat-{user_id}",
            user_id=user_id,
            provider_name="managed-agents",
            remote_id=remote_id,
            report=TurnUsage(cost_usd=cost, input_tokens=tokens),
            turn_uuid=turn,
        )

    assert await report(0.30, 100, None)  # mid-turn reading
    assert not await report(0.30, 100, None)  # nothing new: no row
    assert await report(0.50, 160, "end-1")
    assert not await report(0.50, 160, "end-1")  # the same turn end again (a retry, another replica)
    assert await report(0.20, 40, "end-2")  # smaller than before: upstream counts again from 0
    rows = await records(managed.server, user_id)
    assert [(r["cost_usd"], r["input_tokens"], r["turn_uuid"]) for r in rows] == [
        (Decimal("0.3"), 100, None),
        (Decimal("0.2"), 60, "end-1"),
        (Decimal("0.2"), 40, "end-2"),
    ]


async def test_a_remote_id_reused_by_another_chat_session_counts_apart(managed: Managed) -> None:
    """Shares are the difference to the last report of the same chat session's remote session: a
    remote id seen before in another chat session (another deployment on the same database, a
    fake's counter) never lowers this one's share."""
    ctx = managed.server.ctx
    async with httpx.AsyncClient(base_url=managed.server.url, timeout=30) as http:
        first = (await register(http))["id"]
    async with httpx.AsyncClient(base_url=managed.server.url, timeout=30) as http:
        second = (await register(http))["id"]
    remote_id = f"sesn_reused_{first}"
    for user_id, cost in ((first, 0.50), (second, 0.75)):
        assert await usage.record(
            ctx,
            session_id=f"chat-{user_id}",
            user_id=user_id,
            provider_name="managed-agents",
            remote_id=remote_id,
            report=TurnUsage(cost_usd=cost, input_tokens=100),
            turn_uuid="end-1",
        )
    rows = await records(managed.server, second)
    assert [(r["cost_usd"], r["input_tokens"]) for r in rows] == [(Decimal("0.75"), 100)]


# ---- budgets -------------------------------------------------------------------------------------


async def test_a_prompt_over_budget_is_refused_before_anything_goes_upstream(
    managed: Managed, ma_http: httpx.AsyncClient, admin_http: httpx.AsyncClient
) -> None:
    user_id = await me(ma_http)
    frames = await run_to_end(ma_http, {"userRequest": "Spend a quarter", "github": REPO})
    assert frames[-1].event == "completed"
    session_id = frames[-1].json()["websiteSessionId"]
    budget = await set_budget(admin_http, user_id, 0.25)  # all spent already
    assert budget["budget"]["monthlyBudgetUsd"] == 0.25 and budget["budget"]["source"] == "person"
    sessions_before = (await ma_http.get("/api/sessions")).json()["data"]["total"]

    calls = len(managed.fake.calls)
    message = over_budget_message("$0.25", "$0.25")
    response = await ma_http.post(
        "/api/execute-remote", json={"userRequest": "One more", "github": REPO}, headers={"Accept": "text/event-stream"}
    )
    assert response.status_code == 402
    assert response.json() == {"success": False, "error": message}
    again = await ma_http.post(
        "/api/execute-remote",
        json={"userRequest": "Continue", "websiteSessionId": session_id},
        headers={"Accept": "text/event-stream"},
    )
    assert again.status_code == 402 and again.json()["error"] == message
    follow_up = await ma_http.post(f"/api/sessions/{session_id}/send", json={"content": "And this"})
    assert follow_up.status_code == 402 and follow_up.json()["error"] == message
    # Nothing went upstream: no session created, no message sent (a read of an earlier run's
    # session, its driver's last look, may still come by).
    assert [c["path"] for c in managed.fake.calls[calls:] if c["method"] != "GET"] == []
    assert (await ma_http.get("/api/sessions")).json()["data"]["total"] == sessions_before
    assert (await ma_http.get(f"/api/sessions/{session_id}")).json()["session"]["status"] == "completed"

    # The admin raises it: the person may go on.
    await set_budget(admin_http, user_id, 5)
    frames = await run_to_end(ma_http, {"userRequest": "Continue", "websiteSessionId": session_id})
    assert frames[-1].event == "completed"


async def test_a_managed_agents_run_that_crosses_its_budget_mid_turn_is_interrupted(
    managed: Managed, ma_http: httpx.AsyncClient, admin_http: httpx.AsyncClient
) -> None:
    user_id = await me(ma_http)
    await set_budget(admin_http, user_id, 1)
    managed.fake.hold = asyncio.Event()
    managed.fake.hold_at = 4
    try:
        async with post_sse(ma_http, {"userRequest": "Spend a lot", "github": REPO}) as stream:
            frames = await stream.until("assistant")
            session_id = frames[1].json()["websiteSessionId"]
            remote_id = (await ma_http.get(f"/api/sessions/{session_id}")).json()["session"]["remoteSessionId"]
            managed.fake.charge(remote_id, 150)  # $1.50 spent while the agent works
            rest = await stream.until(lambda e: e.event in ("completed", "error"))
    finally:
        managed.fake.hold.set()
    message = over_budget_message("$1.50", "$1.00")
    assert rest[-1].event == "error" and rest[-1].json()["error"] == message
    upstream_types = [e["type"] for e in managed.fake.sessions[remote_id].events]
    assert "user.interrupt" in upstream_types  # the agent stopped spending
    assert "agent.message" in upstream_types and upstream_types.count("agent.tool_use") <= 1  # mid-turn
    session = (await ma_http.get(f"/api/sessions/{session_id}")).json()["session"]
    assert session["status"] == "error"
    errors = [e["eventData"] for e in await stored(ma_http, session_id) if e["eventData"]["type"] == "error"]
    assert [e["error"] for e in errors] == [message]
    assert (await my_usage(ma_http))["thisMonth"]["costUsd"] == 1.5
    # And the next prompt is refused.
    response = await ma_http.post(f"/api/sessions/{session_id}/send", json={"content": "Go on"})
    assert response.status_code == 402 and response.json()["error"] == message


async def test_remote_sessions_are_held_to_the_budget_only_when_the_operator_says(
    database_url: str, remote: Remote, admin_http: httpx.AsyncClient
) -> None:
    remote.fake.reset_knobs()
    async with httpx.AsyncClient(base_url=remote.server.url, timeout=30) as http:
        user_id = (await register(http))["id"]
        await connect_claude(http, remote.fake)
        await set_budget(admin_http, user_id, 0)
        frames = await run_to_end(http, {"userRequest": "My own subscription pays", "github": REPO})
        assert frames[-1].event == "completed"  # recorded, not enforced
        assert (await my_usage(http))["thisMonth"]["costUsd"] == 0.0125
        email = (await http.get("/api/auth/session")).json()["data"]["user"]["email"]

    env = test_env(database_url, **claude_env(remote.fake, CLAUDE_ENVIRONMENT_ID="env_x"))
    async with start_app({**env, "USAGE_BUDGET_REMOTE_SESSIONS": "true"}) as strict:
        http = await login(strict, email)
        try:
            requests = len(remote.fake.requests)
            response = await http.post(
                "/api/execute-remote",
                json={"userRequest": "Again", "github": REPO},
                headers={"Accept": "text/event-stream"},
            )
            assert response.status_code == 402
            assert response.json()["error"] == over_budget_message("$0.01", "$0.00")
            assert len(remote.fake.requests) == requests
            budget = (await my_usage(http))["budget"]
            assert budget["appliesTo"] == ["claude", "managed-agents"] and budget["usedUsd"] == 0.0125
        finally:
            await http.aclose()


async def test_admins_set_and_clear_a_persons_budget(managed: Managed, admin_http: httpx.AsyncClient) -> None:
    async with httpx.AsyncClient(base_url=managed.server.url, timeout=30) as http:
        user_id = (await register(http))["id"]
        assert (await my_usage(http))["budget"]["source"] == "default"
        none = await set_budget(admin_http, user_id, None)  # exempt from the default
        assert none["budget"]["monthlyBudgetUsd"] is None and none["budget"]["source"] == "person"
        assert (await my_usage(http))["budget"]["monthlyBudgetUsd"] is None
        own = await set_budget(admin_http, user_id, 12.5)
        assert own["budget"]["monthlyBudgetUsd"] == 12.5
        read = await admin_http.get(f"/api/admin/users/{user_id}/budget")
        assert read.json()["data"] == own
        cleared = await admin_http.delete(f"/api/admin/users/{user_id}/budget")
        assert cleared.status_code == 200
        assert cleared.json()["data"]["budget"]["source"] == "default"
        assert cleared.json()["data"]["budget"]["monthlyBudgetUsd"] == 100.0
    for body in ({}, {"monthlyBudgetUsd": -1}, {"monthlyBudgetUsd": "10"}, {"monthlyBudgetUsd": True}):
        response = await admin_http.put(f"/api/admin/users/{user_id}/budget", json=body)
        assert response.status_code == 400, body
        assert "monthlyBudgetUsd" in response.json()["error"]
    missing = await admin_http.put("/api/admin/users/nobody-here/budget", json={"monthlyBudgetUsd": 1})
    assert missing.status_code == 404 and missing.json() == {"success": False, "error": "User not found"}


async def test_crossing_80_and_100_percent_is_logged(
    managed: Managed, admin_http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    async with httpx.AsyncClient(base_url=managed.server.url, timeout=30) as http:
        user_id = (await register(http))["id"]
    await set_budget(admin_http, user_id, 1)
    caplog.set_level(logging.WARNING, logger="services.usage")
    lines: list[str] = []
    for cost in (0.5, 0.79, 0.85, 0.9, 1.2, 1.5):
        caplog.clear()
        await usage.record(
            managed.server.ctx,
            session_id=f"chat-log-{user_id}",
            user_id=user_id,
            provider_name="managed-agents",
            remote_id=f"sesn_log_{user_id}",
            report=TurnUsage(cost_usd=cost),
            turn_uuid=None,
        )
        lines.extend(r.getMessage() for r in caplog.records if user_id in r.getMessage())
    assert lines == [
        f"person {user_id} crossed 80 % of their $1.00 budget for {MONTH.key}: $0.85 spent",
        f"person {user_id} crossed 100 % of their $1.00 budget for {MONTH.key}: $1.20 spent",
    ]


# ---- who sees what -------------------------------------------------------------------------------


async def add_spend(server: TestServer, user_id: str, cost: float, tokens: int) -> None:
    await usage.record(
        server.ctx,
        session_id=f"chat-{user_id}",
        user_id=user_id,
        provider_name="managed-agents",
        remote_id=f"sesn_spend_{user_id}",
        report=TurnUsage(cost_usd=cost, output_tokens=tokens),
        turn_uuid=f"end-{user_id}",
    )


async def test_admins_list_usage_per_person_sorted_and_paginated(
    managed: Managed, admin_http: httpx.AsyncClient
) -> None:
    people = []
    for cost, tokens in ((3, 10), (1000, 5), (2, 7_000_000)):
        async with httpx.AsyncClient(base_url=managed.server.url, timeout=30) as http:
            person = await register(http)
        await add_spend(managed.server, person["id"], cost, tokens)
        people.append(person["id"])

    async def listed(**params: Any) -> dict[str, Any]:
        response = await admin_http.get("/api/admin/usage", params=params)
        assert response.status_code == 200, response.text
        return response.json()["data"]

    by_cost = await listed(limit=500)
    assert by_cost["month"] == MONTH.key and by_cost["sort"] == "cost" and by_cost["order"] == "desc"
    ids = [u["userId"] for u in by_cost["users"]]
    assert [i for i in ids if i in people] == [people[1], people[0], people[2]]
    top = by_cost["users"][0]
    assert top["userId"] == people[1] and top["costUsd"] == 1000.0 and top["turns"] == 1
    assert top["backends"]["managed-agents"]["outputTokens"] == 5
    assert top["monthlyBudgetUsd"] == 100.0 and top["budgetSource"] == "default"
    by_tokens = await listed(sort="tokens", limit=1)
    assert by_tokens["users"][0]["userId"] == people[2]
    assert by_tokens["limit"] == 1 and by_tokens["offset"] == 0 and by_tokens["hasMore"] is True
    assert by_tokens["total"] == by_cost["total"] >= 3
    ascending = await listed(order="asc", limit=500)
    assert [u["userId"] for u in ascending["users"] if u["userId"] in people] == [people[2], people[0], people[1]]
    past = await listed(month=MONTH.previous().key)
    assert all(u["userId"] not in people for u in past["users"])

    for params, word in (
        ({"limit": 0}, "limit"),
        ({"offset": -1}, "offset"),
        ({"sort": "name"}, "sort"),
        ({"order": "up"}, "order"),
        ({"month": "2026-13"}, "month"),
    ):
        response = await admin_http.get("/api/admin/usage", params=params)
        assert response.status_code == 400, params
        assert response.json()["error"].startswith(word)


async def test_nobody_sees_anybody_elses_usage(managed: Managed, admin_http: httpx.AsyncClient) -> None:
    async with (
        httpx.AsyncClient(base_url=managed.server.url, timeout=30) as alice,
        httpx.AsyncClient(base_url=managed.server.url, timeout=30) as bob,
    ):
        alice_id = (await register(alice))["id"]
        bob_id = (await register(bob))["id"]
        await add_spend(managed.server, alice_id, 7, 70)
        assert (await my_usage(alice))["thisMonth"]["costUsd"] == 7.0
        assert (await my_usage(bob))["thisMonth"] == {"month": MONTH.key, "costUsd": 0.0, "backends": {}}
        for method, path in (
            ("GET", "/api/admin/usage"),
            ("GET", f"/api/admin/users/{alice_id}/budget"),
            ("PUT", f"/api/admin/users/{alice_id}/budget"),
            ("DELETE", f"/api/admin/users/{alice_id}/budget"),
            ("PUT", f"/api/admin/users/{bob_id}/budget"),
        ):
            response = await bob.request(method, path, json={"monthlyBudgetUsd": 1000} if method == "PUT" else None)
            assert response.status_code == 403, (method, path)
        assert (await my_usage(bob))["budget"]["source"] == "default"
    async with httpx.AsyncClient(base_url=managed.server.url, timeout=30) as anonymous:
        assert (await anonymous.get("/api/user/usage")).status_code == 401


async def test_usage_while_an_admin_impersonates_is_the_persons_with_the_admin_in_the_audit(
    managed: Managed, admin_http: httpx.AsyncClient
) -> None:
    managed.fake.reset_knobs()
    admin_id = await me(admin_http)
    async with httpx.AsyncClient(base_url=managed.server.url, timeout=30) as http:
        person_id = (await register(http))["id"]
    response = await admin_http.post(f"/api/admin/users/{person_id}/impersonate")
    assert response.status_code == 200, response.text
    frames = await run_to_end(admin_http, {"userRequest": "Done for them", "github": REPO})
    assert frames[-1].event == "completed"
    data = await my_usage(admin_http)  # the person's, since the admin acts as them
    assert data["thisMonth"]["costUsd"] == 0.25
    rows = await records(managed.server, person_id)
    assert rows and {r["user_id"] for r in rows} == {person_id}
    assert {r["impersonator_id"] for r in rows if r["turn_uuid"]} == {admin_id}
    assert await records(managed.server, admin_id) == []
    assert (await admin_http.post("/api/admin/stop-impersonating")).status_code == 200
    assert await queries.usage.sum_user_cost(
        managed.server.ctx.pool, user_id=admin_id, since=MONTH.start, until=MONTH.end, providers=["managed-agents"]
    ) == Decimal(0)


# ---- settings and months -------------------------------------------------------------------------


def test_the_budget_setting_is_an_amount_or_empty() -> None:
    from services.config import ConfigError, load_config

    base = {"SESSION_SECRET": "x" * 32}
    assert load_config(base).usage_monthly_budget_usd is None
    assert load_config({**base, "USAGE_MONTHLY_BUDGET_USD": ""}).usage_monthly_budget_usd is None
    assert load_config({**base, "USAGE_MONTHLY_BUDGET_USD": "$25.50"}).usage_monthly_budget_usd == 25.5
    assert load_config({**base, "USAGE_BUDGET_REMOTE_SESSIONS": "true"}).usage_budget_remote_sessions is True
    for bad in ("ten", "-1", "nan", "inf"):
        with pytest.raises(ConfigError, match="USAGE_MONTHLY_BUDGET_USD"):
            load_config({**base, "USAGE_MONTHLY_BUDGET_USD": bad})


def test_months_are_calendar_months_in_utc() -> None:
    december = usage.Month.of(datetime(2026, 12, 31, 23, 59, tzinfo=UTC))
    assert (december.key, december.name, december.resets) == ("2026-12", "December", "January 1")
    assert december.end == datetime(2027, 1, 1, tzinfo=UTC)
    january = usage.Month.parse("2027-01")
    assert january.previous() == december and january.start == december.end
    assert usage.Month.parse("2027-02").previous().key == "2027-01"
    with pytest.raises(usage.ServiceError, match="YYYY-MM"):
        usage.Month.parse("January")
