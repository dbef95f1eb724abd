"""Session workspaces: a clone of the session's repository on its own branch, under WORKSPACE_DIR.

The folder is `WORKSPACE_DIR/<user id>/<session path>` (CONTRACT.md 7.6, `<owner>__<repo>__<branch>`,
sanitized, one path component, unique per person) and never anything outside WORKSPACE_DIR.

The clone URL is the repository's `clone_url` as the configured GitHub API reports it. That also
checks, with the person's own token, that they can see the repository, and it follows GitHub
Enterprise hosts and renamed repositories without another setting. Tests point GITHUB_API_URL
at a fake whose `clone_url` is a local bare repository (`file://`); outside production http and
file URLs are accepted for that reason, in production only https.

`init_repository` backs `POST /api/sessions/:id/init-repository`; `remove_workspace` is called
when a session is deleted permanently.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import secrets
import shutil
import weakref
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import asyncpg
from github import Github, GithubException

from services import chat_sessions
from services.auth import CurrentUser
from services.config import Config
from services.context import AppContext
from services.db import queries
from services.errors import ServiceError
from services.github import accounts, api, git
from services.github.repos import repository

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_SESSION_PATH = re.compile(r"^[A-Za-z0-9._-]{1,255}$")
_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


# ---- session paths (CONTRACT.md 7.6) --------------------------------------------------------------


def sanitize_component(value: str) -> str:
    """`/` -> `-`, `__` -> `-`, anything outside [A-Za-z0-9._-] -> `-`."""
    return _UNSAFE.sub("-", value.replace("/", "-").replace("__", "-"))


def session_path(owner: str, repo: str, branch: str) -> str:
    """`<owner>__<repo>__<branch>`, each part sanitized."""
    return "__".join(sanitize_component(part) for part in (owner, repo, branch))


def session_path_candidates(owner: str, repo: str, branch: str) -> tuple[str, str]:
    """The plain session path, then one that no other repository or branch shares: the plain
    one plus `__` and a hash of the unsanitized names. Sanitizing is lossy (`feature/x` and
    `feature-x` give the same plain path); a plain path never has a fourth `__` part, so the
    second form collides with neither plain paths nor other names' second forms."""
    plain = session_path(owner, repo, branch)
    digest = hashlib.sha256("\0".join((owner, repo, branch)).encode()).hexdigest()[:12]
    return plain, f"{plain}__{digest}"


async def own_session_path(
    ctx: AppContext, user_id: str, owner: str, repo: str, branch: str, session_id: str | None = None
) -> tuple[str | None, asyncpg.Record | None]:
    """The path for a session of `user_id` on this repository and branch: `(path, None)`, or
    `(None, holder)` when another session of theirs already has this very repository and branch.
    Paths are unique per person; other people's sessions never matter."""
    for candidate in session_path_candidates(owner, repo, branch):
        holder = await queries.chat_sessions.get_session_by_path(ctx.pool, user_id=user_id, session_path=candidate)
        if holder is None or holder["id"] == session_id:
            return candidate, None
        if (holder["repository_owner"], holder["repository_name"], holder["branch"]) == (owner, repo, branch):
            return None, holder
    return None, None  # both taken by other names: a 48-bit hash collision


def workspace_path(config: Config, user_id: str, name: str) -> Path:
    """The workspace folder of a person's session path, `WORKSPACE_DIR/<user id>/<session path>`;
    400 for anything that could leave that folder."""
    for part in (user_id, name):
        if not isinstance(part, str) or not _SESSION_PATH.match(part) or part in (".", ".."):
            raise ServiceError(400, "Invalid session path")
    root = config.workspace_dir.resolve()
    directory = root / user_id / name
    # resolve() follows symbolic links: a link planted in WORKSPACE_DIR cannot lead outside it.
    if directory.resolve().parent != root / user_id or (root / user_id).resolve().parent != root:
        raise ServiceError(400, "Invalid session path")
    return directory


def _lock(name: str) -> asyncio.Lock:
    lock = _locks.get(name)
    if lock is None:
        lock = asyncio.Lock()
        _locks[name] = lock
    return lock


# ---- git failures as answers --------------------------------------------------------------------


def _git_failure(exc: git.GitError) -> ServiceError:
    text = exc.stderr.lower()
    if exc.returncode is None:
        return ServiceError(502, "GitHub did not answer in time. Please try again.")
    if "authentication failed" in text or "could not read username" in text or "invalid credentials" in text:
        return ServiceError(400, api.RECONNECT)
    if ("permission to" in text and "denied" in text) or "403" in text:
        return ServiceError(403, "GitHub does not allow you to push to this repository")
    if "repository not found" in text or "does not appear to be a git repository" in text:
        return ServiceError(404, "Repository not found")
    if "[rejected]" in text or "non-fast-forward" in text or "fetch first" in text:
        return ServiceError(409, "The branch on GitHub has changed. Please try again.")
    if "could not resolve host" in text or "unable to access" in text or "connection" in text:
        return ServiceError(502, api.UNAVAILABLE)
    if exc.command == "checkout":
        return ServiceError(409, "The workspace has local changes that conflict with the branch")
    return ServiceError(502, f"git {exc.command} failed; please try again")


