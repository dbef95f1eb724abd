"""The /api/github repository routes against the fake GitHub: listings over several pages,
branches, trees, files, Git Data commits, and GitHub's errors as answers a person can act on."""

from __future__ import annotations

import base64
import logging

import httpx
import pytest

from tests.fakes.github import FakeGitHub, FakeRepo, FakeUser, connect_github, epoch_in, github_env
from tests.helpers import ORIGIN, TestServer, register, start_app, test_env

JSON = {"Origin": ORIGIN}


@pytest.fixture
def repo(fake: FakeGitHub, octo: FakeUser) -> FakeRepo:
    return fake.add_repo(
        octo.login,
        "project",
        {
            "README.md": "# Project\n",
            "src/app.py": "print('hi')\n",
            "src/lib/util.py": "X = 1\n",
            "logo.png": b"\x89PNG\r\n\x1a\nbinary",
        },
    )


@pytest.fixture(autouse=True)
def healthy_fake(fake: FakeGitHub) -> None:
    fake.rate_limit_reset = None
    fake.fail_status = None
    fake.malformed = False


def base(repo: FakeRepo) -> str:
    return f"/api/github/repos/{repo.owner}/{repo.name}"


# ---- listings ---------------------------------------------------------------------------------


async def test_repositories_over_several_pages(browser: httpx.AsyncClient, fake: FakeGitHub, octo: FakeUser) -> None:
    for index in range(230):
        fake.add_repo(octo.login, f"repo-{index:03d}", description=None if index % 2 else "described")
    other = fake.add_user("someone-else")
    fake.add_repo(other.login, "not-mine")
    before = len(fake.requests)

    response = await browser.get("/api/github/repos")
    assert response.status_code == 200
    repos = response.json()["data"]
    assert len(repos) == 230
    assert {r["name"] for r in repos} == {f"repo-{i:03d}" for i in range(230)}
    first = repos[0]
    assert set(first) == {
        "id", "name", "full_name", "owner", "private", "description", "html_url", "clone_url", "default_branch",
    }  # fmt: skip
    assert first["owner"] == {"login": octo.login}
    pages = [r for r in fake.requests[before:] if r["path"] == "/api/v3/user/repos"]
    assert len(pages) == 3
    assert "sort=updated" in pages[0]["query"]


async def test_repository_listing_stops_at_the_cap(database_url: str, fake: FakeGitHub) -> None:
    async with (
        start_app(test_env(database_url, **github_env(fake, GITHUB_REPOS_MAX=150))) as capped,
        httpx.AsyncClient(base_url=capped.url) as http,
    ):
        await register(http)
        user = await connect_github(http, fake)
        for index in range(260):
            fake.add_repo(user.login, f"many-{index}")
        before = len(fake.requests)
        response = await http.get("/api/github/repos")
        assert len(response.json()["data"]) == 150
        assert len([r for r in fake.requests[before:] if r["path"] == "/api/v3/user/repos"]) == 2


async def test_branches_every_page_create_and_delete(browser: httpx.AsyncClient, repo: FakeRepo) -> None:
    main = repo.refs["main"]
    for index in range(140):
        repo.refs[f"feature/{index:03d}"] = main
    response = await browser.get(f"{base(repo)}/branches")
    branches = response.json()["data"]
    assert len(branches) == 141
    assert branches[0] == {
        "name": "feature/000",
        "protected": False,
        "commit": {"sha": main, "url": branches[0]["commit"]["url"]},
    }

    created = await browser.post(
        f"{base(repo)}/branches", json={"branchName": "claude/new-thing", "baseBranch": "main"}, headers=JSON
    )
    assert created.json() == {
        "success": True,
        "data": {"branchName": "claude/new-thing", "baseBranch": "main", "sha": main},
    }
    assert repo.refs["claude/new-thing"] == main

    again = await browser.post(f"{base(repo)}/branches", json={"branchName": "claude/new-thing"}, headers=JSON)
    assert again.status_code == 422
    assert again.json() == {"success": False, "error": "Branch already exists"}

    missing_base = await browser.post(
        f"{base(repo)}/branches", json={"branchName": "x", "baseBranch": "nope"}, headers=JSON
    )
    assert missing_base.status_code == 404
    no_name = await browser.post(f"{base(repo)}/branches", json={}, headers=JSON)
    assert no_name.json() == {"success": False, "error": "Branch name is required"}

    deleted = await browser.delete(f"{base(repo)}/branches/claude/new-thing", headers=JSON)
    assert deleted.json() == {"success": True, "data": {"message": "Branch deleted"}}
    assert "claude/new-thing" not in repo.refs
    gone = await browser.delete(f"{base(repo)}/branches/claude/new-thing", headers=JSON)
    assert gone.json() == {"success": True, "data": {"message": "Branch already deleted or does not exist"}}


