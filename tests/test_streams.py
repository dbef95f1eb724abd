"""The event-log routes on one server: resume, the session event stream, the events list and
the session-list stream; replay from any point, live delivery, disconnects, heartbeats,
lifetime, overflow and a lost LISTEN connection."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from services import event_log, session_list
from tests.helpers import ORIGIN, PASSWORD, TestServer, register, start_app, test_env
from tests.sse import SSEEvent, open_sse, stored_events


async def new_session(server: TestServer, user_id: str, status: str = "completed", **fields: Any) -> str:
    session_id = str(uuid.uuid4())
    await server.ctx.pool.execute(
        """INSERT INTO chat_sessions (id, user_id, user_request, status, repository_owner, repository_name, branch,
                                      session_path)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        session_id,
        user_id,
        fields.get("user_request", "Fix the login page"),
        status,
        fields.get("owner", "octo"),
        fields.get("repo", "hello"),
        fields.get("branch", "claude/fix-login"),
        fields.get("session_path", f"octo__hello__{session_id[:8]}"),
    )
    return session_id


async def set_status(server: TestServer, session_id: str, status: str) -> None:
    await server.ctx.pool.execute("UPDATE chat_sessions SET status = $2 WHERE id = $1", session_id, status)
    await event_log.announce_status(server.ctx, session_id)


async def append(server: TestServer, session_id: str, count: int, start: int = 0, kind: str = "assistant") -> list[int]:
    return await event_log.append(server.ctx, session_id, [{"type": kind, "n": start + n} for n in range(count)])


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def ids_of(events: list[SSEEvent]) -> list[int]:
    return [int(e.id) for e in stored_events(events)]


@pytest.fixture
async def user(client: httpx.AsyncClient) -> dict[str, Any]:
    return await register(client)


# ---- the session event stream -----------------------------------------------------------------


async def test_stream_headers_and_retry_hint(server: TestServer, client: httpx.AsyncClient, user: dict) -> None:
    session_id = await new_session(server, user["id"])
    async with open_sse(client, f"/api/sessions/{session_id}/events/stream") as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"] == "text/event-stream"
        assert stream.headers["cache-control"] == "no-cache"
        assert stream.headers["x-accel-buffering"] == "no"
        await stream.until("completed")
        assert stream.retries and stream.retries[0] > 0


async def test_replay_of_a_finished_session(server: TestServer, client: httpx.AsyncClient, user: dict) -> None:
    session_id = await new_session(server, user["id"], status="completed")
    ids = await event_log.append(
        server.ctx,
        session_id,
        [{"type": "user", "text": "hi"}, {"type": "assistant", "text": "hello"}, {"type": "result", "cost": 1}],
    )
    for path in (f"/api/sessions/{session_id}/events/stream", f"/api/sessions/{session_id}/stream"):
        async with open_sse(client, path) as stream:
            events = await stream.until("completed")
            assert await stream.rest() == []
        replayed = stored_events(events)
        assert [int(e.id) for e in replayed] == ids
        # Every stored event is a frame named by its own type.
        assert [e.event for e in replayed] == ["user", "assistant", "result"]
        assert all(e.named for e in replayed)
        for event in replayed:
            data = event.json()
            assert data["_replayed"] is True
            assert data["_originalTimestamp"].endswith("Z")
        assert replayed[1].json()["text"] == "hello"
        completed = events[-1].json()
        assert completed == {"websiteSessionId": session_id, "completed": True, "replayed": True, "status": "completed"}


async def test_last_event_id_header_and_query(server: TestServer, client: httpx.AsyncClient, user: dict) -> None:
    session_id = await new_session(server, user["id"])
    ids = await append(server, session_id, 6)
    path = f"/api/sessions/{session_id}/events/stream"
    async with open_sse(client, path, last_event_id=ids[2]) as stream:
        assert ids_of(await stream.until("completed")) == ids[3:]
    async with open_sse(client, path, params={"lastEventId": ids[4]}) as stream:
        assert ids_of(await stream.until("completed")) == ids[5:]
    async with open_sse(client, path, last_event_id=ids[-1]) as stream:
        events = await stream.until("completed")
        assert ids_of(events) == []
        assert [e.event for e in events] == ["completed"]


@pytest.mark.parametrize("bad_id", ["999999999999", "abc", "-3"])
async def test_an_unknown_last_event_id_replays_everything(
    server: TestServer, client: httpx.AsyncClient, user: dict, bad_id: str
) -> None:
    session_id = await new_session(server, user["id"])
    other_session = await new_session(server, user["id"])
    ids = await append(server, session_id, 3)
    foreign_id = (await append(server, other_session, 1))[0]
    for requested in (bad_id, str(foreign_id)):
        async with open_sse(client, f"/api/sessions/{session_id}/events/stream", last_event_id=requested) as stream:
            events = await stream.until("completed")
        assert events[0].event == "history_reset"
        assert events[0].json()["type"] == "history_reset"
        assert ids_of(events) == ids


