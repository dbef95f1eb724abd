"""git workspaces with real git against bare repositories in a temporary folder:
the git service, POST /api/sessions/:id/init-repository, and removal on permanent deletion."""

from __future__ import annotations

import base64
import logging
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from services.errors import ServiceError
from services.github import git, workspaces
from tests.fakes.github import FakeGitHub, FakeRepo, FakeUser, github_env
from tests.helpers import ORIGIN, TestServer, register, start_app, test_env

JSON = {"Origin": ORIGIN}


def sh(*args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": "/tmp", "GIT_CONFIG_NOSYSTEM": "1",
             "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
             "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"},
    )  # fmt: skip
    return result.stdout.strip()


async def current_branch(path: Path) -> str | None:
    return (await git.run(["symbolic-ref", "--quiet", "--short", "HEAD"], cwd=path)).strip() or None


async def commit_all(path: Path, message: str) -> str | None:
    """Stage everything and commit; the new sha, or None when there was nothing to commit."""
    if not await git.has_changes(path):
        return None
    await git.run(["add", "--all", "--", "."], cwd=path)
    await git.run(["commit", "--quiet", "--no-verify", "-m", message], cwd=path)
    return await git.head_sha(path)


def make_bare(root: Path, name: str, files: dict[str, str]) -> Path:
    """A bare repository with one commit on `main`."""
    bare = root / f"{name}.git"
    sh("init", "--quiet", "--bare", "--initial-branch=main", str(bare))
    seed = root / f"{name}-seed"
    sh("init", "--quiet", "--initial-branch=main", str(seed))
    for path, content in files.items():
        (seed / path).parent.mkdir(parents=True, exist_ok=True)
        (seed / path).write_text(content)
    sh("add", "--all", cwd=seed)
    sh("commit", "--quiet", "-m", "initial", cwd=seed)
    sh("push", "--quiet", str(bare), "main", cwd=seed)
    return bare


@pytest.fixture(scope="module")
def workspace_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("workspaces")


@pytest.fixture(scope="module")
async def app(database_url: str, fake: FakeGitHub, workspace_dir: Path) -> AsyncIterator[TestServer]:
    async with start_app(test_env(database_url, **github_env(fake, WORKSPACE_DIR=workspace_dir))) as running:
        yield running


@pytest.fixture
def bare(tmp_path: Path) -> Path:
    return make_bare(tmp_path, "origin", {"README.md": "hello\n", "src/app.py": "print(1)\n"})


@pytest.fixture
def repo(fake: FakeGitHub, octo: FakeUser, bare: Path) -> FakeRepo:
    return fake.add_repo(octo.login, f"proj-{uuid.uuid4().hex[:6]}", clone_url=bare.as_uri())


async def my_id(browser: httpx.AsyncClient) -> str:
    return (await browser.get("/api/auth/session")).json()["data"]["user"]["id"]


async def insert_session(app: TestServer, user_id: str, repo: FakeRepo, branch: str | None, base: str | None) -> str:
    session_id = str(uuid.uuid4())
    await app.ctx.pool.execute(
        "INSERT INTO chat_sessions (id, user_id, user_request, repository_owner, repository_name, base_branch, branch)"
        " VALUES ($1, $2, 'Work', $3, $4, $5, $6)",
        session_id,
        user_id,
        repo.owner,
        repo.name,
        base,
        branch,
    )
    return session_id


# ---- the git service ----------------------------------------------------------------------------


async def test_clone_branch_commit_and_push(tmp_path: Path, bare: Path) -> None:
    work = tmp_path / "work"
    await git.clone(bare.as_uri(), work, token="gho_secret_not_used_for_file_urls")
    assert await git.has_remote_branch(work, "main")
    assert not await git.has_remote_branch(work, "topic")
    await git.checkout_branch(work, "topic", "origin/main")
    assert await current_branch(work) == "topic"
    assert await commit_all(work, "nothing") is None

    (work / "new.txt").write_text("new\n")
    sha = await commit_all(work, "Add new.txt")
    assert sha and await git.head_sha(work) == sha
    await git.push(work, bare.as_uri(), "topic", token="gho_secret_not_used_for_file_urls")
    assert sh("--git-dir", str(bare), "rev-parse", "refs/heads/topic") == sha
    assert sh("--git-dir", str(bare), "log", "-1", "--format=%an <%ae> %s", "topic") == (
        "WebEDT <noreply@webedt.local> Add new.txt"
    )
    assert "gho_secret" not in (work / ".git" / "config").read_text()

    with pytest.raises(git.GitError) as failure:
        await git.checkout_branch(work, "other", "origin/does-not-exist")
    assert failure.value.command == "checkout"


