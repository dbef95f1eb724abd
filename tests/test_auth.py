"""Registration, login, logout, the session route, cookies, renewal, rate limits, Origin checks."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx

from tests.helpers import ORIGIN, PASSWORD, TestServer, register, start_app, test_env, unique_email


def auth_cookie_header(response: httpx.Response) -> str:
    headers = [h for h in response.headers.get_list("set-cookie") if h.startswith("auth_session=")]
    assert len(headers) == 1, headers
    return headers[0]


def assert_cleared(cookie: str) -> None:
    """An empty cookie that expired in the past."""
    assert cookie.startswith('auth_session="";')
    expires = cookie.lower().split("expires=")[1].split(";")[0]
    assert parsedate_to_datetime(expires) < datetime.now(UTC)


async def test_register_sets_a_safe_cookie_and_returns_no_secrets(client: httpx.AsyncClient) -> None:
    email = unique_email().upper() + "  "
    response = await client.post("/api/auth/register", json={"email": email, "password": PASSWORD})
    assert response.status_code == 201
    user = response.json()["data"]["user"]
    assert user["email"] == email.strip().lower()
    assert user["isAdmin"] is False
    assert user["githubAccessToken"] is None and user["claudeAuth"] is None
    cookie = auth_cookie_header(response).lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
    assert "max-age=2592000" in cookie
    assert "secure" not in cookie  # only in production


async def test_cookie_is_secure_in_production(database_url: str) -> None:
    async with (
        start_app(test_env(database_url, NODE_ENV="production")) as srv,
        httpx.AsyncClient(base_url=srv.url) as http,
    ):
        response = await http.post("/api/auth/register", json={"email": unique_email(), "password": PASSWORD})
        assert response.status_code == 201
        assert "secure" in auth_cookie_header(response).lower()


async def test_database_keeps_only_a_hash_of_the_token(client: httpx.AsyncClient, server: TestServer) -> None:
    user = await register(client)
    token = client.cookies["auth_session"]
    rows = await server.ctx.pool.fetch("SELECT id FROM sessions WHERE user_id = $1", user["id"])
    assert [r["id"] for r in rows] == [hashlib.sha256(token.encode()).hexdigest()]


async def test_register_validation_messages(client: httpx.AsyncClient) -> None:
    cases = [
        ({}, "Email and password are required"),
        ({"email": unique_email()}, "Email and password are required"),
        ({"email": unique_email(), "password": "short"}, "Password must be at least 8 characters"),
        ({"email": unique_email(), "password": "é" * 37}, "Password must be at most 72 bytes long"),
        ({"email": 42, "password": PASSWORD}, "Email and password are required"),
        ({"email": "not-an-address", "password": PASSWORD}, "Please enter a valid email address"),
    ]
    for body, message in cases:
        response = await client.post("/api/auth/register", json=body)
        assert response.status_code == 400, body
        assert response.json() == {"success": False, "error": message}


async def test_duplicate_email_in_any_case(client: httpx.AsyncClient) -> None:
    email = unique_email()
    await register(client, email)
    async with httpx.AsyncClient(base_url=str(client.base_url)) as other:
        response = await other.post("/api/auth/register", json={"email": email.upper(), "password": PASSWORD})
    assert response.status_code == 400
    assert response.json()["error"] == "Email already in use"


async def test_login_logout_and_session(client: httpx.AsyncClient, server: TestServer) -> None:
    email = unique_email()
    await register(client, email)
    client.cookies.clear()
    assert (await client.get("/api/auth/session")).status_code == 401

    response = await client.post("/api/auth/login", json={"email": f" {email.upper()} ", "password": PASSWORD})
    assert response.status_code == 200
    assert response.json()["data"]["user"]["email"] == email
    session = await client.get("/api/auth/session")
    assert session.status_code == 200
    data = session.json()["data"]
    assert data["user"]["email"] == email
    assert "id" not in data["session"]  # the token is never echoed
    assert client.cookies["auth_session"] not in session.text

    token = client.cookies["auth_session"]
    logout = await client.post("/api/auth/logout")
    assert logout.json() == {"success": True, "data": {"message": "Logged out successfully"}}
    assert_cleared(auth_cookie_header(logout))
    # The server forgot the session: the old token no longer works anywhere.
    async with httpx.AsyncClient(base_url=server.url, cookies={"auth_session": token}) as stolen:
        assert (await stolen.get("/api/auth/session")).status_code == 401


async def test_every_login_makes_a_new_session(client: httpx.AsyncClient, server: TestServer) -> None:
    email = unique_email()
    user = await register(client, email)
    first = client.cookies["auth_session"]
    await client.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    second = client.cookies["auth_session"]
    assert first != second
    count = await server.ctx.pool.fetchval("SELECT count(*) FROM sessions WHERE user_id = $1", user["id"])
    assert count == 1  # logging in again from the same browser replaced the old session


async def test_remember_me_sets_a_90_day_cookie(client: httpx.AsyncClient) -> None:
    email = unique_email()
    await register(client, email)
    response = await client.post("/api/auth/login", json={"email": email, "password": PASSWORD, "rememberMe": True})
    assert "max-age=7776000" in auth_cookie_header(response).lower()


async def test_unknown_email_and_wrong_password_look_the_same(client: httpx.AsyncClient) -> None:
    email = unique_email()
    await register(client, email)
    client.cookies.clear()
    wrong = await client.post("/api/auth/login", json={"email": email, "password": "wrong password"})
    unknown = await client.post("/api/auth/login", json={"email": unique_email(), "password": "wrong password"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json() == {"success": False, "error": "Invalid email or password"}


async def test_a_hash_bcrypt_cannot_check_is_a_plain_401(client: httpx.AsyncClient, server: TestServer) -> None:
    """Carried from elsewhere (plaintext, argon2, a broken or absurdly costly bcrypt hash): the
    login is refused like a wrong password, never a 500 that tells the e-mail exists."""
    salt = "a" * 53
    for stored in (
        "the plaintext password",
        "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG",
        "$2b$03$" + salt,
        "$2b$31$" + salt,
        "$2b$10$short",
    ):
        email = unique_email("odd-hash")
        await server.ctx.pool.execute(
            "INSERT INTO users (id, email, password_hash) VALUES ($1, $2, $3)", unique_email()[:16], email, stored
        )
        # The stored value itself as the password: what a plaintext comparison would let in.
        response = await client.post("/api/auth/login", json={"email": email, "password": stored})
        assert response.status_code == 401, (stored, response.text)
        assert response.json() == {"success": False, "error": "Invalid email or password"}


async def test_failed_logins_are_limited_per_email(database_url: str) -> None:
    env = test_env(database_url, LOGIN_MAX_FAILURES_PER_EMAIL=3, LOGIN_MAX_FAILURES_PER_IP=100)
    async with start_app(env) as srv, httpx.AsyncClient(base_url=srv.url) as http:
        email = unique_email()
        await register(http, email)
        http.cookies.clear()
        for _ in range(3):
            response = await http.post("/api/auth/login", json={"email": email, "password": "wrong password"})
            assert response.status_code == 401
        limited = await http.post("/api/auth/login", json={"email": email, "password": PASSWORD})
        assert limited.status_code == 429
        assert int(limited.headers["Retry-After"]) > 0
        assert "Too many failed login attempts" in limited.json()["error"]
        # Another account from the same address is not affected by this e-mail's counter.
        other = unique_email()
        await register(http, other)
        ok = await http.post("/api/auth/login", json={"email": other, "password": PASSWORD})
        assert ok.status_code == 200


async def test_failed_logins_are_limited_per_client_address(database_url: str) -> None:
    env = test_env(database_url, LOGIN_MAX_FAILURES_PER_EMAIL=100, LOGIN_MAX_FAILURES_PER_IP=4)
    async with start_app(env) as srv, httpx.AsyncClient(base_url=srv.url) as http:
        headers = {"X-Real-Ip": "198.51.100.7"}
        for _ in range(4):
            response = await http.post(
                "/api/auth/login", json={"email": unique_email(), "password": "nope nope"}, headers=headers
            )
            assert response.status_code == 401
        limited = await http.post("/api/auth/login", json={"email": unique_email(), "password": "x"}, headers=headers)
        assert limited.status_code == 429


async def test_sliding_renewal_when_less_than_half_remains(client: httpx.AsyncClient, server: TestServer) -> None:
    await register(client)
    token = client.cookies["auth_session"]
    session_id = hashlib.sha256(token.encode()).hexdigest()
    # Untouched while more than 15 days remain.
    response = await client.get("/api/auth/session")
    assert not any(h.startswith("auth_session=") for h in response.headers.get_list("set-cookie"))
    assert response.json()["data"]["session"]["fresh"] is False

    soon = datetime.now(UTC) + timedelta(days=10)
    await server.ctx.pool.execute("UPDATE sessions SET expires_at = $1 WHERE id = $2", soon, session_id)
    await server.ctx.hub.barrier()  # the server has heard of the change (services/login_cache.py)
    response = await client.get("/api/auth/session")
    assert response.json()["data"]["session"]["fresh"] is True
    assert "max-age=2592000" in auth_cookie_header(response).lower()
    expires = await server.ctx.pool.fetchval("SELECT expires_at FROM sessions WHERE id = $1", session_id)
    assert expires > datetime.now(UTC) + timedelta(days=29)


async def test_expired_session_is_refused_and_removed(client: httpx.AsyncClient, server: TestServer) -> None:
    await register(client)
    session_id = hashlib.sha256(client.cookies["auth_session"].encode()).hexdigest()
    past = datetime.now(UTC) - timedelta(seconds=1)
    await server.ctx.pool.execute("UPDATE sessions SET expires_at = $1 WHERE id = $2", past, session_id)
    await server.ctx.hub.barrier()
    response = await client.get("/api/auth/session")
    assert response.status_code == 401
    assert_cleared(auth_cookie_header(response))
    assert await server.ctx.pool.fetchval("SELECT count(*) FROM sessions WHERE id = $1", session_id) == 0


async def test_tampered_cookie_and_deleted_user(client: httpx.AsyncClient, server: TestServer) -> None:
    user = await register(client)
    token = client.cookies["auth_session"]
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    async with httpx.AsyncClient(base_url=server.url, cookies={"auth_session": tampered}) as other:
        response = await other.get("/api/auth/session")
        assert response.status_code == 401
        assert response.json() == {"success": False, "error": "Unauthorized"}
    await server.ctx.pool.execute("DELETE FROM users WHERE id = $1", user["id"])
    await server.ctx.hub.barrier()
    assert (await client.get("/api/auth/session")).status_code == 401


async def test_state_changing_request_from_foreign_origin_is_refused(client: httpx.AsyncClient) -> None:
    await register(client)
    body = {"displayName": "Mallory was here"}
    foreign = await client.post("/api/user/display-name", json=body, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403
    assert foreign.json() == {"success": False, "error": "Request origin is not allowed"}
    session = (await client.get("/api/auth/session")).json()["data"]["user"]
    assert session["displayName"] is None
    allowed = await client.post("/api/user/display-name", json=body, headers={"Origin": ORIGIN})
    assert allowed.status_code == 200
    # No Origin header at all (same-origin requests through the facade) is allowed too.
    assert (await client.post("/api/user/display-name", json=body)).status_code == 200


async def test_a_cross_site_request_without_origin_is_refused(client: httpx.AsyncClient) -> None:
    """Defence in depth: a browser that says the request is cross-site but sends no Origin."""
    await register(client)
    body = {"displayName": "Mallory was here"}
    for site in ("cross-site", "Cross-Site"):
        cross = await client.post("/api/user/display-name", json=body, headers={"Sec-Fetch-Site": site})
        assert cross.status_code == 403
        assert cross.json() == {"success": False, "error": "Request origin is not allowed"}
    login = await client.post(
        "/api/auth/login", json={"email": "a@b.c", "password": PASSWORD}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert login.status_code == 403
    assert (await client.get("/api/auth/session")).json()["data"]["user"]["displayName"] is None
    # Reads stay open, and the website's own requests pass.
    assert (await client.get("/api/auth/session", headers={"Sec-Fetch-Site": "cross-site"})).status_code == 200
    for site in ("same-origin", "same-site", "none"):
        response = await client.post("/api/user/display-name", json=body, headers={"Sec-Fetch-Site": site})
        assert response.status_code == 200, site


async def test_cors_allows_listed_origins_with_credentials(client: httpx.AsyncClient) -> None:
    listed = await client.options(
        "/api/auth/login", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert listed.status_code == 204
    assert listed.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert listed.headers["Access-Control-Allow-Credentials"] == "true"
    foreign = await client.options("/api/auth/login", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in foreign.headers


async def test_bcrypt_cost_is_12_by_default(database_url: str) -> None:
    env = test_env(database_url)
    del env["BCRYPT_ROUNDS"]
    async with start_app(env) as srv, httpx.AsyncClient(base_url=srv.url) as http:
        user = await register(http)
        stored = await srv.ctx.pool.fetchval("SELECT password_hash FROM users WHERE id = $1", user["id"])
        assert stored.startswith("$2b$12$")


# ---- the remembered login-session lookup (services/login_cache.py) ---------------------------------


async def test_login_lookup_is_answered_from_memory(client: httpx.AsyncClient, server: TestServer) -> None:
    await register(client)
    assert (await client.get("/api/auth/session")).status_code == 200
    hits = server.ctx.login_cache.hits
    assert (await client.get("/api/auth/session")).status_code == 200
    assert server.ctx.login_cache.hits == hits + 1


async def test_logout_password_change_deletion_and_admin_flag_reach_every_replica_at_once(database_url: str) -> None:
    # An entry would outlive the whole test: only the invalidation can make the other replica see a change.
    env = test_env(database_url, LOGIN_CACHE_SECONDS="3600")
    async with start_app(env) as a, start_app(env) as b:
        on_a = {}
        on_b = {}
        people = {}
        for name in ("admin", "leaver", "reset", "deleted", "promoted"):
            on_a[name] = httpx.AsyncClient(base_url=a.url, headers={"Origin": ORIGIN})
            people[name] = await register(on_a[name])
            on_b[name] = httpx.AsyncClient(base_url=b.url, cookies=dict(on_a[name].cookies))
        await a.ctx.pool.execute("UPDATE users SET is_admin = true WHERE id = $1", people["admin"]["id"])
        await a.ctx.hub.barrier()
        await b.ctx.hub.barrier()
        try:
            for name in people:
                for http, srv in ((on_a[name], a), (on_b[name], b)):
                    assert (await http.get("/api/auth/session")).status_code == 200
                    hits = srv.ctx.login_cache.hits
                    assert (await http.get("/api/auth/session")).status_code == 200
                    assert srv.ctx.login_cache.hits == hits + 1  # remembered on both replicas

            admin = on_a["admin"]
            assert (await on_a["leaver"].post("/api/auth/logout")).status_code == 200
            reset = await admin.patch(
                f"/api/admin/users/{people['reset']['id']}", json={"password": "another password"}
            )
            assert reset.status_code == 200, reset.text
            deleted = await admin.delete(f"/api/admin/users/{people['deleted']['id']}")
            assert deleted.status_code == 200, deleted.text
            promoted = await admin.patch(f"/api/admin/users/{people['promoted']['id']}", json={"isAdmin": True})
            assert promoted.status_code == 200, promoted.text

            # On the replica that made the changes: at once, without waiting for anything.
            leaver_cookie = {"auth_session": on_b["leaver"].cookies["auth_session"]}
            async with httpx.AsyncClient(base_url=a.url, cookies=leaver_cookie) as leaver_again:
                assert (await leaver_again.get("/api/auth/session")).status_code == 401
            # On the other: as soon as it has heard what PostgreSQL sent at those commits.
            await b.ctx.hub.barrier()
            for name in ("leaver", "reset", "deleted"):
                if name != "leaver":
                    assert (await on_a[name].get("/api/auth/session")).status_code == 401, name
                assert (await on_b[name].get("/api/auth/session")).status_code == 401, name
            for http in (on_a["promoted"], on_b["promoted"]):
                session = await http.get("/api/auth/session")
                assert session.json()["data"]["user"]["isAdmin"] is True
                assert (await http.get("/api/admin/stats")).status_code == 200
        finally:
            for http in (*on_a.values(), *on_b.values()):
                await http.aclose()


async def test_login_lookup_is_not_remembered_while_the_hub_cannot_listen(server: TestServer) -> None:
    cache = server.ctx.login_cache
    async with httpx.AsyncClient(base_url=server.url) as http:
        await register(http)
        cache.set_live(False)
        try:
            for _ in range(2):
                assert (await http.get("/api/auth/session")).status_code == 200
            assert len(cache) == 0
        finally:
            cache.set_live(True)