async def test_live_events_of_a_running_session(server: TestServer, client: httpx.AsyncClient, user: dict) -> None:
    session_id = await new_session(server, user["id"], status="running")
    old = await append(server, session_id, 2)
    async with open_sse(client, f"/api/sessions/{session_id}/events/stream") as stream:
        replayed = [await stream.next(), await stream.next()]
        assert [int(e.id) for e in replayed] == old
        new = await append(server, session_id, 3, kind="assistant")
        new += await event_log.append(server.ctx, session_id, [{"type": "result", "subtype": "success"}])
        live = [await stream.next() for _ in new]
        assert [int(e.id) for e in live] == new
        assert [e.event for e in live] == ["assistant", "assistant", "assistant", "result"]
        assert all("_replayed" not in e.json() and "_originalTimestamp" not in e.json() for e in live)
        await set_status(server, session_id, "completed")
        completed = await stream.next()
        assert completed.event == "completed"
        assert completed.json() == {
            "websiteSessionId": session_id,
            "completed": True,
            "replayed": False,
            "status": "completed",
        }
        assert await stream.rest() == []
    # The stream never changed the session.
    assert await event_log.session_status(server.ctx, session_id) == "completed"


async def test_events_appended_with_the_status_change_come_before_completed(
    server: TestServer, client: httpx.AsyncClient, user: dict
) -> None:
    session_id = await new_session(server, user["id"], status="running")
    async with open_sse(client, f"/api/sessions/{session_id}/events/stream") as stream:
        await wait_for(lambda: server.ctx.hub.stats()["sessionTopics"] and session_id in server.ctx.hub._sessions)
        await asyncio.sleep(0.05)
        async with server.ctx.pool.acquire() as conn, conn.transaction():
            last = await event_log.append(server.ctx, session_id, [{"type": "result", "n": 1}], conn=conn)
            await conn.execute("UPDATE chat_sessions SET status = 'error' WHERE id = $1", session_id)
            await event_log.announce_status(server.ctx, session_id, conn=conn)
        events = await stream.until("completed")
        assert ids_of(events) == last
        assert events[-1].json()["status"] == "error"


async def test_another_users_session_is_404_before_any_stream(
    server: TestServer, client: httpx.AsyncClient, user: dict
) -> None:
    session_id = await new_session(server, user["id"], status="running")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as other:
        await register(other)
        for path in (
            f"/api/sessions/{session_id}/events/stream",
            f"/api/sessions/{session_id}/stream",
            f"/api/resume/{session_id}",
            f"/api/sessions/{session_id}/events",
            "/api/sessions/no-such-session/events/stream",
        ):
            response = await other.get(path)
            assert response.status_code == 404, path
            assert response.json() == {"success": False, "error": "Session not found"}
            assert response.headers["content-type"].startswith("application/json")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as anonymous:
        for path in (f"/api/sessions/{session_id}/events/stream", "/api/sessions/updates"):
            response = await anonymous.get(path)
            assert response.status_code == 401
            assert response.json()["error"] == "Unauthorized"
    assert server.ctx.hub.stats()["sessionSubscribers"] == 0


async def test_head_has_no_side_effects(server: TestServer, client: httpx.AsyncClient, user: dict) -> None:
    session_id = await new_session(server, user["id"], status="running")
    for path in (f"/api/resume/{session_id}", f"/api/sessions/{session_id}/events/stream", "/api/sessions/updates"):
        response = await client.head(path)
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        assert response.content == b""
    assert (await client.head(f"/api/resume/{uuid.uuid4()}")).status_code == 404
    assert await event_log.session_status(server.ctx, session_id) == "running"
    assert server.ctx.hub.stats()["subscribers"] == 0


async def test_a_session_can_be_found_by_its_path(server: TestServer, client: httpx.AsyncClient, user: dict) -> None:
    session_id = await new_session(server, user["id"], session_path=f"octo__hello__{uuid.uuid4().hex[:10]}")
    path = await server.ctx.pool.fetchval("SELECT session_path FROM chat_sessions WHERE id = $1", session_id)
    ids = await append(server, session_id, 2)
    async with open_sse(client, f"/api/sessions/{path}/events/stream") as stream:
        events = await stream.until("completed")
    assert ids_of(events) == ids
    assert events[-1].json()["websiteSessionId"] == session_id


# ---- resume ------------------------------------------------------------------------------------


async def test_resume_frames_of_a_finished_session(server: TestServer, client: httpx.AsyncClient, user: dict) -> None:
    session_id = await new_session(server, user["id"], status="completed", user_request="Add dark mode")
    ids = await append(server, session_id, 3)
    async with open_sse(client, f"/api/resume/{session_id}") as stream:
        events = await stream.until("completed")
    kinds = [e.json().get("type") if not e.named else e.event for e in events]
    assert kinds == [
        "submission_preview",
        "reconnected",
        "replay_start",
        "assistant",
        "assistant",
        "assistant",
        "replay_end",
        "session_info",
        "completed",
    ]
    preview, reconnected, start = events[0].json(), events[1].json(), events[2].json()
    assert preview["message"] == "Resuming session: Add dark mode (octo/hello)"
    assert preview["source"] == "internal-api-server:/resume"
    assert preview["data"]["sessionId"] == session_id and preview["data"]["status"] == "completed"
    assert reconnected["message"] == "Session completed" and reconnected["status"] == "completed"
    assert start["totalEvents"] == 3 and events[6].json()["totalEvents"] == 3
    info = events[7].json()
    assert info["sessionId"] == session_id and info["branch"] == "claude/fix-login" and info["status"] == "completed"
    assert ids_of(events) == ids
    # Control frames stay unnamed as in the original; stored events are named by their type.
    assert not events[0].named and events[3].named
    assert events[-1].json() == {"websiteSessionId": session_id, "completed": True, "replayed": True}


