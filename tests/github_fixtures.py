"""Fixtures shared by the GitHub test modules: the fake GitHub, the app pointed at it, a
browser-like client and a logged-in person with GitHub connected.

Registered for the whole suite by `pytest_plugins` in tests/conftest.py; a module that needs
other settings defines its own fixture of the same name (test_git_workspaces has its own `app`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.fakes.github import FakeGitHub, FakeUser, connect_github, github_env, running_fake_github
from tests.helpers import TestServer, register, start_app, test_env


@pytest.fixture(scope="module")
async def fake() -> AsyncIterator[FakeGitHub]:
    async with running_fake_github() as running:
        yield running


@pytest.fixture(scope="module")
async def app(database_url: str, fake: FakeGitHub) -> AsyncIterator[TestServer]:
    async with start_app(test_env(database_url, **github_env(fake))) as running:
        yield running


@pytest.fixture
async def browser(app: TestServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=app.url, timeout=60) as http:
        yield http


@pytest.fixture
async def octo(browser: httpx.AsyncClient, fake: FakeGitHub) -> FakeUser:
    """A logged-in person with GitHub connected."""
    await register(browser)
    return await connect_github(browser, fake)
