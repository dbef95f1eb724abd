"""The server under attack: forged and orphaned cookies, SQL and header-injection strings in every
text field of every JSON body and in query strings, path traversal in every path parameter,
other people's session ids on every session route, and forged GitHub OAuth callbacks.

Every attempt must be refused cleanly (a 4xx JSON error with `success: false`) or answered
normally with the string treated as plain data: never a 5xx, never a traceback or an internal
detail, never an injected header, never a token or another person's data; and the database is
intact afterwards. The module runs its own server on its own database (hundreds of failed logins
from 127.0.0.1 would otherwise rate-limit the logins of other test modules), with a fake GitHub
so that the GitHub routes' bodies get past "GitHub not connected" to their real checks.

tests/test_auth.py covers a cookie with its last character changed and a deleted user on
`/api/auth/session`; tests/test_sessions_isolation.py covers another person's session on the
CRUD, message, trash and bulk routes; tests/test_github_oauth.py covers tampered, expired and
foreign OAuth states. This module covers the rest.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import random
import re
import secrets
import string
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlparse

import httpx
import pytest

from services import migrations
from services.github.oauth import read_state, sign_state
from tests.fakes.github import FakeGitHub, connect_github, github_env, oauth_round_trip, running_fake_github
from tests.helpers import ORIGIN, PASSWORD, TestServer, register, start_app, test_env, unique_email
from tests.sse import open_sse

# ---- the strings an attacker sends ------------------------------------------------------------------

# Incompressible, so that PostgreSQL cannot squeeze it under an index's row-size limit.
LONG = "".join(random.Random(7).choices(string.ascii_letters + string.digits, k=100_000))
INJECTIONS = [
    "' OR 1=1 --",
    '"; DROP TABLE users; --',
    "x'); DELETE FROM sessions WHERE ('1'='1",
    "1; SELECT pg_sleep(5) --",
    "\r\nSet-Cookie: injected=1",
    "%0d%0aSet-Cookie:%20injected=1",
    "nul\x00byte",
    "\x00",
    LONG,
    "Ünïcödé ✓ 日本語 🚀 \u202etxt.exe \ufeff\u2028\u2029 ﷽",
    "../../../../etc/passwd",
    "$(touch /tmp/pwned) `id` | rm -rf / ; ",
    "<script>alert(1)</script>{{7*7}}${7*7}",
]
# The same, short enough for a URL (the long one at 6,000 characters).
QUERY_INJECTIONS = [value if value is not LONG else LONG[:6000] for value in INJECTIONS]

TRAVERSALS = [
    "..",
    "../..",
    "../../etc/passwd",
    "%2e%2e",
    "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "..%2f..%2fetc%2fpasswd",
    "..%2F",
    "%2F..%2F",
    "%252e%252e%252f",
    "..%5c..%5cwindows",
    "....//....//",
    ".%2e",
    "..;",
    "%c0%ae%c0%ae%c0%af",
    "%00",
    "..%00",
    "%0d%0aSet-Cookie:%20injected=1",
]
# Names that only look like traversals: decoded once (as the server must) `%252e%252e%252f` is
# `%2e%2e%2f`, and `..;` (Tomcat's trick) is just `..;`; both are legal, if odd, branch or file
# names. Whatever the server answers for them must treat them as such plain names.
PLAIN_DATA = {"%252e%252e%252f", "..;"}

# Text a response may never contain: tracebacks, driver and database internals, file paths.
LEAK_MARKERS = [
    "Traceback",
    'File "',
    "site-packages",
    "/work/",
    "asyncpg",
    "psycopg",
    "syntax error",
    "PostgresError",
    "violates",
    "root:x:0:0",
    "$2b$",
]

# ---- fixtures ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class World:
    """The people and things the attacks aim at."""

    app: TestServer
    github: FakeGitHub
    attacker: httpx.AsyncClient
    admin: httpx.AsyncClient
    victim: httpx.AsyncClient
    attacker_user: dict[str, Any]
    victim_user: dict[str, Any]
    target_user: dict[str, Any]  # a plain account the admin attacks go against
    session_id: str  # the attacker's own session
    victim_session: dict[str, Any]
    victim_event_id: int
    github_token: str

    def forbidden(self) -> list[str]:
        """What no response to the attacker may contain."""
        return [
            self.victim.cookies["auth_session"],
            self.attacker.cookies["auth_session"],
            self.admin.cookies["auth_session"],
            self.victim_user["email"],
            self.victim_user["id"],
            self.victim_session["id"],
            self.github_token,
            PASSWORD,
        ]

    def tokens(self) -> list[str]:
        """What not even an admin may see."""
        return [
            self.victim.cookies["auth_session"],
            self.attacker.cookies["auth_session"],
            self.admin.cookies["auth_session"],
            self.github_token,
            PASSWORD,
        ]


@pytest.fixture(scope="module")
async def own_database(empty_database_factory) -> str:  # type: ignore[no-untyped-def]
    url = await empty_database_factory()
    await migrations.migrate(url)
    return url


@pytest.fixture(scope="module")
async def fake_github() -> AsyncIterator[FakeGitHub]:
    async with running_fake_github() as running:
        yield running


@pytest.fixture(scope="module")
async def world(own_database: str, fake_github: FakeGitHub) -> AsyncIterator[World]:
    repo = fake_github.add_repo("octo", "widgets", {"README.md": "hello\n", "docs/guide.md": "guide\n"})
    repo.commit_files("feature", {"README.md": b"hello\n", "feature.md": b"work\n"}, "Feature work")
    env = test_env(
        own_database,
        **github_env(fake_github),
        CLAUDE_RETRY_WINDOW_SECONDS="1",
        CLAUDE_REQUEST_TIMEOUT_SECONDS="1",
        # Hundreds of refused logins come from 127.0.0.1 here; the limiter has its own tests.
        LOGIN_MAX_FAILURES_PER_IP="1000000",
        LOGIN_MAX_FAILURES_PER_EMAIL="1000000",
    )
    async with (
        start_app(env) as app,
        httpx.AsyncClient(base_url=app.url, timeout=30) as attacker,
        httpx.AsyncClient(base_url=app.url, timeout=30) as admin,
        httpx.AsyncClient(base_url=app.url, timeout=30) as victim,
    ):
        victim_user = await register(victim)
        await victim.post("/api/user/display-name", json={"displayName": "Victim Private Name"})
        victim_session = await create_session(victim, "victim-branch")
        event = await victim.post(
            f"/api/sessions/{victim_session['id']}/events", json={"eventData": {"type": "assistant", "text": "mine"}}
        )
        assert event.status_code == 200, event.text
        attacker_user = await register(attacker)
        github_user = await connect_github(attacker, fake_github, "octo")  # owns octo/widgets
        admin_user = await register(admin)
        await app.ctx.pool.execute("UPDATE users SET is_admin = true WHERE id = $1", admin_user["id"])
        await app.ctx.hub.barrier()  # the server has heard of the change (services/login_cache.py)
        async with httpx.AsyncClient(base_url=app.url) as other:
            target_user = await register(other)
        own = await create_session(attacker, "attacker-branch")
        yield World(
            app=app,
            github=fake_github,
            attacker=attacker,
            admin=admin,
            victim=victim,
            attacker_user=attacker_user,
            victim_user=victim_user,
            target_user=target_user,
            session_id=own["id"],
            victim_session=victim_session,
            victim_event_id=event.json()["data"]["id"],
            github_token=github_user.token,
        )


async def create_session(client: httpx.AsyncClient, branch: str) -> dict[str, Any]:
    response = await client.post(
        "/api/sessions/create-code-session",
        json={"repositoryOwner": "octo", "repositoryName": "widgets", "baseBranch": "main", "branch": branch},
    )
    assert response.status_code == 200, response.text
    return response.json()["session"]


# ---- what every answer must look like ------------------------------------------------------------------


def assert_clean(response: httpx.Response, forbidden: list[str], what: str) -> None:
    """A refusal as JSON or a normal answer; no 5xx, no leak, no injected header."""
    status = response.status_code
    assert status < 500, f"{what}: {status} {response.text[:300]}"
    content_type = response.headers.get("content-type", "")
    if status >= 400:
        assert content_type.startswith("application/json"), f"{what}: {status} {content_type}"
        body = response.json()
        assert body["success"] is False and isinstance(body["error"], str) and body["error"], what
    elif 300 <= status < 400:
        location = response.headers["location"]
        assert location.startswith(ORIGIN) or "/login/oauth/authorize?" in location, f"{what}: {location}"
    else:
        assert content_type.startswith(("application/json", "text/event-stream")), f"{what}: {content_type}"
    text = response.text
    for marker in LEAK_MARKERS:
        assert marker not in text, f"{what}: {marker!r} in {text[:300]}"
    for secret in forbidden:
        assert secret not in text, f"{what}: a secret in the answer"
    for name, value in response.headers.multi_items():
        assert "injected" not in name.lower(), f"{what}: injected header {name}"
        assert "\r" not in value and "\n" not in value, f"{what}: line break in header {name}"
        if name.lower() == "set-cookie":
            assert value.startswith("auth_session="), f"{what}: unexpected cookie {value}"
        else:
            for secret in forbidden:
                assert secret not in value, f"{what}: a secret in header {name}"


def with_value(body: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    """A deep copy of `body` with the dotted `field` (list indexes as numbers) set to `value`."""
    result = copy.deepcopy(body)
    target: Any = result
    parts = field.split(".")
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target.setdefault(part, {})
    last = parts[-1]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return result


def json_content(body: dict[str, Any]) -> bytes:
    # ASCII escapes: a NUL travels as \u0000, exactly as a browser's JSON.stringify sends it.
    return json.dumps(body, ensure_ascii=True).encode()


async def send_json(client: httpx.AsyncClient, method: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return await client.request(
        method, path, content=json_content(body), headers={"Content-Type": "application/json", "Origin": ORIGIN}
    )


async def raw_request(client: httpx.AsyncClient, method: str, target: str, **kwargs: Any) -> httpx.Response:
    """A request whose target goes on the wire exactly as given (httpx would resolve `..`)."""
    return await client.request(method, "/", extensions={"target": target.encode()}, **kwargs)


async def database_snapshot(world: World) -> dict[str, Any]:
    pool = world.app.ctx.pool
    return {
        "tables": await pool.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = ANY($1::text[])",
            ["users", "sessions", "chat_sessions", "events", "messages", "login_failures"],
        ),
        "users": await pool.fetchval("SELECT count(*) FROM users"),
        "victim": dict(await pool.fetchrow("SELECT * FROM users WHERE id = $1", world.victim_user["id"])),
        "victim_login_sessions": await pool.fetchval(
            "SELECT count(*) FROM sessions WHERE user_id = $1", world.victim_user["id"]
        ),
        "victim_session": dict(
            await pool.fetchrow("SELECT * FROM chat_sessions WHERE id = $1", world.victim_session["id"])
        ),
        "victim_events": await pool.fetchval(
            "SELECT count(*) FROM events WHERE chat_session_id = $1", world.victim_session["id"]
        ),
        "attacker_sessions": await pool.fetchval(
            "SELECT count(*) FROM chat_sessions WHERE user_id = $1", world.attacker_user["id"]
        ),
    }


async def assert_database_intact(world: World, before: dict[str, Any], new_users: int, new_sessions: int) -> None:
    after = await database_snapshot(world)
    assert after["tables"] == 6
    assert after["users"] == before["users"] + new_users
    assert after["victim"] == before["victim"]
    assert after["victim_login_sessions"] == before["victim_login_sessions"]
    assert after["victim_session"] == before["victim_session"]
    assert after["victim_events"] == before["victim_events"]
    assert after["attacker_sessions"] == before["attacker_sessions"] + new_sessions
    # Everyone still logs in and reads their own things.
    me = await world.victim.get("/api/auth/session")
    assert me.status_code == 200 and me.json()["data"]["user"]["displayName"] == "Victim Private Name"
    sessions = (await world.victim.get("/api/sessions")).json()["data"]["sessions"]
    assert [s["id"] for s in sessions] == [world.victim_session["id"]]
    assert (await world.attacker.get("/api/auth/session")).status_code == 200
    assert (await world.admin.get("/api/admin/stats")).status_code == 200


# ---- 1. forged and orphaned cookies ----------------------------------------------------------------------


def one_char_changes(token: str) -> list[str]:
    """The token with one character changed at its start, middle and end, one dropped, one added,
    and one letter's case flipped."""

    def swap(i: int) -> str:
        replacement = "A" if token[i] != "A" else "B"
        return token[:i] + replacement + token[i + 1 :]

    letter = next(i for i, c in enumerate(token) if c.isalpha())
    return [
        swap(0),
        swap(len(token) // 2),
        swap(len(token) - 1),
        token[:-1],
        token + "A",
        token[:letter] + token[letter].swapcase() + token[letter + 1 :],
    ]


async def test_a_cookie_changed_by_one_character_is_refused_everywhere(world: World) -> None:
    token = world.attacker.cookies["auth_session"]
    sid = world.session_id
    routes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/api/auth/session", None),
        ("GET", "/api/sessions", None),
        ("GET", f"/api/sessions/{sid}", None),
        ("GET", f"/api/sessions/{sid}/events", None),
        ("GET", f"/api/sessions/{sid}/events/stream", None),
        ("GET", "/api/sessions/updates", None),
        ("GET", f"/api/resume/{sid}", None),
        ("PATCH", f"/api/sessions/{sid}", {"userRequest": "forged rename"}),
        ("POST", "/api/user/display-name", {"displayName": "forged name"}),
        ("POST", "/api/auth/logout", None),
        ("POST", "/api/execute-remote", {"userRequest": "forged run", "websiteSessionId": sid}),
        ("GET", "/api/github/repos", None),
        ("GET", "/api/admin/users", None),
    ]
    admin_token = world.admin.cookies["auth_session"]
    for original in (token, admin_token):
        for forged in one_char_changes(original):
            async with httpx.AsyncClient(base_url=world.app.url, cookies={"auth_session": forged}) as forger:
                for method, path, body in routes:
                    response = await forger.request(method, path, json=body)
                    assert_clean(response, [original], f"{method} {path}")
                    assert response.status_code == 401, (method, path, response.status_code)
                    assert response.json() == {"success": False, "error": "Unauthorized"}
                    # The forged cookie is told to go away.
                    assert "auth_session=" in response.headers.get("set-cookie", ""), (method, path)
    # Nothing the forged requests tried happened: the real sessions still work, unchanged.
    me = (await world.attacker.get("/api/auth/session")).json()["data"]["user"]
    assert me["displayName"] is None
    assert (await world.attacker.get(f"/api/sessions/{sid}")).json()["session"]["userRequest"] != "forged rename"
    assert (await world.admin.get("/api/admin/users")).status_code == 200