async def test_resume_of_a_running_session_follows_it_and_changes_nothing(
    server: TestServer, client: httpx.AsyncClient, user: dict
) -> None:
    session_id = await new_session(server, user["id"], status="running")
    old = await append(server, session_id, 2)
    async with open_sse(client, f"/api/resume/{session_id}", last_event_id=old[0]) as stream:
        events = await stream.until(lambda e: e.json().get("type") == "live_stream_start")
        assert events[1].json()["message"] == "Reconnected to active session"
        assert events[2].json()["totalEvents"] == 1
        assert ids_of(events) == old[1:]
        new = await append(server, session_id, 2)
        assert [int((await stream.next()).id) for _ in new] == new
        assert await event_log.session_status(server.ctx, session_id) == "running"
        await set_status(server, session_id, "completed")
        completed = await stream.next()
        assert completed.event == "completed"
        assert completed.json() == {"websiteSessionId": session_id, "completed": True, "replayed": False}


# ---- the events list ---------------------------------------------------------------------------


async def test_events_list_pages(server: TestServer, client: httpx.AsyncClient, user: dict) -> None:
    session_id = await new_session(server, user["id"])
    ids = await append(server, session_id, 7)
    response = await client.get(f"/api/sessions/{session_id}/events", params={"limit": 3})
    assert response.status_code == 200
    data = response.json()["data"]
    assert [e["id"] for e in data["events"]] == ids[:3]
    first = data["events"][0]
    assert first["chatSessionId"] == session_id
    assert first["eventData"] == {"type": "assistant", "n": 0}
    assert first["timestamp"].endswith("Z")
    assert data["total"] == 7 and data["hasMore"] is True and data["lastId"] == ids[2]
    assert data["sessionId"] == session_id and data["status"] == "completed" and data["sessionPath"]
    collected = data["events"]
    while data["hasMore"]:
        response = await client.get(f"/api/sessions/{session_id}/events", params={"after": data["lastId"], "limit": 3})
        data = response.json()["data"]
        collected += data["events"]
    assert [e["id"] for e in collected] == ids
    everything = (await client.get(f"/api/sessions/{session_id}/events")).json()["data"]
    assert [e["id"] for e in everything["events"]] == ids and everything["hasMore"] is False
    assert everything["limit"] is None and everything["total"] == 7 and everything["lastId"] == ids[-1]
    capped = (await client.get(f"/api/sessions/{session_id}/events", params={"limit": 99999})).json()["data"]
    assert capped["limit"] == 5000


async def test_without_paging_the_events_list_is_the_whole_history_streamed(
    server: TestServer, client: httpx.AsyncClient, user: dict
) -> None:
    # The website's getEvents(id) never pages: a long session must come back whole, its end (and
    # its result) included, sent in chunks rather than built in memory.
    session_id = await new_session(server, user["id"])
    ids: list[int] = []
    for start in range(0, 2_600, 1_300):
        ids += await append(server, session_id, 1_300, start=start)
    async with client.stream("GET", f"/api/sessions/{session_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")
        assert "content-length" not in response.headers  # chunked, batch by batch
        body = b"".join([chunk async for chunk in response.aiter_raw()])
    data = orjson.loads(body)["data"]
    assert [e["id"] for e in data["events"]] == ids
    assert [e["eventData"]["n"] for e in data["events"]] == list(range(2_600))
    assert data["total"] == 2_600 and data["hasMore"] is False and data["lastId"] == ids[-1]
    assert data["sessionId"] == session_id and data["status"] == "completed" and data["after"] == 0
    # Paging stays for clients that ask for it.
    page = (await client.get(f"/api/sessions/{session_id}/events", params={"after": ids[999]})).json()["data"]
    assert [e["id"] for e in page["events"]] == ids[1000:2000] and page["hasMore"] is True
    empty = await new_session(server, user["id"])
    nothing = (await client.get(f"/api/sessions/{empty}/events")).json()
    assert nothing["success"] is True and nothing["data"]["events"] == [] and nothing["data"]["lastId"] == 0


@pytest.mark.parametrize("params", [{"after": "x"}, {"after": "-1"}, {"limit": "0"}, {"limit": "many"}])
async def test_events_list_rejects_bad_paging(
    server: TestServer, client: httpx.AsyncClient, user: dict, params: dict
) -> None:
    session_id = await new_session(server, user["id"])
    response = await client.get(f"/api/sessions/{session_id}/events", params=params)
    assert response.status_code == 400
    assert response.json()["success"] is False


async def test_post_to_the_events_path_is_not_claimed_by_the_list(
    server: TestServer, client: httpx.AsyncClient, user: dict
) -> None:
    session_id = await new_session(server, user["id"])
    response = await client.post(f"/api/sessions/{session_id}/events", json={}, headers={"Origin": ORIGIN})
    # The events resource answers POST too: whatever it says about this body, it is not a 405.
    assert response.status_code != 405


# ---- the chat page's order: the whole history, then the stream without a position ------------


async def fetch_history(client: httpx.AsyncClient, session_id: str, **params: Any) -> dict[str, Any]:
    """GET /api/sessions/:id/events as the chat page does (no parameters: the whole history)."""
    response = await client.get(f"/api/sessions/{session_id}/events", params=params)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def assert_live(events: list[SSEEvent]) -> None:
    assert all("_replayed" not in e.json() and "_originalTimestamp" not in e.json() for e in stored_events(events))