async def test_tree_of_a_branch(browser: httpx.AsyncClient, repo: FakeRepo) -> None:
    flat = await browser.get(f"{base(repo)}/tree/main")
    assert {e["path"] for e in flat.json()["data"]["tree"]} == {"README.md", "src", "logo.png"}
    deep = (await browser.get(f"{base(repo)}/tree/main", params={"recursive": "true"})).json()["data"]
    paths = {e["path"]: e for e in deep["tree"]}
    assert set(paths) == {"README.md", "src", "src/app.py", "src/lib", "src/lib/util.py", "logo.png"}
    assert paths["src/app.py"]["type"] == "blob" and paths["src/app.py"]["size"] == len("print('hi')\n")
    assert paths["src"]["type"] == "tree"
    assert deep["truncated"] is False
    missing = await browser.get(f"{base(repo)}/tree/no-such-branch")
    assert missing.status_code == 404
    assert missing.json() == {"success": False, "error": "Branch or repository not found"}


# ---- files -------------------------------------------------------------------------------------------


async def test_reading_contents(browser: httpx.AsyncClient, repo: FakeRepo) -> None:
    text = (await browser.get(f"{base(repo)}/contents/src/app.py")).json()["data"]
    assert text["content"] == "print('hi')\n"
    assert text["encoding"] == "utf-8"
    assert text["name"] == "app.py" and text["path"] == "src/app.py" and text["type"] == "file"

    image = (await browser.get(f"{base(repo)}/contents/logo.png", params={"ref": "main"})).json()["data"]
    assert image["encoding"] == "base64"
    assert base64.b64decode(image["content"]) == b"\x89PNG\r\n\x1a\nbinary"
    assert image["download_url"]

    folder = (await browser.get(f"{base(repo)}/contents/src")).json()["data"]
    assert folder["type"] == "dir"
    assert {(i["name"], i["type"]) for i in folder["items"]} == {("app.py", "file"), ("lib", "dir")}
    root = (await browser.get(f"{base(repo)}/contents")).json()["data"]
    assert {i["name"] for i in root["items"]} == {"README.md", "src", "logo.png"}

    missing = await browser.get(f"{base(repo)}/contents/nope.txt")
    assert missing.status_code == 404
    assert missing.json() == {"success": False, "error": "File or path not found"}


async def test_writing_deleting_and_renaming_files(browser: httpx.AsyncClient, repo: FakeRepo) -> None:
    created = await browser.put(
        f"{base(repo)}/contents/docs/new.md", json={"content": "new\n", "branch": "main"}, headers=JSON
    )
    assert created.json()["data"]["message"] == "File created successfully"
    assert repo.read("main", "docs/new.md") == b"new\n"

    updated = await browser.put(
        f"{base(repo)}/contents/docs/new.md", json={"content": "newer\n", "branch": "main"}, headers=JSON
    )
    assert updated.json()["data"] == {
        "message": "File updated successfully",
        "sha": repo.files_at("main")["docs/new.md"][0],
        "path": "docs/new.md",
    }
    assert repo.commits[repo.refs["main"]].message == "Update docs/new.md"

    stale = await browser.put(
        f"{base(repo)}/contents/docs/new.md",
        json={"content": "x", "branch": "main", "sha": "0" * 40},
        headers=JSON,
    )
    assert stale.status_code == 409
    no_branch = await browser.put(f"{base(repo)}/contents/a.txt", json={"content": "x"}, headers=JSON)
    assert no_branch.json() == {"success": False, "error": "Branch is required"}
    no_content = await browser.put(f"{base(repo)}/contents/a.txt", json={"branch": "main"}, headers=JSON)
    assert no_content.json() == {"success": False, "error": "Content is required"}

    renamed = await browser.post(
        f"{base(repo)}/rename/docs/new.md", json={"newPath": "docs/renamed.md", "branch": "main"}, headers=JSON
    )
    assert renamed.json()["data"] == {
        "message": "File renamed successfully",
        "oldPath": "docs/new.md",
        "newPath": "docs/renamed.md",
    }
    assert repo.read("main", "docs/renamed.md") == b"newer\n"
    assert repo.read("main", "docs/new.md") is None
    taken = await browser.post(
        f"{base(repo)}/rename/README.md", json={"newPath": "docs/renamed.md", "branch": "main"}, headers=JSON
    )
    assert taken.status_code == 422
    assert taken.json()["error"] == "File already exists at new path"
    folder = await browser.post(f"{base(repo)}/rename/src", json={"newPath": "lib", "branch": "main"}, headers=JSON)
    assert folder.json() == {"success": False, "error": "Path is not a file. Use rename-folder for directories."}

    deleted = await browser.request(
        "DELETE", f"{base(repo)}/contents/docs/renamed.md", json={"branch": "main"}, headers=JSON
    )
    assert deleted.json() == {"success": True, "data": {"message": "File deleted successfully"}}
    assert repo.read("main", "docs/renamed.md") is None
    again = await browser.request(
        "DELETE", f"{base(repo)}/contents/docs/renamed.md", json={"branch": "main"}, headers=JSON
    )
    assert again.status_code == 404
    assert again.json() == {"success": False, "error": "File not found"}