async def test_the_cookie_of_a_deleted_user_opens_nothing(world: World) -> None:
    app = world.app
    email = unique_email("doomed")
    async with httpx.AsyncClient(base_url=app.url, timeout=30) as doomed:
        user = await register(doomed, email)
        session = await create_session(doomed, "doomed-branch")
        token = doomed.cookies["auth_session"]
        # The account goes (as an admin would delete it), while the browser keeps its cookie.
        response = await world.admin.delete(f"/api/admin/users/{user['id']}")
        assert response.status_code == 200, response.text
        sid = session["id"]
        for method, path, body in [
            ("GET", "/api/auth/session", None),
            ("GET", "/api/sessions", None),
            ("GET", f"/api/sessions/{sid}", None),
            ("GET", f"/api/sessions/{sid}/events/stream", None),
            ("GET", "/api/sessions/updates", None),
            (
                "POST",
                "/api/sessions/create-code-session",
                {"repositoryOwner": "o", "repositoryName": "r", "baseBranch": "main", "branch": "zombie"},
            ),
            ("POST", "/api/user/display-name", {"displayName": "zombie"}),
            ("POST", "/api/user/claude-auth", {"accessToken": "a", "refreshToken": "b"}),
            ("POST", "/api/execute-remote", {"userRequest": "zombie", "github": {"repoUrl": "https://github.com/o/r"}}),
            ("GET", "/api/github/oauth", None),
        ]:
            doomed.cookies.set("auth_session", token)
            response = await doomed.request(method, path, json=body)
            assert_clean(response, [token], f"{method} {path}")
            assert response.status_code == 401, (method, path, response.text)
        # Registering again with the same e-mail makes a new account the old cookie does not open.
        async with httpx.AsyncClient(base_url=app.url) as again:
            reborn = await register(again, email)
        assert reborn["id"] != user["id"]
        doomed.cookies.set("auth_session", token)
        assert (await doomed.get("/api/auth/session")).status_code == 401
    pool = app.ctx.pool
    assert await pool.fetchval("SELECT count(*) FROM chat_sessions WHERE user_id = $1", user["id"]) == 0
    assert await pool.fetchval("SELECT count(*) FROM sessions WHERE user_id = $1", user["id"]) == 0


