"""Start-up: configuration errors, migrations, the CLI, replicas on an empty database, `make run`."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest

from services import migrations
from services.config import Config, ConfigError, load_config
from tests.helpers import PROJECT_ROOT, free_port, spawn_replica, test_env, unique_email, wait_healthy


def run_cli(args: list[str], env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    # No XDG_RUNTIME_DIR, like a container, ssh or cron: the embedded PostgreSQL must not warn then.
    full_env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PORT", "NODE_ENV", "XDG_RUNTIME_DIR")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "server.py", *args],
        cwd=PROJECT_ROOT,
        env=full_env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "eighty"}, "PORT must be a port number"),
        ({"PORT": "70000"}, "PORT must be a port number"),
        ({"HOST": "0.0.0.0 --debug"}, "HOST must be an IP address or a host name"),
        ({"CLAUDE_API_BASE_URL": "not a url"}, "CLAUDE_API_BASE_URL must be a URL"),
        ({"GITHUB_API_URL": "ftp://x"}, "GITHUB_API_URL must be a URL"),
        ({"CLAUDE_POLL_INTERVAL_MS": "soon"}, "CLAUDE_POLL_INTERVAL_MS must be a whole number"),
        ({"ALLOWED_ORIGINS": "localhost:5173"}, "ALLOWED_ORIGINS must list origins"),
        ({"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL must be a postgresql:// URL"),
        ({"NODE_ENV": "production", "SESSION_SECRET": "x" * 32}, "DATABASE_URL is required when NODE_ENV=production"),
        (
            {"NODE_ENV": "production", "DATABASE_URL": "postgresql://h/db", "SESSION_SECRET": ""},
            "SESSION_SECRET is required",
        ),
    ],
)
def test_wrong_configuration_names_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config({"SESSION_SECRET": "a-development-secret", **env})


def test_listen_address_comes_from_the_configuration() -> None:
    base = {"SESSION_SECRET": "a-development-secret"}
    assert load_config(base).host == "0.0.0.0"
    assert load_config({**base, "HOST": "127.0.0.1"}).host == "127.0.0.1"
    assert load_config({**base, "HOST": "::"}).host == "::"


def test_unset_variables_take_the_config_field_defaults() -> None:
    """Config's field defaults are the only defaults: the loader has none of its own."""
    config = load_config({"SESSION_SECRET": "a-development-secret"})
    assert dataclasses.replace(config, session_secret=Config.session_secret) == Config()


def test_secret_can_come_from_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-docker-secret-file\n")
    config = load_config({"SESSION_SECRET_FILE": str(secret_file), "DATABASE_URL": "postgresql://h/db"})
    assert config.session_secret == "from-a-docker-secret-file"


def test_production_without_database_refuses_to_start_with_one_line() -> None:
    result = run_cli([], {"NODE_ENV": "production", "SESSION_SECRET": "x" * 32})
    assert result.returncode == 2
    assert result.stderr.strip() == "configuration error: DATABASE_URL is required when NODE_ENV=production"


async def test_migrations_are_idempotent_and_checked(
    empty_database_factory: Callable[[], Awaitable[str]], tmp_path: Path
) -> None:
    url = await empty_database_factory()
    directory = tmp_path / "migrations"
    shutil.copytree(migrations.MIGRATIONS_DIR, directory)
    first = await migrations.migrate(url, directory)
    assert first and first[0] == "0001_initial"
    assert await migrations.migrate(url, directory) == []
    states = await migrations.status(url, directory)
    assert all(s.applied and s.checksum_matches for s in states)

    initial = directory / "0001_initial.sql"
    initial.write_text(initial.read_text() + "\n-- edited\n")
    with pytest.raises(migrations.MigrationError, match=r"0001_initial\.sql was edited after it was applied"):
        await migrations.migrate(url, directory)


async def test_a_new_empty_migration_breaks_nothing(
    empty_database_factory: Callable[[], Awaitable[str]], tmp_path: Path
) -> None:
    """`db new` writes a file holding only a comment: it waits, with everything after it, until it has SQL."""
    url = await empty_database_factory()
    directory = tmp_path / "migrations"
    shutil.copytree(migrations.MIGRATIONS_DIR, directory)
    empty = migrations.new_file("add things", directory)
    later = directory / f"{int(empty.name[:4]) + 1:04d}_later.sql"
    later.write_text("CREATE TABLE later_things (id integer);\n")
    applied = await migrations.migrate(url, directory)
    assert applied[-1] == migrations.discover(migrations.MIGRATIONS_DIR)[-1].name
    assert await migrations.migrate(url, directory) == []
    pending = {s.migration.name: s.applied for s in await migrations.status(url, directory) if not s.applied}
    assert pending == {empty.stem: False, later.stem: False}

    empty.write_text(empty.read_text() + "/* now it does */ CREATE TABLE things (id integer);\n")
    assert await migrations.migrate(url, directory) == [empty.stem, later.stem]