async def test_folder_rename_and_delete_are_one_commit_each(browser: httpx.AsyncClient, repo: FakeRepo) -> None:
    before = repo.refs["main"]
    moved = await browser.post(
        f"{base(repo)}/rename-folder/src", json={"newFolderPath": "source", "branch": "main"}, headers=JSON
    )
    assert moved.json()["data"] == {
        "message": "Folder renamed successfully",
        "oldPath": "src",
        "newPath": "source",
        "filesMoved": 2,
    }
    assert repo.commits[repo.refs["main"]].parents == [before]
    assert set(repo.files_at("main")) == {"README.md", "logo.png", "source/app.py", "source/lib/util.py"}

    blocked = await browser.post(
        f"{base(repo)}/rename-folder/source", json={"newFolderPath": "README.md", "branch": "main"}, headers=JSON
    )
    assert blocked.status_code == 422

    middle = repo.refs["main"]
    removed = await browser.request("DELETE", f"{base(repo)}/folder/source", json={"branch": "main"}, headers=JSON)
    assert removed.json()["data"] == {"message": "Folder deleted successfully", "path": "source", "filesDeleted": 2}
    assert repo.commits[repo.refs["main"]].parents == [middle]
    assert set(repo.files_at("main")) == {"README.md", "logo.png"}
    empty = await browser.request("DELETE", f"{base(repo)}/folder/source", json={"branch": "main"}, headers=JSON)
    assert empty.status_code == 404
    assert empty.json()["error"] == "Folder is empty or not found"


