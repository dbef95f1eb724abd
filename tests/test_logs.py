"""Logs: JSON lines in production, each line written while serving a request carries its id."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from tests.helpers import PASSWORD, spawn_replica, test_env, unique_email


def test_production_logs_are_json_lines_with_the_request_id(database_url: str, tmp_path: Path) -> None:
    replica = spawn_replica(test_env(database_url, NODE_ENV="production", LOG_LEVEL="INFO"), tmp_path)
    try:
        email = unique_email()
        registered = httpx.post(f"{replica.url}/api/auth/register", json={"email": email, "password": PASSWORD})
        # The cookie is Secure in production; over plain loopback HTTP it is sent by hand.
        cookie = {"Cookie": f"auth_session={registered.cookies['auth_session']}"}
        user_id = registered.json()["data"]["user"]["id"]
        expired = {"accessToken": "old-access-SECRET", "refreshToken": "old-refresh-SECRET", "expiresAt": 1}
        httpx.post(f"{replica.url}/api/user/claude-auth", json=expired, headers=cookie)
        # The token endpoint is unreachable in tests: the refresh logs a warning from the service.
        response = httpx.post(
            f"{replica.url}/api/user/claude-auth/refresh", headers={**cookie, "X-Request-ID": "req-under-test"}
        )
        assert response.status_code == 502
        quick = httpx.get(f"{replica.url}/api/auth/session", headers={**cookie, "X-Request-ID": "req-quick"})
        assert quick.status_code == 200
        missing = httpx.get(f"{replica.url}/api/nothing-here", headers={"X-Request-ID": "req-missing"})
        assert missing.status_code == 404
        metrics = httpx.get(f"{replica.url}/metrics").text
        time.sleep(0.3)
    finally:
        replica.stop()
    lines = [json.loads(line) for line in replica.log().splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    service_line = next(line for line in lines if line["message"].startswith("Claude token endpoint unreachable"))
    assert service_line["request_id"] == "req-under-test" and service_line["user_id"] == user_id
    access_line = next(line for line in lines if line.get("path") == "/api/user/claude-auth/refresh")
    assert access_line["request_id"] == "req-under-test" and access_line["status"] == 502
    assert "SECRET" not in replica.log()
    # A quick success has no line at INFO, but Prometheus counts it; an error always has one.
    access = {line.get("request_id"): line for line in lines if line["logger"] == "webedt.access"}
    assert "req-quick" not in access
    assert access["req-missing"]["status"] == 404 and access["req-missing"]["level"] == "info"
    assert 'webedt_http_requests_total{handler="SessionHandler",method="GET",status="200"} 1.0' in metrics


def test_slow_successful_requests_are_logged(database_url: str, tmp_path: Path) -> None:
    env = test_env(database_url, NODE_ENV="production", LOG_LEVEL="INFO", ACCESS_LOG_SLOW_SECONDS="0")
    replica = spawn_replica(env, tmp_path)
    try:
        response = httpx.get(f"{replica.url}/api/auth/session", headers={"X-Request-ID": "req-slow"})
        assert response.status_code == 401
        response = httpx.get(f"{replica.url}/health", headers={"X-Request-ID": "req-slow-ok"})
        assert response.status_code == 200
        time.sleep(0.3)
    finally:
        replica.stop()
    lines = [json.loads(line) for line in replica.log().splitlines() if line.startswith("{")]
    access = {line.get("request_id"): line for line in lines if line["logger"] == "webedt.access"}
    assert access["req-slow-ok"]["status"] == 200 and access["req-slow-ok"]["level"] == "info"
