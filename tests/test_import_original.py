"""`server.py db import-original`: a database of the original server (tests/original_schema.sql,
filled by tests/original_data.py) imported as an operator would, then checked through the HTTP API.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlparse, urlunparse

import asyncpg
import bcrypt
import httpx
import orjson
import pytest

import importer
from services import migrations
from services.db import init_connection
from services.secrets import SecretBox
from tests import original_data
from tests.helpers import ORIGIN, PROJECT_ROOT, TestServer, free_port, start_app, test_env
from tests.original_data import OriginalData
from tests.sse import open_sse, stored_events

pytestmark = pytest.mark.timeout(300)
DatabaseFactory = Callable[[], Awaitable[str]]


def import_command(target_url: str, *args: str) -> tuple[list[str], dict[str, str]]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DATABASE_URL")}
    env.update(test_env(target_url))
    return [sys.executable, "server.py", "db", "import-original", *args], env


async def run_import(target_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    command, env = import_command(target_url, *args)

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=240)

    return await asyncio.get_running_loop().run_in_executor(None, run)


async def import_json(target_url: str, source_url: str, *args: str) -> dict[str, Any]:
    done = await run_import(target_url, "--from", source_url, "--json", *args)
    assert done.returncode == 0, done.stderr + done.stdout
    return orjson.loads(done.stdout)


async def new_original(factory: DatabaseFactory) -> tuple[str, OriginalData]:
    url = await factory()
    conn = await asyncpg.connect(url)
    try:
        await original_data.create_original(conn)
        data = await original_data.fill(conn)
    finally:
        await conn.close()
    return url, data


async def original_events(source_url: str, session_id: str) -> list[dict[str, Any]]:
    """The session's events as the original holds them, with repeats of a uuid left out."""
    conn = await asyncpg.connect(source_url)
    try:
        rows = await conn.fetch(
            "SELECT event_data::text AS data FROM events WHERE chat_session_id = $1 ORDER BY id", session_id
        )
    finally:
        await conn.close()
    seen: set[str] = set()
    events = []
    for row in rows:
        event = orjson.loads(row["data"])
        if isinstance(event.get("uuid"), str):
            if event["uuid"] in seen:
                continue
            seen.add(event["uuid"])
        events.append(event)
    return events