def test_new_migration_file_gets_the_next_number(tmp_path: Path) -> None:
    (tmp_path / "0001_initial.sql").write_text("-- one\n")
    (tmp_path / "0002_more.sql").write_text("-- two\n")
    path = migrations.new_file("Add run leases!", tmp_path)
    assert path.name == "0003_add_run_leases.sql"


def test_db_cli(database_url: str) -> None:
    env = test_env(database_url)
    migrate = run_cli(["db", "migrate"], env)
    assert migrate.returncode == 0 and "database is up to date" in migrate.stdout
    status = run_cli(["db", "status"], env)
    assert status.returncode == 0 and "0001_initial.sql" in status.stdout and "applied" in status.stdout
    shell = run_cli(["db", "shell"], env, stdin="SELECT count(*) AS n FROM schema_migrations;\n")
    assert shell.returncode == 0 and "(1 row)" in shell.stdout


def test_db_shell_on_the_embedded_database_stops_it_and_says_only_what_matters(tmp_path: Path) -> None:
    """psql runs as a child, so the embedded PostgreSQL this command started is stopped after it;
    no RuntimeDirWarning on stderr; when run as root, a line saying who owns the data folder."""
    data = tmp_path / "postgres"
    env = {"EMBEDDED_POSTGRES_DIR": str(data), "SESSION_SECRET": "a-development-secret", "LOG_LEVEL": "INFO"}
    shell = run_cli(["db", "shell"], env, stdin="SELECT 41 + 1 AS answer;\n")
    postmaster = data / "postmaster.pid"
    if postmaster.exists():  # this test's PostgreSQL must not outlive it
        os.kill(int(postmaster.read_text().split()[0]), signal.SIGTERM)
        pytest.fail("the embedded PostgreSQL was left running")
    assert shell.returncode == 0 and "42" in shell.stdout, shell.stderr
    assert (data / "PG_VERSION").exists()
    assert orjson.loads((data / ".handle_pids.json").read_bytes()) == []
    assert "Warning" not in shell.stderr
    as_root = "running as root: the embedded PostgreSQL runs as the system user embedded_postgres"
    assert (as_root in shell.stderr) == (os.geteuid() == 0), shell.stderr


async def test_admin_cli_creates_and_promotes_users(database_url: str) -> None:
    env = test_env(database_url)
    email = unique_email("admin")
    created = run_cli(["admin", "create-user", "--email", email], env, stdin="a long enough password\n")
    assert created.returncode == 0, created.stderr
    promoted = run_cli(["admin", "set-admin", email.upper()], env)
    assert promoted.returncode == 0 and "admin granted" in promoted.stdout
    listed = run_cli(["admin", "list-users"], env)
    assert email in listed.stdout and "admin" in listed.stdout
    short = run_cli(["admin", "create-user", "--email", unique_email()], env, stdin="short\n")
    assert short.returncode == 1 and "Password must be at least 8 characters" in short.stdout
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT is_admin FROM users WHERE email = $1", email) is True
    finally:
        await conn.close()


async def test_two_replicas_starting_together_on_an_empty_database(
    empty_database_factory: Callable[[], Awaitable[str]], tmp_path: Path
) -> None:
    url = await empty_database_factory()
    env = test_env(url)
    replicas = [spawn_replica(env, tmp_path, wait=False) for _ in range(2)]
    try:
        for replica in replicas:
            wait_healthy(replica)
        conn = await asyncpg.connect(url)
        try:
            versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        finally:
            await conn.close()
        assert [v["version"] for v in versions] == [m.version for m in migrations.discover()]
        # Both serve real requests against the shared schema.
        for replica in replicas:
            response = httpx.post(
                f"{replica.url}/api/auth/register", json={"email": unique_email(), "password": "password123"}
            )
            assert response.status_code == 201
    finally:
        for replica in replicas:
            assert replica.stop() == 0, replica.log()


def copy_clean_checkout(destination: Path) -> None:
    """The files a clean clone would have: tracked plus new, not ignored (the working tree)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = PROJECT_ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def test_make_run_from_a_clean_checkout_answers_health(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    copy_clean_checkout(checkout)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NODE_ENV", "SESSION_SECRET")}
    env.update({"PORT": str(port), "HOST": "127.0.0.1"})
    log_path = tmp_path / "make-run.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            ["make", "run"], cwd=checkout, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 300
        healthy = False
        while time.monotonic() < deadline and process.poll() is None:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                if response.status_code == 200:
                    healthy = response.json()["data"]["database"] == "ok"
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        assert healthy, log_path.read_text(errors="replace")
        assert (checkout / ".data" / "postgres" / "PG_VERSION").exists()
        assert (checkout / ".data" / "session_secret").exists()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def test_start_up_memory_is_frozen_out_of_the_collectors_sight() -> None:
    import gc

    import server as server_module

    thresholds = gc.get_threshold()
    try:
        server_module.settle_memory()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == server_module.GC_THRESHOLDS
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