async def test_cookies_that_are_not_tokens_at_all(world: World) -> None:
    for value in ["", "a", "' OR 1=1 --", "%00", "x" * 4000, "auth_session=other", '"quoted"', "Ünïcödé"]:
        async with httpx.AsyncClient(base_url=world.app.url) as forger:
            response = await forger.get(
                "/api/auth/session", headers={"Cookie": f"auth_session={quote(value, safe='')}"}
            )
            assert_clean(response, [], f"cookie {value[:20]!r}")
            assert response.status_code == 401


# ---- 2. injection strings in every text field -------------------------------------------------------------

# (who sends it, method, path, a valid body, the text fields). Paths may name {sid} (the sender's
# session), {target} (the admin's target account) and {repo} (octo/widgets on the fake GitHub).
REPO_PATH = "/api/github/repos/octo/widgets"
BODY_ROUTES: list[tuple[str, str, str, dict[str, Any], list[str]]] = [
    ("anonymous", "POST", "/api/auth/register", {"email": "@email", "password": PASSWORD}, ["email", "password"]),
    ("anonymous", "POST", "/api/auth/login", {"email": "@victim", "password": PASSWORD}, ["email", "password"]),
    (
        "attacker",
        "POST",
        "/api/user/claude-auth",
        {
            "accessToken": "sk-ant-oat-attack",
            "refreshToken": "sk-ant-ort-attack",
            "scopes": ["user:inference"],
            "subscriptionType": "pro",
            "rateLimitTier": "default",
        },
        ["accessToken", "refreshToken", "scopes.0", "subscriptionType", "rateLimitTier"],
    ),
    (
        "attacker",
        "POST",
        "/api/user/claude-auth",
        {"claudeAiOauth": {"accessToken": "sk-ant-oat-attack", "refreshToken": "sk-ant-ort-attack"}},
        ["claudeAiOauth.accessToken", "claudeAiOauth.refreshToken"],
    ),
    ("attacker", "POST", "/api/user/preferred-provider", {"provider": "claude"}, ["provider"]),
    ("attacker", "POST", "/api/user/image-resize-setting", {"maxDimension": 1024}, ["maxDimension"]),
    ("attacker", "POST", "/api/user/display-name", {"displayName": "Attacker"}, ["displayName"]),
    ("attacker", "POST", "/api/user/voice-command-keywords", {"keywords": ["go", "stop"]}, ["keywords.0"]),
    ("attacker", "POST", "/api/user/stop-listening-after-submit", {"stopAfterSubmit": True}, ["stopAfterSubmit"]),
    ("attacker", "POST", "/api/user/default-landing-page", {"landingPage": "store"}, ["landingPage"]),
    ("attacker", "POST", "/api/user/preferred-model", {"preferredModel": "opus"}, ["preferredModel"]),
    ("attacker", "POST", "/api/user/chat-verbosity", {"verbosityLevel": "normal"}, ["verbosityLevel"]),
    (
        "attacker",
        "POST",
        "/api/sessions/create-code-session",
        {
            "repositoryOwner": "octo",
            "repositoryName": "widgets",
            "baseBranch": "main",
            "branch": "@name",
            "title": "A title",
        },
        ["repositoryOwner", "repositoryName", "baseBranch", "branch", "title"],
    ),
    ("attacker", "PATCH", "/api/sessions/{sid}", {"userRequest": "Renamed"}, ["userRequest", "branch"]),
    ("attacker", "POST", "/api/sessions/{sid}/messages", {"type": "user", "content": "hi"}, ["type", "content"]),
    (
        "attacker",
        "POST",
        "/api/sessions/{sid}/events",
        {"eventData": {"type": "assistant", "uuid": "@name", "message": {"content": "hi"}}},
        ["eventData.type", "eventData.uuid", "eventData.message.content", "eventData.injected"],
    ),
    ("attacker", "POST", "/api/sessions/{sid}/send", {"content": "follow-up"}, ["content"]),
    ("attacker", "POST", "/api/sessions/bulk-delete", {"ids": ["no-such-session"]}, ["ids.0"]),
    ("attacker", "POST", "/api/sessions/bulk-restore", {"ids": ["no-such-session"]}, ["ids.0"]),
    ("attacker", "POST", "/api/sessions/bulk-delete-permanent", {"ids": ["no-such-session"]}, ["ids.0"]),
    (
        "attacker",
        "POST",
        "/api/execute-remote",
        {"userRequest": "Do it", "github": {"repoUrl": "https://github.com/octo/widgets"}},
        ["userRequest", "github.repoUrl", "websiteSessionId", "lastEventId"],
    ),
    (
        "attacker",
        "POST",
        "/api/execute-remote",
        {"userRequest": [{"type": "text", "text": "Do it"}], "github": '{"repoUrl": "https://github.com/o/r"}'},
        ["userRequest.0.text", "userRequest.0.type", "github"],
    ),
    (
        "admin",
        "POST",
        "/api/admin/users",
        {"email": "@email", "password": PASSWORD, "displayName": "New"},
        ["email", "password", "displayName"],
    ),
    (
        "admin",
        "PATCH",
        "/api/admin/users/{target}",
        {"displayName": "Target"},
        ["email", "displayName", "password"],
    ),
    (
        "attacker",
        "POST",
        REPO_PATH + "/branches",
        {"branchName": "@name", "baseBranch": "main"},
        ["branchName", "baseBranch"],
    ),
    ("attacker", "POST", REPO_PATH + "/branches/feature/merge-base", {"base": "main"}, ["base"]),
    (
        "attacker",
        "POST",
        REPO_PATH + "/branches/feature/auto-pr",
        {"base": "main", "title": "Auto", "body": "Body"},
        ["base", "title", "body", "sessionId"],
    ),
    (
        "attacker",
        "PUT",
        REPO_PATH + "/contents/notes/attack.md",
        {"content": "text", "message": "Add notes", "branch": "main"},
        ["content", "message", "branch", "sha"],
    ),
    (
        "attacker",
        "DELETE",
        REPO_PATH + "/contents/notes/missing.md",
        {"message": "Remove", "branch": "main"},
        ["message", "branch", "sha"],
    ),
    (
        "attacker",
        "POST",
        REPO_PATH + "/rename/notes/missing.md",
        {"newPath": "notes/other.md", "branch": "main", "message": "Move"},
        ["newPath", "branch", "message"],
    ),
    (
        "attacker",
        "DELETE",
        REPO_PATH + "/folder/nothing-here",
        {"branch": "main", "message": "Drop"},
        ["branch", "message"],
    ),
    (
        "attacker",
        "POST",
        REPO_PATH + "/rename-folder/nothing-here",
        {"newFolderPath": "elsewhere", "branch": "main", "message": "Move"},
        ["newFolderPath", "branch", "message"],
    ),
    (
        "attacker",
        "POST",
        REPO_PATH + "/commit",
        {
            "branch": "main",
            "message": "Commit",
            "files": [{"path": "notes/commit.md", "content": "text"}],
            "images": [{"path": "notes/pixel.png", "content": "iVBORw0KGgo="}],
            "deletions": ["notes/gone.md"],
        },
        [
            "branch",
            "message",
            "files.0.path",
            "files.0.content",
            "files.0.encoding",
            "images.0.path",
            "images.0.content",
            "deletions.0",
        ],
    ),
    (
        "attacker",
        "POST",
        REPO_PATH + "/pulls",
        {"head": "feature", "base": "main", "title": "PR", "body": "Body"},
        ["head", "base", "title", "body"],
    ),
    (
        "attacker",
        "POST",
        REPO_PATH + "/pulls/1/merge",
        {"merge_method": "merge", "commit_title": "Merge", "commit_message": "Message"},
        ["merge_method", "commit_title", "commit_message"],
    ),
    (
        "attacker",
        "POST",
        REPO_PATH + "/generate-pr-content",
        {"head": "feature", "base": "main", "userRequest": "Describe"},
        ["head", "base", "userRequest"],
    ),
]


