"""`python server.py admin list-users|create-user|set-admin|delete-user`, run as a person would."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable

import httpx

from services import migrations
from tests.helpers import PASSWORD, PROJECT_ROOT, TestServer, test_env, unique_email


async def run_cli(database_url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DATABASE_URL")}
    env.update(test_env(database_url))

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "server.py", "admin", *args],
            cwd=PROJECT_ROOT,
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    return await asyncio.get_running_loop().run_in_executor(None, run)


async def test_admin_cli_round_trip(server: TestServer, database_url: str) -> None:
    email = unique_email("Cli")
    created = await run_cli(database_url, "create-user", "--email", email.upper(), stdin=PASSWORD + "\n")
    assert created.returncode == 0, created.stderr + created.stdout
    assert f"created {email.lower()}" in created.stdout

    duplicate = await run_cli(database_url, "create-user", "--email", email, stdin=PASSWORD + "\n")
    assert duplicate.returncode == 1
    assert "error: Email already in use" in duplicate.stdout

    weak = await run_cli(database_url, "create-user", "--email", unique_email(), stdin="short\n")
    assert weak.returncode == 1
    assert "Password must be at least 8 characters" in weak.stdout

    listed = await run_cli(database_url, "list-users")
    assert listed.returncode == 0
    line = next(line for line in listed.stdout.splitlines() if email.lower() in line)
    assert "admin" not in line.split(email.lower())[1]

    async with httpx.AsyncClient(base_url=server.url) as person:
        login = await person.post("/api/auth/login", json={"email": email, "password": PASSWORD})
        assert login.status_code == 200
        assert (await person.get("/api/admin/stats")).status_code == 403

        granted = await run_cli(database_url, "set-admin", email.upper())
        assert granted.returncode == 0 and "admin granted" in granted.stdout
        assert (await person.get("/api/admin/stats")).status_code == 200
        listed = await run_cli(database_url, "list-users")
        line = next(line for line in listed.stdout.splitlines() if email.lower() in line)
        assert line.rstrip().endswith("admin")

        revoked = await run_cli(database_url, "set-admin", "--revoke", email)
        assert revoked.returncode == 0 and "admin revoked" in revoked.stdout
        assert (await person.get("/api/admin/stats")).status_code == 403

        deleted = await run_cli(database_url, "delete-user", email)
        assert deleted.returncode == 0 and f"deleted {email}" in deleted.stdout
        assert (await person.get("/api/auth/session")).status_code == 401

    for command in (["set-admin", email], ["delete-user", email]):
        missing = await run_cli(database_url, *command)
        assert missing.returncode == 1
        assert f"error: no user with e-mail {email}" in missing.stdout


async def test_admin_cli_created_admin(server: TestServer, database_url: str) -> None:
    email = unique_email()
    created = await run_cli(database_url, "create-user", "--email", email, "--admin", stdin=PASSWORD + "\n")
    assert created.returncode == 0 and "as admin" in created.stdout
    async with httpx.AsyncClient(base_url=server.url) as person:
        await person.post("/api/auth/login", json={"email": email, "password": PASSWORD})
        assert (await person.get("/api/admin/stats")).status_code == 200


async def test_admin_cli_says_what_is_missing_or_empty(
    database_url: str, empty_database_factory: Callable[[], Awaitable[str]]
) -> None:
    """No password on stdin names the password (not the e-mail); an empty list says so."""
    email = unique_email()
    for stdin in ("", "\n"):
        nothing = await run_cli(database_url, "create-user", "--email", email, stdin=stdin)
        assert nothing.returncode == 1
        assert nothing.stdout.strip() == "error: a password is required: type it at the prompt or pipe it on stdin"
    empty = await empty_database_factory()
    await migrations.migrate(empty)
    listed = await run_cli(empty, "list-users")
    assert listed.returncode == 0 and listed.stdout.strip() == "no users yet (admin create-user --email ... adds one)"