async def source_fetch(source_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(source_url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


def cookie_client(base_url: str, cookie: str | None = None) -> httpx.AsyncClient:
    cookies = {"auth_session": cookie} if cookie else None
    return httpx.AsyncClient(base_url=base_url, cookies=cookies, timeout=30)


async def all_events_json(client: httpx.AsyncClient, session_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        page = await client.get(f"/api/sessions/{session_id}/events", params={"after": after, "limit": 5000})
        assert page.status_code == 200, page.text
        payload = page.json()["data"]
        events.extend(payload["events"])
        if not payload["hasMore"]:
            return events
        after = payload["lastId"]


async def tables_holding(target_url: str, secret: str) -> list[str]:
    """This server's tables where `secret` appears anywhere in a row."""
    conn = await asyncpg.connect(target_url)
    try:
        tables = [
            r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ]
        found = []
        for table in tables:
            if await conn.fetchval(f'SELECT count(*) FROM "{table}" t WHERE t::text LIKE $1', f"%{secret}%"):
                found.append(table)
        return found
    finally:
        await conn.close()


async def canonical_dump(target_url: str) -> dict[str, Any]:
    """Everything the import wrote, without this server's generated ids (their order kept)."""
    conn = await asyncpg.connect(target_url)
    await init_connection(conn)
    box = SecretBox(test_env(target_url)["SESSION_SECRET"])
    try:
        users = []
        for row in await conn.fetch("SELECT * FROM users ORDER BY id"):
            user = dict(row)
            user["github_access_token"] = box.decrypt_text(user["github_access_token"])
            user["claude_auth"] = box.decrypt_json(user["claude_auth"])
            users.append(user)
        return {
            "users": users,
            "sessions": [dict(r) for r in await conn.fetch("SELECT id, user_id, expires_at FROM sessions ORDER BY id")],
            "chat_sessions": [dict(r) for r in await conn.fetch("SELECT * FROM chat_sessions ORDER BY id")],
            "messages": [
                dict(r)
                for r in await conn.fetch(
                    "SELECT chat_session_id, type, content, images, timestamp FROM messages"
                    " ORDER BY chat_session_id, id"
                )
            ],
            "events": [
                dict(r)
                for r in await conn.fetch(
                    "SELECT chat_session_id, uuid, event_data, timestamp FROM events ORDER BY chat_session_id, id"
                )
            ],
            "import_original": [
                dict(r)
                for r in await conn.fetch(
                    """SELECT kind, original_id, fingerprint, last_message_id, last_event_id
                       FROM import_original ORDER BY kind, original_id"""
                )
            ],
        }
    finally:
        await conn.close()


def assert_no_secret_in(text: str, data: OriginalData) -> None:
    for secret in data.secrets:
        assert secret not in text


# ---- the first import, checked through the API ------------------------------------------------------


async def test_import_then_everyone_carries_on(empty_database_factory: DatabaseFactory) -> None:
    source_url, data = await new_original(empty_database_factory)
    target_url = await empty_database_factory()
    alice, bob, variant, carol = (data.people[k] for k in ("alice", "bob", "variant", "carol"))
    before = await source_fetch(
        source_url, "SELECT count(*) AS n, md5(string_agg(e::text, '' ORDER BY id)) FROM events e"
    )

    done = await run_import(target_url, "--from", source_url, "--json")
    assert done.returncode == 0, done.stderr
    assert_no_secret_in(done.stdout + done.stderr, data)
    assert "events: " in done.stderr and "rows/s" in done.stderr
    report = orjson.loads(done.stdout)
    tables = report["tables"]
    assert (tables["users"]["total"], tables["users"]["imported"], tables["users"]["skipped"]) == (4, 3, 1)
    assert report["emailCaseVariants"] == [{"email": "bob@example.com", "kept": bob.id, "leftOut": [variant.id]}]
    logins = tables["sessions"]
    assert (logins["imported"], logins["expired"], logins["ownerNotImported"]) == (2, 1, 1)
    chats = tables["chat_sessions"]
    assert (chats["total"], chats["imported"], chats["skipped"]) == (8, 6, 2)
    skipped = {entry["id"]: entry["reason"] for entry in report["skipped"]}
    assert "cannot serve" in skipped[data.bad_session_id]
    assert "was not imported" in skipped[data.sessions["variant"]]
    events = tables["events"]
    big_count = original_data.BIG_SESSION_EVENTS
    assert events["repeatsLeftOut"] == original_data.BIG_SESSION_REPEATS
    assert events["imported"] == big_count + 19 + 2 + 30
    assert tables["messages"]["imported"] == 4
    assert report["tablesNotCarried"]["live_chat_messages"] == 1
    assert report["tablesNotCarried"]["workspace_presence"] == 1
    assert report["tablesNotCarried"]["orchestrator_jobs"] == 0
    assert report["conflictCount"] == 0
    # The original was only read.
    after = await source_fetch(
        source_url, "SELECT count(*) AS n, md5(string_agg(e::text, '' ORDER BY id)) FROM events e"
    )
    assert after == before

    # No clear token or cookie anywhere in this server's database.
    for secret in data.secrets:
        assert await tables_holding(target_url, secret) == []

    async with start_app(test_env(target_url, BCRYPT_ROUNDS=11)) as server:
        # The running session was handed to the run driver's normal adoption.
        for _ in range(200):
            owner = await server.ctx.pool.fetchval(
                "SELECT run_owner FROM chat_sessions WHERE id = $1", data.sessions["running"]
            )
            if owner is not None:
                break
            await asyncio.sleep(0.05)
        assert owner == server.ctx.runs.owner

        # The old password logs in ($2a$ and $2b$, cost 10), and the hash is upgraded to BCRYPT_ROUNDS.
        async with cookie_client(server.url) as browser:
            for person, email in ((alice, alice.email), (bob, "bob@example.com"), (carol, "carol@example.org")):
                login = await browser.post("/api/auth/login", json={"email": email, "password": person.password})
                assert login.status_code == 200, login.text
                assert login.json()["data"]["user"]["id"] == person.id
                stored = await server.ctx.pool.fetchval("SELECT password_hash FROM users WHERE id = $1", person.id)
                assert stored.startswith("$2b$11$")
            again = await browser.post("/api/auth/login", json={"email": alice.email, "password": alice.password})
            assert again.status_code == 200
            wrong = await browser.post("/api/auth/login", json={"email": alice.email, "password": "not it at all"})
            assert wrong.status_code == 401
            younger = await browser.post("/api/auth/login", json={"email": variant.email, "password": variant.password})
            assert younger.status_code == 401

        # An old cookie is accepted; an expired one and a left-out person's are not.
        for cookie, status in (
            (alice.cookie, 200),
            (bob.cookie, 200),
            (alice.expired_cookie, 401),
            (variant.cookie, 401),
        ):
            async with cookie_client(server.url, cookie) as browser:
                assert (await browser.get("/api/auth/session")).status_code == status

        async with cookie_client(server.url, alice.cookie) as browser:
            me = (await browser.get("/api/auth/session")).json()["data"]["user"]
            assert me["email"] == alice.email and me["displayName"] == "Alice"
            assert me["voiceCommandKeywords"] == ["submit", "send it"]
            assert me["preferredModel"] == "claude-sonnet-4-5"
            assert me["githubId"] == "1001" and me["githubConnected"] is True

            # The session list and the trash are what the original held.
            original_rows = {
                r["id"]: r
                for r in await source_fetch(
                    source_url,
                    """SELECT id, status, user_request, total_cost, branch, remote_session_id,
                              to_char(created_at, 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS created_at
                       FROM chat_sessions WHERE user_id = $1""",
                    alice.id,
                )
            }
            listed = (await browser.get("/api/sessions")).json()["data"]["sessions"]
            live = {data.sessions[k] for k in ("big", "pending", "running", "error")}
            assert {s["id"] for s in listed} == live
            for session in listed:
                row = original_rows[session["id"]]
                assert session["status"] == row["status"]
                assert session["userRequest"] == row["user_request"]
                assert session["totalCost"] == row["total_cost"]
                assert session["branch"] == row["branch"]
                assert session["remoteSessionId"] == row["remote_session_id"]
                assert session["createdAt"] == row["created_at"]
            # Newest first, as the original listed them.
            assert [s["id"] for s in listed] == sorted(live, key=lambda i: original_rows[i]["created_at"], reverse=True)
            trash = (await browser.get("/api/sessions/deleted")).json()["data"]["sessions"]
            assert [s["id"] for s in trash] == [data.sessions["trash"]]
            assert trash[0]["deletedAt"] == "2025-03-03T09:00:00.000Z"

            big = data.sessions["big"]
            one = (await browser.get(f"/api/sessions/{big}")).json()["session"]
            assert one["status"] == "completed" and one["completedAt"] == "2025-03-01T10:00:00.000Z"

            messages = (await browser.get(f"/api/sessions/{big}/messages")).json()["data"]["messages"]
            assert [(m["type"], m["content"]) for m in messages] == [
                ("user", "Fix the login page"),
                ("assistant", "Done: the form validates now."),
                ("system", "Branch claude/fix pushed"),
            ]
            assert messages[0]["images"][0]["data"] == original_data.TINY_PNG
            assert messages[1]["images"] is None

            # Events, JSON and replayed stream, in the original order without its repeats.
            expected = await original_events(source_url, big)
            assert len(expected) == big_count
            listed_events = await all_events_json(browser, big)
            assert [e["eventData"] for e in listed_events] == expected
            ids = [e["id"] for e in listed_events]
            assert ids == sorted(ids) and len(set(ids)) == len(ids)
            async with open_sse(browser, f"/api/sessions/{big}/events/stream") as stream:
                frames = stored_events(await stream.until("completed", timeout=60))
            assert [int(f.id) for f in frames] == ids
            replayed = [f.json() for f in frames]
            assert all(e.pop("_replayed") is True and e.pop("_originalTimestamp") for e in replayed)
            assert replayed == expected

            # The Claude credentials come back to their owner.
            credentials = await browser.get("/api/user/claude-auth/credentials")
            assert credentials.status_code == 200, credentials.text
            assert credentials.json()["data"]["claudeAuth"] == alice.claude_auth

        async with cookie_client(server.url, bob.cookie) as browser:
            listed = (await browser.get("/api/sessions")).json()["data"]["sessions"]
            assert [s["id"] for s in listed] == [data.sessions["bob"]]
            assert (await browser.get(f"/api/sessions/{data.sessions['big']}")).status_code == 404


# ---- a second import --------------------------------------------------------------------------------


async def test_second_import_brings_only_what_is_new(empty_database_factory: DatabaseFactory) -> None:
    source_url, data = await new_original(empty_database_factory)
    target_url = await empty_database_factory()
    first = await import_json(target_url, source_url)
    assert first["tables"]["chat_sessions"]["imported"] == 6

    async with start_app(test_env(target_url)) as server:
        # Alice logs out here: a later import must not bring her old login session back.
        logged_out = data.people["alice"].cookie
        async with cookie_client(server.url, logged_out) as browser:
            logout = await browser.post("/api/auth/logout", headers={"Origin": ORIGIN})
            assert logout.status_code == 200
            assert (await browser.get("/api/auth/session")).status_code == 401
        # The running session is being driven here (its lease columns change); the original goes on.
        conn = await asyncpg.connect(source_url)
        try:
            expected = await original_data.add_more(conn, data)
        finally:
            await conn.close()
        second = await import_json(target_url, source_url)
        tables = second["tables"]
        assert (tables["users"]["imported"], tables["users"]["unchanged"]) == (expected["users"], 3)
        assert tables["sessions"]["imported"] == expected["sessions"]
        assert tables["sessions"]["unchanged"] == 2  # Bob's, and Alice's that ended here
        assert tables["chat_sessions"]["imported"] == expected["chat_sessions"]
        assert tables["chat_sessions"]["updated"] == expected["chat_updated"]
        assert tables["chat_sessions"]["unchanged"] == 5
        assert tables["messages"]["imported"] == expected["messages"]
        assert tables["events"]["read"] == expected["events"]
        assert tables["events"]["repeatsLeftOut"] == expected["repeats"]
        assert second["conflictCount"] == 0

        dave, alice = data.people["dave"], data.people["alice"]
        async with cookie_client(server.url, logged_out) as browser:
            assert (await browser.get("/api/auth/session")).status_code == 401
        async with cookie_client(server.url) as browser:
            login = await browser.post("/api/auth/login", json={"email": dave.email, "password": dave.password})
            assert login.status_code == 200
        async with cookie_client(server.url, dave.cookie) as browser:
            listed = (await browser.get("/api/sessions")).json()["data"]["sessions"]
            assert [s["id"] for s in listed] == [data.sessions["dave"]]
        async with cookie_client(server.url, alice.cookie) as browser:
            running = data.sessions["running"]
            session = (await browser.get(f"/api/sessions/{running}")).json()["session"]
            assert session["status"] == "completed" and session["totalCost"] == "0.5"
            assert [e["eventData"] for e in await all_events_json(browser, running)] == await original_events(
                source_url, running
            )
            messages = (await browser.get(f"/api/sessions/{data.sessions['big']}/messages")).json()["data"]
            assert messages["total"] == 4 and messages["messages"][-1]["content"] == "One more thing"

        # A change made here is not overwritten: the original changes the same session, conflict.
        await server.ctx.pool.execute(
            "UPDATE chat_sessions SET user_request = 'Renamed here' WHERE id = $1", data.sessions["pending"]
        )
        conn = await asyncpg.connect(source_url)
        try:
            await conn.execute(
                "UPDATE chat_sessions SET user_request = 'Renamed there' WHERE id = $1", data.sessions["pending"]
            )
        finally:
            await conn.close()
        third = await import_json(target_url, source_url)
        assert third["conflictCount"] == 1
        assert third["conflicts"][0]["id"] == data.sessions["pending"]
        for table in ("users", "sessions", "chat_sessions", "messages", "events"):
            assert third["tables"][table]["imported"] == 0, table
        kept = await server.ctx.pool.fetchval(
            "SELECT user_request FROM chat_sessions WHERE id = $1", data.sessions["pending"]
        )
        assert kept == "Renamed here"


# ---- a killed import ----------------------------------------------------------------------------------


async def add_small_sessions(source_url: str, user_id: str, count: int) -> None:
    conn = await asyncpg.connect(source_url)
    try:
        for n in range(count):
            session_id = await original_data.insert_chat_session(
                conn, user_id, original_data.T0, session_path=None, user_request=f"Task {n}"
            )
            await original_data.insert_events(
                conn, session_id, original_data.run_events(12, label=f"s{n}"), original_data.T0
            )
            await original_data.insert_messages(conn, session_id, [("user", f"Task {n}", None)])
    finally:
        await conn.close()


async def test_killed_import_resumes_to_the_same_result(empty_database_factory: DatabaseFactory) -> None:
    source_url, data = await new_original(empty_database_factory)
    await add_small_sessions(source_url, data.people["carol"].id, 150)
    clean_url, killed_url = await empty_database_factory(), await empty_database_factory()
    total_sessions = 8 + 150
    await import_json(clean_url, source_url)

    command, env = import_command(killed_url, "--from", source_url, "--progress-seconds", "0")

    def run_until_killed() -> int:
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        assert process.stderr is not None
        for line in iter(process.stderr.readline, b""):
            if line.startswith(b"chat_sessions: 40/"):
                process.send_signal(signal.SIGKILL)
                break
        return process.wait(60)

    assert await asyncio.get_running_loop().run_in_executor(None, run_until_killed) == -signal.SIGKILL

    # Killed mid-way: some chat sessions are in, none of them half.
    conn = await asyncpg.connect(killed_url)
    try:
        imported = await conn.fetch(
            """SELECT c.id, (SELECT count(*) FROM events e WHERE e.chat_session_id = c.id) AS events,
                      (SELECT count(*) FROM messages m WHERE m.chat_session_id = c.id) AS messages
               FROM chat_sessions c"""
        )
    finally:
        await conn.close()
    # (40 read, of which at most two were skipped: the bad id and the left-out person's)
    assert 38 <= len(imported) < total_sessions - 2
    clean = await canonical_dump(clean_url)
    for row in imported:
        assert row["events"] == sum(1 for e in clean["events"] if e["chat_session_id"] == row["id"])
        assert row["messages"] == sum(1 for m in clean["messages"] if m["chat_session_id"] == row["id"])

    rerun = await import_json(killed_url, source_url)
    assert rerun["tables"]["chat_sessions"]["imported"] == total_sessions - 2 - len(imported)
    assert await canonical_dump(killed_url) == clean


async def test_a_lost_connection_stops_with_one_line_and_a_rerun_continues(
    empty_database_factory: DatabaseFactory,
) -> None:
    source_url, data = await new_original(empty_database_factory)
    await add_small_sessions(source_url, data.people["carol"].id, 60)
    clean_url, cut_url = await empty_database_factory(), await empty_database_factory()
    await import_json(clean_url, source_url)
    command, env = import_command(cut_url, "--from", source_url, "--progress-seconds", "0")
    loop = asyncio.get_running_loop()
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stderr is not None
    line = b""
    while not line.startswith(b"chat_sessions: 10/"):
        line = await loop.run_in_executor(None, process.stderr.readline)
        assert line, "the import ended before it was cut"
    # The original's server ends the import's connection (a restart, a failover).
    await source_fetch(
        source_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'webedt-import-original'",
    )
    rest = await loop.run_in_executor(None, process.stderr.read)
    assert await loop.run_in_executor(None, process.wait, 60) == 1
    lines = [
        text for text in rest.decode().splitlines() if not text.startswith(("chat_sessions:", "messages:", "events:"))
    ]
    assert len(lines) == 1 and lines[0].startswith("import-original: stopped, a database connection failed"), rest
    assert "Traceback" not in rest.decode()
    await import_json(cut_url, source_url)
    assert await canonical_dump(cut_url) == await canonical_dump(clean_url)


# ---- dry run and bad input -------------------------------------------------------------------------------


async def test_dry_run_reports_and_writes_nothing(empty_database_factory: DatabaseFactory) -> None:
    source_url, data = await new_original(empty_database_factory)
    target_url = await empty_database_factory()
    done = await run_import(target_url, "--from", source_url, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "dry run: nothing was written" in done.stdout
    assert_no_secret_in(done.stdout + done.stderr, data)
    dry = await import_json(target_url, source_url, "--dry-run")
    conn = await asyncpg.connect(target_url)
    try:
        for table in ("users", "sessions", "chat_sessions", "messages", "events", "import_original"):
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
    finally:
        await conn.close()
    real = await import_json(target_url, source_url)
    assert dry["dryRun"] is True and real["dryRun"] is False
    assert dry["tables"] == real["tables"]
    assert dry["skipped"] == real["skipped"]


def _with_database(url: str, name: str) -> str:
    return urlunparse(urlparse(url)._replace(path=f"/{name}"))


async def test_bad_from_is_a_one_line_error_and_writes_nothing(
    empty_database_factory: DatabaseFactory, database_url: str
) -> None:
    target_url = await empty_database_factory()
    not_original = await empty_database_factory()
    conn = await asyncpg.connect(not_original)
    try:
        await conn.execute("CREATE TABLE users (id text PRIMARY KEY, email text)")
    finally:
        await conn.close()
    cases = {
        f"postgresql://127.0.0.1:{free_port()}/webedt": "cannot connect to the original database",
        _with_database(not_original, "no_such_database_here"): "cannot connect to the original database",
        "not a url at all": "cannot connect to the original database",
        not_original: "does not have the original's schema (missing users.display_name",
        database_url: "one of this server's, not the original's",
    }
    for source, message in cases.items():
        done = await run_import(target_url, "--from", source)
        assert done.returncode == 2, (source, done.stdout, done.stderr)
        assert done.stdout == ""
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("import-original: ") and message in lines[0], done.stderr
    conn = await asyncpg.connect(target_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
    finally:
        await conn.close()


async def test_the_original_is_opened_read_only(empty_database_factory: DatabaseFactory) -> None:
    source_url = await empty_database_factory()
    conn = await importer.connect_source(source_url)
    try:
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute("CREATE TABLE written (n integer)")
    finally:
        await conn.close()


def test_which_session_ids_this_server_serves() -> None:
    assert importer.servable_session_id("6f1c1f4e-4a3b-4a51-9a59-2f5d6c8e9b10")
    assert importer.servable_session_id("web-session_1.2~x")
    for bad in ("", "has space", "a/b", "updates", "deleted", "x" * 301, "é", "a?b", "a%20b"):
        assert not importer.servable_session_id(bad), bad


async def test_a_stronger_hash_is_never_weakened(server: TestServer, client: httpx.AsyncClient) -> None:
    """BCRYPT_ROUNDS is 4 in tests: a cost-5 hash stays as it is after a login."""
    email = f"strong-{os.urandom(4).hex()}@example.com"
    strong = bcrypt.hashpw(b"a strong password", bcrypt.gensalt(5)).decode()
    await server.ctx.pool.execute(
        "INSERT INTO users (id, email, password_hash) VALUES ($1, $2, $3)", os.urandom(8).hex(), email, strong
    )
    login = await client.post("/api/auth/login", json={"email": email, "password": "a strong password"})
    assert login.status_code == 200
    assert await server.ctx.pool.fetchval("SELECT password_hash FROM users WHERE email = $1", email) == strong


async def test_what_already_belongs_to_someone_here_is_a_conflict(empty_database_factory: DatabaseFactory) -> None:
    source_url, data = await new_original(empty_database_factory)
    target_url = await empty_database_factory()
    await migrations.migrate(target_url)
    conn = await asyncpg.connect(target_url)
    try:
        # Someone registered here with Alice's e-mail, and owns a session with Bob's session id.
        await conn.execute("INSERT INTO users (id, email, password_hash) VALUES ('here1', 'ALICE@example.com', 'x')")
        await conn.execute(
            "INSERT INTO chat_sessions (id, user_id, user_request) VALUES ($1, 'here1', 'Mine')",
            data.sessions["bob"],
        )
    finally:
        await conn.close()
    report = await import_json(target_url, source_url)
    conflicts = {entry["id"]: entry["reason"] for entry in report["conflicts"]}
    assert "already belongs to another person here" in conflicts[data.people["alice"].id]
    assert "already exists here" in conflicts[data.sessions["bob"]]
    assert report["tables"]["users"]["imported"] == 2  # Bob and Carol
    skipped = {entry["id"]: entry["reason"] for entry in report["skipped"]}
    assert "was not imported" in skipped[data.sessions["big"]]
    conn = await asyncpg.connect(target_url)
    try:
        assert await conn.fetchval("SELECT email FROM users WHERE id = 'here1'") == "ALICE@example.com"
        assert await conn.fetchval("SELECT count(*) FROM users WHERE id = $1", data.people["alice"].id) == 0
        mine = await conn.fetchrow(
            "SELECT user_id, user_request FROM chat_sessions WHERE id = $1", data.sessions["bob"]
        )
        assert tuple(mine) == ("here1", "Mine")
        assert await conn.fetchval("SELECT count(*) FROM events WHERE chat_session_id = $1", data.sessions["bob"]) == 0
    finally:
        await conn.close()


async def test_free_text_status_and_message_type_are_mapped_and_counted(
    empty_database_factory: DatabaseFactory,
) -> None:
    """The original does not constrain them (CONTRACT.md 9.5); this server does."""
    source_url, data = await new_original(empty_database_factory)
    conn = await asyncpg.connect(source_url)
    try:
        odd = await original_data.insert_chat_session(
            conn, data.people["alice"].id, original_data.T0, status="archived"
        )
        await original_data.insert_messages(conn, odd, [("tool", "ran the tests", None)])
    finally:
        await conn.close()
    target_url = await empty_database_factory()
    report = await import_json(target_url, source_url)
    assert report["tables"]["chat_sessions"]["statusMappedToError"] == 1
    assert report["tables"]["messages"]["typeMappedToSystem"] == 1
    conn = await asyncpg.connect(target_url)
    try:
        assert await conn.fetchval("SELECT status FROM chat_sessions WHERE id = $1", odd) == "error"
        assert await conn.fetchval("SELECT type FROM messages WHERE chat_session_id = $1", odd) == "system"
    finally:
        await conn.close()
    again = await import_json(target_url, source_url)
    assert again["tables"]["chat_sessions"]["unchanged"] == 7 and again["conflictCount"] == 0


async def test_a_hostile_original_is_imported_and_reported_without_a_crash(
    empty_database_factory: DatabaseFactory,
) -> None:
    """Never-ending login sessions, hashes bcrypt cannot check, e-mails with spaces or letters on
    which Python's and PostgreSQL's lower() disagree, and rows whose id is empty."""
    source_url = await empty_database_factory()
    plain, argon = original_data.lucia_id(), original_data.lucia_id()
    spaced, dotted, dotted_younger = (original_data.lucia_id() for _ in range(3))
    conn = await asyncpg.connect(source_url)
    try:
        await original_data.create_original(conn)
        people = [
            (plain, "plain@example.com", "hunter2 in plain text", 5),
            (
                argon,
                "argon@example.com",
                "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG",
                4,
            ),
            (spaced, "  Spaced@Example.com ", original_data.bcrypt_hash("spaced password", b"2b"), 3),
            (dotted, "İSTANBUL@example.com", original_data.bcrypt_hash("dotted password", b"2b"), 2),
            (dotted_younger, "i̇stanbul@example.com", original_data.bcrypt_hash("younger password", b"2b"), 1),
            ("", "empty-id@example.com", original_data.bcrypt_hash("empty password", b"2b"), 1),
        ]
        for user_id, email, password_hash, days_ago in people:
            await conn.execute(
                """INSERT INTO users (id, email, password_hash, created_at)
                   VALUES ($1, $2, $3, now() - make_interval(days => $4))""",
                user_id,
                email,
                password_hash,
                days_ago,
            )
        forever = original_data.lucia_id(40)
        await conn.execute(
            """INSERT INTO sessions (id, user_id, expires_at)
               VALUES ($1, $2, 'infinity'), ($3, $2, '-infinity'), ('', $2, 'infinity')""",
            forever,
            spaced,
            original_data.lucia_id(40),
        )
        await conn.execute("INSERT INTO chat_sessions (id, user_id, user_request) VALUES ('', $1, 'Empty id')", spaced)
    finally:
        await conn.close()
    target_url = await empty_database_factory()

    for _ in range(2):  # a rerun goes through the same rows without a crash either
        report = await import_json(target_url, source_url)
        logins = report["tables"]["sessions"]
        assert (logins["neverExpiringGivenSessionLifetime"], logins["expired"]) == (1, 1)
        cannot = {entry["id"]: entry["reason"] for entry in report["cannotLogIn"]}
        assert set(cannot) == {plain, argon} and "not one this server checks" in cannot[plain]
        assert report["emailCaseVariants"] == [
            {"email": "i̇stanbul@example.com", "kept": dotted, "leftOut": [dotted_younger]}
        ]
        empty = [entry for entry in report["skipped"] if entry["id"] == "''"]
        assert sorted(entry["table"] for entry in empty) == ["chat_sessions", "sessions", "users"]
        assert all("id is empty" in entry["reason"] for entry in empty)
        assert report["tables"]["users"]["skipped"] == 2  # the younger variant and the empty id

    conn = await asyncpg.connect(target_url)
    try:
        assert await conn.fetchval("SELECT password_hash FROM users WHERE id = $1", plain) == importer.NO_PASSWORD
    finally:
        await conn.close()
    async with start_app(test_env(target_url)) as server:
        async with cookie_client(server.url, forever) as browser:
            session = await browser.get("/api/auth/session")
            assert session.status_code == 200 and session.json()["data"]["user"]["id"] == spaced
        async with cookie_client(server.url) as browser:
            for email, password, expected in (
                ("plain@example.com", "hunter2 in plain text", 401),
                ("argon@example.com", "anything at all", 401),
                ("spaced@example.com", "spaced password", 200),
                ("İSTANBUL@example.com", "dotted password", 200),
            ):
                login = await browser.post("/api/auth/login", json={"email": email, "password": password})
                assert login.status_code == expected, (email, login.text)
