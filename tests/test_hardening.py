"""Issue 15 (hardening) and 10.4: CSRF on login, execute-remote by GET, forwarded addresses,
lock-out, OAuth state replay, session paths, header and body timeouts, readable 413s.

Tests that count per-address limits send `X-Forwarded-For` from loopback (a trusted proxy by
default) with an address of their own, so they neither see nor disturb other tests' counters.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from tornado.web import create_signed_value

from services.addresses import DEFAULT_TRUSTED_PROXIES, client_address, parse_networks
from tests.helpers import ORIGIN, PASSWORD, TestServer, register, start_app, test_env, unique_email
from tests.sse import EVENT_SOURCE_HEADERS, open_sse

EVIL = "https://evil.example"


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
    for headers in (EVENT_SOURCE_HEADERS, {"Accept": "text/event-stream"}):
        response = await client.get("/api/execute-remote", params=params, headers=headers)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "userRequest or websiteSessionId is required"


# ---- 15.3 header and body timeouts, 431; 10.4 a readable 413 ---------------------------------------


@pytest.fixture(scope="module")
async def tight(database_url: str) -> AsyncIterator[TestServer]:
    """A server with one-second header and body bounds and fast heartbeats."""
    env = test_env(
        database_url,
        HEADER_TIMEOUT_SECONDS=1,
        BODY_TIMEOUT_SECONDS=1,
        KEEPALIVE_TIMEOUT_SECONDS=30,
        SSE_HEARTBEAT_SECONDS=0.3,
    )
    async with start_app(env) as running:
        yield running


async def read_until_closed(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed)."""
    received = b""
    async with asyncio.timeout(timeout):
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


