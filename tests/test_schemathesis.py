"""Schemathesis against a live server (`python server.py`, its own database): every operation of
openapi.yaml, with generated valid and invalid input, as a logged-in person (an admin for the
admin routes).

Asserted for every answer: no 5xx except a documented 502/503 (an upstream is unreachable: every
upstream URL points at 127.0.0.1:9, which refuses connections), and nothing that breaks the spec
(status codes, content types, headers, body schemas, invalid input accepted). At the end, the
server must not have logged an unhandled error.

Bounded: a few examples per operation and phase, no shrinking, no example database; the streams
(GET/POST that keep the connection open) are left out, their HEAD forms are in. The person has
Claude credentials and a GitHub token (both refused upstream), so the routes get past "not
connected" to their input checks; every other case with a valid path names a real session of
theirs (or a real user, for two admin operations), so the success answers are checked too.

What the runs found is pinned by the regression tests at the end.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import positive_data_acceptance, unsupported_method

from handlers.openapi import load_spec
from services.db import queries
from services.secrets import SecretBox
from tests.helpers import PASSWORD, PROJECT_ROOT, Replica, spawn_replica, test_env, unique_email

SPEC = load_spec()
# Examples per operation and phase; SCHEMATHESIS_EXAMPLES=200 SCHEMATHESIS_RANDOM=1 for a deeper
# (and each time different) local hunt.
EXAMPLES_PER_OPERATION = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "10"))
SESSION_PARAMETERS = {"id", "sessionId"}


def _stream_operation_ids(spec: dict[str, Any]) -> list[str]:
    """GET/POST operations answering `text/event-stream`: they stay open, so they are left out."""
    streams = []
    for item in spec["paths"].values():
        for method, operation in item.items():
            if method not in ("get", "post"):
                continue
            ok = operation["responses"].get("200", {})
            if "$ref" in ok:
                ok = spec["components"]["responses"][ok["$ref"].rsplit("/", 1)[1]]
            if "text/event-stream" in ok.get("content", {}):
                streams.append(operation["operationId"])
    return streams


schema = schemathesis.openapi.from_dict(
    SPEC,
    config=schemathesis.config.SchemathesisConfig.from_dict(
        {
            "generation": {
                "max-examples": EXAMPLES_PER_OPERATION,
                "no-shrink": True,
                "database": "none",
                # The cookie is this test's to set (a real login); missing or wrong cookies have their own tests.
                "with-security-parameters": False,
            }
        }
    ),
).exclude(operation_id=_stream_operation_ids(SPEC))


@dataclass
class Live:
    """The server under test and the people who use it."""

    replica: Replica
    email: str  # the person's
    user_cookie: str
    session_ids: list[str]  # two pending sessions of theirs
    admin_cookie: str
    scratch_cookie: str  # another person, for the operations that would undo the person's set-up
    victim_id: str  # a person the admin operations may name


async def _sign_up(http: httpx.AsyncClient, prefix: str) -> tuple[str, str, str]:
    """(e-mail, cookie, user id) of a newly registered person."""
    email = unique_email(prefix)
    response = await http.post("/api/auth/register", json={"email": email, "password": PASSWORD})
    return email, _cookie(response), response.json()["data"]["user"]["id"]


def _cookie(response: httpx.Response) -> str:
    assert response.status_code in (200, 201), response.text
    value = response.cookies.get("auth_session")
    assert value, response.headers
    return value


async def _link_github(database_url: str, secret: str, user_id: str) -> None:
    """A GitHub connection as the OAuth callback stores it (the token encrypted); the API it
    would call is 127.0.0.1:9, which refuses connections."""
    connection = await asyncpg.connect(database_url)
    try:
        token = SecretBox(secret).encrypt_text("gho_schemathesis")
        assert await queries.users.link_github_account(
            connection, id=user_id, github_id="424242", github_access_token=token
        )
    finally:
        await connection.close()


def _make_admin(env: dict[str, str], email: str) -> None:
    full_env = {key: value for key, value in os.environ.items() if not key.startswith("DATABASE_URL")}
    full_env.update(env)
    done = subprocess.run(
        [sys.executable, "server.py", "admin", "set-admin", email],
        cwd=PROJECT_ROOT,
        env=full_env,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
async def live(empty_database_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Live]:
    database_url = await empty_database_factory()
    directory = tmp_path_factory.mktemp("schemathesis")
    env = test_env(
        database_url,
        WORKSPACE_DIR=str(directory / "workspaces"),
        # Generated logins fail by the hundred from one address; the rate limit has its own tests.
        LOGIN_MAX_FAILURES_PER_IP="1000000",
        LOGIN_MAX_FAILURES_PER_EMAIL="1000000",
    )
    replica = await asyncio.to_thread(spawn_replica, env, directory)
    try:
        async with httpx.AsyncClient(base_url=replica.url, timeout=30) as http:
            email, user_cookie, user_id = await _sign_up(http, "schemathesis")
            http.cookies.set("auth_session", user_cookie)
            credentials = {
                "accessToken": "sk-ant-oat-test",
                "refreshToken": "sk-ant-ort-test",
                "expiresAt": int((time.time() + 365 * 86400) * 1000),  # no refresh is due
            }
            saved = await http.post("/api/user/claude-auth", json=credentials)
            assert saved.status_code == 200, saved.text
            await _link_github(database_url, env["SESSION_SECRET"], user_id)
            session_ids = []
            for branch in ("schemathesis-a", "schemathesis-b"):
                repository = {"repositoryOwner": "octo", "repositoryName": "project", "baseBranch": "main"}
                created = await http.post("/api/sessions/create-code-session", json={**repository, "branch": branch})
                assert created.status_code == 200, created.text
                session_ids.append(created.json()["session"]["id"])
            http.cookies.clear()

            admin_email, admin_cookie, _ = await _sign_up(http, "schemathesis-admin")
            await asyncio.to_thread(_make_admin, env, admin_email)
            _, scratch_cookie, _ = await _sign_up(http, "scratch")
            _, _, victim_id = await _sign_up(http, "victim")
        yield Live(replica, email, user_cookie, session_ids, admin_cookie, scratch_cookie, victim_id)
    finally:
        await asyncio.to_thread(replica.stop)


# ---- checks ----------------------------------------------------------------------------------------


def documented_server_errors_only(ctx: Any, response: Any, case: schemathesis.Case) -> None:
    """A 5xx is a failure unless it is a 502 or 503 that the operation documents (an upstream or
    the database being unavailable); replaces schemathesis' any-5xx check."""
    status = response.status_code
    if status < 500:
        return
    documented = str(status) in case.operation.definition.raw["responses"]
    if status not in (502, 503) or not documented:
        raise AssertionError(f"{case.operation.label} answered {status}: {response.text[:500]}")


