"""Repositories, branches and trees (CONTRACT.md 1.7, 7.2), with every page read up to a cap.

`delete_branch(ctx, token, owner, repo, branch)` is also what session deletion uses.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any
from urllib.parse import quote

from github import Github, GithubException
from github.Repository import Repository

from services.context import AppContext
from services.errors import ServiceError
from services.github import api

log = logging.getLogger(__name__)

# Branch listings are bounded like repository listings; a repository with more branches than
# this is not browsed branch by branch.
MAX_BRANCHES = 5000

BRANCH_DELETED = "Branch deleted"
BRANCH_ALREADY_GONE = "Branch already deleted or does not exist"


def repository(client: Github, owner: str, repo: str) -> Repository:
    """A lazy Repository: no request until a method needs one."""
    return client.get_repo(f"{owner}/{repo}")


def ref_url(owner: str, repo: str, branch: str) -> str:
    """The Git refs URL of a branch (PyGithub's lazy GitRef would use the read-only `/git/ref/`)."""
    return f"/repos/{owner}/{repo}/git/refs/heads/{quote(branch)}"


def branch_head(client: Github, owner: str, repo: str, branch: str) -> str:
    """The commit sha a branch points at (GithubException 404 when it does not exist)."""
    _, data = client.requester.requestJsonAndCheck("GET", f"/repos/{owner}/{repo}/git/ref/heads/{quote(branch)}")
    return str(data["object"]["sha"])


def repo_json(repo: Repository) -> dict[str, Any]:
    return {
        "id": repo.id,
        "name": repo.name,
        "full_name": repo.full_name,
        "owner": {"login": repo.owner.login},
        "private": repo.private,
        "description": repo.description,
        "html_url": repo.html_url,
        "clone_url": repo.clone_url,
        "default_branch": repo.default_branch,
    }


async def list_repos(ctx: AppContext, token: str) -> list[dict[str, Any]]:
    """The caller's repositories, most recently updated first, every page up to GITHUB_REPOS_MAX."""
    limit = ctx.config.github_repos_max

    def fetch(client: Github) -> list[dict[str, Any]]:
        repos = client.get_user().get_repos(sort="updated", direction="desc")
        return [repo_json(r) for r in itertools.islice(repos, limit)]

    return await api.run(ctx, token, fetch)


async def list_branches(ctx: AppContext, token: str, owner: str, repo: str) -> list[dict[str, Any]]:
    """Every branch (all pages, up to MAX_BRANCHES)."""
    api.check_repo(owner, repo)

    def fetch(client: Github) -> list[dict[str, Any]]:
        try:
            branches = repository(client, owner, repo).get_branches()
            return [
                {"name": b.name, "protected": b.protected, "commit": {"sha": b.commit.sha, "url": b.commit.url}}
                for b in itertools.islice(branches, MAX_BRANCHES)
            ]
        except GithubException as exc:
            api.reraise(exc, {404: "Repository not found"})

    return await api.run(ctx, token, fetch)


async def create_branch(ctx: AppContext, token: str, owner: str, repo: str, body: dict[str, Any]) -> dict[str, Any]:
    """`refs/heads/<branchName>` at the head of `baseBranch` (default "main")."""
    api.check_repo(owner, repo)
    name = body.get("branchName")
    if not name:
        raise ServiceError(400, "Branch name is required")
    api.check_branch(name)
    base = body.get("baseBranch") or "main"
    api.check_branch(base, "Invalid base branch name")

    def create(client: Github) -> dict[str, Any]:
        try:
            sha = branch_head(client, owner, repo, base)
        except GithubException as exc:
            api.reraise(exc, {404: "Base branch or repository not found"})
        try:
            repository(client, owner, repo).create_git_ref(f"refs/heads/{name}", sha)
        except GithubException as exc:
            api.reraise(exc, {422: "Branch already exists", 404: "Repository not found"})
        return {"branchName": name, "baseBranch": base, "sha": sha}

    return await api.run(ctx, token, create)


def delete_branch_sync(client: Github, owner: str, repo: str, branch: str) -> str:
    """Delete a branch ref; 404/422 (already gone) count as success. Returns the message."""
    try:
        client.requester.requestJsonAndCheck("DELETE", ref_url(owner, repo, branch))
    except GithubException as exc:
        if exc.status in (404, 422):
            return BRANCH_ALREADY_GONE
        api.reraise(exc, {})
    return BRANCH_DELETED


async def delete_branch_or_raise(ctx: AppContext, token: str, owner: str, repo: str, branch: str) -> str:
    """The route's version: a ServiceError on failure."""
    api.check_repo(owner, repo)
    api.check_branch(branch)
    return await api.run(ctx, token, lambda client: delete_branch_sync(client, owner, repo, branch))


async def delete_branch(ctx: AppContext, token: str, owner: str, repo: str, branch: str) -> tuple[bool, str]:
    """Delete a branch for session clean-up: (success, message); never raises for GitHub errors.

    GitHub's 404/422 mean the branch is already gone and count as success (CONTRACT.md 1.6).
    """
    try:
        return True, await delete_branch_or_raise(ctx, token, owner, repo, branch)
    except ServiceError as exc:
        return False, exc.message


async def get_tree(ctx: AppContext, token: str, owner: str, repo: str, branch: str, recursive: bool) -> dict[str, Any]:
    """The tree of a branch's head commit (GitHub may truncate a very large recursive tree)."""
    api.check_repo(owner, repo)
    api.check_branch(branch)

    def fetch(client: Github) -> dict[str, Any]:
        try:
            r = repository(client, owner, repo)
            tree_sha = r.get_branch(branch).commit.commit.tree.sha
            tree = r.get_git_tree(tree_sha, recursive=recursive)
        except GithubException as exc:
            api.reraise(exc, {404: "Branch or repository not found"})
        return {
            "sha": tree.sha,
            "tree": [{"path": e.path, "type": e.type, "sha": e.sha, "size": e.size} for e in tree.tree],
            "truncated": bool(tree.truncated),
        }

    return await api.run(ctx, token, fetch)
