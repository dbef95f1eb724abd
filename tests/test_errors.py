"""Bad input of every kind gets a 4xx JSON error, never HTML or a 5xx; health reports the database."""

from __future__ import annotations

import httpx

from tests.helpers import register, start_app, test_env


def assert_json_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["success"] is False and isinstance(body["error"], str) and body["error"]
    return body["error"]


async def test_unknown_routes_and_methods(client: httpx.AsyncClient) -> None:
    for method in ("GET", "POST", "DELETE", "PATCH"):
        assert_json_error(await client.request(method, "/api/no/such/route"), 404)
    assert_json_error(await client.get("/"), 404)
    assert assert_json_error(await client.delete("/api/auth/login"), 405) == "Method not allowed"
    assert_json_error(await client.put("/health"), 405)


async def test_malformed_and_mistyped_json(client: httpx.AsyncClient) -> None:
    headers = {"Content-Type": "application/json"}
    error = assert_json_error(await client.post("/api/auth/login", content=b"{not json", headers=headers), 400)
    assert error == "Request body must be valid JSON"
    error = assert_json_error(await client.post("/api/auth/login", content=b"[1, 2]", headers=headers), 400)
    assert error == "Request body must be a JSON object"
    assert_json_error(await client.post("/api/auth/login", json={"email": ["a"], "password": {"b": 1}}), 400)
    assert_json_error(await client.post("/api/auth/register", json={"email": None, "password": 12345678}), 400)
    assert_json_error(await client.post("/api/auth/login", content="\xff\xfe".encode("latin-1"), headers=headers), 400)


async def test_bodies_over_one_mebibyte(client: httpx.AsyncClient) -> None:
    await register(client)
    big = b'{"displayName": "' + b"x" * (1024 * 1024) + b'"}'
    error = assert_json_error(await client.post("/api/user/display-name", content=big), 413)
    assert error == "Request body is larger than 1 MiB"

    async def chunked():  # no Content-Length: the size is counted as the body arrives
        for _ in range(20):
            yield b"x" * 65536

    assert_json_error(await client.post("/api/user/display-name", content=chunked()), 413)


async def test_health_reports_database_and_build(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True and body["status"] == "ok"
    data = body["data"]
    assert data["database"] == "ok" and data["service"] == "internal-api-server"
    assert data["build"] == {"commitSha": "unknown", "timestamp": "unknown", "imageTag": "unknown"}
    assert data["uptimeSeconds"] >= 0 and data["containerId"] == body["containerId"]
    assert response.headers["X-Container-ID"] == body["containerId"]
    assert (await client.get("/live")).json() == {"status": "alive"}
    assert (await client.get("/ready")).json() == {"status": "ready"}


async def test_health_is_503_when_the_database_is_gone(database_url: str) -> None:
    async with start_app(test_env(database_url)) as srv, httpx.AsyncClient(base_url=srv.url) as http:
        await srv.ctx.pool.close()  # as if PostgreSQL stopped answering
        response = await http.get("/health")
        assert response.status_code == 503
        body = response.json()
        assert body["success"] is False and body["data"]["database"] == "unavailable"
        # An authenticated request while the database is away is a 503 JSON, not a 500.
        http.cookies.set("auth_session", "whatever")
        assert_json_error(await http.get("/api/auth/session"), 503)


async def test_request_id_on_every_response(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/nothing", headers={"X-Request-ID": "abc123"})
    assert response.headers["X-Request-ID"] == "abc123"
    generated = await client.get("/health")
    assert len(generated.headers["X-Request-ID"]) >= 8