async def test_the_token_goes_only_as_a_header_to_the_remotes_origin(tmp_path: Path, fake: FakeGitHub) -> None:
    """Over http the token is sent as a basic-auth header to the remote's own origin; it is not
    in the URL, the clone's config or git's error output."""
    token = "gho_headeronly123"
    url = f"{fake.url}/someone/repo.git"
    before = len(fake.requests)
    with pytest.raises(git.GitError) as failure:
        await git.clone(url, tmp_path / "never", token)
    assert token not in failure.value.stderr
    sent = [r for r in fake.requests[before:] if r["path"].startswith("/someone/repo.git")]
    assert sent, "git never reached the fake"
    assert all(token not in r["path"] + r["query"] for r in sent)
    expected = "basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()
    assert {r["authorization"] for r in sent} == {expected}
    assert not (tmp_path / "never").exists()

    env = git.git_env(token, url)
    assert f"AUTHORIZATION: {expected}" in env.values()
    assert git.git_env(token, bare_url := (tmp_path / "x.git").as_uri()) == git.git_env(None, bare_url)
    assert env["GIT_TERMINAL_PROMPT"] == "0"


def test_session_paths_are_sanitized_and_stay_inside_the_workspace_dir(app: TestServer, tmp_path: Path) -> None:
    config = app.ctx.config
    assert workspaces.session_path("octo", "my.repo", "claude/fix it__now") == "octo__my.repo__claude-fix-it-now"
    # Each person's workspaces sit in a folder of their own (issue 15.8).
    inside = workspaces.workspace_path(config, "someuserid", "octo__repo__main")
    assert inside.parent == config.workspace_dir.resolve() / "someuserid"
    for bad in ("..", ".", "a/b", "../escape", "", "a\x00b"):
        with pytest.raises(ServiceError):
            workspaces.workspace_path(config, "someuserid", bad)
        with pytest.raises(ServiceError):
            workspaces.workspace_path(config, bad, "octo__repo__main")
    outside = tmp_path / "outside"
    outside.mkdir()
    (config.workspace_dir / "someuserid").mkdir(parents=True, exist_ok=True)
    link = config.workspace_dir / "someuserid" / "planted-link"
    link.symlink_to(outside)
    with pytest.raises(ServiceError):
        workspaces.workspace_path(config, "someuserid", "planted-link")
    (config.workspace_dir / "planted-user").symlink_to(outside)
    with pytest.raises(ServiceError):
        workspaces.workspace_path(config, "planted-user", "octo__repo__main")


# ---- init-repository ------------------------------------------------------------------------------