def _fresh_login(live: Live) -> str:
    """Another login session of the person, for a case that ends the one it uses."""
    response = httpx.post(
        f"{live.replica.url}/api/auth/login", json={"email": live.email, "password": PASSWORD}, timeout=30
    )
    return _cookie(response)


# Operations that would undo the person's set-up (Claude credentials, GitHub connection) run as
# another person, so that the other operations keep getting past "not connected".
AS_SCRATCH_USER = {"POST /api/user/claude-auth", "DELETE /api/user/claude-auth", "POST /api/github/disconnect"}


# Admin operations whose valid cases may name a real user (not impersonate or delete: those would
# end the admin's login or remove the user for the rest of the run).
REAL_USER_OPERATIONS = {"GET /api/admin/users/{userId}", "PATCH /api/admin/users/{userId}"}
_cases_with_valid_path = itertools.count()


def _prepare(case: schemathesis.Case, live: Live) -> dict[str, str]:
    """The cookie for this case; every other case with a valid path names a real session (or user) in it."""
    label = case.operation.label
    if label == "POST /api/auth/logout":
        return {"auth_session": _fresh_login(live)}
    if label in AS_SCRATCH_USER:
        return {"auth_session": live.scratch_cookie}
    # Only where the path itself is valid: a negative case may be invalid in its body or query.
    path_info = case.meta.components.get(ParameterLocation.PATH) if case.meta is not None else None
    valid_path = path_info is not None and path_info.mode.is_positive
    if valid_path and next(_cases_with_valid_path) % 2 == 0:
        for name in SESSION_PARAMETERS & set(case.path_parameters):
            case.path_parameters[name] = live.session_ids[zlib.crc32(label.encode()) % len(live.session_ids)]
        if label in REAL_USER_OPERATIONS:
            case.path_parameters["userId"] = live.victim_id
    if "admin" in case.operation.tags:
        return {"auth_session": live.admin_cookie}
    return {"auth_session": live.user_cookie}