def assert_replayed(events: list[SSEEvent]) -> None:
    assert stored_events(events) and all(e.json()["_replayed"] is True for e in stored_events(events))


async def test_a_page_that_fetched_the_history_gets_what_came_after_it_live(
    server: TestServer, client: httpx.AsyncClient, user: dict
) -> None:
    session_id = await new_session(server, user["id"], status="running")
    old = await append(server, session_id, 3)
    history = await fetch_history(client, session_id)
    assert [e["id"] for e in history["events"]] == old and history["lastId"] == old[-1]
    # Stored between the page's fetch and its stream: the page must see it.
    between = await event_log.append(server.ctx, session_id, [{"type": "assistant", "text": "between"}])
    async with open_sse(client, f"/api/sessions/{session_id}/events/stream") as stream:
        first = await stream.next()
        assert int(first.id) == between[0] and first.event == "assistant"
        assert first.json() == {"type": "assistant", "text": "between"}
        later = await event_log.append(server.ctx, session_id, [{"type": "result", "subtype": "success"}])
        second = await stream.next()
        assert int(second.id) == later[0] and "_replayed" not in second.json()
        await set_status(server, session_id, "completed")
        events = [first, second, *await stream.until("completed")]
    # Nothing of the fetched history again, everything after it live, each once.
    assert ids_of(events) == between + later
    assert_live(events)
    assert events[-1].json() == {
        "websiteSessionId": session_id,
        "completed": True,
        "replayed": False,
        "status": "completed",
    }


async def test_the_fetched_position_serves_one_stream_only(
    server: TestServer, client: httpx.AsyncClient, user: dict
) -> None:
    session_id = await new_session(server, user["id"])
    ids = await append(server, session_id, 2)
    await fetch_history(client, session_id)
    path = f"/api/sessions/{session_id}/events/stream"
    async with open_sse(client, path) as stream:
        events = await stream.until("completed")
    assert ids_of(events) == []  # a finished session the page has whole: only `completed`
    assert events[-1].json()["replayed"] is True
    # A second stream without a new fetch (another EventSource of that page, a client that
    # never fetched) gets what every stream got before: the whole history, replayed.
    async with open_sse(client, path) as stream:
        events = await stream.until("completed")
    assert ids_of(events) == ids
    assert_replayed(events)


async def test_an_empty_fetched_history_makes_everything_after_it_live(
    server: TestServer, client: httpx.AsyncClient, user: dict
) -> None:
    session_id = await new_session(server, user["id"], status="running")
    assert (await fetch_history(client, session_id))["events"] == []
    first = await append(server, session_id, 2)
    async with open_sse(client, f"/api/sessions/{session_id}/events/stream") as stream:
        events = [await stream.next() for _ in first]
        await set_status(server, session_id, "completed")
        events += await stream.until("completed")
    assert ids_of(events) == first
    assert_live(events)


async def test_an_explicit_position_wins_over_the_fetched_one(
    server: TestServer, client: httpx.AsyncClient, user: dict
) -> None:
    session_id = await new_session(server, user["id"])
    ids = await append(server, session_id, 4)
    path = f"/api/sessions/{session_id}/events/stream"
    await fetch_history(client, session_id)
    async with open_sse(client, path, last_event_id=ids[0]) as stream:
        events = await stream.until("completed")
    assert ids_of(events) == ids[1:]
    assert_replayed(events)
    await fetch_history(client, session_id)
    async with open_sse(client, path, params={"lastEventId": ids[1]}) as stream:
        events = await stream.until("completed")
    assert ids_of(events) == ids[2:]
    assert_replayed(events)
    await fetch_history(client, session_id)
    async with open_sse(client, path, last_event_id=0) as stream:  # 0 is a position too: everything
        events = await stream.until("completed")
    assert ids_of(events) == ids
    assert_replayed(events)


async def test_a_paged_fetch_remembers_nothing(server: TestServer, client: httpx.AsyncClient, user: dict) -> None:
    session_id = await new_session(server, user["id"])
    ids = await append(server, session_id, 3)
    await fetch_history(client, session_id, limit=10)
    await fetch_history(client, session_id, after=0)
    async with open_sse(client, f"/api/sessions/{session_id}/events/stream") as stream:
        events = await stream.until("completed")
    assert ids_of(events) == ids
    assert_replayed(events)


async def test_resume_ignores_the_fetched_position(server: TestServer, client: httpx.AsyncClient, user: dict) -> None:
    session_id = await new_session(server, user["id"])
    ids = await append(server, session_id, 2)
    await fetch_history(client, session_id)
    async with open_sse(client, f"/api/resume/{session_id}") as stream:
        events = await stream.until("completed")
    assert ids_of(events) == ids
    assert_replayed(events)


async def test_the_fetched_position_belongs_to_its_login_session(
    server: TestServer, client: httpx.AsyncClient, user: dict
) -> None:
    session_id = await new_session(server, user["id"])
    ids = await append(server, session_id, 2)
    path = f"/api/sessions/{session_id}/events/stream"
    await fetch_history(client, session_id)
    # The same person in another browser (another login session): the whole history, replayed.
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as other_browser:
        login = await other_browser.post("/api/auth/login", json={"email": user["email"], "password": PASSWORD})
        assert login.status_code == 200, login.text
        async with open_sse(other_browser, path) as stream:
            events = await stream.until("completed")
        assert ids_of(events) == ids
        assert_replayed(events)
    # Another person acting as this one (an admin impersonating): the same.
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as admin:
        admin_user = await register(admin)
        await server.ctx.pool.execute("UPDATE users SET is_admin = true WHERE id = $1", admin_user["id"])
        assert (await admin.post(f"/api/admin/users/{user['id']}/impersonate")).status_code == 200
        async with open_sse(admin, path) as stream:
            events = await stream.until("completed")
        assert ids_of(events) == ids
        assert_replayed(events)
    # The browser that fetched still has its position.
    async with open_sse(client, path) as stream:
        assert ids_of(await stream.until("completed")) == []


