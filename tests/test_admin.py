"""/api/admin: users, statistics and impersonation (CONTRACT.md 1.8), without secrets."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from services.db import queries
from tests.helpers import PASSWORD, TestServer, register, unique_email

GITHUB_TOKEN = "gho_admin_secret_token_123456"
CLAUDE_ACCESS = "sk-ant-oat01-admin-access-secret"
CLAUDE_REFRESH = "sk-ant-ort01-admin-refresh-secret"


async def make_admin(server: TestServer, client: httpx.AsyncClient) -> dict[str, Any]:
    """Register a person with `client` and give them the admin flag."""
    user = await register(client)
    await queries.users.set_admin_by_email(server.ctx.pool, email=user["email"], is_admin=True)
    return user


async def login(server: TestServer, email: str, password: str = PASSWORD) -> httpx.AsyncClient:
    http = httpx.AsyncClient(base_url=server.url, timeout=30)
    response = await http.post("/api/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return http


async def who(client: httpx.AsyncClient) -> str | None:
    response = await client.get("/api/auth/session")
    return response.json()["data"]["user"]["id"] if response.status_code == 200 else None


async def test_admin_routes_need_an_admin(server: TestServer, client: httpx.AsyncClient) -> None:
    async with httpx.AsyncClient(base_url=server.url) as anonymous:
        response = await anonymous.get("/api/admin/users")
    assert response.status_code == 401
    assert response.json() == {"success": False, "error": "Unauthorized"}
    user = await register(client)
    for method, path in [
        ("GET", "/api/admin/users"),
        ("POST", "/api/admin/users"),
        ("GET", f"/api/admin/users/{user['id']}"),
        ("PATCH", f"/api/admin/users/{user['id']}"),
        ("DELETE", f"/api/admin/users/{user['id']}"),
        ("POST", f"/api/admin/users/{user['id']}/impersonate"),
        ("GET", "/api/admin/stats"),
        ("GET", "/api/admin/impersonations"),
    ]:
        response = await client.request(method, path, json={} if method in ("POST", "PATCH") else None)
        assert response.status_code == 403, (method, path)
        assert response.json() == {"success": False, "error": "Forbidden: Admin access required"}


async def test_list_users_paginates(server: TestServer, client: httpx.AsyncClient) -> None:
    await make_admin(server, client)
    for _ in range(3):
        async with httpx.AsyncClient(base_url=server.url) as other:
            await register(other)
    response = await client.get("/api/admin/users")
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    assert isinstance(body["data"], list)
    total = body["pagination"]["total"]
    assert total >= 4 and len(body["data"]) == min(total, 100)
    assert set(body["data"][0]) == {"id", "email", "displayName", "githubId", "isAdmin", "createdAt"}
    created = [u["createdAt"] for u in body["data"]]
    assert created == sorted(created)

    first = (await client.get("/api/admin/users", params={"limit": 2})).json()
    second = (await client.get("/api/admin/users", params={"limit": 2, "offset": 2})).json()
    assert len(first["data"]) == 2 and first["pagination"]["hasMore"] is True
    assert first["pagination"] == {"total": total, "limit": 2, "offset": 0, "hasMore": True}
    assert {u["id"] for u in first["data"]}.isdisjoint({u["id"] for u in second["data"]})
    assert [u["id"] for u in first["data"] + second["data"]] == [u["id"] for u in body["data"][:4]]


async def test_user_detail_never_shows_secrets(server: TestServer, client: httpx.AsyncClient) -> None:
    await make_admin(server, client)
    async with httpx.AsyncClient(base_url=server.url) as other:
        target = await register(other)
        response = await other.post(
            "/api/user/claude-auth",
            json={"accessToken": CLAUDE_ACCESS, "refreshToken": CLAUDE_REFRESH, "expiresAt": 4102444800000},
        )
        assert response.status_code == 200
    await queries.users.set_github_connection(
        server.ctx.pool,
        id=target["id"],
        github_id="4242",
        github_access_token=server.ctx.secrets.encrypt_text(GITHUB_TOKEN),
    )
    responses = [
        await client.get(f"/api/admin/users/{target['id']}"),
        await client.get("/api/admin/users", params={"limit": 500}),
        await client.patch(f"/api/admin/users/{target['id']}", json={"displayName": "Target"}),
        await client.get("/api/admin/stats"),
    ]
    for response in responses:
        assert response.status_code == 200, response.text
        for secret in (GITHUB_TOKEN, CLAUDE_ACCESS, CLAUDE_REFRESH, "password", "$2b$"):
            assert secret not in response.text
    detail = responses[0].json()["data"]
    assert detail["id"] == target["id"]
    assert detail["githubId"] == "4242"
    assert detail["githubAccessToken"] is None
    assert detail["githubConnected"] is True
    assert detail["claudeAuth"]["connected"] is True
    assert detail["claudeAuth"]["expiresAt"] == 4102444800000
    assert detail["imageResizeMaxDimension"] == 1024
    assert detail["voiceCommandKeywords"] == []

    missing = await client.get("/api/admin/users/nobody-here")
    assert missing.status_code == 404
    assert missing.json() == {"success": False, "error": "User not found"}


async def test_create_user(server: TestServer, client: httpx.AsyncClient) -> None:
    await make_admin(server, client)
    email = unique_email("Created")
    response = await client.post(
        "/api/admin/users", json={"email": f"  {email.upper()} ", "password": PASSWORD, "displayName": " New Person "}
    )
    assert response.status_code == 200, response.text
    created = response.json()["data"]
    assert set(created) == {"id", "email", "displayName", "githubId", "isAdmin", "createdAt"}
    assert created["email"] == email.lower()
    assert created["displayName"] == "New Person"
    assert created["isAdmin"] is False

    # The normalized e-mail logs in, whatever case the person types.
    async with httpx.AsyncClient(base_url=server.url) as person:
        login = await person.post("/api/auth/login", json={"email": email.upper(), "password": PASSWORD})
        assert login.status_code == 200
        assert login.json()["data"]["user"]["id"] == created["id"]

    duplicate = await client.post("/api/admin/users", json={"email": email.title(), "password": PASSWORD})
    assert duplicate.status_code == 400
    assert duplicate.json() == {"success": False, "error": "User with this email already exists"}

    cases = [
        ({"email": unique_email()}, "Email and password are required"),
        ({"password": PASSWORD}, "Email and password are required"),
        ({"email": unique_email(), "password": "short"}, "Password must be at least 8 characters"),
        ({"email": unique_email(), "password": "é" * 40}, "Password must be at most 72 bytes long"),
        ({"email": "not an email", "password": PASSWORD}, "Please enter a valid email address"),
        ({"email": unique_email(), "password": PASSWORD, "isAdmin": "yes"}, "isAdmin must be true or false"),
    ]
    for body, error in cases:
        response = await client.post("/api/admin/users", json=body)
        assert response.status_code == 400, body
        assert response.json() == {"success": False, "error": error}

    admin_email = unique_email()
    response = await client.post("/api/admin/users", json={"email": admin_email, "password": PASSWORD, "isAdmin": True})
    assert response.json()["data"]["isAdmin"] is True


async def test_update_user(server: TestServer, client: httpx.AsyncClient) -> None:
    admin = await make_admin(server, client)
    target_client = httpx.AsyncClient(base_url=server.url)
    target = await register(target_client)
    try:
        new_email = unique_email("Renamed")
        response = await client.patch(
            f"/api/admin/users/{target['id']}",
            json={"email": new_email.upper(), "displayName": "Renamed", "isAdmin": True},
        )
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert data == {**data, "email": new_email.lower(), "displayName": "Renamed", "isAdmin": True}

        # A new password works and signs the person out of their other sessions.
        response = await client.patch(f"/api/admin/users/{target['id']}", json={"password": "a brand new password"})
        assert response.status_code == 200
        assert await who(target_client) is None
        async with httpx.AsyncClient(base_url=server.url) as again:
            login = await again.post("/api/auth/login", json={"email": new_email, "password": "a brand new password"})
            assert login.status_code == 200
        assert await who(client) == admin["id"]

        taken = await client.patch(f"/api/admin/users/{target['id']}", json={"email": admin["email"].upper()})
        assert taken.status_code == 400
        assert taken.json() == {"success": False, "error": "User with this email already exists"}

        blank = await client.patch(f"/api/admin/users/{target['id']}", json={"email": " "})
        assert blank.json() == {"success": False, "error": "Please enter a valid email address"}

        nothing = await client.patch(f"/api/admin/users/{target['id']}", json={})
        assert nothing.status_code == 400
        assert nothing.json() == {"success": False, "error": "No fields to update"}

        short = await client.patch(f"/api/admin/users/{target['id']}", json={"password": "short"})
        assert short.json() == {"success": False, "error": "Password must be at least 8 characters"}

        own = await client.patch(f"/api/admin/users/{admin['id']}", json={"isAdmin": False})
        assert own.status_code == 400
        assert own.json() == {"success": False, "error": "Cannot remove your own admin status"}
        assert (await client.get("/api/admin/stats")).status_code == 200

        missing = await client.patch("/api/admin/users/nobody-here", json={"displayName": "x"})
        assert missing.status_code == 404
        assert missing.json() == {"success": False, "error": "User not found"}
    finally:
        await target_client.aclose()


async def test_delete_user(server: TestServer, client: httpx.AsyncClient) -> None:
    admin = await make_admin(server, client)
    async with httpx.AsyncClient(base_url=server.url) as other:
        target = await register(other)
        response = await client.delete(f"/api/admin/users/{target['id']}")
        assert response.status_code == 200
        assert response.json() == {"success": True, "data": {"id": target["id"]}}
        # Their login session went with them.
        assert await who(other) is None
    assert (await client.get(f"/api/admin/users/{target['id']}")).status_code == 404

    again = await client.delete(f"/api/admin/users/{target['id']}")
    assert again.status_code == 404
    assert again.json() == {"success": False, "error": "User not found"}

    own = await client.delete(f"/api/admin/users/{admin['id']}")
    assert own.status_code == 400
    assert own.json() == {"success": False, "error": "Cannot delete your own account"}
    assert await who(client) == admin["id"]


async def test_stats(server: TestServer, client: httpx.AsyncClient) -> None:
    await make_admin(server, client)
    before = (await client.get("/api/admin/stats")).json()["data"]
    assert set(before) >= {"totalUsers", "totalAdmins", "activeSessions"}
    assert before["totalAdmins"] >= 1
    async with httpx.AsyncClient(base_url=server.url) as other:
        await register(other)
    after = (await client.get("/api/admin/stats")).json()["data"]
    assert after["totalUsers"] == before["totalUsers"] + 1
    assert after["activeSessions"] == before["activeSessions"] + 1


async def test_impersonation_is_recorded_and_reversible(server: TestServer, client: httpx.AsyncClient) -> None:
    admin = await make_admin(server, client)
    async with httpx.AsyncClient(base_url=server.url) as other:
        target = await register(other)

    own = await client.post(f"/api/admin/users/{admin['id']}/impersonate")
    assert own.status_code == 400
    assert own.json() == {"success": False, "error": "Cannot impersonate yourself"}
    missing = await client.post("/api/admin/users/nobody-here/impersonate")
    assert missing.status_code == 404
    assert missing.json() == {"success": False, "error": "User not found"}

    admin_cookie = client.cookies.get("auth_session")
    response = await client.post(f"/api/admin/users/{target['id']}/impersonate")
    assert response.status_code == 200
    assert response.json() == {"success": True, "data": {"message": "Now impersonating user", "userId": target["id"]}}
    assert await who(client) == target["id"]
    status = (await client.get("/api/admin/impersonation")).json()["data"]
    assert status == {
        "impersonating": True,
        "userId": target["id"],
        "impersonatorId": admin["id"],
        "impersonatorEmail": admin["email"],
    }
    # The target is no admin, so the admin routes are closed while impersonating.
    assert (await client.get("/api/admin/stats")).status_code == 403
    # The admin's old session token no longer works.
    async with httpx.AsyncClient(base_url=server.url, cookies={"auth_session": admin_cookie}) as stale:
        assert await who(stale) is None

    back = await client.post("/api/admin/stop-impersonating")
    assert back.status_code == 200
    data = back.json()["data"]
    assert data["message"] == "Stopped impersonating" and data["userId"] == admin["id"]
    assert data["user"]["id"] == admin["id"]
    assert await who(client) == admin["id"]
    assert (await client.get("/api/admin/impersonation")).json()["data"] == {
        "impersonating": False,
        "userId": admin["id"],
    }

    again = await client.post("/api/admin/stop-impersonating")
    assert again.status_code == 400
    assert again.json() == {"success": False, "error": "You are not impersonating anyone"}

    audit = (await client.get("/api/admin/impersonations")).json()["data"]
    record = next(r for r in audit["impersonations"] if r["adminId"] == admin["id"])
    assert record["targetUserId"] == target["id"]
    assert record["adminEmail"] == admin["email"] and record["targetEmail"] == target["email"]
    assert record["startedAt"] and record["endedAt"] and record["endedAt"] >= record["startedAt"]
    assert record["clientIp"] == "127.0.0.1"


async def test_impersonating_an_admin_cannot_nest(server: TestServer, client: httpx.AsyncClient) -> None:
    await make_admin(server, client)
    async with httpx.AsyncClient(base_url=server.url) as other:
        second_admin = await make_admin(server, other)
        third = await register(other)
    response = await client.post(f"/api/admin/users/{second_admin['id']}/impersonate")
    assert response.status_code == 200
    nested = await client.post(f"/api/admin/users/{third['id']}/impersonate")
    assert nested.status_code == 400
    assert nested.json() == {"success": False, "error": "Stop impersonating before impersonating someone else"}
    assert (await client.post("/api/admin/stop-impersonating")).status_code == 200


async def test_deleting_the_admin_ends_their_impersonation(server: TestServer, client: httpx.AsyncClient) -> None:
    await make_admin(server, client)
    async with httpx.AsyncClient(base_url=server.url) as second, httpx.AsyncClient(base_url=server.url) as other:
        second_admin = await make_admin(server, second)
        target = await register(other)
        assert (await second.post(f"/api/admin/users/{target['id']}/impersonate")).status_code == 200
        assert await who(second) == target["id"]
        assert (await client.delete(f"/api/admin/users/{second_admin['id']}")).status_code == 200
        assert await who(second) is None
    audit = (await client.get("/api/admin/impersonations", params={"limit": 500})).json()["data"]
    record = next(r for r in audit["impersonations"] if r["targetUserId"] == target["id"])
    # The audit row outlives the admin: the id is gone, the e-mail stays.
    assert record["adminId"] is None and record["adminEmail"] == second_admin["email"]


async def test_log_lines_name_the_admin_behind_an_impersonation(
    server: TestServer, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    admin = await make_admin(server, client)
    async with httpx.AsyncClient(base_url=server.url) as other:
        target = await register(other)
    assert (await client.post(f"/api/admin/users/{target['id']}/impersonate")).status_code == 200
    with caplog.at_level(logging.DEBUG, logger="webedt.access"):  # quick successes log at DEBUG
        assert await who(client) == target["id"]
        assert (await client.post("/api/admin/stop-impersonating")).status_code == 200
        assert await who(client) == admin["id"]
    lines = [r for r in caplog.records if getattr(r, "path", None) == "/api/auth/session"]
    assert [(r.user_id, getattr(r, "impersonator_id", None)) for r in lines] == [
        (target["id"], admin["id"]),
        (admin["id"], None),
    ]
