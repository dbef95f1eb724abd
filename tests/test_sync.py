"""Sync of Claude Remote sessions against the fake upstream: imports once, matches by remote id,
never touches local running sessions, one replica leads a cycle; and POST /:id/sync-events."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from services import event_log, locks, migrations
from services.agents.claude_remote import sync
from tests.fakes.claude import FAKE_ENVIRONMENT, FakeClaude, FakeSession, running_fake_claude
from tests.helpers import TestServer, register, start_app, test_env

FAR_FUTURE_MS = 4102444800000


@dataclass
class Setup:
    server: TestServer
    claude: FakeClaude
    database_url: str


async def fresh_database(factory: Callable[[], Awaitable[str]]) -> str:
    """A database of this module's own: other modules' servers must not adopt or sync its rows."""
    url = await factory()
    await migrations.migrate(url)
    return url


@pytest.fixture(scope="module")
async def setup(empty_database_factory: Callable[[], Awaitable[str]]) -> AsyncIterator[Setup]:
    url = await fresh_database(empty_database_factory)
    async with running_fake_claude() as claude:
        env = test_env(
            url,
            CLAUDE_API_BASE_URL=claude.url,
            CLAUDE_OAUTH_TOKEN_URL=claude.token_url,
            CLAUDE_POLL_INTERVAL_MS=50,
            CLAUDE_SYNC_LIMIT=50,
        )
        async with start_app(env) as server:
            yield Setup(server, claude, url)


@pytest.fixture(autouse=True)
def fresh_upstream(setup: Setup) -> None:
    """The fake shows every session to every token: each test starts with an empty upstream."""
    setup.claude.sessions.clear()
    setup.claude.faults.clear()


async def person_with_claude(setup: Setup) -> tuple[httpx.AsyncClient, dict[str, Any], str]:
    """A logged-in person whose Claude account is connected; returns (client, user, access token)."""
    http = httpx.AsyncClient(base_url=setup.server.url, timeout=30)
    user = await register(http)
    access, refresh = setup.claude.issue_tokens()
    response = await http.post(
        "/api/user/claude-auth", json={"accessToken": access, "refreshToken": refresh, "expiresAt": FAR_FUTURE_MS}
    )
    assert response.status_code == 200
    return http, user, access


def remote_session(
    claude: FakeClaude,
    title: str,
    *,
    prompt: str = "Fix the flaky test",
    repo: str = "octo/app",
    branch: str = "claude/fix-flaky-test",
    finished: bool = True,
    prompt_uuid: str | None = None,
) -> FakeSession:
    """A session someone started on claude.ai (finished: its whole turn is already there)."""
    body = {
        "title": title,
        "events": [
            {
                "type": "event",
                "data": {
                    "uuid": prompt_uuid or str(uuid.uuid4()),
                    "session_id": "",
                    "type": "user",
                    "parent_tool_use_id": None,
                    "message": {"role": "user", "content": prompt},
                },
            }
        ],
        "environment_id": FAKE_ENVIRONMENT,
        "session_context": {
            "sources": [{"type": "git_repository", "url": f"https://github.com/{repo}.git"}],
            "outcomes": [
                {"type": "git_repository", "git_info": {"type": "github", "repo": repo, "branches": [branch]}}
            ],
            "model": "claude-test",
        },
    }
    session = claude.sessions[claude.create_session(body)["id"]]
    if finished:
        session.events.extend(session.pending)
        session.pending = []
        session.status = "idle"
    return session


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def sessions_of(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    return (await http.get("/api/sessions")).json()["data"]["sessions"]


async def test_manual_sync_imports_once(setup: Setup) -> None:
    http, user, _ = await person_with_claude(setup)
    try:
        done = remote_session(setup.claude, "Fix the flaky test", repo="octo/app", branch="claude/fix-flaky")
        failed = remote_session(setup.claude, "Broken one", repo="octo/app", branch="claude/broken")
        failed.status = "failed"
        archived = remote_session(setup.claude, "Old archived", branch="claude/old")
        archived.archived = True

        response = await http.post("/api/sessions/sync")
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert data["imported"] == 2 and data["errors"] == 0 and data["alreadyExists"] == 0
        assert data["totalFromApi"] >= 3 and data["runningSessions"] == 0
        assert {d["remoteSessionId"] for d in data["details"]["imported"]} == {done.id, failed.id}
        assert all(d["eventsImported"] == 7 for d in data["details"]["imported"])

        listed = {s["remoteSessionId"]: s for s in await sessions_of(http)}
        assert set(listed) == {done.id, failed.id}
        row = listed[done.id]
        assert row["userRequest"] == "Fix the flaky test"
        assert row["status"] == "completed" and listed[failed.id]["status"] == "error"
        assert row["repositoryOwner"] == "octo" and row["repositoryName"] == "app"
        assert row["repositoryUrl"] == "https://github.com/octo/app"
        assert row["branch"] == "claude/fix-flaky" and row["sessionPath"] == "octo__app__claude-fix-flaky"
        assert row["remoteWebUrl"] == f"https://claude.ai/code/{done.id}"
        assert row["totalCost"] == "0.0125" and row["completedAt"] is not None
        events = await event_log.read_after(setup.server.ctx, row["id"], 0, 100)
        assert [e["event_data"]["uuid"] for e in events] == [e["uuid"] for e in done.events]
        assert events[0]["event_data"]["message"]["content"] == "Fix the flaky test"

        again = (await http.post("/api/sessions/sync")).json()["data"]
        assert again["imported"] == 0 and again["alreadyExists"] == 2
        assert (
            await setup.server.ctx.pool.fetchval("SELECT count(*) FROM chat_sessions WHERE user_id = $1", user["id"])
            == 2
        )

        # activeOnly=false also imports archived sessions.
        everything = (await http.post("/api/sessions/sync", params={"activeOnly": "false"})).json()["data"]
        assert [d["remoteSessionId"] for d in everything["details"]["imported"]] == [archived.id]
        # A session in the trash is not imported again.
        await http.delete(f"/api/sessions/{listed[done.id]['id']}")
        assert (await http.post("/api/sessions/sync")).json()["data"]["imported"] == 0
    finally:
        await http.aclose()


async def test_running_remote_session_is_imported_and_followed(setup: Setup) -> None:
    http, _, _ = await person_with_claude(setup)
    try:
        live = remote_session(setup.claude, "Still working", branch="claude/still-working", finished=False)
        data = (await http.post("/api/sessions/sync")).json()["data"]
        assert [d["remoteSessionId"] for d in data["details"]["running"]] == [live.id]
        assert [(d["remoteSessionId"], d["status"]) for d in data["details"]["imported"]] == [(live.id, "running")]

        # No run of ours drove it: the run driver adopts it and follows it to its end.
        async def finished() -> bool:
            rows = await sessions_of(http)
            return rows[0]["status"] == "completed"

        await wait_for(finished)
        row = (await sessions_of(http))[0]
        events = await event_log.read_after(setup.server.ctx, row["id"], 0, 100)
        uuids = [e["event_data"]["uuid"] for e in events]
        assert uuids == [e["uuid"] for e in live.events]  # each event once
    finally:
        await http.aclose()


async def test_sync_leaves_local_running_sessions_alone(setup: Setup) -> None:
    http, user, _ = await person_with_claude(setup)
    pool = setup.server.ctx.pool
    try:
        # A run of ours, driven by another replica, on a remote session still running upstream.
        driven = remote_session(setup.claude, "Driven elsewhere", branch="claude/driven", finished=False)
        local = (
            await http.post(
                "/api/sessions/create-code-session",
                json={
                    "repositoryOwner": "octo",
                    "repositoryName": "app",
                    "baseBranch": "main",
                    "branch": "claude/driven",
                },
            )
        ).json()["session"]
        await pool.execute(
            "UPDATE chat_sessions SET status = 'running', run_owner = 'other-replica', worker_last_activity = now(),"
            " remote_session_id = $2 WHERE id = $1",
            local["id"],
            driven.id,
        )
        # A run of ours that has just created its remote session and not stored its id yet.
        prompt_uuid = str(uuid.uuid4())
        starting = (
            await http.post(
                "/api/sessions/create-code-session",
                json={"repositoryOwner": "octo", "repositoryName": "app", "baseBranch": "main", "branch": "claude/new"},
            )
        ).json()["session"]
        await pool.execute(
            "UPDATE chat_sessions SET status = 'running', run_owner = 'other-replica', worker_last_activity = now()"
            " WHERE id = $1",
            starting["id"],
        )
        await pool.execute(
            "INSERT INTO messages (chat_session_id, type, content, upstream_uuid) VALUES ($1, 'user', 'Go', $2)",
            starting["id"],
            prompt_uuid,
        )
        remote_session(setup.claude, "Just created", branch="claude/new", prompt_uuid=prompt_uuid)
        before = {s["id"]: s for s in await sessions_of(http)}

        data = (await http.post("/api/sessions/sync")).json()["data"]
        assert data["imported"] == 0 and data["alreadyExists"] == 2
        assert await sync.run_cycle(setup.server.ctx) is not None
        after = {s["id"]: s for s in await sessions_of(http)}
        assert after == before
        assert after[local["id"]]["status"] == "running" and after[local["id"]]["deletedAt"] is None
        count = await pool.fetchval("SELECT count(*) FROM chat_sessions WHERE user_id = $1", user["id"])
        assert count == 2
        assert await event_log.read_after(setup.server.ctx, local["id"], 0, 10) == []
    finally:
        await http.aclose()


async def test_background_cycle_leads_once_and_imports_for_everyone(setup: Setup) -> None:
    people = [await person_with_claude(setup) for _ in range(2)]
    try:
        # Each person's fake upstream is the same fake; sessions are visible to every token.
        before = {
            user["id"]: await setup.server.ctx.pool.fetchval(
                "SELECT count(*) FROM chat_sessions WHERE user_id = $1", user["id"]
            )
            for _, user, _ in people
        }
        assert before == {user["id"]: 0 for _, user, _ in people}
        remote_session(setup.claude, "For the cycle", branch="claude/cycle")
        # While another replica leads a cycle, this one skips it.
        async with setup.server.ctx.pool.acquire() as other_replica:
            assert await other_replica.fetchval("SELECT pg_try_advisory_lock($1)", locks.SYNC)
            try:
                assert await sync.run_cycle(setup.server.ctx) is None
            finally:
                await other_replica.fetchval("SELECT pg_advisory_unlock($1)", locks.SYNC)
        counts = [
            await setup.server.ctx.pool.fetchval("SELECT count(*) FROM chat_sessions WHERE user_id = $1", user["id"])
            for _, user, _ in people
        ]
        assert counts == [0, 0]
        # Two cycles at once (as on two replicas): one leads, the other skips.
        first, second = await asyncio.gather(sync.run_cycle(setup.server.ctx), sync.run_cycle(setup.server.ctx))
        assert first is not None or second is not None
        counts = [
            await setup.server.ctx.pool.fetchval("SELECT count(*) FROM chat_sessions WHERE user_id = $1", user["id"])
            for _, user, _ in people
        ]
        assert counts[0] == counts[1] and counts[0] >= 1
        again = await sync.run_cycle(setup.server.ctx)
        assert again is not None and again["imported"] == 0
        assert [
            await setup.server.ctx.pool.fetchval("SELECT count(*) FROM chat_sessions WHERE user_id = $1", user["id"])
            for _, user, _ in people
        ] == counts
    finally:
        for http, _, _ in people:
            await http.aclose()


async def test_background_loop_runs_when_enabled(setup: Setup) -> None:
    env = test_env(
        setup.database_url,
        CLAUDE_API_BASE_URL=setup.claude.url,
        CLAUDE_OAUTH_TOKEN_URL=setup.claude.token_url,
        CLAUDE_SYNC_ENABLED="true",
        CLAUDE_SYNC_INTERVAL_MS=1000,
    )
    http, _, _ = await person_with_claude(setup)
    try:
        remote_session(setup.claude, "Picked up by the loop", branch="claude/loop")
        async with start_app(env) as replica:
            assert replica.ctx.sync is not None

            async def imported() -> bool:
                rows = await sessions_of(http)
                return any(s["userRequest"] == "Picked up by the loop" for s in rows)

            await wait_for(imported, timeout=30)
    finally:
        await http.aclose()


async def test_sync_errors(setup: Setup) -> None:
    async with httpx.AsyncClient(base_url=setup.server.url) as http:
        await register(http)
        response = await http.post("/api/sessions/sync")
        assert response.status_code == 400
        assert response.json() == {
            "success": False,
            "error": "Claude authentication not configured. Please connect your Claude account in settings.",
        }


async def test_sync_events(setup: Setup) -> None:
    http, _, access = await person_with_claude(setup)
    try:
        remote = remote_session(setup.claude, "Sync my events", branch="claude/sync-events")
        await http.post("/api/sessions/sync")
        row = next(s for s in await sessions_of(http) if s["remoteSessionId"] == remote.id)
        url = f"/api/sessions/{row['id']}/sync-events"

        unchanged = await http.post(url)
        assert unchanged.status_code == 200
        assert unchanged.json()["data"] == {
            "sessionId": row["id"],
            "remoteSessionId": remote.id,
            "existingEvents": 7,
            "newEventsImported": 0,
            "totalEvents": 7,
            "remoteStatus": "idle",
            "localStatus": "completed",
        }

        # Someone continues the session on claude.ai: a new turn, finished.
        setup.claude.post_events(
            remote,
            {"events": [{"type": "user", "uuid": str(uuid.uuid4()), "message": {"role": "user", "content": "More"}}]},
        )
        remote.events.extend(remote.pending)
        remote.pending = []
        remote.status = "idle"
        data = (await http.post(url)).json()["data"]
        assert data["newEventsImported"] == 7 and data["totalEvents"] == 14 and data["existingEvents"] == 7
        assert (await http.get(f"/api/sessions/{row['id']}")).json()["session"]["totalCost"] == "0.025"
        assert (await http.post(url)).json()["data"]["newEventsImported"] == 0
        stored = await event_log.read_after(setup.server.ctx, row["id"], 0, 100)
        assert len(stored) == 14

        # The remote session failed: the local one (driven by nobody) follows.
        remote.status = "failed"
        failed = (await http.post(url)).json()["data"]
        assert failed["remoteStatus"] == "failed" and failed["localStatus"] == "error"

        plain = (
            await http.post(
                "/api/sessions/create-code-session",
                json={"repositoryOwner": "octo", "repositoryName": "app", "baseBranch": "main", "branch": "plain"},
            )
        ).json()["session"]
        not_remote = await http.post(f"/api/sessions/{plain['id']}/sync-events")
        assert not_remote.status_code == 400
        assert not_remote.json() == {"success": False, "error": "Session is not a Claude Remote session"}

        async with httpx.AsyncClient(base_url=setup.server.url) as intruder:
            await register(intruder)
            foreign = await intruder.post(url)
            assert foreign.status_code == 404
            assert foreign.json() == {"success": False, "error": "Session not found"}

        await http.delete("/api/user/claude-auth")
        no_auth = await http.post(url)
        assert no_auth.status_code == 400
        assert no_auth.json()["error"].startswith("Claude authentication not configured")
        assert access
    finally:
        await http.aclose()


async def test_a_leader_cancelled_mid_cycle_leaves_no_lock_behind(setup: Setup) -> None:
    # Shutdown cancels the cycle, and may cancel again while it unlocks: the lead must not stay
    # with a pooled connection (which would then keep every replica from leading, for good).
    http, _, _ = await person_with_claude(setup)
    try:
        remote_session(setup.claude, "Slow to list")
        setup.claude.fail("slow", seconds=5, count=1, method="GET", path=r"^/v1/sessions$")
        ctx = setup.server.ctx
        cycle = asyncio.create_task(sync.run_cycle(ctx))
        while not setup.claude.api_requests("GET", r"^/v1/sessions$"):
            await asyncio.sleep(0.01)
        for _ in range(3):  # the cancellation, then more while the cycle cleans up
            cycle.cancel()
            await asyncio.sleep(0)
        with pytest.raises(asyncio.CancelledError):
            await cycle
        # Another replica (a connection of its own) can lead now.
        other = await asyncpg.connect(setup.database_url)
        try:
            assert await other.fetchval("SELECT pg_try_advisory_lock($1)", locks.SYNC)
            await other.fetchval("SELECT pg_advisory_unlock($1)", locks.SYNC)
        finally:
            await other.close()
        setup.claude.faults.clear()
        assert await sync.run_cycle(ctx) is not None
    finally:
        await http.aclose()