async def test_init_repository_creates_and_pushes_the_branch(
    app: TestServer,
    browser: httpx.AsyncClient,
    repo: FakeRepo,
    bare: Path,
    octo: FakeUser,
    workspace_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    session_id = await insert_session(app, await my_id(browser), repo, "claude/add-feature", "main")
    main_sha = sh("--git-dir", str(bare), "rev-parse", "refs/heads/main")

    response = await browser.post(f"/api/sessions/{session_id}/init-repository", headers=JSON)
    assert response.status_code == 200, response.text
    session = response.json()["session"]
    expected_path = f"{repo.owner}__{repo.name}__claude-add-feature"
    assert session["id"] == session_id
    assert session["branch"] == "claude/add-feature"
    assert session["sessionPath"] == expected_path
    assert session["baseBranch"] == "main"
    assert response.json()["data"] == session

    # The branch exists in the bare repository, at main's head.
    assert sh("--git-dir", str(bare), "rev-parse", "refs/heads/claude/add-feature") == main_sha
    directory = workspace_dir / session["userId"] / expected_path
    assert sh("symbolic-ref", "--short", "HEAD", cwd=directory) == "claude/add-feature"
    assert (directory / "src" / "app.py").read_text() == "print(1)\n"
    config_text = (directory / ".git" / "config").read_text()
    assert octo.token not in config_text and "extraheader" not in config_text.lower()
    assert octo.token not in response.text
    assert octo.token not in caplog.text

    # Work in the workspace survives a second call, which only updates.
    (directory / "wip.txt").write_text("local work\n")
    again = await browser.post(f"/api/sessions/{session_id}/init-repository", headers=JSON)
    assert again.status_code == 200, again.text
    assert (directory / "wip.txt").exists()

    # Committing and pushing from the workspace with the person's token reaches the remote.
    sha = await commit_all(directory, "Work in progress")
    await git.push(directory, bare.as_uri(), "claude/add-feature", octo.token)
    assert sh("--git-dir", str(bare), "rev-parse", "refs/heads/claude/add-feature") == sha

    row = await app.ctx.pool.fetchrow("SELECT * FROM chat_sessions WHERE id = $1", session_id)
    await workspaces.remove_workspace(app.ctx, row)
    assert not directory.exists()
    await workspaces.remove_workspace(app.ctx, row)  # already gone: no error


async def test_init_repository_defaults(
    app: TestServer, browser: httpx.AsyncClient, repo: FakeRepo, bare: Path
) -> None:
    """No branch and no base on the row: the repository's default branch and a generated name."""
    session_id = await insert_session(app, await my_id(browser), repo, None, None)
    response = await browser.post(f"/api/sessions/{session_id}/init-repository", headers=JSON)
    assert response.status_code == 200, response.text
    session = response.json()["session"]
    assert session["branch"] == f"webedt/session-{session_id[-8:]}"
    assert session["baseBranch"] == "main"
    assert sh("--git-dir", str(bare), "rev-parse", f"refs/heads/{session['branch']}")


async def test_an_existing_remote_branch_is_continued(
    app: TestServer, browser: httpx.AsyncClient, repo: FakeRepo, bare: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    sh("clone", "--quiet", str(bare), str(other))
    sh("checkout", "--quiet", "-b", "claude/existing", cwd=other)
    (other / "more.txt").write_text("more\n")
    sh("add", "--all", cwd=other)
    sh("commit", "--quiet", "-m", "more", cwd=other)
    sh("push", "--quiet", "origin", "claude/existing", cwd=other)
    session_id = await insert_session(app, await my_id(browser), repo, "claude/existing", "main")
    response = await browser.post(f"/api/sessions/{session_id}/init-repository", headers=JSON)
    assert response.status_code == 200, response.text
    session = response.json()["session"]
    directory = app.ctx.config.workspace_dir / session["userId"] / session["sessionPath"]
    assert (directory / "more.txt").read_text() == "more\n"


async def test_init_repository_refusals(
    app: TestServer, browser: httpx.AsyncClient, fake: FakeGitHub, repo: FakeRepo
) -> None:
    me = await my_id(browser)
    missing_base = await insert_session(app, me, repo, "claude/x", "no-such-base")
    response = await browser.post(f"/api/sessions/{missing_base}/init-repository", headers=JSON)
    assert response.status_code == 404
    assert response.json() == {"success": False, "error": "Base branch 'no-such-base' not found"}

    async with httpx.AsyncClient(base_url=app.url) as other:
        stranger = await register(other)
        theirs = await insert_session(app, stranger["id"], repo, "claude/theirs", "main")
        # Someone else's session is not found, even for them-with-no-GitHub the answer differs.
        response = await browser.post(f"/api/sessions/{theirs}/init-repository", headers=JSON)
        assert response.status_code == 404
        assert response.json() == {"success": False, "error": "Session not found"}
        not_connected = await other.post(f"/api/sessions/{theirs}/init-repository", headers=JSON)
        assert not_connected.status_code == 400
        assert not_connected.json() == {"success": False, "error": "GitHub not connected"}
    assert await app.ctx.pool.fetchval("SELECT branch FROM chat_sessions WHERE id = $1", theirs) == "claude/theirs"
    assert await app.ctx.pool.fetchval("SELECT session_path FROM chat_sessions WHERE id = $1", theirs) is None

    no_repo = str(uuid.uuid4())
    await app.ctx.pool.execute(
        "INSERT INTO chat_sessions (id, user_id, user_request) VALUES ($1, $2, 'No repo')", no_repo, me
    )
    response = await browser.post(f"/api/sessions/{no_repo}/init-repository", headers=JSON)
    assert response.json() == {"success": False, "error": "Session has no repository"}

    unknown = await browser.post(f"/api/sessions/{uuid.uuid4()}/init-repository", headers=JSON)
    assert unknown.status_code == 404

    ghost = fake.add_repo(repo.owner, "ghost", clone_url=(app.ctx.config.workspace_dir / "missing.git").as_uri())
    ghost_session = await insert_session(app, me, ghost, "claude/y", "main")
    response = await browser.post(f"/api/sessions/{ghost_session}/init-repository", headers=JSON)
    assert response.status_code == 404
    assert response.json() == {"success": False, "error": "Repository not found"}