async def test_slow_header_bytes_are_closed_after_the_bound(tight: TestServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", tight.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    closed = False
    try:
        for _ in range(40):  # a slowloris: one header byte every 0.25 s, 10 s in all
            writer.write(b"X")
            await writer.drain()
            try:
                closed = await asyncio.wait_for(reader.read(1), 0.25) == b""
            except TimeoutError:
                continue  # still open
            if closed:
                break
    except ConnectionError:
        closed = True
    finally:
        writer.close()
    assert closed, "the connection was still open after 10 s of slow header bytes"


async def test_a_connection_that_sends_nothing_is_closed_after_the_bound(tight: TestServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", tight.port)
    try:
        assert await read_until_closed(reader, timeout=5) == b""
    except TimeoutError:
        pytest.fail("a silent connection was still open after 5 s")
    finally:
        writer.close()


async def test_a_kept_alive_connection_may_idle_longer_than_the_header_bound(tight: TestServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", tight.port)
    request = b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    try:
        for _ in range(2):
            writer.write(request)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200")
            length = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
            await reader.readexactly(length)
            await asyncio.sleep(2.5)  # idle: more than the header bound, less than the keep-alive one
    finally:
        writer.close()


async def test_a_stalled_body_is_timed_out(tight: TestServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", tight.port)
    writer.write(
        b"POST /api/auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n" + b'{"email": "a@b.c", '
    )
    await writer.drain()
    try:
        await read_until_closed(reader, timeout=8)  # 20 of 1,000 bytes, then nothing
    except TimeoutError:
        pytest.fail("a body stalled after 20 bytes was never timed out")
    finally:
        writer.close()


async def test_an_open_stream_outlives_the_header_and_body_bounds(tight: TestServer) -> None:
    async with httpx.AsyncClient(base_url=tight.url, timeout=30) as http:
        await register(http)
        async with open_sse(http, "/api/sessions/updates") as stream:
            assert stream.status_code == 200
            assert (await stream.next()).event == "connected"
            await asyncio.sleep(3)  # three times both bounds
            with pytest.raises(TimeoutError):  # nothing but heartbeats, and no end
                await stream.next_or_end(timeout=1)
            assert not stream.ended
            assert len(stream.comments) >= 5


async def test_a_100_kb_header_gets_a_431_json_answer(tight: TestServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", tight.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 100_000 + b"\r\n\r\n")
    await writer.drain()
    raw = await read_until_closed(reader, timeout=10)
    writer.close()
    status, headers, body = parse_response(raw)
    assert status == 431
    assert headers["content-type"].startswith("application/json")
    assert orjson.loads(body) == {"success": False, "error": "Request headers are too large (at most 64 KiB)"}


async def send_whole_body_then_read(port: int, head: bytes, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """A client that writes its entire request before it reads anything."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        writer.write(body)
        await writer.drain()
        raw = await read_until_closed(reader, timeout=20)
    finally:
        writer.close()
    assert raw, "the connection was reset before any answer arrived"
    return parse_response(raw)


async def test_an_oversized_body_gets_a_413_the_client_can_read(server: TestServer) -> None:
    login = b"POST /api/auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    body = b'{"email": "a@b.c", "password": "' + b"p" * 11_000_000 + b'"}'
    status, headers, answer = await send_whole_body_then_read(server.port, login, body)
    assert status == 413
    assert orjson.loads(answer) == {"success": False, "error": "Request body is larger than 1 MiB"}
    assert headers["connection"].lower() == "close"
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        await register(http)
        cookie = "; ".join(f"{name}={value}" for name, value in http.cookies.items())
    session = secrets.token_hex(16)
    title = f"PATCH /api/sessions/{session} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n".encode()
    status, _, answer = await send_whole_body_then_read(
        server.port, title, b'{"userRequest": "' + b"t" * 1_100_000 + b'"}'
    )
    assert status == 413
    assert orjson.loads(answer)["error"] == "Request body is larger than 1 MiB"


# ---- 15.10 forwarded addresses only from TRUSTED_PROXIES ------------------------------------------


async def failure_keys(srv: TestServer) -> set[str]:
    rows = await srv.ctx.pool.fetch("SELECT key FROM login_failures WHERE key LIKE 'ip:%'")
    return {row["key"] for row in rows}


async def test_rotating_forwarded_for_from_an_untrusted_peer_is_still_limited(database_url: str) -> None:
    # Loopback is not a proxy here: the test client is a stranger connecting directly.
    env = test_env(database_url, TRUSTED_PROXIES="10.0.0.0/8", LOGIN_MAX_FAILURES_PER_IP=3)
    async with start_app(env) as srv, httpx.AsyncClient(base_url=srv.url, timeout=30) as http:
        forged = [(f"198.51.100.{n + 1}", f"192.0.2.{n + 1}") for n in range(6)]
        forged_keys = [f"ip:{address}" for pair in forged for address in pair]
        await srv.ctx.pool.execute("DELETE FROM login_failures WHERE key = ANY($1)", ["ip:127.0.0.1", *forged_keys])
        statuses = []
        for forwarded_for, real_ip in forged:
            response = await http.post(
                "/api/auth/login",
                json={"email": unique_email("rotate"), "password": "wrong password"},
                headers={"X-Forwarded-For": forwarded_for, "X-Real-Ip": real_ip},
            )
            statuses.append(response.status_code)
        assert statuses == [401, 401, 401, 429, 429, 429]
        assert not set(forged_keys) & await failure_keys(srv)
        await srv.ctx.pool.execute("DELETE FROM login_failures WHERE key = 'ip:127.0.0.1'")


async def test_the_address_the_nearest_trusted_proxy_saw_is_the_client(server: TestServer) -> None:
    client, forged = documentation_address(), "198.51.100.99"
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        for chain in (f"{forged}, {client}", f"{forged}, {client}, 10.1.2.3, 192.168.0.7"):
            await http.post(
                "/api/auth/login",
                json={"email": unique_email("chain"), "password": "wrong password"},
                headers={"X-Forwarded-For": chain},
            )
            keys = await failure_keys(server)
            assert f"ip:{client}" in keys and f"ip:{forged}" not in keys
            await server.ctx.pool.execute("DELETE FROM login_failures WHERE key = $1", f"ip:{client}")


def test_client_address_rules() -> None:
    trusted = parse_networks(DEFAULT_TRUSTED_PROXIES)
    assert client_address("203.0.113.9", "1.2.3.4", "5.6.7.8", trusted) == "203.0.113.9"
    assert client_address("10.0.0.5", "1.2.3.4, 203.0.113.9", None, trusted) == "203.0.113.9"
    assert client_address("10.0.0.5", "203.0.113.9, 10.0.0.4", None, trusted) == "203.0.113.9"
    assert client_address("10.0.0.5", "10.0.0.3, 10.0.0.4", None, trusted) == "10.0.0.3"
    assert client_address("10.0.0.5", "junk, 10.0.0.4", None, trusted) == "10.0.0.4"
    assert client_address("10.0.0.5", None, "203.0.113.9", trusted) == "203.0.113.9"
    assert client_address("::ffff:10.0.0.5", "203.0.113.9", None, trusted) == "203.0.113.9"
    assert client_address("127.0.0.1", None, None, trusted) == "127.0.0.1"
    with pytest.raises(ValueError, match="'nope'"):
        parse_networks("10.0.0.0/8, nope")


# ---- 15.9 no lock-out by strangers; registration limited per address ---------------------------


async def login_as(http: httpx.AsyncClient, email: str, password: str, address: str) -> httpx.Response:
    return await http.post(
        "/api/auth/login", json={"email": email, "password": password}, headers={"X-Forwarded-For": address}
    )


async def test_a_stranger_cannot_lock_the_owner_out(server: TestServer) -> None:
    email = unique_email("owner")
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=30) as owner,
        httpx.AsyncClient(base_url=server.url, timeout=30) as stranger,
        httpx.AsyncClient(base_url=server.url, timeout=30) as new_browser,
    ):
        await register(owner, email)
        assert (await login_as(owner, email, PASSWORD, documentation_address())).status_code == 200
        assert owner.cookies.get("login_device")
        statuses = [
            (await login_as(stranger, email, f"guess-{n}", documentation_address())).status_code for n in range(7)
        ]
        assert statuses == [401] * 5 + [429] * 2  # guesses are still throttled
        # The owner's browser, which logged in before, is not locked by the stranger's failures...
        response = await login_as(owner, email, PASSWORD, documentation_address())
        assert response.status_code == 200, response.text
        # ...while a browser never seen with this account is, even with the right password.
        response = await login_as(new_browser, email, PASSWORD, documentation_address())
        assert response.status_code == 429 and int(response.headers["Retry-After"]) > 0
        # Another account's device token does not help.
        new_browser.cookies.set("login_device", owner.cookies["login_device"] + "0")
        assert (await login_as(new_browser, email, PASSWORD, documentation_address())).status_code == 429


async def test_device_tokens_are_signed_by_tornado_and_expire_after_a_year(server: TestServer) -> None:
    """The `login_device` cookie is a Tornado signed value (name `login_device`, SESSION_SECRET)
    holding the SHA-256 of the e-mail and a nonce; older than DEVICE_TOKEN_DAYS it counts no more."""
    email = unique_email("aging")

    def device_token(age_days: float, for_email: str = email) -> str:
        value = f"{hashlib.sha256(for_email.encode()).hexdigest()}|nonce{secrets.token_hex(4)}"
        signed_at = time.time() - age_days * 86400
        secret = server.ctx.config.session_secret
        return create_signed_value(secret, "login_device", value, clock=lambda: signed_at).decode()

    async with httpx.AsyncClient(base_url=server.url, timeout=30) as stranger:
        await register(stranger, email)
        stranger.cookies.clear()
        for n in range(5):
            assert (await login_as(stranger, email, f"guess-{n}", documentation_address())).status_code == 401
    for token, expected in (
        (device_token(30), 200),
        (device_token(366), 429),
        (device_token(30, unique_email("someone-else")), 429),
    ):
        async with httpx.AsyncClient(base_url=server.url, timeout=30, cookies={"login_device": token}) as browser:
            response = await login_as(browser, email, PASSWORD, documentation_address())
            assert response.status_code == expected, response.text


async def test_guesses_from_a_known_browser_are_throttled_too(server: TestServer) -> None:
    email = unique_email("known")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        await register(http, email)
        assert (await login_as(http, email, PASSWORD, documentation_address())).status_code == 200
        statuses = [(await login_as(http, email, f"wrong-{n}", documentation_address())).status_code for n in range(6)]
        assert statuses == [401] * 5 + [429]


async def test_registration_is_limited_per_address(database_url: str) -> None:
    async with (
        start_app(test_env(database_url, REGISTER_MAX_PER_IP=3)) as srv,
        httpx.AsyncClient(base_url=srv.url, timeout=30) as http,
    ):
        address = documentation_address()
        await srv.ctx.pool.execute("DELETE FROM login_failures WHERE key = $1", f"register:{address}")
        statuses = []
        for _ in range(5):
            response = await http.post(
                "/api/auth/register",
                json={"email": unique_email("signup"), "password": PASSWORD},
                headers={"X-Forwarded-For": address},
            )
            statuses.append(response.status_code)
            http.cookies.clear()
        assert statuses == [201, 201, 201, 429, 429]
        assert response.json()["error"].startswith("Too many sign-ups from this address")
        assert int(response.headers["Retry-After"]) > 0
        response = await http.post(
            "/api/auth/register",
            json={"email": unique_email("signup"), "password": PASSWORD},
            headers={"X-Forwarded-For": "198.51.100.200"},
        )
        assert response.status_code == 201
        await srv.ctx.pool.execute("DELETE FROM login_failures WHERE key LIKE 'register:%'")


# ---- 15.8 session paths unique per person, collision-free after sanitising -------------------------


async def create_code_session(http: httpx.AsyncClient, branch: str) -> httpx.Response:
    body = {"repositoryOwner": "octo", "repositoryName": "shared-repo", "baseBranch": "main", "branch": branch}
    return await http.post("/api/sessions/create-code-session", json=body)


async def test_session_paths_are_per_person_and_never_collide(server: TestServer) -> None:
    branch = f"feature/{secrets.token_hex(4)}"
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=30) as alice,
        httpx.AsyncClient(base_url=server.url, timeout=30) as bob,
    ):
        await register(alice)
        await register(bob)
        first = await create_code_session(alice, branch)
        assert first.status_code == 200, first.text
        # Someone else's session on the same repository and branch neither blocks nor shows.
        second = await create_code_session(bob, branch)
        assert second.status_code == 200, second.text
        assert second.json()["session"]["id"] != first.json()["session"]["id"]
        # `feature/x` and `feature-x` sanitise alike, yet both are the person's own sessions.
        dashed = await create_code_session(alice, branch.replace("/", "-"))
        assert dashed.status_code == 200, dashed.text
        paths = {first.json()["session"]["sessionPath"], dashed.json()["session"]["sessionPath"]}
        assert len(paths) == 2
        # The person's own real duplicate is still a 409, in either order.
        for again in (branch, branch.replace("/", "-")):
            duplicate = await create_code_session(alice, again)
            assert duplicate.status_code == 409
            assert duplicate.json()["error"] == f"A session for octo/shared-repo on branch {again} already exists"
        # Each path finds its own session, for its owner only.
        for response in (first, dashed):
            session = response.json()["session"]
            found = await alice.get(f"/api/sessions/{session['sessionPath']}")
            assert found.json()["session"]["id"] == session["id"]
        assert (await bob.get(f"/api/sessions/{first.json()['session']['sessionPath']}")).json()["session"][
            "id"
        ] == second.json()["session"]["id"]