async def test_commit_through_the_git_data_api(browser: httpx.AsyncClient, repo: FakeRepo) -> None:
    before = repo.refs["main"]
    png = base64.b64encode(b"\x89PNG picture").decode()
    response = await browser.post(
        f"{base(repo)}/commit",
        json={
            "branch": "main",
            "files": [
                {"path": "src/app.py", "content": "print('changed')\n"},
                {"path": "bin/tool", "content": base64.b64encode(b"\x00\x01").decode(), "encoding": "base64"},
                {"path": "", "content": "ignored"},
            ],
            "images": [{"path": "img/pic.png", "content": f"data:image/png;base64,{png}"}],
            "deletions": ["README.md"],
        },
        headers=JSON,
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    sha = repo.refs["main"]
    assert data == {
        "commitSha": sha,
        "message": "Update 3 file(s), Delete 1 file(s)",
        "branch": "main",
        "filesCommitted": 3,
        "htmlUrl": f"https://github.com/{repo.full_name}/commit/{sha}",
    }
    assert repo.commits[sha].parents == [before]
    assert repo.read("main", "src/app.py") == b"print('changed')\n"
    assert repo.read("main", "bin/tool") == b"\x00\x01"
    assert repo.read("main", "img/pic.png") == b"\x89PNG picture"
    assert repo.read("main", "README.md") is None

    nothing = await browser.post(f"{base(repo)}/commit", json={"branch": "main"}, headers=JSON)
    assert nothing.json() == {"success": False, "error": "No files, images, or deletions to commit"}
    invalid = await browser.post(f"{base(repo)}/commit", json={"branch": "main", "files": [{"x": 1}]}, headers=JSON)
    assert invalid.json() == {"success": False, "error": "No valid files to commit"}
    no_branch = await browser.post(f"{base(repo)}/commit", json={"files": [{"path": "a", "content": "b"}]})
    assert no_branch.json() == {"success": False, "error": "Branch is required"}
    missing = await browser.post(
        f"{base(repo)}/commit", json={"branch": "gone", "files": [{"path": "a", "content": "b"}]}, headers=JSON
    )
    assert missing.status_code == 404
    assert missing.json() == {"success": False, "error": "Repository or branch not found"}


# ---- errors -------------------------------------------------------------------------------------------


async def test_traversal_in_path_parameters_is_refused(browser: httpx.AsyncClient, repo: FakeRepo) -> None:
    before = len(repo.commits)
    for path in (
        f"{base(repo)}/contents/src/%2E%2E/%2E%2E/etc/passwd",
        f"{base(repo)}/contents/%2E%2E",
        f"{base(repo)}/contents/src/%2E/app.py",
        f"{base(repo)}/contents/a%5Cb",
        f"/api/github/repos/%2E%2E/{repo.name}/branches",
        f"/api/github/repos/{repo.owner}/%2E%2E/branches",
        f"/api/github/repos/a%2Fb/{repo.name}/branches",
        f"{base(repo)}/tree/main%2F..%2Fx",
        f"{base(repo)}/tree/a..b",
    ):
        response = await browser.get(path)
        assert response.status_code == 400, path
        assert response.json()["success"] is False
    rename = await browser.post(
        f"{base(repo)}/rename/README.md", json={"newPath": "../outside.md", "branch": "main"}, headers=JSON
    )
    assert rename.status_code == 400
    assert rename.json() == {"success": False, "error": "Invalid path"}
    assert len(repo.commits) == before


async def test_unknown_github_paths_answer_a_bare_404(browser: httpx.AsyncClient) -> None:
    for method, path in (
        ("GET", "/api/github/nothing/here?secret=<script>"),
        ("POST", "/api/github/repos/a/b/unknown"),
        ("PATCH", "/api/github/repos"),
        ("GET", "/api/github"),
    ):
        response = await browser.request(method, path)
        assert response.status_code == 404, path
        assert response.json() == {"success": False, "error": "GitHub endpoint not found"}


async def test_routes_need_a_login_and_a_connection(browser: httpx.AsyncClient) -> None:
    logged_out = await browser.get("/api/github/repos")
    assert logged_out.status_code == 401
    await register(browser)
    for method, path in (("GET", "/api/github/repos"), ("GET", "/api/github/repos/a/b/branches")):
        response = await browser.request(method, path)
        assert response.status_code == 400
        assert response.json() == {"success": False, "error": "GitHub not connected"}


async def test_a_rate_limit_is_a_429_with_the_reset_time(
    browser: httpx.AsyncClient, fake: FakeGitHub, octo: FakeUser
) -> None:
    fake.rate_limit_reset = epoch_in(120)
    response = await browser.get("/api/github/repos")
    assert response.status_code == 429
    assert 100 <= int(response.headers["Retry-After"]) <= 120
    assert response.json()["error"].startswith("GitHub rate limit exceeded. Try again after ")


async def test_a_revoked_token_says_to_reconnect(
    browser: httpx.AsyncClient, fake: FakeGitHub, octo: FakeUser, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = octo.token
    fake.revoke(token)
    response = await browser.get("/api/github/repos")
    assert response.status_code == 400
    assert response.json() == {
        "success": False,
        "error": "GitHub no longer accepts the stored authorization. Please reconnect GitHub in Settings.",
    }
    assert token not in caplog.text


async def test_github_being_down_is_a_502(browser: httpx.AsyncClient, fake: FakeGitHub, octo: FakeUser) -> None:
    fake.fail_status = 503
    response = await browser.get("/api/github/repos")
    assert response.status_code == 502
    assert response.json() == {
        "success": False,
        "error": "GitHub is not responding right now. Please try again in a few minutes.",
    }


async def test_github_unreachable_is_a_502(server: TestServer, client: httpx.AsyncClient) -> None:
    """The default test server's GITHUB_API_URL is a closed port."""
    me = await register(client)
    await server.ctx.pool.execute(
        "UPDATE users SET github_id = $1, github_access_token = $2 WHERE id = $3",
        f"unreachable-{me['id']}",
        server.ctx.secrets.encrypt_text("gho_unreachable"),
        me["id"],
    )
    await server.ctx.hub.barrier()  # the server has heard of the change (services/login_cache.py)
    response = await client.get("/api/github/repos")
    assert response.status_code == 502
    assert response.json()["error"] == "GitHub is not responding right now. Please try again in a few minutes."


async def test_an_unreadable_answer_from_github_is_a_502(
    browser: httpx.AsyncClient, fake: FakeGitHub, repo: FakeRepo
) -> None:
    fake.malformed = True
    for method, path, body in (
        ("GET", "/api/github/repos", None),
        ("GET", f"{base(repo)}/branches", None),
        ("POST", f"{base(repo)}/branches", {"branchName": "x"}),
        ("GET", f"{base(repo)}/tree/main", None),
        ("GET", f"{base(repo)}/contents/README.md", None),
        ("GET", f"{base(repo)}/pulls", None),
        ("POST", f"{base(repo)}/commit", {"branch": "main", "files": [{"path": "a", "content": "b"}]}),
    ):
        response = await browser.request(method, path, json=body, headers=JSON)
        assert response.status_code == 502, (path, response.text)
        assert response.json()["success"] is False
