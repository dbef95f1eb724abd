"""Issue 15 (hardening) and 10.4: CSRF on login, execute-remote by GET, forwarded addresses,
lock-out, OAuth state replay, session paths, header and body timeouts, readable 413s.

Tests that count per-address limits send `X-Forwarded-For` from loopback (a trusted proxy by
default) with an address of their own, so they neither see nor disturb other tests' counters.
"""

from __future__ import annotations

import secrets

import httpx

from tests.helpers import ORIGIN, PASSWORD, register, unique_email

EVIL = "https://evil.example"
EVENT_SOURCE = {"Accept": "text/event-stream", "Sec-Fetch-Dest": "empty", "Sec-Fetch-Mode": "cors"}


def documentation_address() -> str:
    """A fresh address of TEST-NET-3 (RFC 5737), as a client behind the facade."""
    return f"203.0.113.{secrets.randbelow(254) + 1}"


# ---- 15.6 login CSRF ------------------------------------------------------------------------------


async def test_login_and_register_from_another_origin_are_refused_without_a_cookie(client: httpx.AsyncClient) -> None:
    email = unique_email("csrf")
    response = await client.post(
        "/api/auth/register", json={"email": email, "password": PASSWORD}, headers={"Origin": EVIL}
    )
    assert response.status_code == 403, response.text
    assert response.json() == {"success": False, "error": "Request origin is not allowed"}
    assert "set-cookie" not in response.headers
    await register(client, email)  # no Origin: a non-browser client
    client.cookies.clear()
    response = await client.post(
        "/api/auth/login", json={"email": email, "password": PASSWORD}, headers={"Origin": EVIL}
    )
    assert response.status_code == 403 and "set-cookie" not in response.headers
    for headers in ({"Origin": ORIGIN}, {}):
        response = await client.post("/api/auth/login", json={"email": email, "password": PASSWORD}, headers=headers)
        assert response.status_code == 200 and "set-cookie" in response.headers
        client.cookies.clear()


# ---- 15.7 execute-remote by GET only from an EventSource --------------------------------------------


async def test_execute_remote_get_needs_what_an_event_source_sends(client: httpx.AsyncClient) -> None:
    await register(client)
    params = {"userRequest": "   ", "github": '{"repoUrl": "https://github.com/o/r"}'}
    refused: list[dict[str, str]] = [
        {},  # an <img>/<script> without Fetch Metadata (older browsers), or a plain link
        {"Accept": "image/avif,image/webp,*/*", "Sec-Fetch-Site": "same-site", "Sec-Fetch-Dest": "image"},
        {"Accept": "text/event-stream", "Sec-Fetch-Site": "same-site", "Sec-Fetch-Dest": "image"},
        {"Accept": "text/event-stream", "Sec-Fetch-Dest": "iframe"},
    ]
    for headers in refused:
        response = await client.get("/api/execute-remote", params=params, headers=headers)
        assert response.status_code == 403, (headers, response.status_code)
        assert response.json()["success"] is False
    # What an EventSource sends gets through to the input checks (and so would start the run).
    for headers in (EVENT_SOURCE, {"Accept": "text/event-stream"}):
        response = await client.get("/api/execute-remote", params=params, headers=headers)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "userRequest or websiteSessionId is required"