async def test_the_fetched_position_belongs_to_its_chat_session(
    server: TestServer, client: httpx.AsyncClient, user: dict
) -> None:
    fetched, other = await new_session(server, user["id"]), await new_session(server, user["id"])
    await append(server, fetched, 2)
    other_ids = await append(server, other, 2)
    await fetch_history(client, fetched)
    async with open_sse(client, f"/api/sessions/{other}/events/stream") as stream:
        events = await stream.until("completed")
    assert ids_of(events) == other_ids
    assert_replayed(events)


async def test_two_fetches_before_a_stream_keep_the_older_position(
    server: TestServer, client: httpx.AsyncClient, user: dict
) -> None:
    # Two tabs of one browser load the page while the run goes on; whichever stream opens first
    # must miss nothing, so it starts after the older fetch (the second stream replays).
    session_id = await new_session(server, user["id"], status="running")
    first_fetch = await append(server, session_id, 2)
    await fetch_history(client, session_id)
    between = await append(server, session_id, 2, start=2)
    assert (await fetch_history(client, session_id))["lastId"] == between[-1]
    async with open_sse(client, f"/api/sessions/{session_id}/events/stream") as stream:
        events = [await stream.next() for _ in between]
        await set_status(server, session_id, "completed")
        events += await stream.until("completed")
    assert ids_of(events) == between
    assert_live(events)
    assert first_fetch[-1] < between[0]


async def test_a_fetched_position_expires(server: TestServer, client: httpx.AsyncClient, user: dict) -> None:
    session_id = await new_session(server, user["id"])
    ids = await append(server, session_id, 2)
    await fetch_history(client, session_id)
    remembered = await server.ctx.pool.fetchrow(
        "SELECT last_event_id, expires_at - now() AS left FROM fetched_histories WHERE chat_session_id = $1",
        session_id,
    )
    assert remembered["last_event_id"] == ids[-1]
    assert 0 < remembered["left"].total_seconds() <= 30
    # As if the page had opened its stream too late.
    await server.ctx.pool.execute(
        "UPDATE fetched_histories SET expires_at = now() - interval '1 second' WHERE chat_session_id = $1", session_id
    )
    async with open_sse(client, f"/api/sessions/{session_id}/events/stream") as stream:
        events = await stream.until("completed")
    assert ids_of(events) == ids
    assert_replayed(events)
    # An expired position is replaced by the next fetch.
    await fetch_history(client, session_id)
    async with open_sse(client, f"/api/sessions/{session_id}/events/stream") as stream:
        assert ids_of(await stream.until("completed")) == []


# ---- large histories and concurrency ------------------------------------------------------------


async def test_a_10000_event_session_replays_in_order(
    server: TestServer, client: httpx.AsyncClient, user: dict
) -> None:
    session_id = await new_session(server, user["id"])
    ids: list[int] = []
    for start in range(0, 10_000, 2_000):
        ids += await append(server, session_id, 2_000, start=start)
    async with open_sse(client, f"/api/sessions/{session_id}/events/stream") as stream:
        events = await stream.until("completed", timeout=60)
    assert ids_of(events) == ids
    assert [e.json()["n"] for e in stored_events(events)] == list(range(10_000))


async def test_reconnecting_while_events_are_appended_loses_and_repeats_nothing(
    server: TestServer, client: httpx.AsyncClient, user: dict
) -> None:
    session_id = await new_session(server, user["id"], status="running")
    appended: list[int] = []
    stop = asyncio.Event()

    async def writer() -> None:
        n = 0
        while not stop.is_set():
            appended.extend(await append(server, session_id, 1 + n % 3, start=n))
            n += 3
            await asyncio.sleep(0.002)

    writing = asyncio.create_task(writer())
    received: list[int] = []
    last_event_id: str | None = None
    try:
        for _ in range(8):  # connect, read a little, drop the connection, reconnect with the last id
            async with open_sse(
                client, f"/api/sessions/{session_id}/events/stream", last_event_id=last_event_id
            ) as stream:
                for _ in range(15):
                    event = await stream.next()
                    if event.id is not None:
                        received.append(int(event.id))
                last_event_id = stream.last_event_id
    finally:
        stop.set()
        await writing
    async with open_sse(client, f"/api/sessions/{session_id}/events/stream", last_event_id=last_event_id) as stream:
        await set_status(server, session_id, "completed")
        received += ids_of(await stream.until("completed"))
    assert received == appended  # every id once, in order


async def test_concurrent_writers_never_make_a_live_viewer_skip(
    server: TestServer, client: httpx.AsyncClient, user: dict
) -> None:
    session_id = await new_session(server, user["id"], status="running")
    async with open_sse(client, f"/api/sessions/{session_id}/events/stream") as stream:
        await wait_for(lambda: session_id in server.ctx.hub._sessions)
        results = await asyncio.gather(*(append(server, session_id, 2, start=10 * n) for n in range(20)))
        appended = sorted(i for ids in results for i in ids)
        await set_status(server, session_id, "completed")
        assert ids_of(await stream.until("completed")) == appended


