"""Deleting sessions cleans up after them: the GitHub branch is deleted and the remote Claude
session archived, each result reported, none of them fatal (CONTRACT.md 1.6)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from services.db import queries
from tests.fakes.claude import FakeClaude, running_fake_claude
from tests.fakes.github import FakeGitHub, running_fake_github
from tests.helpers import TestServer, register, start_app, test_env
from tests.test_sync import FAR_FUTURE_MS, remote_session


@dataclass
class Setup:
    server: TestServer
    github: FakeGitHub
    claude: FakeClaude


@pytest.fixture(scope="module")
async def setup(database_url: str) -> AsyncIterator[Setup]:
    async with running_fake_github() as github, running_fake_claude() as claude:
        env = test_env(
            database_url,
            GITHUB_API_URL=github.api_url,
            CLAUDE_API_BASE_URL=claude.url,
            CLAUDE_OAUTH_TOKEN_URL=claude.token_url,
        )
        async with start_app(env) as server:
            yield Setup(server, github, claude)


@dataclass
class Person:
    http: httpx.AsyncClient
    owner: str


@pytest.fixture
async def person(setup: Setup) -> AsyncIterator[Person]:
    """A logged-in person whose GitHub account is connected and who owns `<login>/repo`."""
    async with httpx.AsyncClient(base_url=setup.server.url, timeout=30) as http:
        user = await register(http)
        login = f"octo-{user['id'][:6]}"
        github_user = setup.github.add_user(login)
        await queries.users.set_github_connection(
            setup.server.ctx.pool,
            id=user["id"],
            github_id=str(github_user.id),
            github_access_token=setup.server.ctx.secrets.encrypt_text(github_user.token),
        )
        setup.github.add_repo(login, "repo")
        yield Person(http, login)


async def create(person: Person, setup: Setup, branch: str, base: str = "main") -> dict:
    repo = setup.github.repos[(person.owner, "repo")]
    if branch not in repo.refs:
        repo.refs[branch] = repo.refs["main"]
    response = await person.http.post(
        "/api/sessions/create-code-session",
        json={"repositoryOwner": person.owner, "repositoryName": "repo", "baseBranch": base, "branch": branch},
    )
    assert response.status_code == 200, response.text
    return response.json()["session"]


async def test_delete_removes_the_branch(setup: Setup, person: Person) -> None:
    repo = setup.github.repos[(person.owner, "repo")]
    session = await create(person, setup, "claude/fix-things")
    response = await person.http.delete(f"/api/sessions/{session['id']}")
    assert response.status_code == 200
    assert response.json() == {
        "success": True,
        "data": {"message": "Session deleted", "cleanup": {"branch": {"success": True, "message": "Branch deleted"}}},
    }
    assert "claude/fix-things" not in repo.refs and "main" in repo.refs


async def test_base_branch_is_never_deleted(setup: Setup, person: Person) -> None:
    repo = setup.github.repos[(person.owner, "repo")]
    session = await create(person, setup, "main")
    cleanup = (await person.http.delete(f"/api/sessions/{session['id']}")).json()["data"]["cleanup"]
    assert cleanup == {"branch": {"success": True, "message": "Branch kept: it is the session's base branch"}}
    assert "main" in repo.refs


async def test_github_failure_is_reported_not_fatal(setup: Setup, person: Person) -> None:
    session = await create(person, setup, "claude/broken")
    setup.github.fail_status = 500
    try:
        response = await person.http.delete(f"/api/sessions/{session['id']}")
    finally:
        setup.github.fail_status = None
    assert response.status_code == 200
    data = response.json()["data"]
    assert data["message"] == "Session deleted"
    assert data["cleanup"]["branch"]["success"] is False and data["cleanup"]["branch"]["message"]
    trashed = (await person.http.get(f"/api/sessions/{session['id']}")).json()["session"]
    assert trashed["deletedAt"] is not None


async def test_bulk_delete_reports_each_branch(setup: Setup, person: Person) -> None:
    repo = setup.github.repos[(person.owner, "repo")]
    first = await create(person, setup, "claude/one")
    second = await create(person, setup, "claude/two")
    del repo.refs["claude/two"]  # already gone at GitHub: still a success
    response = await person.http.post("/api/sessions/bulk-delete", json={"ids": [first["id"], second["id"]]})
    assert response.status_code == 200
    data = response.json()["data"]
    assert data["count"] == 2 and data["message"] == "2 session(s) deleted"
    assert sorted(data["cleanup"]["branches"], key=lambda b: b["sessionId"] != first["id"]) == [
        {"sessionId": first["id"], "success": True, "message": "Branch deleted"},
        {"sessionId": second["id"], "success": True, "message": "Branch already deleted or does not exist"},
    ]
    assert data["cleanup"]["remoteSessions"] == []
    assert "claude/one" not in repo.refs


async def connect_claude(setup: Setup, person: Person) -> None:
    access, refresh = setup.claude.issue_tokens()
    response = await person.http.post(
        "/api/user/claude-auth", json={"accessToken": access, "refreshToken": refresh, "expiresAt": FAR_FUTURE_MS}
    )
    assert response.status_code == 200


async def with_remote(setup: Setup, session: dict, title: str = "Remote twin") -> str:
    remote = remote_session(setup.claude, title)
    await setup.server.ctx.pool.execute(
        "UPDATE chat_sessions SET remote_session_id = $2 WHERE id = $1", session["id"], remote.id
    )
    return remote.id


async def test_delete_archives_the_remote_session(setup: Setup, person: Person) -> None:
    await connect_claude(setup, person)
    session = await create(person, setup, "claude/archive-me")
    remote_id = await with_remote(setup, session)
    response = await person.http.delete(f"/api/sessions/{session['id']}")
    assert response.status_code == 200
    assert response.json()["data"]["cleanup"] == {
        "branch": {"success": True, "message": "Branch deleted"},
        "remoteSession": {"success": True, "message": "Remote session archived"},
    }
    assert setup.claude.sessions[remote_id].archived is True


async def test_remote_archive_failure_is_reported(setup: Setup, person: Person) -> None:
    await connect_claude(setup, person)
    session = await create(person, setup, "claude/archive-fails")
    remote_id = await with_remote(setup, session)
    setup.claude.fail(status=500, path="/archive$", count=1)
    data = (await person.http.delete(f"/api/sessions/{session['id']}")).json()["data"]
    remote = data["cleanup"]["remoteSession"]
    assert remote["success"] is False and remote["message"].startswith("Failed to archive session: 500")
    assert setup.claude.sessions[remote_id].archived is False
    assert (await person.http.get(f"/api/sessions/{session['id']}")).json()["session"]["deletedAt"] is not None


async def test_bulk_delete_archives_each_remote_session(setup: Setup, person: Person) -> None:
    await connect_claude(setup, person)
    first = await create(person, setup, "claude/bulk-one")
    second = await create(person, setup, "claude/bulk-two")
    first_remote = await with_remote(setup, first)
    second_remote = await with_remote(setup, second)
    data = (await person.http.post("/api/sessions/bulk-delete", json={"ids": [first["id"], second["id"]]})).json()[
        "data"
    ]
    assert sorted(data["cleanup"]["remoteSessions"], key=lambda r: r["remoteSessionId"]) == sorted(
        [
            {"remoteSessionId": first_remote, "success": True, "message": "Remote session archived"},
            {"remoteSessionId": second_remote, "success": True, "message": "Remote session archived"},
        ],
        key=lambda r: r["remoteSessionId"],
    )
    assert setup.claude.sessions[first_remote].archived and setup.claude.sessions[second_remote].archived


async def test_rename_renames_upstream_too(setup: Setup, person: Person) -> None:
    await connect_claude(setup, person)
    session = await create(person, setup, "claude/rename-me")
    remote_id = await with_remote(setup, session, title="Old title")
    response = await person.http.patch(f"/api/sessions/{session['id']}", json={"userRequest": "A better title"})
    assert response.status_code == 200
    assert response.json()["data"]["userRequest"] == "A better title"
    assert setup.claude.sessions[remote_id].title == "A better title"

    # Upstream failing does not undo the local rename.
    setup.claude.fail(status=503, method="PATCH", count=1)
    response = await person.http.patch(f"/api/sessions/{session['id']}", json={"userRequest": "Local wins"})
    assert response.status_code == 200 and response.json()["data"]["userRequest"] == "Local wins"
    assert setup.claude.sessions[remote_id].title == "A better title"