def fill(world: World, template: Any, counter: itertools.count[int]) -> Any:
    """Placeholders in a route's valid body: "@email" and "@name" become fresh values (an unused
    e-mail address, a name fit for a branch or an event uuid), "@victim" the victim's e-mail."""
    if isinstance(template, dict):
        return {k: fill(world, v, counter) for k, v in template.items()}
    if isinstance(template, list):
        return [fill(world, v, counter) for v in template]
    if template == "@email":
        return unique_email(f"fresh{next(counter)}")
    if template == "@name":
        return f"fresh-{next(counter)}-{secrets.token_hex(3)}"
    if template == "@victim":
        return world.victim_user["email"]
    return template


async def attack_bodies(world: World, routes: list[tuple[str, str, str, dict[str, Any], list[str]]]) -> None:
    before = await database_snapshot(world)
    clients = {"attacker": world.attacker, "admin": world.admin}
    counter = itertools.count(1)
    new_users = new_sessions = 0
    for who, method, path_template, valid, fields in routes:
        path = path_template.format(sid=world.session_id, target=world.target_user["id"])
        forbidden = world.tokens() if who == "admin" else world.forbidden()
        for field in fields:
            for value in INJECTIONS:
                body = with_value(fill(world, valid, counter), field, value)
                what = f"{method} {path} {field}={value[:30]!r}"
                if who == "anonymous":
                    async with httpx.AsyncClient(base_url=world.app.url, timeout=30) as anonymous:
                        response = await send_json(anonymous, method, path, body)
                else:
                    response = await send_json(clients[who], method, path, body)
                assert_clean(response, forbidden, what)
                if response.status_code < 300:
                    if path in ("/api/auth/register", "/api/admin/users"):
                        new_users += 1
                    if path == "/api/sessions/create-code-session":
                        new_sessions += 1
                    # Stored as given, or refused: a value that was accepted reads back unchanged.
                    await check_stored_verbatim(world, path, field, body, response)
    # The accepted claude-auth attempts must not leave credentials that a later test's run would use.
    await world.attacker.delete("/api/user/claude-auth", headers={"Origin": ORIGIN})
    await assert_database_intact(world, before, new_users, new_sessions)