def _check_clone_url(config: Config, url: Any) -> str:
    schemes = ("https",) if config.production else ("https", "http", "file")
    if not isinstance(url, str) or urlparse(url).scheme not in schemes:
        raise ServiceError(502, "GitHub returned a clone URL this server does not use")
    return url


# ---- preparing a workspace ------------------------------------------------------------------------


def _remove_sync(path: Path) -> None:
    # A symbolic link is removed itself, never followed.
    if path.is_symlink():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


async def _remove_tree(path: Path) -> None:
    """Remove a folder (or link) if it exists, off the event loop."""
    await asyncio.get_running_loop().run_in_executor(None, _remove_sync, path)


async def _has_local_branch(directory: Path, branch: str) -> bool:
    try:
        await git.run(["rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}"], cwd=directory)
    except git.GitError:
        return False
    return True


async def prepare(directory: Path, url: str, token: str | None, base: str, branch: str) -> bool:
    """Clone or update `directory` and check out `branch` (from `base` when GitHub lacks it,
    then pushed). Local work in an existing workspace is never reset. True when it pushed."""
    fresh = not ((directory / ".git").is_dir() and await git.remote_url(directory) == url)
    if fresh:
        await _remove_tree(directory)
        partial = directory.parent / f".{directory.name}.{secrets.token_hex(4)}.partial"
        try:
            await git.clone(url, partial, token)
            # Renamed into place only once complete, so a half-finished clone is never reused.
            os.replace(partial, directory)
        finally:
            await _remove_tree(partial)
    else:
        await git.fetch(directory, url, token)

    remote_has_branch = await git.has_remote_branch(directory, branch)
    if not fresh and await _has_local_branch(directory, branch):
        await git.run(["checkout", "--quiet", branch, "--"], cwd=directory)
        if remote_has_branch:
            try:
                await git.run(["merge", "--ff-only", "--quiet", f"origin/{branch}"], cwd=directory)
            except git.GitError:
                log.info("workspace branch has diverged from GitHub; left as it is")
            return False
    elif remote_has_branch:
        await git.checkout_branch(directory, branch, f"origin/{branch}")
        return False
    else:
        if not await git.has_remote_branch(directory, base):
            raise ServiceError(404, f"Base branch '{base}' not found")
        await git.checkout_branch(directory, branch, f"origin/{base}")
    await git.push(directory, url, branch, token)
    return True


def default_branch_name(session_id: str) -> str:
    return f"webedt/session-{session_id[-8:]}"


async def init_repository(ctx: AppContext, user: CurrentUser, session_id: str) -> dict[str, Any]:
    """Clone the session's repository into its workspace, create its branch from the base branch,
    push it, and record `branch` and `session_path`. Returns the SessionRow."""
    row = await chat_sessions.get_owned(ctx, session_id, user.id)
    if row["deleted_at"] is not None:
        raise ServiceError(404, chat_sessions.SESSION_NOT_FOUND)
    owner, name = row["repository_owner"], row["repository_name"]
    if not owner or not name:
        raise ServiceError(400, "Session has no repository")
    api.check_repo(owner, name)
    token = accounts.require_token(ctx, user.user)

    def describe(client: Github) -> tuple[Any, Any]:
        try:
            r = repository(client, owner, name)
            return r.clone_url, r.default_branch
        except GithubException as exc:
            api.reraise(exc, {404: "Repository not found"})

    clone_url, default_branch = await api.run(ctx, token, describe)
    url = _check_clone_url(ctx.config, clone_url)
    base = api.check_branch(row["base_branch"] or default_branch, "Invalid base branch name")
    branch = api.check_branch(row["branch"] or default_branch_name(row["id"]))
    name_on_disk, _ = await own_session_path(ctx, user.id, owner, name, branch, row["id"])
    if name_on_disk is None:
        raise ServiceError(409, "Another session already works on this repository and branch")
    directory = workspace_path(ctx.config, user.id, name_on_disk)

    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.error("WORKSPACE_DIR is not usable: %s", exc.strerror)
        raise ServiceError(503, "Workspace storage is not available on this server") from None
    async with _lock(f"{user.id}/{name_on_disk}"):
        try:
            pushed = await prepare(directory, url, token, base, branch)
        except git.GitError as exc:
            raise _git_failure(exc) from None
    log.info("workspace ready", extra={"user_id": user.id, "session_id": row["id"], "pushed": pushed})

    try:
        updated = await queries.chat_sessions.set_session_repository(
            ctx.pool, id=row["id"], user_id=user.id, branch=branch, session_path=name_on_disk, base_branch=base
        )
    except asyncpg.UniqueViolationError:
        raise ServiceError(409, "Another session already works on this repository and branch") from None
    if updated is None:
        raise ServiceError(404, chat_sessions.SESSION_NOT_FOUND)
    return chat_sessions.session_json(updated)


async def remove_workspace(ctx: AppContext, chat_session_row: asyncpg.Record | dict[str, Any]) -> None:
    """Delete a session's workspace folder, if it has one (for permanent deletion). Never raises
    for a missing or unusable folder: deleting the session must not fail because of it."""
    name = chat_session_row["session_path"]
    if not name:
        return
    try:
        directory = workspace_path(ctx.config, chat_session_row["user_id"], name)
    except ServiceError:
        log.warning("not removing a workspace with an unsafe session path")
        return
    async with _lock(f"{chat_session_row['user_id']}/{name}"):
        await _remove_tree(directory)
