"""Pull requests, merges, merge-base, PR text and auto-PR against the fake GitHub."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.fakes.github import FakeGitHub, FakeRepo, FakeUser
from tests.helpers import ORIGIN, TestServer, register

JSON = {"Origin": ORIGIN}


@pytest.fixture
def repo(fake: FakeGitHub, octo: FakeUser) -> FakeRepo:
    """main with two files, and `feature` one commit ahead of it."""
    repository = fake.add_repo(octo.login, "app", {"README.md": "one\ntwo\n", "src/a.py": "A = 1\n"})
    repository.refs["feature"] = repository.refs["main"]
    repository.commit_files("feature", {"src/b.py": b"B = 2\n"}, "Add b\n\nwith details", "dev")
    fake.mergeable_unknown_polls = 0
    return repository


def base(repo: FakeRepo) -> str:
    return f"/api/github/repos/{repo.owner}/{repo.name}"


async def test_create_list_and_merge_a_pull_request(browser: httpx.AsyncClient, repo: FakeRepo) -> None:
    created = await browser.post(f"{base(repo)}/pulls", json={"head": "feature", "base": "main"}, headers=JSON)
    assert created.status_code == 200, created.text
    pr = created.json()["data"]
    assert pr["number"] == 1
    assert pr["title"] == "Merge feature into main"
    assert pr["state"] == "open"
    assert pr["htmlUrl"] == f"https://github.com/{repo.full_name}/pull/1"
    assert pr["head"] == {"ref": "feature", "sha": repo.refs["feature"]}
    assert pr["base"] == {"ref": "main", "sha": repo.refs["main"]}

    duplicate = await browser.post(f"{base(repo)}/pulls", json={"head": "feature", "base": "main"}, headers=JSON)
    assert duplicate.status_code == 422
    assert duplicate.json() == {"success": False, "error": "Pull request already exists or validation failed"}
    missing = await browser.post(f"{base(repo)}/pulls", json={"head": "feature"}, headers=JSON)
    assert missing.json() == {"success": False, "error": "Head and base branches are required"}

    listed = (await browser.get(f"{base(repo)}/pulls", params={"head": "feature", "base": "main"})).json()["data"]
    assert [p["number"] for p in listed] == [1]
    assert listed[0]["mergeable"] is None and listed[0]["merged"] is False
    assert listed[0]["createdAt"].endswith("Z")
    assert (await browser.get(f"{base(repo)}/pulls", params={"head": "other"})).json()["data"] == []

    bad_method = await browser.post(f"{base(repo)}/pulls/1/merge", json={"merge_method": "fast"}, headers=JSON)
    assert bad_method.status_code == 400
    merged = await browser.post(f"{base(repo)}/pulls/1/merge", json={"commit_title": "Ship it"}, headers=JSON)
    assert merged.status_code == 200, merged.text
    result = merged.json()["data"]
    assert result["merged"] is True
    assert result["sha"] == repo.refs["main"]
    assert repo.commits[repo.refs["main"]].message == "Ship it"
    assert repo.read("main", "src/b.py") == b"B = 2\n"

    again = await browser.post(f"{base(repo)}/pulls/1/merge", json={}, headers=JSON)
    assert again.status_code == 405
    assert again.json() == {"success": False, "error": "Pull request cannot be merged"}
    unknown = await browser.post(f"{base(repo)}/pulls/99/merge", json={}, headers=JSON)
    assert unknown.status_code == 404


async def test_merge_base_into_a_branch(browser: httpx.AsyncClient, repo: FakeRepo) -> None:
    repo.commit_files("main", {"docs.md": b"docs\n"}, "Docs on main")
    url = f"{base(repo)}/branches/feature/merge-base"
    merged = await browser.post(url, json={"base": "main"}, headers=JSON)
    assert merged.status_code == 200, merged.text
    data = merged.json()["data"]
    assert data["sha"] == repo.refs["feature"]
    assert data["commit"] == {"sha": repo.refs["feature"], "message": "Merge main into feature"}
    assert repo.read("feature", "docs.md") == b"docs\n"

    up_to_date = (await browser.post(url, json={"base": "main"}, headers=JSON)).json()["data"]
    assert up_to_date["sha"] == repo.refs["feature"]
    assert up_to_date["message"] == "feature is already up to date with main"

    no_base = await browser.post(url, json={}, headers=JSON)
    assert no_base.json() == {"success": False, "error": "Base branch is required"}

    repo.commit_files("main", {"README.md": b"main side\n"}, "main edit")
    repo.commit_files("feature", {"README.md": b"feature side\n"}, "feature edit")
    conflict = await browser.post(url, json={"base": "main"}, headers=JSON)
    assert conflict.status_code == 409
    assert conflict.json() == {"success": False, "error": "Merge conflict - manual resolution required"}


async def test_generate_pr_content(browser: httpx.AsyncClient, repo: FakeRepo) -> None:
    repo.commit_files("feature", {"README.md": b"one\nthree\n", "src/a.py": None}, "Edit readme", "dev")
    response = await browser.post(
        f"{base(repo)}/generate-pr-content",
        json={"head": "feature", "base": "main", "userRequest": "Add b and tidy the readme"},
        headers=JSON,
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["title"] == "Add b and tidy the readme"
    assert data["stats"] == {"commits": 2, "files": 3, "additions": 2, "deletions": 2}
    body = data["body"]
    assert "## Summary\n\nAdd b and tidy the readme" in body
    assert "Add b (dev)" in body and "with details" not in body
    assert "### Added (1)\n\n- `src/b.py`" in body
    assert "### Modified (1)\n\n- `README.md`" in body
    assert "### Removed (1)\n\n- `src/a.py`" in body

    long = "word " * 30
    titled = await browser.post(
        f"{base(repo)}/generate-pr-content", json={"head": "feature", "base": "main", "userRequest": long}, headers=JSON
    )
    title = titled.json()["data"]["title"]
    assert len(title) == 72 and title.endswith("...")
    default = await browser.post(f"{base(repo)}/generate-pr-content", json={"head": "feature", "base": "main"})
    assert default.json()["data"]["title"] == "Merge feature into main"
    missing = await browser.post(f"{base(repo)}/generate-pr-content", json={"head": "feature"}, headers=JSON)
    assert missing.json() == {"success": False, "error": "Head and base branches are required"}


async def insert_session(app: TestServer, user_id: str, repo: FakeRepo, branch: str) -> str:
    session_id = str(uuid.uuid4())
    await app.ctx.pool.execute(
        "INSERT INTO chat_sessions (id, user_id, user_request, repository_owner, repository_name, base_branch, branch)"
        " VALUES ($1, $2, 'Add b', $3, $4, 'main', $5)",
        session_id,
        user_id,
        repo.owner,
        repo.name,
        branch,
    )
    return session_id


async def test_auto_pr_merges_deletes_the_branch_and_trashes_the_session(
    app: TestServer, browser: httpx.AsyncClient, fake: FakeGitHub, repo: FakeRepo
) -> None:
    me = (await browser.get("/api/auth/session")).json()["data"]["user"]
    session_id = await insert_session(app, me["id"], repo, "feature")
    # Archiving upstream fails here (no Claude account): logged, and the session still goes.
    await app.ctx.pool.execute("UPDATE chat_sessions SET remote_session_id = 'remote-1' WHERE id = $1", session_id)
    repo.commit_files("main", {"docs.md": b"docs\n"}, "Docs on main")
    fake.mergeable_unknown_polls = 1  # GitHub is still computing on the first look

    response = await browser.post(
        f"{base(repo)}/branches/feature/auto-pr", json={"base": "main", "sessionId": session_id}, headers=JSON
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["step"] == "completed"
    assert data["pr"] == {"number": 1, "htmlUrl": f"https://github.com/{repo.full_name}/pull/1"}
    assert data["mergeBase"]["message"] == "Merged main into feature"
    assert data["mergePr"] == {"merged": True, "sha": repo.refs["main"]}
    assert isinstance(data["progress"], str)
    assert "feature" not in repo.refs
    assert repo.read("main", "src/b.py") == b"B = 2\n" and repo.read("main", "docs.md") == b"docs\n"
    assert repo.pulls[0].merged
    deleted_at = await app.ctx.pool.fetchval("SELECT deleted_at FROM chat_sessions WHERE id = $1", session_id)
    assert deleted_at is not None


async def test_auto_pr_reuses_an_open_pull_request(browser: httpx.AsyncClient, repo: FakeRepo) -> None:
    await browser.post(f"{base(repo)}/pulls", json={"head": "feature", "base": "main", "title": "Mine"}, headers=JSON)
    response = await browser.post(f"{base(repo)}/branches/feature/auto-pr", json={"base": "main"}, headers=JSON)
    assert response.json()["data"]["pr"]["number"] == 1
    assert len(repo.pulls) == 1 and repo.pulls[0].title == "Mine" and repo.pulls[0].merged


async def test_auto_pr_with_someone_elses_session_does_nothing(
    app: TestServer, browser: httpx.AsyncClient, repo: FakeRepo
) -> None:
    async with httpx.AsyncClient(base_url=app.url) as other:
        stranger = await register(other)
    session_id = await insert_session(app, stranger["id"], repo, "feature")
    response = await browser.post(
        f"{base(repo)}/branches/feature/auto-pr", json={"base": "main", "sessionId": session_id}, headers=JSON
    )
    assert response.status_code == 404
    assert response.json() == {"success": False, "error": "Session not found"}
    assert repo.pulls == [] and "feature" in repo.refs
    assert await app.ctx.pool.fetchval("SELECT deleted_at FROM chat_sessions WHERE id = $1", session_id) is None


async def test_auto_pr_stops_at_a_conflict(browser: httpx.AsyncClient, repo: FakeRepo) -> None:
    repo.commit_files("main", {"README.md": b"main side\n"}, "main edit")
    repo.commit_files("feature", {"README.md": b"feature side\n"}, "feature edit")
    response = await browser.post(f"{base(repo)}/branches/feature/auto-pr", json={"base": "main"}, headers=JSON)
    assert response.status_code == 409
    assert response.json() == {
        "success": False,
        "error": "Merge conflict when updating branch - manual resolution required",
    }
    assert "feature" in repo.refs and not repo.pulls[0].merged
    no_base = await browser.post(f"{base(repo)}/branches/feature/auto-pr", json={}, headers=JSON)
    assert no_base.json() == {"success": False, "error": "Base branch is required"}


async def test_auto_pr_refuses_a_protected_base(browser: httpx.AsyncClient, repo: FakeRepo) -> None:
    repo.protected.add("main")
    response = await browser.post(f"{base(repo)}/branches/feature/auto-pr", json={"base": "main"}, headers=JSON)
    assert response.status_code == 405
    assert response.json() == {"success": False, "error": "Pull request cannot be merged"}
    assert "feature" in repo.refs