async def check_stored_verbatim(
    world: World, path: str, field: str, body: dict[str, Any], response: httpx.Response
) -> None:
    """Accepted text is plain data: what reads back is exactly what was sent."""
    value = body.get(field)
    if path == "/api/user/display-name":
        user = (await world.attacker.get("/api/auth/session")).json()["data"]["user"]
        assert user["displayName"] == (value.strip() or None)
    elif path == f"/api/sessions/{world.session_id}/messages" and field == "content":
        assert response.json()["data"]["content"] == value
    elif path == f"/api/sessions/{world.session_id}" and field == "userRequest":
        session = (await world.attacker.get(path)).json()["session"]
        assert session["userRequest"] == value.strip()
    elif path == f"/api/sessions/{world.session_id}/events" and field.startswith("eventData."):
        stored = response.json()["data"]
        page = (await world.attacker.get(f"{path}?after={stored['id'] - 1}&limit=1")).json()["data"]["events"]
        assert page[0]["eventData"] == body["eventData"]


async def test_injection_strings_in_account_and_settings_bodies(world: World) -> None:
    await attack_bodies(world, [r for r in BODY_ROUTES if r[2].startswith(("/api/auth", "/api/user"))])


async def test_injection_strings_in_session_and_run_bodies(world: World) -> None:
    await attack_bodies(world, [r for r in BODY_ROUTES if r[2].startswith(("/api/sessions", "/api/execute"))])


async def test_injection_strings_in_admin_bodies(world: World) -> None:
    await attack_bodies(world, [r for r in BODY_ROUTES if r[2].startswith("/api/admin")])


async def test_injection_strings_in_github_bodies(world: World) -> None:
    await attack_bodies(world, [r for r in BODY_ROUTES if r[2].startswith("/api/github")])
    # No line break or NUL ever reached a request line sent to GitHub.
    for request in world.github.requests:
        assert "\r" not in request["path"] and "\n" not in request["path"] and "\x00" not in request["path"]


async def test_injection_strings_keep_their_meaning_as_data(world: World) -> None:
    """Values that look like SQL are perfectly good data: stored and read back as they are."""
    email = f"o'brien+{unique_email('x').split('@')[0]}--@example.com"
    async with httpx.AsyncClient(base_url=world.app.url, timeout=30) as person:
        response = await person.post("/api/auth/register", json={"email": email, "password": "' OR 1=1 --"})
        assert response.status_code == 201, response.text
        assert response.json()["data"]["user"]["email"] == email
        login = await person.post("/api/auth/login", json={"email": email, "password": "' OR 1=1 --"})
        assert login.status_code == 200
        wrong = await person.post("/api/auth/login", json={"email": email, "password": "' OR '1'='1"})
        assert wrong.status_code == 401
        title = '\'; DROP TABLE chat_sessions; -- \r\nSet-Cookie: injected=1 "q" \\ Ünïcödé 🚀 \u2028\t.'
        created = await person.post(
            "/api/sessions/create-code-session",
            json={
                "repositoryOwner": "octo",
                "repositoryName": "widgets",
                "baseBranch": "main",
                "branch": "o-brien",
                "title": title,
            },
        )
        assert created.status_code == 200, created.text
        session = created.json()["session"]
        assert session["userRequest"] == title.strip()
        listed = (await person.get("/api/sessions")).json()["data"]["sessions"]
        assert listed == [session]  # the list's SessionRow is the single session's, byte for byte


