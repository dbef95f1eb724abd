"""Pull requests, merges, merge-base, PR text and the auto-PR workflow (CONTRACT.md 1.7, 7.3)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import quote

import asyncpg
from github import Github, GithubException
from github.PullRequest import PullRequest

from services import chat_sessions, sessions
from services.clock import iso
from services.context import AppContext
from services.errors import ServiceError
from services.github import api
from services.github.repos import delete_branch_sync, repository

log = logging.getLogger(__name__)

MERGE_METHODS = ("merge", "squash", "rebase")
PULLS_PER_PAGE = 10
# Auto-PR waits for GitHub to compute mergeability: one look a second, at most 30 looks and
# 60 s in all, so a request never hangs on it.
MERGEABLE_POLLS = 30
MERGEABLE_POLL_SECONDS = 1.0
AUTO_PR_DEADLINE_SECONDS = 60.0
PR_TITLE_LIMIT = 72
MAX_LISTED_COMMITS = 50
MAX_LISTED_FILES = 100


def _pull_summary(pr: PullRequest) -> dict[str, Any]:
    return {
        "number": pr.number,
        "title": pr.title,
        "state": pr.state,
        "htmlUrl": pr.html_url,
        "head": {"ref": pr.head.ref, "sha": pr.head.sha},
        "base": {"ref": pr.base.ref, "sha": pr.base.sha},
    }


def _branch_arg(body: dict[str, Any], key: str, missing: str) -> str:
    value = body.get(key)
    if not value:
        raise ServiceError(400, missing)
    return api.check_branch(value)


async def list_pulls(
    ctx: AppContext, token: str, owner: str, repo: str, head: str | None, base: str | None
) -> list[dict[str, Any]]:
    """The ten most recent pull requests (any state), optionally for one head and/or base."""
    api.check_repo(owner, repo)
    filters: dict[str, str] = {"state": "all"}
    if head:
        filters["head"] = f"{owner}:{api.check_branch(head)}"
    if base:
        filters["base"] = api.check_branch(base)

    def fetch(client: Github) -> list[dict[str, Any]]:
        try:
            page = repository(client, owner, repo).get_pulls(**filters).get_page(0)
        except GithubException as exc:
            api.reraise(exc, {404: "Repository not found"})
        # The list API has no mergeability; reading it would cost one request per PR.
        return [
            {
                **_pull_summary(pr),
                "mergeable": None,
                "merged": False,
                "createdAt": iso(pr.created_at, "seconds"),
                "updatedAt": iso(pr.updated_at, "seconds"),
            }
            for pr in page
        ]

    return await api.run(ctx, token, fetch, per_page=PULLS_PER_PAGE)


async def create_pull(ctx: AppContext, token: str, owner: str, repo: str, body: dict[str, Any]) -> dict[str, Any]:
    api.check_repo(owner, repo)
    if not body.get("head") or not body.get("base"):
        raise ServiceError(400, "Head and base branches are required")
    head, base = api.check_branch(body["head"]), api.check_branch(body["base"])
    title = api.optional_text(body.get("title"), "title", 256) or f"Merge {head} into {base}"
    text = api.optional_text(body.get("body"), "body") or ""

    def create(client: Github) -> dict[str, Any]:
        try:
            pr = repository(client, owner, repo).create_pull(base=base, head=head, title=title, body=text)
        except GithubException as exc:
            api.reraise(exc, {422: "Pull request already exists or validation failed", 404: "Repository not found"})
        return _pull_summary(pr)

    return await api.run(ctx, token, create)


def _merge_pull_sync(client: Github, owner: str, repo: str, number: int, options: dict[str, Any]) -> dict[str, Any]:
    try:
        status = repository(client, owner, repo).get_pull(number).merge(**options)
    except GithubException as exc:
        api.reraise(exc, {405: "Pull request cannot be merged", 409: "Merge conflict", 404: "Pull request not found"})
    return {"merged": status.merged, "message": status.message, "sha": status.sha}


async def merge_pull(
    ctx: AppContext, token: str, owner: str, repo: str, number: str, body: dict[str, Any]
) -> dict[str, Any]:
    api.check_repo(owner, repo)
    if not number.isdigit() or len(number) > 9:
        raise ServiceError(400, "Invalid pull request number")
    method = body.get("merge_method") or "merge"
    if method not in MERGE_METHODS:
        raise ServiceError(400, "merge_method must be one of: merge, squash, rebase")
    options: dict[str, Any] = {"merge_method": method}
    title = api.optional_text(body.get("commit_title"), "commit_title", 256)
    message = api.optional_text(body.get("commit_message"), "commit_message")
    if title:
        options["commit_title"] = title
    if message:
        options["commit_message"] = message
    return await api.run(ctx, token, lambda client: _merge_pull_sync(client, owner, repo, int(number), options))


def _merge_base_sync(client: Github, owner: str, repo: str, branch: str, base: str, conflict: str) -> dict[str, Any]:
    """Merge `base` into `branch` with GitHub's merges API; "already up to date" on GitHub's 204."""
    r = repository(client, owner, repo)
    try:
        merged = r.merge(base=branch, head=base, commit_message=f"Merge {base} into {branch}")
        if merged is None:
            # 204: nothing to merge. Answer with the branch's head so the client has a sha.
            head = r.get_branch(branch).commit.sha
            return {"sha": head, "message": f"{branch} is already up to date with {base}", "commit": None}
    except GithubException as exc:
        api.reraise(exc, {409: conflict, 404: "Branch or repository not found"})
    return {
        "sha": merged.sha,
        "message": f"Merged {base} into {branch}",
        "commit": {"sha": merged.sha, "message": merged.commit.message},
    }


async def merge_base(
    ctx: AppContext, token: str, owner: str, repo: str, branch: str, body: dict[str, Any]
) -> dict[str, Any]:
    api.check_repo(owner, repo)
    api.check_branch(branch)
    base = _branch_arg(body, "base", "Base branch is required")
    conflict = "Merge conflict - manual resolution required"
    return await api.run(ctx, token, lambda client: _merge_base_sync(client, owner, repo, branch, base, conflict))


# ---- PR text ---------------------------------------------------------------------------------------


def pr_title(user_request: str | None, head: str, base: str) -> str:
    title = " ".join((user_request or "").split()) or f"Merge {head} into {base}"
    return title[:69] + "..." if len(title) > PR_TITLE_LIMIT else title


def pr_body(comparison: dict[str, Any], user_request: str | None) -> tuple[str, dict[str, int]]:
    commits = comparison.get("commits") or []
    files = comparison.get("files") or []
    additions = sum(int(f.get("additions") or 0) for f in files)
    deletions = sum(int(f.get("deletions") or 0) for f in files)
    stats = {
        "commits": int(comparison.get("total_commits") or len(commits)),
        "files": len(files),
        "additions": additions,
        "deletions": deletions,
    }
    lines: list[str] = []
    if user_request and user_request.strip():
        lines += ["## Summary", "", user_request.strip(), ""]
    lines += [f"## Commits ({stats['commits']})", ""]
    for c in commits[:MAX_LISTED_COMMITS]:
        info = c.get("commit") or {}
        first_line = (info.get("message") or "").split("\n", 1)[0]
        author = (info.get("author") or {}).get("name") or "unknown"
        lines.append(f"- `{str(c.get('sha', ''))[:7]}` {first_line} ({author})")
    if len(commits) > MAX_LISTED_COMMITS:
        lines.append(f"- ... and {len(commits) - MAX_LISTED_COMMITS} more")
    lines += [
        "",
        "## Changes",
        "",
        f"{stats['files']} file(s) changed, {additions} addition(s), {deletions} deletion(s)",
    ]
    groups = (("added", "Added"), ("modified", "Modified"), ("renamed", "Renamed"), ("removed", "Removed"))
    for status, heading in groups:
        names = [f.get("filename", "") for f in files if f.get("status") == status]
        if not names:
            continue
        lines += ["", f"### {heading} ({len(names)})", ""]
        for f in [f for f in files if f.get("status") == status][:MAX_LISTED_FILES]:
            if status == "renamed" and f.get("previous_filename"):
                lines.append(f"- `{f['previous_filename']}` → `{f.get('filename', '')}`")
            else:
                lines.append(f"- `{f.get('filename', '')}`")
        if len(names) > MAX_LISTED_FILES:
            lines.append(f"- ... and {len(names) - MAX_LISTED_FILES} more")
    lines += ["", "---", "*This pull request description was generated automatically.*"]
    return "\n".join(lines), stats


async def generate_pr_content(
    ctx: AppContext, token: str, owner: str, repo: str, body: dict[str, Any]
) -> dict[str, Any]:
    api.check_repo(owner, repo)
    if not body.get("head") or not body.get("base"):
        raise ServiceError(400, "Head and base branches are required")
    head, base = api.check_branch(body["head"]), api.check_branch(body["base"])
    user_request = api.optional_text(body.get("userRequest"), "userRequest")

    def fetch(client: Github) -> dict[str, Any]:
        try:
            _, comparison = client.requester.requestJsonAndCheck(
                "GET", f"/repos/{owner}/{repo}/compare/{quote(base)}...{quote(head)}"
            )
        except GithubException as exc:
            api.reraise(exc, {404: "Branch or repository not found"})
        text, stats = pr_body(comparison if isinstance(comparison, dict) else {}, user_request)
        return {"title": pr_title(user_request, head, base), "body": text, "stats": stats}

    return await api.run(ctx, token, fetch)


# ---- auto-PR -----------------------------------------------------------------------------------------


async def _retire_session(ctx: AppContext, user_id: str, session: asyncpg.Record) -> None:
    """After auto-PR merged the work: archive the remote Claude session and move the session to
    the trash. The merge already happened, so a failure here is logged, never returned."""
    if session["remote_session_id"]:
        try:
            outcome = await sessions.archive_remote(ctx, user_id, session["remote_session_id"], session["provider"])
            if not outcome["success"]:
                log.warning("auto-PR could not archive the remote session: %s", outcome["message"])
        except Exception:
            log.exception("auto-PR could not archive the remote session")
    try:
        # As DELETE /api/sessions/:id does it (the person's other tabs drop it from their list).
        await sessions.move_to_trash(ctx, user_id, [session["id"]], chat_sessions.SESSION_NOT_FOUND)
    except ServiceError:
        log.info("auto-PR: session %s was already in the trash or gone", session["id"])


async def _wait_until_mergeable(ctx: AppContext, token: str, owner: str, repo: str, number: int) -> str:
    """The PR's head sha once GitHub has decided it can be merged (it computes that lazily); 409
    when it cannot be, 408 when GitHub has not decided within AUTO_PR_DEADLINE_SECONDS."""

    def mergeability(client: Github) -> tuple[bool | None, str]:
        try:
            fresh = repository(client, owner, repo).get_pull(number)
            return fresh.mergeable, fresh.head.sha
        except GithubException as exc:
            api.reraise(exc, {404: "Pull request not found"})

    loop = asyncio.get_running_loop()
    deadline = loop.time() + AUTO_PR_DEADLINE_SECONDS
    mergeable: bool | None = None
    head_sha = ""
    for attempt in range(MERGEABLE_POLLS):
        mergeable, head_sha = await api.run(ctx, token, mergeability)
        if mergeable is not None or loop.time() + MERGEABLE_POLL_SECONDS > deadline:
            break
        if attempt < MERGEABLE_POLLS - 1:
            await asyncio.sleep(MERGEABLE_POLL_SECONDS)
    if mergeable is False:
        raise ServiceError(
            409, "Pull request has conflicts or is blocked by branch protection rules - please resolve them on GitHub"
        )
    if mergeable is None:
        raise ServiceError(408, "Timeout waiting for PR to become mergeable - please try merging manually")
    return head_sha


async def auto_pr(
    ctx: AppContext, token: str, user_id: str, owner: str, repo: str, branch: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Open (or reuse) a PR, merge the base into the branch, wait until GitHub says it can be
    merged, merge it, delete the branch, and put the caller's session (if named) in the trash."""
    api.check_repo(owner, repo)
    api.check_branch(branch)
    base = _branch_arg(body, "base", "Base branch is required")
    title = api.optional_text(body.get("title"), "title", 256) or f"Merge {branch} into {base}"
    text = api.optional_text(body.get("body"), "body") or ""
    session = None
    if body.get("sessionId"):
        session_id = body["sessionId"]
        if not isinstance(session_id, str):
            raise ServiceError(400, "sessionId must be a string")
        # Only the caller's own session; anyone else's is "not found", before anything happens.
        session = await chat_sessions.get_owned(ctx, session_id, user_id)

    def open_pr(client: Github) -> dict[str, Any]:
        r = repository(client, owner, repo)
        try:
            existing = r.get_pulls(state="open", head=f"{owner}:{branch}", base=base).get_page(0)
            pr = existing[0] if existing else r.create_pull(base=base, head=branch, title=title, body=text)
        except GithubException as exc:
            api.reraise(exc, {422: "Pull request already exists or validation failed", 404: "Repository not found"})
        return {"number": pr.number, "htmlUrl": pr.html_url}

    pr = await api.run(ctx, token, open_pr)
    conflict = "Merge conflict when updating branch - manual resolution required"
    merged_base = await api.run(ctx, token, lambda c: _merge_base_sync(c, owner, repo, branch, base, conflict))

    head_sha = await _wait_until_mergeable(ctx, token, owner, repo, pr["number"])

    # `sha` makes GitHub refuse if the branch moved after we looked.
    options = {"merge_method": "merge", "sha": head_sha}
    merged = await api.run(ctx, token, lambda c: _merge_pull_sync(c, owner, repo, pr["number"], options))

    def drop_branch(client: Github) -> str:
        return delete_branch_sync(client, owner, repo, branch)

    try:
        await api.run(ctx, token, drop_branch)
    except ServiceError as exc:
        log.warning("auto-PR merged but the branch could not be deleted: %s", exc.message)

    if session is not None and session["deleted_at"] is None:
        await _retire_session(ctx, user_id, session)

    return {
        "step": "completed",
        "progress": f"Pull request #{pr['number']} merged into {base} and {branch} deleted",
        "pr": pr,
        "mergeBase": {"sha": merged_base["sha"], "message": merged_base["message"]},
        "mergePr": {"merged": merged["merged"], "sha": merged["sha"]},
    }
