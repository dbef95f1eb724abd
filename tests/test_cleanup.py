"""Orphan cleanup by last activity: a live run is never touched; a run whose driver is long gone
is finished with the status upstream reports, or adopted by the run driver."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from services import cleanup, event_log, locks, session_list
from tests.fakes.claude import FakeClaude, running_fake_claude
from tests.helpers import TestServer, register, start_app, test_env
from tests.test_sync import FAR_FUTURE_MS, fresh_database, remote_session, wait_for


@dataclass
class Setup:
    server: TestServer
    claude: FakeClaude
    http: httpx.AsyncClient
    user: dict[str, Any]


@pytest.fixture(scope="module")
async def setup(empty_database_factory: Callable[[], Awaitable[str]]) -> AsyncIterator[Setup]:
    url = await fresh_database(empty_database_factory)
    async with running_fake_claude() as claude:
        env = test_env(
            url,
            CLAUDE_API_BASE_URL=claude.url,
            CLAUDE_OAUTH_TOKEN_URL=claude.token_url,
            CLAUDE_POLL_INTERVAL_MS=50,
            ORPHAN_SESSION_TIMEOUT_MINUTES=30,
            # The run driver adopts only when the cleanup hands it a session (and at start-up).
            RUN_ADOPT_INTERVAL_SECONDS=3600,
        )
        async with start_app(env) as server, httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            user = await register(http)
            access, refresh = claude.issue_tokens()
            await http.post(
                "/api/user/claude-auth",
                json={"accessToken": access, "refreshToken": refresh, "expiresAt": FAR_FUTURE_MS},
            )
            yield Setup(server, claude, http, user)


async def running_session(
    setup: Setup, branch: str, *, remote_id: str | None, minutes_since_heartbeat: float, owner: str = "dead-replica"
) -> str:
    """A running session whose driver last showed signs of life that long ago."""
    response = await setup.http.post(
        "/api/sessions/create-code-session",
        json={"repositoryOwner": "octo", "repositoryName": "app", "baseBranch": "main", "branch": branch},
    )
    session_id = response.json()["session"]["id"]
    await setup.server.ctx.pool.execute(
        "UPDATE chat_sessions SET status = 'running', run_owner = $2, remote_session_id = $3,"
        " worker_last_activity = now() - make_interval(mins => $4::int),"
        " created_at = now() - interval '3 hours' WHERE id = $1",
        session_id,
        owner,
        remote_id,
        int(minutes_since_heartbeat),
    )
    return session_id


async def session(setup: Setup, session_id: str) -> dict[str, Any]:
    return (await setup.http.get(f"/api/sessions/{session_id}")).json()["session"]


async def event_types(setup: Setup, session_id: str) -> list[str]:
    return [e["event_data"]["type"] for e in await event_log.read_after(setup.server.ctx, session_id, 0, 100)]


async def test_live_runs_are_never_touched(setup: Setup) -> None:
    ended = remote_session(setup.claude, "Ended upstream", branch="claude/ended-live")
    # Created hours ago, but its driver renewed the lease a minute ago: alive.
    alive = await running_session(setup, "claude/alive", remote_id=ended.id, minutes_since_heartbeat=1)
    before = await session(setup, alive)
    await cleanup.run_once(setup.server.ctx)
    assert await session(setup, alive) == before
    assert await event_types(setup, alive) == []

    # A pending session that nobody started is left alone too, however old.
    response = await setup.http.post(
        "/api/sessions/create-code-session",
        json={"repositoryOwner": "octo", "repositoryName": "app", "baseBranch": "main", "branch": "never-started"},
    )
    pending = response.json()["session"]["id"]
    await setup.server.ctx.pool.execute(
        "UPDATE chat_sessions SET created_at = now() - interval '3 days' WHERE id = $1", pending
    )
    await cleanup.run_once(setup.server.ctx)
    assert (await session(setup, pending))["status"] == "pending"


async def test_orphan_ended_upstream_is_finished(setup: Setup) -> None:
    done = remote_session(setup.claude, "Done upstream", branch="claude/done-upstream")
    orphan = await running_session(setup, "claude/orphan-done", remote_id=done.id, minutes_since_heartbeat=45)
    totals = await cleanup.run_once(setup.server.ctx)
    assert totals is not None and totals["finished"] >= 1
    row = await session(setup, orphan)
    assert row["status"] == "completed"
    assert row["completedAt"] is not None and row["totalCost"] == "0.0125"
    # The events the dead driver had not stored yet are there, each once, and no error event.
    assert await event_types(setup, orphan) == [e["type"] for e in done.events]
    assert await setup.server.ctx.pool.fetchval("SELECT run_owner FROM chat_sessions WHERE id = $1", orphan) is None
    # A second pass finds nothing to do.
    assert (await cleanup.run_once(setup.server.ctx) or {}).get("finished") == 0


async def test_orphan_failed_or_gone_upstream_ends_in_error(setup: Setup) -> None:
    failed = remote_session(setup.claude, "Failed upstream", branch="claude/failed-upstream")
    failed.status = "failed"
    failing = await running_session(setup, "claude/orphan-failed", remote_id=failed.id, minutes_since_heartbeat=60)
    gone = await running_session(
        setup, "claude/orphan-gone", remote_id="session_does_not_exist", minutes_since_heartbeat=60
    )
    await cleanup.run_once(setup.server.ctx)

    row = await session(setup, failing)
    assert row["status"] == "error"
    stored = await event_log.read_after(setup.server.ctx, failing, 0, 100)
    errors = [e["event_data"] for e in stored if e["event_data"]["type"] == "error"]
    assert [e["error"] for e in errors] == ["Claude reported that the session failed"]

    row = await session(setup, gone)
    assert row["status"] == "error"
    assert [e["event_data"]["error"] for e in await event_log.read_after(setup.server.ctx, gone, 0, 10)] == [
        "The remote session no longer exists"
    ]


async def test_orphan_still_running_upstream_is_adopted(setup: Setup) -> None:
    live = remote_session(setup.claude, "Still going upstream", branch="claude/still-going", finished=False)
    orphan = await running_session(setup, "claude/orphan-live", remote_id=live.id, minutes_since_heartbeat=90)
    totals = await cleanup.run_once(setup.server.ctx)
    assert totals is not None and totals["adopted"] >= 1
    owner = await setup.server.ctx.pool.fetchval("SELECT run_owner FROM chat_sessions WHERE id = $1", orphan)
    assert owner == setup.server.ctx.runs.owner

    # The run driver carries it on to its end.
    async def finished() -> bool:
        return (await session(setup, orphan))["status"] == "completed"

    await wait_for(finished)
    uuids = [e["event_data"]["uuid"] for e in await event_log.read_after(setup.server.ctx, orphan, 0, 100)]
    assert uuids == [e["uuid"] for e in live.events]


async def test_one_replica_leads_a_pass(setup: Setup) -> None:
    # Another replica leading a pass holds the lock: this one skips its pass.
    async with setup.server.ctx.pool.acquire() as other_replica:
        assert await other_replica.fetchval("SELECT pg_try_advisory_lock($1)", locks.CLEANUP)
        try:
            assert await cleanup.run_once(setup.server.ctx) is None
        finally:
            await other_replica.fetchval("SELECT pg_advisory_unlock($1)", locks.CLEANUP)
    assert await cleanup.run_once(setup.server.ctx) is not None


async def test_expired_login_sessions_are_purged(setup: Setup) -> None:
    pool = setup.server.ctx.pool
    async with httpx.AsyncClient(base_url=setup.server.url) as other:
        person = await register(other)
    await pool.execute("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE user_id = $1", person["id"])
    await cleanup.run_once(setup.server.ctx)
    assert await pool.fetchval("SELECT count(*) FROM sessions WHERE user_id = $1", person["id"]) == 0
    # Live ones stay.
    assert await pool.fetchval("SELECT count(*) FROM sessions WHERE user_id = $1", setup.user["id"]) >= 1


async def test_expired_fetched_positions_are_pruned(setup: Setup) -> None:
    sessions = []
    for branch in ("claude/fetched-expired", "claude/fetched-fresh"):
        response = await setup.http.post(
            "/api/sessions/create-code-session",
            json={"repositoryOwner": "octo", "repositoryName": "app", "baseBranch": "main", "branch": branch},
        )
        sessions.append(response.json()["session"]["id"])
        assert (await setup.http.get(f"/api/sessions/{sessions[-1]}/events")).status_code == 200
    expired, fresh = sessions
    pool = setup.server.ctx.pool
    await pool.execute(
        "UPDATE fetched_histories SET expires_at = now() - interval '1 second' WHERE chat_session_id = $1", expired
    )
    await cleanup.run_once(setup.server.ctx)
    left = await pool.fetch(
        "SELECT chat_session_id FROM fetched_histories WHERE chat_session_id = ANY($1::text[])", sessions
    )
    assert [r["chat_session_id"] for r in left] == [fresh]


async def test_old_session_list_announcements_are_pruned(setup: Setup) -> None:
    ctx, user_id = setup.server.ctx, setup.user["id"]
    before = await session_list.last_id(ctx)
    await session_list.announce(ctx, user_id, "updated", {"id": "s-old", "title": "old"})
    await session_list.announce(ctx, user_id, "updated", {"id": "s-new", "title": "new"})
    high = await session_list.last_id(ctx)
    await ctx.pool.execute(
        "UPDATE session_announcements SET created_at = now() - interval '2 hours' WHERE id = $1", before + 1
    )
    await cleanup.run_once(ctx)
    left = await session_list.read_for_user(ctx, user_id, before, high, 10)
    assert [r["session"]["id"] for r in left] == ["s-new"]