# ---- hub membership, heartbeats, lifetime, overflow -------------------------------------------


async def test_disconnected_clients_leave_the_hub_within_a_second(
    server: TestServer, client: httpx.AsyncClient, user: dict
) -> None:
    session_id = await new_session(server, user["id"], status="running")
    hub = server.ctx.hub
    before = hub.stats()["subscribers"]
    open_before = await open_streams_metric(client)
    clients = [httpx.AsyncClient(base_url=server.url, cookies=client.cookies, timeout=10) for _ in range(20)]
    async with contextlib.AsyncExitStack() as stack:
        for other in clients:
            await stack.enter_async_context(other)
        streams = [
            await stack.enter_async_context(open_sse(other, f"/api/sessions/{session_id}/events/stream"))
            for other in clients
        ]
        for stream in streams:
            assert stream.status_code == 200
        await wait_for(lambda: hub.stats()["subscribers"] == before + 20)
        assert await open_streams_metric(client) == open_before + 20
        list_stream = await stack.enter_async_context(open_sse(client, "/api/sessions/updates"))
        assert (await list_stream.next()).event == "connected"
        await wait_for(lambda: hub.stats()["listSubscribers"] >= 1)
    # The heartbeat is 15 s away: only the close itself can take them out this fast.
    await wait_for(lambda: hub.stats()["subscribers"] == before, timeout=1.0)
    assert session_id not in hub._sessions
    for _ in range(100):
        if await open_streams_metric(client) == open_before:
            break
        await asyncio.sleep(0.01)
    assert await open_streams_metric(client) == open_before