# ---- 3. injection strings in query strings ----------------------------------------------------------------

QUERY_ROUTES: list[tuple[str, str, str, list[str]]] = [
    ("attacker", "GET", "/api/sessions", ["limit", "offset", "cursor"]),
    ("attacker", "GET", "/api/sessions/deleted", ["limit", "offset"]),
    ("attacker", "GET", "/api/sessions/{sid}/messages", ["limit", "offset"]),
    ("attacker", "GET", "/api/sessions/{sid}/events", ["after", "limit"]),
    ("attacker", "GET", "/api/sessions/{sid}/events/stream", ["lastEventId"]),
    ("attacker", "GET", "/api/sessions/{sid}/stream", ["lastEventId"]),
    ("attacker", "GET", "/api/resume/{sid}", ["lastEventId"]),
    ("attacker", "GET", "/api/execute-remote", ["userRequest", "websiteSessionId", "github", "lastEventId"]),
    ("attacker", "POST", "/api/sessions/sync", ["activeOnly", "limit"]),
    ("admin", "GET", "/api/admin/users", ["limit", "offset"]),
    ("admin", "GET", "/api/admin/impersonations", ["limit", "offset"]),
    ("attacker", "GET", REPO_PATH + "/contents/README.md", ["ref"]),
    ("attacker", "GET", REPO_PATH + "/contents", ["ref"]),
    ("attacker", "GET", REPO_PATH + "/tree/main", ["recursive"]),
    ("attacker", "GET", REPO_PATH + "/pulls", ["head", "base"]),
    ("anonymous", "GET", "/api/github/oauth/callback", ["code", "state", "error"]),
    ("anonymous", "GET", "/health", ["x"]),
]


async def test_injection_strings_in_query_strings(world: World) -> None:
    before = await database_snapshot(world)
    clients = {"attacker": world.attacker, "admin": world.admin}
    for who, method, path_template, names in QUERY_ROUTES:
        path = path_template.format(sid=world.session_id)
        forbidden = world.tokens() if who == "admin" else world.forbidden()
        for name in names:
            for value in QUERY_INJECTIONS:
                params = {name: value}
                if path.endswith("/oauth/callback"):
                    params = {"code": "c", "state": "s.t", **params}
                what = f"{method} {path}?{name}={value[:30]!r}"
                if who == "anonymous":
                    async with httpx.AsyncClient(base_url=world.app.url, timeout=30) as anonymous:
                        response = await anonymous.request(method, path, params=params)
                else:
                    # execute-remote by GET answers only what an EventSource sends (issue 15.7).
                    headers = {"Origin": ORIGIN, "Accept": "text/event-stream"}
                    response = await clients[who].request(method, path, params=params, headers=headers)
                assert_clean(response, forbidden, what)
    # The session-list stream takes its position from the query too; it never ends by itself,
    # so read its first frame and leave.
    for value in QUERY_INJECTIONS:
        async with open_sse(world.attacker, "/api/sessions/updates", params={"lastEventId": value}) as stream:
            assert stream.status_code == 200
            assert (await stream.next()).event == "connected"
    await assert_database_intact(world, before, 0, 0)


# ---- 4. path traversal in every path parameter ---------------------------------------------------------------

# (who, method, path with {slots}, body). Valid values for the slots not under attack:
VALID_SLOTS = {
    "id": "",  # the attacker's own session, filled in at run time
    "uid": "",  # the admin's target account
    "owner": "octo",
    "repo": "widgets",
    "branch": "main",
    "path": "README.md",
    "number": "1",
    "setting": "display-name",
}
PATH_ROUTES: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("attacker", "POST", "/api/user/{setting}", {"displayName": "x"}),
    ("attacker", "GET", "/api/sessions/{id}", None),
    ("attacker", "PATCH", "/api/sessions/{id}", {"userRequest": "x"}),
    ("attacker", "DELETE", "/api/sessions/{id}", None),
    ("attacker", "GET", "/api/sessions/{id}/messages", None),
    ("attacker", "POST", "/api/sessions/{id}/messages", {"type": "user", "content": "x"}),
    ("attacker", "GET", "/api/sessions/{id}/events", None),
    ("attacker", "POST", "/api/sessions/{id}/events", {"eventData": {"type": "x"}}),
    ("attacker", "GET", "/api/sessions/{id}/events/stream", None),
    ("attacker", "HEAD", "/api/sessions/{id}/events/stream", None),
    ("attacker", "GET", "/api/sessions/{id}/stream", None),
    ("attacker", "GET", "/api/resume/{id}", None),
    ("attacker", "POST", "/api/sessions/{id}/unlock", None),
    ("attacker", "POST", "/api/sessions/{id}/restore", None),
    ("attacker", "POST", "/api/sessions/{id}/sync-events", None),
    ("attacker", "POST", "/api/sessions/{id}/send", {"content": "x"}),
    ("attacker", "POST", "/api/sessions/{id}/interrupt", None),
    ("attacker", "POST", "/api/sessions/{id}/abort", None),
    ("attacker", "POST", "/api/sessions/{id}/init-repository", None),
    ("admin", "GET", "/api/admin/users/{uid}", None),
    ("admin", "PATCH", "/api/admin/users/{uid}", {"displayName": "x"}),
    ("admin", "DELETE", "/api/admin/users/{uid}", None),
    ("admin", "POST", "/api/admin/users/{uid}/impersonate", None),
    ("attacker", "GET", "/api/github/repos/{owner}/{repo}/branches", None),
    ("attacker", "POST", "/api/github/repos/{owner}/{repo}/branches", {"branchName": "x1", "baseBranch": "main"}),
    ("attacker", "DELETE", "/api/github/repos/{owner}/{repo}/branches/{branch}", None),
    ("attacker", "POST", "/api/github/repos/{owner}/{repo}/branches/{branch}/merge-base", {"base": "main"}),
    ("attacker", "DELETE", "/api/github/repos/{owner}/{repo}/branches/{branch}/merge-base", None),
    ("attacker", "POST", "/api/github/repos/{owner}/{repo}/branches/{branch}/auto-pr", {"base": "main"}),
    ("attacker", "DELETE", "/api/github/repos/{owner}/{repo}/branches/{branch}/auto-pr", None),
    ("attacker", "GET", "/api/github/repos/{owner}/{repo}/tree/{branch}", None),
    ("attacker", "GET", "/api/github/repos/{owner}/{repo}/contents/{path}", None),
    ("attacker", "PUT", "/api/github/repos/{owner}/{repo}/contents/{path}", {"content": "x", "branch": "main"}),
    ("attacker", "DELETE", "/api/github/repos/{owner}/{repo}/contents/{path}", {"branch": "main"}),
    ("attacker", "POST", "/api/github/repos/{owner}/{repo}/rename/{path}", {"newPath": "b.md", "branch": "main"}),
    ("attacker", "DELETE", "/api/github/repos/{owner}/{repo}/folder/{path}", {"branch": "main"}),
    (
        "attacker",
        "POST",
        "/api/github/repos/{owner}/{repo}/rename-folder/{path}",
        {"newFolderPath": "b", "branch": "main"},
    ),
    ("attacker", "GET", "/api/github/repos/{owner}/{repo}/pulls", None),
    ("attacker", "POST", "/api/github/repos/{owner}/{repo}/pulls", {"head": "feature", "base": "main"}),
    ("attacker", "POST", "/api/github/repos/{owner}/{repo}/pulls/{number}/merge", {}),
    ("attacker", "POST", "/api/github/repos/{owner}/{repo}/generate-pr-content", {"head": "f", "base": "main"}),
    (
        "attacker",
        "POST",
        "/api/github/repos/{owner}/{repo}/commit",
        {"branch": "main", "files": [{"path": "a.md", "content": "x"}]},
    ),
]


