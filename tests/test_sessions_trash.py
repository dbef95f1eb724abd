"""The trash lifecycle: delete, list deleted, restore, bulk operations, permanent deletion."""

from __future__ import annotations

import httpx

from services import event_log
from tests.helpers import TestServer, register
from tests.test_sessions_api import announcements, create


async def test_delete_list_restore(server: TestServer, client: httpx.AsyncClient) -> None:
    user = await register(client)
    session = await create(client)
    response = await client.delete(f"/api/sessions/{session['id']}")
    assert response.status_code == 200
    # No GitHub or Claude connected: nothing to clean up, nothing reported.
    assert response.json() == {"success": True, "data": {"message": "Session deleted", "cleanup": {}}}

    again = await client.delete(f"/api/sessions/{session['id']}")
    assert again.status_code == 404
    assert again.json() == {"success": False, "error": "Session not found"}

    trash = (await client.get("/api/sessions/deleted")).json()
    assert trash["success"] is True
    data = trash["data"]
    assert [s["id"] for s in data["sessions"]] == [session["id"]]
    assert data["sessions"][0]["deletedAt"] is not None
    assert {k: data[k] for k in ("total", "limit", "offset", "hasMore")} == {
        "total": 1,
        "limit": 20,
        "offset": 0,
        "hasMore": False,
    }

    restored = await client.post(f"/api/sessions/{session['id']}/restore")
    assert restored.status_code == 200
    assert restored.json() == {"success": True, "data": {"message": "Session restored"}}
    assert (await client.get("/api/sessions/deleted")).json()["data"]["total"] == 0
    listed = (await client.get("/api/sessions")).json()["data"]["sessions"]
    assert [s["id"] for s in listed] == [session["id"]] and listed[0]["deletedAt"] is None

    not_in_trash = await client.post(f"/api/sessions/{session['id']}/restore")
    assert not_in_trash.status_code == 404
    assert not_in_trash.json() == {"success": False, "error": "Session not found in trash"}

    kinds = [kind for kind, s in await announcements(server, user["id"]) if s["id"] == session["id"]]
    assert kinds == ["created", "deleted", "created"]


async def test_deleted_list_pagination(client: httpx.AsyncClient) -> None:
    await register(client)
    sessions = [await create(client) for _ in range(3)]
    for session in sessions:
        await client.delete(f"/api/sessions/{session['id']}")
    page = (await client.get("/api/sessions/deleted", params={"limit": 2})).json()["data"]
    # Most recently deleted first.
    assert [s["id"] for s in page["sessions"]] == [sessions[2]["id"], sessions[1]["id"]]
    assert page["hasMore"] is True and page["total"] == 3
    rest = (await client.get("/api/sessions/deleted", params={"limit": 2, "offset": 2})).json()["data"]
    assert [s["id"] for s in rest["sessions"]] == [sessions[0]["id"]] and rest["hasMore"] is False
    assert (await client.get("/api/sessions/deleted")).json()["data"]["limit"] == 20
    assert (await client.get("/api/sessions/deleted", params={"limit": 5000})).json()["data"]["limit"] == 100


async def test_bulk_lifecycle_with_permanent_deletion(server: TestServer, client: httpx.AsyncClient) -> None:
    user = await register(client)
    sessions = [await create(client) for _ in range(3)]
    ids = [s["id"] for s in sessions]
    for session_id in ids:
        await client.post(f"/api/sessions/{session_id}/messages", json={"type": "user", "content": "hello"})
        await client.post(f"/api/sessions/{session_id}/events", json={"eventData": {"type": "assistant", "n": 1}})

    deleted = await client.post("/api/sessions/bulk-delete", json={"ids": [*ids[:2], ids[0]]})
    assert deleted.status_code == 200
    assert deleted.json() == {
        "success": True,
        "data": {"message": "2 session(s) deleted", "count": 2, "cleanup": {"branches": [], "remoteSessions": []}},
    }
    # All or nothing: one session not in the list fails the whole request.
    mixed = await client.post("/api/sessions/bulk-delete", json={"ids": [ids[2], ids[0]]})
    assert mixed.status_code == 404
    assert mixed.json() == {"success": False, "error": "One or more sessions not found"}
    assert (await client.get(f"/api/sessions/{ids[2]}")).json()["session"]["deletedAt"] is None

    not_trashed = await client.post("/api/sessions/bulk-delete-permanent", json={"ids": ids})
    assert not_trashed.status_code == 404
    assert not_trashed.json() == {"success": False, "error": "One or more sessions not found in trash"}

    restored = await client.post("/api/sessions/bulk-restore", json={"ids": [ids[1]]})
    assert restored.json() == {"success": True, "data": {"message": "1 session(s) restored", "count": 1}}
    assert {s["id"] for s in (await client.get("/api/sessions/deleted")).json()["data"]["sessions"]} == {ids[0]}

    gone = await client.post("/api/sessions/bulk-delete-permanent", json={"ids": [ids[0]]})
    assert gone.status_code == 200
    assert gone.json() == {"success": True, "data": {"message": "1 session(s) permanently deleted", "count": 1}}
    assert (await client.get(f"/api/sessions/{ids[0]}")).status_code == 404
    assert (await client.get(f"/api/sessions/{ids[0]}/messages")).status_code == 404
    assert await event_log.read_after(server.ctx, ids[0], 0, 10) == []
    messages_left = await server.ctx.pool.fetchval("SELECT count(*) FROM messages WHERE chat_session_id = $1", ids[0])
    assert messages_left == 0
    # The others keep their history.
    assert len(await event_log.read_after(server.ctx, ids[1], 0, 10)) == 1
    assert (await client.get("/api/sessions/deleted")).json()["data"]["total"] == 0

    kinds = [(kind, s["id"]) for kind, s in await announcements(server, user["id"])]
    assert ("deleted", ids[0]) in kinds and ("deleted", ids[1]) in kinds and ("created", ids[1]) in kinds


async def test_bulk_validation(client: httpx.AsyncClient) -> None:
    await register(client)
    for path in ("/api/sessions/bulk-delete", "/api/sessions/bulk-restore", "/api/sessions/bulk-delete-permanent"):
        for body in ({}, {"ids": []}, {"ids": "abc"}, {"ids": [1, 2]}, {"ids": [""]}):
            response = await client.post(path, json=body)
            assert response.status_code == 400, (path, body)
            assert response.json() == {"success": False, "error": "Invalid session IDs"}
        too_many = await client.post(path, json={"ids": [f"id-{n}" for n in range(101)]})
        assert too_many.status_code == 400
        assert too_many.json() == {"success": False, "error": "At most 100 session IDs per request"}
