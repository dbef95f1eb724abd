"""Another person's session is always a 404 "Session not found", in single and bulk routes alike,
and nothing about it changes."""

from __future__ import annotations

import httpx

from tests.helpers import TestServer, register
from tests.test_sessions_api import create


async def test_second_user_gets_404_everywhere(server: TestServer, client: httpx.AsyncClient) -> None:
    await register(client)
    live = await create(client, title="Owner's live session")
    trashed = await create(client, title="Owner's trashed session")
    await client.post(f"/api/sessions/{live['id']}/messages", json={"type": "user", "content": "private"})
    assert (await client.delete(f"/api/sessions/{trashed['id']}")).status_code == 200
    before_live = (await client.get(f"/api/sessions/{live['id']}")).json()["session"]
    before_trashed = (await client.get(f"/api/sessions/{trashed['id']}")).json()["session"]

    async with httpx.AsyncClient(base_url=server.url) as intruder:
        await register(intruder)
        for target in (live, trashed):
            sid = target["id"]
            for method, path, body in [
                ("GET", f"/api/sessions/{sid}", None),
                ("PATCH", f"/api/sessions/{sid}", {"userRequest": "hijacked"}),
                ("DELETE", f"/api/sessions/{sid}", None),
                ("GET", f"/api/sessions/{sid}/messages", None),
                ("POST", f"/api/sessions/{sid}/messages", {"type": "user", "content": "hi"}),
                ("POST", f"/api/sessions/{sid}/events", {"eventData": {"type": "assistant"}}),
                ("POST", f"/api/sessions/{sid}/unlock", None),
                ("POST", f"/api/sessions/{sid}/restore", None),
                # By session path as well as by id.
                ("GET", f"/api/sessions/{target['sessionPath']}", None),
            ]:
                response = await intruder.request(method, path, json=body)
                assert response.status_code == 404, (method, path, response.text)
                assert response.json()["success"] is False
                assert response.json()["error"] in ("Session not found", "Session not found in trash")

        for path, ids, error in [
            ("/api/sessions/bulk-delete", [live["id"]], "One or more sessions not found"),
            ("/api/sessions/bulk-restore", [trashed["id"]], "One or more sessions not found in trash"),
            ("/api/sessions/bulk-delete-permanent", [trashed["id"]], "One or more sessions not found in trash"),
        ]:
            response = await intruder.post(path, json={"ids": ids})
            assert response.status_code == 404, path
            assert response.json() == {"success": False, "error": error}

        # Mixing one's own session with someone else's fails as a whole.
        own = await create(intruder)
        mixed = await intruder.post("/api/sessions/bulk-delete", json={"ids": [own["id"], live["id"]]})
        assert mixed.status_code == 404
        assert (await intruder.get(f"/api/sessions/{own['id']}")).json()["session"]["deletedAt"] is None

        lists = [
            (await intruder.get("/api/sessions")).json()["data"]["sessions"],
            (await intruder.get("/api/sessions/deleted")).json()["data"]["sessions"],
        ]
        assert {s["id"] for lst in lists for s in lst} == {own["id"]}

    # Nothing of the owner's changed.
    assert (await client.get(f"/api/sessions/{live['id']}")).json()["session"] == before_live
    assert (await client.get(f"/api/sessions/{trashed['id']}")).json()["session"] == before_trashed
    messages = (await client.get(f"/api/sessions/{live['id']}/messages")).json()["data"]
    assert [m["content"] for m in messages["messages"]] == ["private"]