async def test_path_traversal_in_every_path_parameter(world: World) -> None:
    before = await database_snapshot(world)
    github_requests_before = len(world.github.requests)
    clients = {"attacker": world.attacker, "admin": world.admin}
    slots = {**VALID_SLOTS, "id": world.session_id, "uid": world.target_user["id"]}
    attempts = 0
    for who, method, template, body in PATH_ROUTES:
        forbidden = world.tokens() if who == "admin" else world.forbidden()
        for slot in re.findall(r"\{(\w+)\}", template):
            for traversal in TRAVERSALS:
                target = template.format(**{**slots, slot: traversal})
                kwargs: dict[str, Any] = {"headers": {"Origin": ORIGIN}}
                if body is not None:
                    kwargs["content"] = json_content(body)
                    kwargs["headers"]["Content-Type"] = "application/json"
                response = await raw_request(clients[who], method, target, **kwargs)
                what = f"{method} {target}"
                if method == "HEAD":
                    assert 400 <= response.status_code < 500, what
                    continue
                assert_clean(response, forbidden, what)
                if traversal not in PLAIN_DATA:
                    # A traversal never reaches anything: always refused.
                    assert 400 <= response.status_code < 500, f"{what}: {response.status_code} {response.text[:200]}"
                attempts += 1
    assert attempts > 500
    # Nothing with a `..` segment ever reached GitHub, however it was encoded on the way in.
    for request in world.github.requests[github_requests_before:]:
        assert ".." not in unquote(request["path"]).split("/"), request["path"]
    await assert_database_intact(world, before, 0, 0)
    # The target account is still there and untouched.
    target = await world.admin.get(f"/api/admin/users/{world.target_user['id']}")
    assert target.status_code == 200


async def test_raw_requests_with_line_breaks_and_nul_bytes_in_the_target(world: World) -> None:
    """What a hand-made HTTP request can put into the request line and headers."""
    for target in [
        "/api/sessions/x%0d%0aSet-Cookie:%20injected=1",
        "/api/sessions/x%0aX-Injected:%201/events",
        "/api/sessions?cursor=%0d%0aSet-Cookie:%20injected=1",
        "/api/sessions/%00/events/stream",
        "/api/resume/%00",
        "/api/sessions/" + "a" * 8000,
        "/api/github/repos/octo/widgets/contents/" + "/".join(["a"] * 2000),
    ]:
        response = await raw_request(world.attacker, "GET", target)
        assert_clean(response, world.forbidden(), target[:60])
        assert 400 <= response.status_code < 500, target[:60]
    # Header values that would be echoed if they were trusted.
    response = await world.attacker.get(
        "/api/auth/session", headers={"X-Request-ID": "abc%0d%0aSet-Cookie:%20injected=1", "Last-Event-ID": "1\t2"}
    )
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] != "abc%0d%0aSet-Cookie:%20injected=1"
    assert_clean(response, [world.victim.cookies["auth_session"]], "X-Request-ID")


# ---- 5. another person's session on every session route -------------------------------------------------------