async def open_streams_metric(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    (line,) = [line for line in text.splitlines() if line.startswith("webedt_sse_open_streams ")]
    return float(line.split()[1])


async def test_heartbeats_and_lifetime(database_url: str) -> None:
    env = test_env(database_url, SSE_HEARTBEAT_SECONDS="0.1", STREAM_LIFETIME_SECONDS="1")
    async with start_app(env) as app, httpx.AsyncClient(base_url=app.url, timeout=10) as http:
        user = await register(http)
        session_id = await new_session(app, user["id"], status="running")
        ids = await append(app, session_id, 2)
        async with open_sse(http, f"/api/sessions/{session_id}/events/stream") as stream:
            events = await stream.rest(timeout=5)  # ends by itself after about a second
            assert ids_of(events) == ids
            assert "completed" not in [e.event for e in events]
            assert len(stream.comments) >= 3
            assert stream.retries[-1] <= 1000  # reconnect soon
        async with open_sse(http, "/api/sessions/updates") as stream:
            await stream.rest(timeout=5)
            assert "heartbeat" in stream.comments


async def test_an_overflowing_subscriber_is_dropped_and_loses_nothing(
    server: TestServer, client: httpx.AsyncClient, user: dict
) -> None:
    session_id = await new_session(server, user["id"], status="running")
    hub = server.ctx.hub
    slow = hub.subscribe_session(session_id, limit=3)
    healthy = hub.subscribe_session(session_id)
    try:
        hub.caught_up(slow, await event_log.last_id(server.ctx, session_id))
        ids: list[int] = []
        for n in range(5):
            ids += await append(server, session_id, 1, start=n)
        await wait_for(lambda: len(healthy.items) == 5)
        assert slow.reason == "overflow" and hub.stats()["dropped"] >= 1
        assert [item.id for item in healthy.take()] == ids
    finally:
        hub.unsubscribe(slow)
        hub.unsubscribe(healthy)
    # A stream whose subscriber is dropped is cut; reconnecting with its last id loses nothing.
    async with open_sse(client, f"/api/sessions/{session_id}/events/stream", last_event_id=ids[1]) as stream:
        await set_status(server, session_id, "completed")
        assert ids_of(await stream.until("completed")) == ids[2:]


async def test_live_frames_reach_an_idle_stream_without_waking_it(
    server: TestServer, client: httpx.AsyncClient, user: dict
) -> None:
    """The hub writes a live stream's frames itself (services/subscriber.py): the stream's
    coroutine, waiting idle, is never woken for them, and each arrives once, in order."""
    session_id = await new_session(server, user["id"], status="running")
    hub = server.ctx.hub
    first = await append(server, session_id, 1)
    async with open_sse(client, f"/api/sessions/{session_id}/events/stream") as stream:
        assert int((await stream.next()).id) == first[0]
        await wait_for(lambda: session_id in hub._sessions)
        (subscriber,) = hub._sessions[session_id].subscribers
        await wait_for(lambda: subscriber.waiter is not None)
        waiter = subscriber.waiter
        ids: list[int] = []
        for n in range(3):
            ids += await append(server, session_id, 2, start=2 * n)
        assert [int((await stream.next()).id) for _ in ids] == ids
        assert subscriber.waiter is waiter and not waiter.done()  # never woken
        assert subscriber.items == []
        await set_status(server, session_id, "completed")
        assert ids_of(await stream.until("completed")) == []


async def test_a_stream_dropped_for_overflow_ends_and_resumes(
    server: TestServer, client: httpx.AsyncClient, user: dict
) -> None:
    session_id = await new_session(server, user["id"], status="running")
    hub = server.ctx.hub
    first = await append(server, session_id, 1)
    received: list[int] = []
    async with open_sse(client, f"/api/sessions/{session_id}/events/stream") as stream:
        received.append(int((await stream.next()).id))
        await wait_for(lambda: session_id in hub._sessions)
        (subscriber,) = hub._sessions[session_id].subscribers
        subscriber.limit = 1  # this viewer can hold only one frame from now on
        more = await event_log.append(server.ctx, session_id, [{"type": "a"}, {"type": "b"}])
        with contextlib.suppress(httpx.HTTPError):
            received += ids_of(await stream.rest(timeout=5))  # the server cuts the connection
        last = stream.last_event_id
    assert subscriber.reason == "overflow"
    async with open_sse(client, f"/api/sessions/{session_id}/events/stream", last_event_id=last) as stream:
        await set_status(server, session_id, "completed")
        received += ids_of(await stream.until("completed"))
    assert received == first + more


async def test_killing_the_listen_connection_loses_nothing(database_url: str, postgres_url: str) -> None:
    async with start_app(test_env(database_url)) as app, httpx.AsyncClient(base_url=app.url, timeout=10) as http:
        user = await register(http)
        session_id = await new_session(app, user["id"], status="running")
        hub = app.ctx.hub
        database = await app.ctx.pool.fetchval("SELECT current_database()")
        async with open_sse(http, f"/api/sessions/{session_id}/events/stream") as stream:
            before = await append(app, session_id, 2)
            assert [int((await stream.next()).id) for _ in before] == before
            pid = hub.stats()["listenerPid"]
            admin = await asyncpg.connect(postgres_url)
            try:
                # Keep the hub from reconnecting for a moment, so the gap is certain.
                await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
                assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
                await wait_for(lambda: not hub.connected)
                # Appended while nobody listens: these notifications are lost for good.
                during = await append(app, session_id, 3, start=2, kind="during")
                await asyncio.sleep(0.3)
            finally:
                await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
                await admin.close()
            # Nothing else is appended: only the catch-up after the reconnect can deliver them.
            received = [await stream.next(timeout=15) for _ in during]
            assert [int(e.id) for e in received] == during
            assert [e.event for e in received] == ["during"] * 3
            assert hub.stats()["reconnects"] >= 1 and hub.stats()["listenerPid"] != pid
            after = await append(app, session_id, 2, start=5)
            assert [int((await stream.next()).id) for _ in after] == after


async def test_draining_ends_open_streams_without_completed(database_url: str) -> None:
    async with contextlib.AsyncExitStack() as stack:
        app = await stack.enter_async_context(start_app(test_env(database_url)))
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=app.url, timeout=10))
        user = await register(http)
        session_id = await new_session(app, user["id"], status="running")
        stream = await stack.enter_async_context(open_sse(http, f"/api/sessions/{session_id}/events/stream"))
        list_stream = await stack.enter_async_context(open_sse(http, "/api/sessions/updates"))
        assert (await list_stream.next()).event == "connected"
        await wait_for(lambda: app.ctx.hub.stats()["subscribers"] == 2)
        app.ctx.draining = True
        await app.ctx.hub.stop()
        assert await stream.rest(timeout=5) == []
        assert await list_stream.rest(timeout=5) == []
        assert 500 <= stream.retries[-1] <= 5000
        # A stream that arrives while draining ends at once, before replaying.
        async with open_sse(http, f"/api/sessions/{session_id}/events/stream") as late:
            assert await late.rest(timeout=5) == []


# ---- the session-list stream --------------------------------------------------------------------


async def test_session_list_updates(server: TestServer, client: httpx.AsyncClient, user: dict) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as other:
        stranger = await register(other)
        async with open_sse(client, "/api/sessions/updates") as stream:
            assert stream.headers["content-type"] == "text/event-stream"
            connected = await stream.next()
            assert connected.event == "connected"
            assert connected.json()["userId"] == user["id"] and connected.json()["subscriberId"]
            # `connected` means subscribed: what is announced right after it is delivered.
            await session_list.announce(server.ctx, stranger["id"], "created", {"id": "not-yours"})
            row = {"id": "s-1", "status": "running", "userRequest": "y" * 9000}
            await session_list.announce(server.ctx, user["id"], "created", row)
            await session_list.announce(server.ctx, user["id"], "status_changed", {"id": "s-1", "status": "completed"})
            await session_list.announce(server.ctx, user["id"], "deleted", {"id": "s-1"})
            events = [await stream.next() for _ in range(3)]
    assert [e.event for e in events] == ["created", "status_changed", "deleted"]
    assert events[0].json()["session"] == row and events[0].json()["type"] == "created"
    assert events[1].json()["session"] == {"id": "s-1", "status": "completed"}
    assert events[2].json()["timestamp"].endswith("Z")
    assert all(e.id is not None for e in events)


async def test_session_list_reconnect_gets_what_it_missed(
    server: TestServer, client: httpx.AsyncClient, user: dict
) -> None:
    async with open_sse(client, "/api/sessions/updates") as stream:
        await stream.next()
        await session_list.announce(server.ctx, user["id"], "created", {"id": "a"})
        seen = await stream.next()
    await session_list.announce(server.ctx, user["id"], "updated", {"id": "a", "title": "missed"})
    async with open_sse(client, "/api/sessions/updates", last_event_id=seen.id) as stream:
        assert (await stream.next()).event == "connected"
        missed = await stream.next()
        assert missed.event == "updated" and missed.json()["session"]["title"] == "missed"
        await session_list.announce(server.ctx, user["id"], "deleted", {"id": "a"})
        assert (await stream.next()).event == "deleted"


