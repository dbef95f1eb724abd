"""Claude OAuth token refresh with rotating refresh tokens (CONTRACT.md 5.8, defect 35): one
refresh at a time per person across replicas, the new pair stored before anyone else reads it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.fakes.claude import FakeClaude, claude_env, connect_claude, running_fake_claude
from tests.helpers import TestServer, register, start_app, test_env

EXPIRED = "Claude token expired. Please reconnect your Claude account."


@dataclass
class Env:
    first: TestServer
    second: TestServer
    fake: FakeClaude


@pytest.fixture(scope="module")
async def env(database_url: str) -> AsyncIterator[Env]:
    """Two replicas on one database, both refreshing at the fake token endpoint."""
    async with (
        running_fake_claude() as fake,
        start_app(test_env(database_url, **claude_env(fake))) as first,
        start_app(test_env(database_url, **claude_env(fake))) as second,
    ):
        yield Env(first, second, fake)


@pytest.fixture
async def http(env: Env) -> AsyncIterator[httpx.AsyncClient]:
    env.fake.reset_knobs()
    env.fake.token_requests.clear()
    async with httpx.AsyncClient(base_url=env.first.url, timeout=30) as client:
        await register(client)
        yield client


async def credentials(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/api/user/claude-auth/credentials")
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def test_two_replicas_refreshing_at_once_use_the_refresh_token_once(env: Env, http: httpx.AsyncClient) -> None:
    _, old_refresh = await connect_claude(http, env.fake, expires_in_seconds=120)  # due: under 10 minutes left
    env.fake.token_delay = 0.3  # both requests are in flight while the first refresh runs
    async with httpx.AsyncClient(base_url=env.second.url, timeout=30, cookies=http.cookies) as other:
        first, second = await asyncio.gather(
            http.post("/api/user/claude-auth/refresh"), other.post("/api/user/claude-auth/refresh")
        )
    assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
    assert len(env.fake.token_requests) == 1
    assert env.fake.token_requests[0]["body"] == {
        "grant_type": "refresh_token",
        "refresh_token": old_refresh,
        "client_id": "9d1c250a-e61b-44d9-88ed-5944d1962f5e",
    }
    one, two = first.json()["data"], second.json()["data"]
    assert one["refreshed"] is True and two["refreshed"] is True
    assert one["claudeAuth"] == two["claudeAuth"]
    stored = (await credentials(http))["claudeAuth"]
    assert stored == one["claudeAuth"]
    assert stored["refreshToken"] != old_refresh and env.fake.refresh_tokens[stored["refreshToken"]] is True
    assert env.fake.refresh_tokens[old_refresh] is False
    assert stored["expiresAt"] > one["claudeAuth"]["expiresAt"] - 1000
    # The stored pair is the one that works next time.
    env.fake.token_delay = 0
    assert (await http.post("/api/user/claude-auth/refresh")).json()["data"]["message"] == "Token is still valid"


async def test_concurrent_refreshes_in_one_replica(env: Env, http: httpx.AsyncClient) -> None:
    await connect_claude(http, env.fake, expires_in_seconds=-5)  # already expired
    env.fake.token_delay = 0.2
    responses = await asyncio.gather(*(http.post("/api/user/claude-auth/refresh") for _ in range(4)))
    assert [r.status_code for r in responses] == [200] * 4
    assert len(env.fake.token_requests) == 1
    assert len({r.json()["data"]["claudeAuth"]["refreshToken"] for r in responses}) == 1


async def test_a_refused_refresh_is_the_contract_401(env: Env, http: httpx.AsyncClient) -> None:
    _, refresh = await connect_claude(http, env.fake, expires_in_seconds=60)
    env.fake.refresh_tokens[refresh] = False  # used by someone else already
    response = await http.post("/api/user/claude-auth/refresh")
    assert response.status_code == 401
    assert response.json() == {"success": False, "error": EXPIRED}
    # The credentials route still hands the stored token back (as the contract has it).
    data = await credentials(http)
    assert data["refreshed"] is False and data["claudeAuth"]["refreshToken"] == refresh


async def test_a_token_endpoint_outage_is_not_a_reconnect(env: Env, http: httpx.AsyncClient) -> None:
    _, refresh = await connect_claude(http, env.fake, expires_in_seconds=60)
    env.fake.token_status = 503
    response = await http.post("/api/user/claude-auth/refresh")
    env.fake.token_status = None
    assert response.status_code == 502
    assert "try again" in response.json()["error"]
    assert (await credentials(http))["claudeAuth"]["refreshToken"] != refresh  # refreshed once it is back


async def test_without_credentials(http: httpx.AsyncClient) -> None:
    for response in (
        await http.post("/api/user/claude-auth/refresh"),
        await http.get("/api/user/claude-auth/credentials"),
    ):
        assert response.status_code == 400
        assert response.json()["error"] == "No Claude authentication found for user"