async def test_another_persons_session_is_a_404_on_every_route(world: World) -> None:
    """The routes tests/test_sessions_isolation.py leaves out: streams, runs, sync, workspace,
    execute-remote (by id and by event id) and auto-PR."""
    before = await database_snapshot(world)
    victim = world.victim_session
    sid = victim["id"]
    attacker = world.attacker
    requests: list[tuple[str, str, dict[str, Any] | None, dict[str, str]]] = [
        ("GET", f"/api/sessions/{sid}/events", None, {}),
        ("GET", f"/api/sessions/{sid}/events?after=0&limit=10", None, {}),
        ("GET", f"/api/sessions/{sid}/events/stream", None, {}),
        ("GET", f"/api/sessions/{sid}/stream", None, {}),
        ("GET", f"/api/resume/{sid}", None, {}),
        ("POST", f"/api/sessions/{sid}/send", {"content": "hijack"}, {}),
        ("POST", f"/api/sessions/{sid}/interrupt", None, {}),
        ("POST", f"/api/sessions/{sid}/abort", None, {}),
        ("POST", f"/api/sessions/{sid}/sync-events", None, {}),
        ("POST", f"/api/sessions/{sid}/init-repository", None, {}),
        ("GET", f"/api/sessions/{victim['sessionPath']}/events", None, {}),
        ("GET", f"/api/resume/{victim['sessionPath']}", None, {}),
        ("POST", "/api/execute-remote", {"websiteSessionId": sid}, {}),
        ("POST", "/api/execute-remote", {"websiteSessionId": sid, "userRequest": "hijack"}, {}),
        (
            "POST",
            "/api/execute-remote",
            {"userRequest": "x", "github": {"repoUrl": "https://github.com/o/r"}},
            {"Last-Event-ID": str(world.victim_event_id)},
        ),
        ("GET", f"/api/execute-remote?websiteSessionId={sid}", None, {"Accept": "text/event-stream"}),
        (
            "GET",
            "/api/execute-remote?userRequest=x&github=" + quote('{"repoUrl": "https://github.com/o/r"}'),
            None,
            {"Last-Event-ID": str(world.victim_event_id), "Accept": "text/event-stream"},
        ),
        ("POST", REPO_PATH + "/branches/victim-branch/auto-pr", {"base": "main", "sessionId": sid}, {}),
    ]
    for method, path, body, headers in requests:
        response = await attacker.request(method, path, json=body, headers={"Origin": ORIGIN, **headers})
        assert_clean(response, world.forbidden(), f"{method} {path}")
        assert response.status_code == 404, (method, path, response.status_code, response.text)
        assert response.json()["error"] == "Session not found", (method, path)
    head = await attacker.head(f"/api/sessions/{sid}/events/stream")
    assert head.status_code == 404
    # The admin may read people's accounts, but not their sessions through the session routes.
    admin_view = await world.admin.get(f"/api/sessions/{sid}")
    assert admin_view.status_code == 404
    await assert_database_intact(world, before, 0, 0)


# ---- 6. forged GitHub OAuth callbacks ---------------------------------------------------------------------------


async def github_columns(world: World, user_id: str) -> tuple[Any, Any]:
    row = await world.app.ctx.pool.fetchrow("SELECT github_id, github_access_token FROM users WHERE id = $1", user_id)
    return row["github_id"], row["github_access_token"]


async def test_forged_oauth_callbacks_store_nothing(world: World) -> None:
    app, fake = world.app, world.github
    async with httpx.AsyncClient(base_url=app.url, timeout=30) as browser:
        me = await register(browser)
        fake.authorize_user = fake.add_user("forgery-target")
        authorize, callback = await oauth_round_trip(browser, fake, f"{ORIGIN}/#/settings")
        query = parse_qs(urlparse(callback).query)
        code, genuine = query["code"][0], query["state"][0]
        state = read_state(app.ctx.config, genuine)

        attempts: list[dict[str, str]] = []
        # The right fields, signed with a key an attacker guessed.
        for guess in ("test-session-secret", "changeme-changeme-changeme", app.ctx.config.session_secret[::-1]):
            forged_config = dataclasses.replace(app.ctx.config, session_secret=guess, encryption_key="")
            attempts.append({"code": code, "state": sign_state(forged_config, state)})
        # The genuine state with an empty, changed or missing signature, or a second one.
        signature = genuine.rsplit("|", 1)[1]
        unsigned = genuine[: -len(signature)]
        attempts += [
            {"code": code, "state": unsigned},
            {"code": code, "state": unsigned + signature[::-1]},
            {"code": code, "state": unsigned[:-1]},
            {"code": code, "state": f"{genuine}|{signature}"},
        ]
        # Injection strings in every parameter.
        for value in QUERY_INJECTIONS:
            attempts += [
                {"code": value, "state": "x.y"},
                {"code": code, "state": value},
                {"error": value, "state": value},
            ]
        for params in attempts:
            response = await browser.get("/api/github/oauth/callback", params=params)
            assert_clean(response, [code, world.github_token], f"callback {str(params)[:60]}")
            assert response.status_code == 302
            location = response.headers["location"]
            assert location.startswith(f"{ORIGIN}/#/"), location
            assert re.fullmatch(r"[A-Za-z0-9:/#._?=-]+", location), location
        assert await github_columns(world, me["id"]) == (None, None)
        # The code was never spent on a forged state: it is still waiting at the fake.
        assert code in fake.codes
        assert authorize.startswith(fake.url)

        # The genuine callback works once; replaying it changes nothing.
        done = await browser.get(callback)
        assert done.headers["location"].endswith("?success=github_connected")
        connected = await github_columns(world, me["id"])
        assert connected[0] == str(fake.authorize_user.id)
        replay = await browser.get(callback)
        assert_clean(replay, [world.github_token], "replayed callback")
        assert replay.status_code == 302 and "success" not in replay.headers["location"]
        assert await github_columns(world, me["id"]) == connected


async def test_a_callback_for_a_deleted_account_stores_nothing(world: World) -> None:
    app, fake = world.app, world.github
    async with httpx.AsyncClient(base_url=app.url, timeout=30) as browser:
        me = await register(browser)
        fake.authorize_user = fake.add_user("gone-before-callback")
        _, callback = await oauth_round_trip(browser, fake, f"{ORIGIN}/#/settings")
        assert (await world.admin.delete(f"/api/admin/users/{me['id']}")).status_code == 200
        response = await browser.get(callback)
        assert_clean(response, [world.github_token], "callback of a deleted account")
        assert response.status_code == 302
        assert "success" not in response.headers["location"]
    pool = app.ctx.pool
    assert await pool.fetchval("SELECT count(*) FROM users WHERE id = $1", me["id"]) == 0
    assert await pool.fetchval("SELECT count(*) FROM users WHERE github_id = $1", str(fake.authorize_user.id)) == 0
