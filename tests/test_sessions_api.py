"""/api/sessions CRUD (CONTRACT.md 1.6): success and error shapes, pagination, announcements."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import httpx
import orjson
import pytest

from services import session_list
from services.chat_sessions import session_json
from tests.helpers import ORIGIN, TestServer, register
from tests.sse import open_sse

SESSION_KEYS = {
    "id",
    "userId",
    "sessionPath",
    "repositoryOwner",
    "repositoryName",
    "userRequest",
    "status",
    "repositoryUrl",
    "baseBranch",
    "branch",
    "provider",
    "providerSessionId",
    "remoteSessionId",
    "remoteWebUrl",
    "totalCost",
    "issueNumber",
    "autoCommit",
    "locked",
    "createdAt",
    "completedAt",
    "deletedAt",
    "workerLastActivity",
}


def branch_name() -> str:
    return f"feature/work-{secrets.token_hex(4)}"


async def create(client: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    body = {
        "repositoryOwner": "octo",
        "repositoryName": "hello-world",
        "baseBranch": "main",
        "branch": branch_name(),
        **overrides,
    }
    response = await client.post("/api/sessions/create-code-session", json=body)
    assert response.status_code == 200, response.text
    return response.json()["session"]


async def announcements(server: TestServer, user_id: str) -> list[tuple[str, dict[str, Any]]]:
    rows = await session_list.read_for_user(server.ctx, user_id, 0, 2**62, 1000)
    return [(row["kind"], row["session"]) for row in rows]


async def test_create_code_session(server: TestServer, client: httpx.AsyncClient) -> None:
    user = await register(client)
    branch = branch_name()
    response = await client.post(
        "/api/sessions/create-code-session",
        json={
            "title": "  Fix the login page ",
            "repositoryOwner": "octo",
            "repositoryName": "hello-world",
            "baseBranch": "main",
            "branch": branch,
        },
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"success", "session"}
    session = body["session"]
    assert set(session) == SESSION_KEYS
    assert session["userId"] == user["id"]
    assert session["userRequest"] == "Fix the login page"
    assert session["status"] == "pending"
    assert session["provider"] == "claude"
    assert session["repositoryUrl"] == "https://github.com/octo/hello-world"
    assert session["sessionPath"] == f"octo__hello-world__{branch.replace('/', '-')}"
    assert session["branch"] == branch and session["baseBranch"] == "main"
    assert session["autoCommit"] is False and session["locked"] is False
    assert session["deletedAt"] is None and session["createdAt"].endswith("Z")

    assert ("created", session) in await announcements(server, user["id"])

    untitled = await create(client)
    assert untitled["userRequest"] == "New coding session"


async def test_create_code_session_errors(client: httpx.AsyncClient) -> None:
    await register(client)
    missing = await client.post("/api/sessions/create-code-session", json={"repositoryOwner": "octo"})
    assert missing.status_code == 400
    assert missing.json() == {
        "success": False,
        "error": "Missing required fields: repositoryOwner, repositoryName, baseBranch, branch",
    }
    base = {"repositoryOwner": "octo", "repositoryName": "repo", "baseBranch": "main", "branch": "b"}
    cases = [
        ({**base, "branch": "   "}, "Missing required fields: repositoryOwner, repositoryName, baseBranch, branch"),
        ({**base, "branch": 5}, "Missing required fields: repositoryOwner, repositoryName, baseBranch, branch"),
        ({**base, "repositoryOwner": "octo/evil"}, "Invalid repository owner or name"),
        ({**base, "repositoryName": ".."}, "Invalid repository owner or name"),
        ({**base, "branch": "a..b"}, "Invalid branch name"),
        ({**base, "branch": "with space"}, "Invalid branch name"),
        ({**base, "baseBranch": "-x"}, "Invalid base branch name"),
        ({**base, "title": 12}, "Title must be a string"),
        ({**base, "title": "x" * 501}, "Title must be 500 characters or less"),
    ]
    for body, error in cases:
        response = await client.post("/api/sessions/create-code-session", json=body)
        assert response.status_code == 400, body
        assert response.json() == {"success": False, "error": error}


async def test_duplicate_repository_branch_is_a_409(server: TestServer, client: httpx.AsyncClient) -> None:
    await register(client)
    branch = branch_name()
    first = await create(client, branch=branch)
    again = await client.post(
        "/api/sessions/create-code-session",
        json={"repositoryOwner": "octo", "repositoryName": "hello-world", "baseBranch": "main", "branch": branch},
    )
    assert again.status_code == 409
    assert again.json() == {
        "success": False,
        "error": f"A session for octo/hello-world on branch {branch} already exists",
    }
    assert (await client.delete(f"/api/sessions/{first['id']}")).status_code == 200
    trashed = await client.post(
        "/api/sessions/create-code-session",
        json={"repositoryOwner": "octo", "repositoryName": "hello-world", "baseBranch": "main", "branch": branch},
    )
    assert trashed.status_code == 409
    assert "is in the trash" in trashed.json()["error"]


async def test_list_sessions(server: TestServer, client: httpx.AsyncClient) -> None:
    await register(client)
    empty = await client.get("/api/sessions")
    assert empty.status_code == 200
    assert empty.json() == {
        "success": True,
        "data": {"sessions": [], "total": 0, "limit": 500, "offset": 0, "hasMore": False, "nextCursor": None},
    }
    created = [await create(client, title=f"Session {n}") for n in range(5)]
    body = (await client.get("/api/sessions")).json()["data"]
    assert body["total"] == 5 and body["hasMore"] is False
    assert [s["id"] for s in body["sessions"]] == [s["id"] for s in reversed(created)]
    assert set(body["sessions"][0]) == SESSION_KEYS

    # Offset pages.
    page = (await client.get("/api/sessions", params={"limit": 2, "offset": 2})).json()["data"]
    assert [s["id"] for s in page["sessions"]] == [created[2]["id"], created[1]["id"]]
    assert page["total"] == 5 and page["hasMore"] is True and page["limit"] == 2
    # The last page tells its total itself; one past the end still counts.
    last = (await client.get("/api/sessions", params={"limit": 2, "offset": 4})).json()["data"]
    assert [s["id"] for s in last["sessions"]] == [created[0]["id"]] and last["total"] == 5
    beyond = (await client.get("/api/sessions", params={"limit": 2, "offset": 9})).json()["data"]
    assert beyond["sessions"] == [] and beyond["total"] == 5 and beyond["hasMore"] is False

    # Cursor pages walk the whole list without gaps or repeats, even when sessions are added.
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        data = (await client.get("/api/sessions", params=params)).json()["data"]
        seen += [s["id"] for s in data["sessions"]]
        if len(seen) == 2:
            await create(client, title="Added while paging")
        if not data["hasMore"]:
            assert data["nextCursor"] is None
            break
        cursor = data["nextCursor"]
    assert seen == [s["id"] for s in reversed(created)]

    # Trashed sessions leave the list.
    await client.delete(f"/api/sessions/{created[0]['id']}")
    data = (await client.get("/api/sessions")).json()["data"]
    assert created[0]["id"] not in {s["id"] for s in data["sessions"]}
    assert data["total"] == 5  # five created, one added while paging, one trashed

    capped = (await client.get("/api/sessions", params={"limit": 100000})).json()["data"]
    assert capped["limit"] == 500
    # A malformed limit or offset is a 400 (test_every_list_has_one_rule_for_a_bad_limit).
    assert (await client.get("/api/sessions", params={"limit": "abc"})).status_code == 400
    bad = await client.get("/api/sessions", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 400
    assert bad.json() == {"success": False, "error": "Invalid cursor"}


async def test_the_list_sends_each_session_as_session_json(server: TestServer, client: httpx.AsyncClient) -> None:
    """The list's objects are made by PostgreSQL when a row is written (chat_sessions.row_json,
    migration 0012): byte for byte what session_json would send, after every kind of change."""
    await register(client)
    plain, odd = await create(client, title="Plain"), await create(client, title="Odd")
    pool = server.ctx.pool
    # Every column set on one row: text that needs escaping (quotes, backslash, control
    # characters, non-ASCII, a closing script tag), timestamps whose milliseconds must be cut, not
    # rounded, and a date before 1000 and one with a zone.
    await pool.execute(
        """UPDATE chat_sessions SET user_request = $2, session_path = $3, repository_owner = 'o"w\\n',
               repository_name = e'r\\u0001\\t\\n\\x7f', repository_url = '</script>', base_branch = 'ß',
               branch = 'claude/x', provider = 'managed_agents', provider_session_id = 'ps',
               remote_session_id = 'rs', remote_web_url = 'https://example.com/a?b=c&d', total_cost = '0.125',
               issue_number = 42, auto_commit = true, locked = true, status = 'running',
               created_at = '2001-03-04 05:06:07.999999+00', completed_at = '0999-01-02 03:04:05.0005+00',
               worker_last_activity = '2026-12-31 23:59:59.123+05:30'
           WHERE id = $1""",
        odd["id"],
        'Ünïcode "quoted" \\ back \u2028 line \U0001f600 \x08\x0c',
        "octo/repo/\u00e9",
    )
    for session in (plain, odd):
        row = await pool.fetchrow("SELECT * FROM chat_sessions WHERE id = $1", session["id"])
        assert row["row_json"] == orjson.dumps(session_json(row)).decode()
    listed = await client.get("/api/sessions")
    rows = await pool.fetch("SELECT * FROM chat_sessions WHERE id = ANY($1)", [odd["id"], plain["id"]])
    by_id = {r["id"]: r for r in rows}
    expected = b",".join(orjson.dumps(session_json(by_id[s["id"]])) for s in (plain, odd))
    assert b'"sessions":[' + expected + b"]" in listed.content

    # A change through the API (a rename) and a lease renewal are in the next list.
    await client.patch(f"/api/sessions/{plain['id']}", json={"userRequest": "Renamed"})
    await pool.execute("UPDATE chat_sessions SET worker_last_activity = now() WHERE id = $1", plain["id"])
    row = await pool.fetchrow("SELECT * FROM chat_sessions WHERE id = $1", plain["id"])
    listed_plain = next(
        s for s in (await client.get("/api/sessions")).json()["data"]["sessions"] if s["id"] == plain["id"]
    )
    assert listed_plain == session_json(row) and listed_plain["userRequest"] == "Renamed"
    assert row["row_json"] == orjson.dumps(session_json(row)).decode()


async def test_get_session_with_preview_url(client: httpx.AsyncClient) -> None:
    await register(client)
    session = await create(client, branch="claude/fix-login")
    response = await client.get(f"/api/sessions/{session['id']}")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"success", "session"}
    assert body["session"] == {
        **session,
        "previewUrl": "https://webedt.etdofresh.com/github/octo/hello-world/claude-fix-login/",
    }
    missing = await client.get("/api/sessions/00000000-0000-4000-8000-000000000000")
    assert missing.status_code == 404
    assert missing.json() == {"success": False, "error": "Session not found"}
    # Trashed sessions can still be opened.
    await client.delete(f"/api/sessions/{session['id']}")
    trashed = (await client.get(f"/api/sessions/{session['id']}")).json()["session"]
    assert trashed["deletedAt"] is not None


async def test_messages(client: httpx.AsyncClient) -> None:
    await register(client)
    session = await create(client)
    url = f"/api/sessions/{session['id']}/messages"
    empty = await client.get(url)
    assert empty.json() == {
        "success": True,
        "data": {"messages": [], "total": 0, "limit": 1000, "offset": 0, "hasMore": False},
    }
    first = await client.post(url, json={"type": "user", "content": "Hello there"})
    assert first.status_code == 200
    message = first.json()["data"]
    assert set(message) == {"id", "chatSessionId", "type", "content", "images", "timestamp"}
    assert message["chatSessionId"] == session["id"]
    assert message["type"] == "user" and message["content"] == "Hello there" and message["images"] is None
    await client.post(url, json={"type": "assistant", "content": "Hi"})
    listed = (await client.get(url)).json()["data"]
    assert [m["content"] for m in listed["messages"]] == ["Hello there", "Hi"]
    assert listed["total"] == 2
    page = (await client.get(url, params={"limit": 1, "offset": 1})).json()["data"]
    assert [m["content"] for m in page["messages"]] == ["Hi"] and page["hasMore"] is False

    for body, error in [
        ({"type": "user"}, "Type and content are required"),
        ({"content": "x"}, "Type and content are required"),
        ({"type": "robot", "content": "x"}, "Invalid message type"),
        ({"type": "user", "content": {"a": 1}}, "Content must be a string"),
    ]:
        response = await client.post(url, json=body)
        assert response.status_code == 400
        assert response.json() == {"success": False, "error": error}
    # The body is checked before the session is looked up, as in the original.
    unknown = "/api/sessions/00000000-0000-4000-8000-000000000000/messages"
    assert (await client.post(unknown, json={"type": "robot", "content": "x"})).status_code == 400
    assert (await client.post(unknown, json={"type": "user", "content": "x"})).status_code == 404


async def test_post_event_goes_through_the_event_log(server: TestServer, client: httpx.AsyncClient) -> None:
    from services import event_log

    await register(client)
    session = await create(client)
    url = f"/api/sessions/{session['id']}/events"
    event = {"type": "assistant", "uuid": "evt-1", "message": {"content": [{"type": "text", "text": "hi"}]}}
    response = await client.post(url, json={"eventData": event})
    assert response.status_code == 200
    data = response.json()["data"]
    assert set(data) == {"id", "chatSessionId", "eventData", "timestamp"}
    assert data["chatSessionId"] == session["id"] and data["eventData"] == event
    assert isinstance(data["id"], int) and data["timestamp"].endswith("Z")
    stored = await event_log.read_after(server.ctx, session["id"], 0, 10)
    assert [(r["id"], r["event_data"]) for r in stored] == [(data["id"], event)]

    duplicate = await client.post(url, json={"eventData": event})
    assert duplicate.status_code == 409
    second = await client.post(url, json={"eventData": {"type": "note", "text": "no uuid"}})
    assert second.json()["data"]["id"] > data["id"]

    for body, error in [
        ({}, "eventData is required"),
        ({"eventData": None}, "eventData is required"),
        ({"eventData": [1, 2]}, "eventData must be a JSON object"),
        ({"eventData": {"type": 5}}, "eventData.type must be a string"),
    ]:
        response = await client.post(url, json=body)
        assert response.status_code == 400
        assert response.json() == {"success": False, "error": error}


async def test_rename_and_branch(server: TestServer, client: httpx.AsyncClient) -> None:
    user = await register(client)
    session = await create(client)
    url = f"/api/sessions/{session['id']}"
    response = await client.patch(url, json={"userRequest": "  Better title  "})
    assert response.status_code == 200
    data = response.json()["data"]
    assert set(data) == SESSION_KEYS
    assert data["userRequest"] == "Better title" and data["branch"] == session["branch"]
    data = (await client.patch(url, json={"branch": "claude/other-branch"})).json()["data"]
    assert data["branch"] == "claude/other-branch" and data["userRequest"] == "Better title"
    kinds = [
        (kind, s["userRequest"]) for kind, s in await announcements(server, user["id"]) if s["id"] == session["id"]
    ]
    assert ("updated", "Better title") in kinds

    for body, error in [
        ({}, "At least one field (userRequest or branch) must be provided"),
        ({"userRequest": "   ", "branch": ""}, "At least one field (userRequest or branch) must be provided"),
        ({"branch": "bad..branch"}, "Invalid branch name"),
        ({"userRequest": "x" * 501}, "Title must be 500 characters or less"),
    ]:
        response = await client.patch(url, json=body)
        assert response.status_code == 400
        assert response.json() == {"success": False, "error": error}


async def test_unlock(server: TestServer, client: httpx.AsyncClient) -> None:
    await register(client)
    session = await create(client)
    await server.ctx.pool.execute("UPDATE chat_sessions SET locked = true WHERE id = $1", session["id"])
    assert (await client.get(f"/api/sessions/{session['id']}")).json()["session"]["locked"] is True
    response = await client.post(f"/api/sessions/{session['id']}/unlock")
    assert response.status_code == 200
    assert response.json()["data"]["locked"] is False
    assert (await client.get(f"/api/sessions/{session['id']}")).json()["session"]["locked"] is False


async def test_worker_status_is_retired(client: httpx.AsyncClient) -> None:
    await register(client)
    session = await create(client)
    response = await client.post(
        f"/api/sessions/{session['id']}/worker-status", json={"status": "completed", "workerSecret": "x"}
    )
    assert response.status_code == 404
    assert response.json()["success"] is False


async def test_routes_need_login(server: TestServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as anonymous:
        for method, path in [
            ("POST", "/api/sessions/create-code-session"),
            ("GET", "/api/sessions"),
            ("GET", "/api/sessions/deleted"),
            ("GET", "/api/sessions/x"),
            ("PATCH", "/api/sessions/x"),
            ("DELETE", "/api/sessions/x"),
            ("GET", "/api/sessions/x/messages"),
            ("POST", "/api/sessions/x/messages"),
            ("POST", "/api/sessions/x/events"),
            ("POST", "/api/sessions/x/unlock"),
            ("POST", "/api/sessions/x/restore"),
            ("POST", "/api/sessions/bulk-delete"),
            ("POST", "/api/sessions/bulk-restore"),
            ("POST", "/api/sessions/bulk-delete-permanent"),
        ]:
            response = await anonymous.request(method, path, json={} if method in ("POST", "PATCH") else None)
            assert response.status_code == 401, (method, path)
            assert response.json() == {"success": False, "error": "Unauthorized"}


async def test_changes_reach_the_session_list_stream(server: TestServer, client: httpx.AsyncClient) -> None:
    """What an open session list sees: created, renamed, deleted and restored, in order."""
    await register(client)
    async with open_sse(client, "/api/sessions/updates") as stream:
        assert (await stream.next()).event == "connected"
        deadline = time.monotonic() + 10
        while server.ctx.hub.stats()["listSubscribers"] < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        session = await create(client, title="Watched")
        await client.patch(f"/api/sessions/{session['id']}", json={"userRequest": "Watched, renamed"})
        await client.delete(f"/api/sessions/{session['id']}")
        await client.post(f"/api/sessions/{session['id']}/restore")
        events = [await stream.next() for _ in range(4)]
    assert [e.event for e in events] == ["created", "updated", "deleted", "created"]
    assert events[0].json()["session"] == session
    assert events[1].json()["session"]["userRequest"] == "Watched, renamed"
    assert all(e.json()["session"]["id"] == session["id"] for e in events)
    assert events[2].json()["session"]["deletedAt"] is not None and events[3].json()["session"]["deletedAt"] is None


@pytest.mark.parametrize(
    ("path", "maximum"),
    [
        ("/api/sessions", 500),
        ("/api/sessions/deleted", 100),
        ("/api/sessions/{id}/messages", 1000),
        ("/api/sessions/{id}/events", 5000),
    ],
)
async def test_every_list_has_one_rule_for_a_bad_limit(client: httpx.AsyncClient, path: str, maximum: int) -> None:
    await register(client)
    created = await client.post(
        "/api/sessions/create-code-session",
        json={"repositoryOwner": "octo", "repositoryName": "lists", "baseBranch": "main", "branch": "b-lists"},
        headers={"Origin": ORIGIN},
    )
    url = path.format(id=created.json()["session"]["id"])
    for bad in ("0", "-1", "ten", "1.5"):
        response = await client.get(url, params={"limit": bad})
        assert response.status_code == 400, (url, bad)
        assert response.json() == {"success": False, "error": f"limit must be a whole number from 1 to {maximum}"}
    if not path.endswith("/events"):
        response = await client.get(url, params={"offset": "-5"})
        assert (response.status_code, response.json()["error"]) == (400, "offset must be a whole number from 0")
    # Larger than the maximum is capped, as before.
    capped = (await client.get(url, params={"limit": str(maximum * 10)})).json()["data"]
    assert capped["limit"] == maximum