# ---- the run ----------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    database=None,
    derandomize=not os.environ.get("SCHEMATHESIS_RANDOM"),
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_the_spec(case: schemathesis.Case, live: Live) -> None:
    cookies = _prepare(case, live)
    # Valid input may still be refused (a branch name git forbids, "GitHub not connected"...):
    # the spec lists those 4xx answers, which is what status_code_conformance checks.
    excluded = [not_a_server_error, positive_data_acceptance]
    if case.operation.path.startswith("/api/github/"):
        # The contract's JSON catch-all: an unlisted method on an /api/github path is a 404.
        excluded.append(unsupported_method)
    case.call_and_validate(
        base_url=live.replica.url,
        cookies=cookies,
        allow_redirects=False,
        timeout=30,
        excluded_checks=excluded,
        additional_checks=[documented_server_errors_only],
    )


# ---- what schemathesis found, pinned -----------------------------------------------------------------


def test_a_non_string_sha_is_refused_not_a_crash(live: Live) -> None:
    response = httpx.request(
        "DELETE",
        f"{live.replica.url}/api/github/repos/octo/project/contents/README.md",
        json={"branch": "main", "sha": [None, None]},
        cookies={"auth_session": live.user_cookie},
    )
    assert response.status_code == 400
    assert response.json() == {"success": False, "error": "sha must be a string"}


def test_a_rename_with_a_mistyped_field_is_refused(live: Live) -> None:
    url = f"{live.replica.url}/api/sessions/{live.session_ids[0]}"
    cookies = {"auth_session": live.user_cookie}
    response = httpx.patch(url, json={"userRequest": 5, "branch": "feature/x"}, cookies=cookies)
    assert response.status_code == 400
    assert response.json()["error"] == "userRequest must be a string"
    # A blank field still means "leave it" (CONTRACT.md 1.6).
    response = httpx.patch(url, json={"userRequest": "Renamed", "branch": ""}, cookies=cookies)
    assert response.status_code == 200 and response.json()["data"]["userRequest"] == "Renamed"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("TRACE", "/health", "GET, OPTIONS"),
        ("DELETE", "/api/openapi.json", "GET, OPTIONS"),
        ("PUT", "/api/sessions/updates", "GET, HEAD, OPTIONS"),  # a read-only stream route
        ("POST", "/api/sessions/some-id/stream", "GET, HEAD, OPTIONS"),
        ("PUT", "/api/sessions/some-id/events", "GET, POST, OPTIONS"),  # one resource, two methods
    ],
)
def test_405_names_the_allowed_methods(live: Live, method: str, path: str, allow: str) -> None:
    response = httpx.request(method, f"{live.replica.url}{path}", cookies={"auth_session": live.user_cookie})
    assert response.status_code == 405
    assert response.headers["Allow"] == allow
    assert response.json() == {"success": False, "error": "Method not allowed"}
    if method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        unknown = httpx.request(method, f"{live.replica.url}/api/no/such/route")
        assert unknown.status_code == 404 and "Allow" not in unknown.headers


def test_an_unreadable_oauth_callback_goes_back_to_the_site(live: Live) -> None:
    response = httpx.get(
        f"{live.replica.url}/api/github/oauth/callback",
        params={"code": "x", "state": "a\x00b"},
        cookies={"auth_session": live.user_cookie},
    )
    assert response.status_code == 302
    assert response.headers["Location"].endswith("error=oauth_failed")


def test_server_logged_no_unhandled_error(live: Live) -> None:
    """Bad input never reaches a traceback, not even one that ends in a clean answer."""
    log = live.replica.log()
    for marker in ("unhandled error", "Traceback"):
        at = log.find(marker)
        assert at < 0, log[max(0, at - 500) : at + 3000]