# ---- stored events served as their stored text (services/sse.stored_event_frame) -----------------

# Events whose encoding could differ between PostgreSQL's text and orjson: escapes, non-ASCII,
# numbers, key order, empty objects, a `type` that names no SSE event, keys a replay adds.
TRICKY_EVENTS: list[Any] = [
    {"type": "assistant", "text": "naïve — 漢字 😀", "nested": {"b": [1, 2.5, None, True], "a": {}}},
    {
        "type": "user",
        "control": '\x01\x1f\t\n\r\b\f"\\/',
        "zero": 0,
        "neg": -3,
        "small": 1e-7,
        "big": 12345678901234567,
    },
    {},
    {"type": "multi\nline", "x": 1.0},
    {"type": 5, "long key first": 1, "k": 2},
    {"type": "result", "_replayed": "already there", "z": [{}]},
]


def pairs(data: bytes | str) -> Any:
    """The JSON value with every object as its list of (key, value) pairs: equal values in the same
    key order, whatever the spacing."""
    import json

    return json.loads(data, object_pairs_hook=list)


def frame_parts(frame: bytes) -> tuple[str, int, Any]:
    """(event name, id, data) of one SSE frame as services/sse.event_frame writes it."""
    fields = dict(line.split(": ", 1) for line in frame.decode().strip("\n").split("\n"))
    return fields.get("event", "message"), int(fields["id"]), pairs(fields["data"])


async def tricky_session(server: TestServer, user_id: str, status: str) -> tuple[str, list[asyncpg.Record]]:
    session_id = await new_session(server, user_id, status=status)
    await event_log.append(server.ctx, session_id, TRICKY_EVENTS)
    for value in ('[1, "two", {"type": "x"}]', '"just text"'):
        await server.ctx.pool.execute(
            "INSERT INTO events (chat_session_id, event_data) VALUES ($1, $2::text::jsonb)", session_id, value
        )
    # Microseconds that rounding (rather than cutting) to milliseconds would carry into the next second.
    await server.ctx.pool.execute(
        "UPDATE events SET timestamp = '2024-12-31 23:59:59.999999+00' WHERE chat_session_id = $1", session_id
    )
    return session_id, await event_log.read_after(server.ctx, session_id, 0, 100)


def old_history_event(session_id: str, row: asyncpg.Record) -> dict[str, Any]:
    """An events-list entry as it was built before the stored text was served."""
    from services.clock import iso

    return {
        "id": row["id"],
        "chatSessionId": session_id,
        "eventData": row["event_data"],
        "timestamp": iso(row["timestamp"]),
    }


async def test_history_and_replay_serve_the_same_json_as_before(
    server: TestServer, client: httpx.AsyncClient, user: dict
) -> None:
    from services.clock import iso
    from services.sse import event_frame

    session_id, rows = await tricky_session(server, user["id"], "completed")
    expected = [pairs(orjson.dumps(old_history_event(session_id, row))) for row in rows]
    assert [e[-1] for e in expected] == [("timestamp", "2024-12-31T23:59:59.999Z")] * len(rows)
    whole = (await client.get(f"/api/sessions/{session_id}/events")).content
    assert [pairs(orjson.dumps(e)) for e in orjson.loads(whole)["data"]["events"]] == expected
    assert pairs(whole)[1][1][0] == ("events", expected)  # the raw body, key order included
    page = (await client.get(f"/api/sessions/{session_id}/events", params={"limit": 100})).content
    assert pairs(page)[1][1][0] == ("events", expected)

    # An explicit position (0: everything): right after a whole-history fetch, a stream without
    # one would start after what was fetched (issue 25).
    async with open_sse(client, f"/api/sessions/{session_id}/events/stream", last_event_id=0) as stream:
        replayed = stored_events(await stream.until("completed"))
    old_frames = [frame_parts(event_frame(r["id"], r["event_data"], iso(r["timestamp"]))) for r in rows]
    assert [(e.event, int(e.id), pairs(e.data)) for e in replayed] == old_frames
    # An event that had `_replayed` already keeps it once, in its place, with the replay's value.
    assert [pair for pair in pairs(replayed[5].data) if pair[0] == "_replayed"] == [("_replayed", True)]


async def test_live_frames_serve_the_same_json_as_before(
    server: TestServer, client: httpx.AsyncClient, user: dict
) -> None:
    from services.sse import event_frame

    session_id = await new_session(server, user["id"], status="running")
    first = await append(server, session_id, 1)
    async with open_sse(client, f"/api/sessions/{session_id}/events/stream") as stream:
        assert int((await stream.next()).id) == first[0]  # replayed: what follows comes live
        ids = await event_log.append(server.ctx, session_id, TRICKY_EVENTS)
        live = [await stream.next() for _ in ids]
        await set_status(server, session_id, "completed")
    rows = await event_log.read_after(server.ctx, session_id, first[0], 100)
    old_frames = [frame_parts(event_frame(r["id"], r["event_data"])) for r in rows]
    assert [(e.event, int(e.id), pairs(e.data)) for e in live] == old_frames
