"""The sessions API: everything a person does with their chat sessions besides running them.

CONTRACT.md 1.6, with its defects fixed: another person's session is always a 404 "Session not
found" (single and bulk), bulk requests are bounded and all-or-nothing, every change is
announced on the session-list channel (`services.session_list`), lists are paginated, and a
duplicate repository/branch is a 409 with a message instead of a 500.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from services import event_log, session_list
from services.agents.backend import UpstreamError
from services.auth import CurrentUser
from services.chat_sessions import SESSION_NOT_FOUND, get_owned, session_json
from services.clock import iso
from services.context import AppContext
from services.db import queries
from services.errors import ServiceError
from services.github import accounts, api, repos, workspaces
from services.pagination import Page

log = logging.getLogger(__name__)

PREVIEW_BASE_URL = "https://webedt.etdofresh.com/github"
MISSING_FIELDS = "Missing required fields: repositoryOwner, repositoryName, baseBranch, branch"
DEFAULT_TITLE = "New coding session"
TITLE_MAX_CHARS = 500
# GET /api/sessions without `limit` answers like the original (one list), but at most this many
# newest sessions; `hasMore` says when there are more.
SESSIONS_PAGE_MAX = 500
DELETED_PAGE_DEFAULT = 20
DELETED_PAGE_MAX = 100
MESSAGES_PAGE_MAX = 1000
BULK_MAX_IDS = 100
# Cleanup calls to GitHub and Claude made at once by a bulk delete.
CLEANUP_CONCURRENCY = 8
MESSAGE_TYPES = ("user", "assistant", "system", "error")
EVENT_UUID_MAX_CHARS = 200


# ---- small helpers ----------------------------------------------------------------------------


def preview_url(row: asyncpg.Record | dict[str, Any]) -> str | None:
    owner, repo, branch = row["repository_owner"], row["repository_name"], row["branch"]
    if not (owner and repo and branch):
        return None
    return f"{PREVIEW_BASE_URL}/{owner}/{repo}/{branch.replace('/', '-')}/"


def valid_branch_name(name: str) -> bool:
    """git's branch-name rules, and no leading `-` (it would read as an option to git)."""
    return api.is_valid_branch(name) and not name.startswith("-")


def _required_text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    return value.strip() if isinstance(value, str) and value.strip() else None


async def announce(ctx: AppContext, user_id: str, kind: str, row: asyncpg.Record | dict[str, Any]) -> None:
    """Tell the person's session-list viewers (on every replica) about a whole row."""
    await session_list.announce(ctx, user_id, kind, session_json(row))


async def get_live(ctx: AppContext, session_id: str, user_id: str) -> asyncpg.Record:
    """The caller's session outside the trash; 404 otherwise."""
    row = await get_owned(ctx, session_id, user_id)
    if row["deleted_at"] is not None:
        raise ServiceError(404, SESSION_NOT_FOUND)
    return row


# ---- upstream (Claude Remote) and GitHub ------------------------------------------------------


async def archive_remote(
    ctx: AppContext, user_id: str, remote_session_id: str, provider_name: str | None = None
) -> dict[str, Any]:
    """Archive a remote session on the backend it ran on (`chat_sessions.provider`); the outcome
    as `{success, message}` (a 404 counts as done)."""
    try:
        provider = ctx.require_runs().provider_for(provider_name)
        token = await provider.authenticate(user_id)
        await provider.archive(token, remote_session_id)
    except (UpstreamError, ServiceError) as exc:
        return {"success": False, "message": exc.message}
    return {"success": True, "message": "Remote session archived"}


async def rename_remote(
    ctx: AppContext, user_id: str, remote_session_id: str, title: str, provider_name: str | None = None
) -> bool:
    """Give the remote session, on the backend it ran on, the new title too; a failure is
    logged, the local rename stands."""
    try:
        provider = ctx.require_runs().provider_for(provider_name)
        token = await provider.authenticate(user_id)
        await provider.rename(token, remote_session_id, title)
    except (UpstreamError, ServiceError) as exc:
        log.warning("remote rename of %s failed: %s", remote_session_id, exc.message)
        return False
    return True


# ---- create, list, read -----------------------------------------------------------------------


async def create_code_session(ctx: AppContext, user_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST /api/sessions/create-code-session: a pending session for later execution."""
    owner = _required_text(body, "repositoryOwner")
    repo = _required_text(body, "repositoryName")
    base_branch = _required_text(body, "baseBranch")
    branch = _required_text(body, "branch")
    if not (owner and repo and base_branch and branch):
        raise ServiceError(400, MISSING_FIELDS)
    owner, repo = api.check_repo(owner, repo.removesuffix(".git"))
    if not valid_branch_name(base_branch):
        raise ServiceError(400, "Invalid base branch name")
    if not valid_branch_name(branch):
        raise ServiceError(400, "Invalid branch name")
    title = body.get("title")
    if title is not None and not isinstance(title, str):
        raise ServiceError(400, "Title must be a string")
    title = (title or "").strip() or DEFAULT_TITLE
    if len(title) > TITLE_MAX_CHARS:
        raise ServiceError(400, f"Title must be {TITLE_MAX_CHARS} characters or less")

    exists = ServiceError(409, f"A session for {owner}/{repo} on branch {branch} already exists")
    path, holder = await workspaces.own_session_path(ctx, user_id, owner, repo, branch)
    if holder is not None and holder["deleted_at"] is not None:
        raise ServiceError(
            409,
            f"Your session for {owner}/{repo} on branch {branch} is in the trash; "
            "restore it or delete it permanently first",
        )
    if path is None:
        raise exists
    row = await queries.chat_sessions.insert_code_session(
        ctx.pool,
        id=str(uuid.uuid4()),
        user_id=user_id,
        session_path=path,
        repository_owner=owner,
        repository_name=repo,
        user_request=title,
        repository_url=f"https://github.com/{owner}/{repo}",
        base_branch=base_branch,
        branch=branch,
        provider=ctx.config.new_session_provider,
    )
    if row is None:
        raise exists  # the same person created the same session at the same moment
    await announce(ctx, user_id, "created", row)
    return session_json(row)


def _encode_cursor(created_at: datetime, session_id: str) -> str:
    raw = orjson.dumps([created_at.isoformat(), session_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, session_id = orjson.loads(raw)
        return datetime.fromisoformat(created), str(session_id)
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise ServiceError(400, "Invalid cursor") from None


async def list_sessions(ctx: AppContext, user_id: str, page: Page, cursor: str | None = None) -> dict[str, Any]:
    """GET /api/sessions: newest first, `limit` (at most 500) with `offset` or `cursor`.

    `nextCursor` continues after the last session returned and, unlike an offset, does not
    skip or repeat sessions when new ones are created meanwhile.
    """
    before_created, before_id = _decode_cursor(cursor) if cursor else (None, "")
    found = await queries.chat_sessions.list_live_sessions(
        ctx.pool,
        user_id=user_id,
        before_created_at=before_created,
        before_id=before_id,
        limit=page.limit,
        offset=page.offset,
    )
    has_more = bool(found["has_more"])
    return {
        # The query made the SessionRow objects: building them in Python cost this process twice
        # as much as the rest of the request.
        "sessions": orjson.Fragment("[" + found["sessions_json"] + "]"),
        # With a cursor the offset does not apply, so `hasMore` is the query's own.
        **page.fields(found["total"], 0),
        "hasMore": has_more,
        "nextCursor": _encode_cursor(found["last_created_at"], found["last_id"]) if has_more else None,
    }


async def list_deleted(ctx: AppContext, user_id: str, page: Page) -> dict[str, Any]:
    """GET /api/sessions/deleted: the trash, most recently deleted first."""
    rows = [
        r
        async for r in queries.chat_sessions.list_deleted_sessions(
            ctx.pool, user_id=user_id, limit=page.limit, offset=page.offset
        )
    ]
    total = await queries.chat_sessions.count_deleted_sessions(ctx.pool, user_id=user_id)
    return {"sessions": [session_json(r) for r in rows], **page.fields(total, len(rows))}


async def get_session(ctx: AppContext, user_id: str, session_id: str) -> dict[str, Any]:
    """GET /api/sessions/:id (trash included), with the preview URL."""
    row = await get_owned(ctx, session_id, user_id)
    return {**session_json(row), "previewUrl": preview_url(row)}


# ---- messages and events ----------------------------------------------------------------------


def message_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "chatSessionId": row["chat_session_id"],
        "type": row["type"],
        "content": row["content"],
        "images": row["images"],
        "timestamp": iso(row["timestamp"]),
    }


async def add_message(ctx: AppContext, user_id: str, session_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST /api/sessions/:id/messages."""
    message_type, content = body.get("type"), body.get("content")
    if not message_type or not content:
        raise ServiceError(400, "Type and content are required")
    if message_type not in MESSAGE_TYPES:
        raise ServiceError(400, "Invalid message type")
    if not isinstance(content, str):
        raise ServiceError(400, "Content must be a string")
    row = await get_owned(ctx, session_id, user_id)
    message = await queries.messages.insert_message(
        ctx.pool, chat_session_id=row["id"], type=message_type, content=content, images=None
    )
    return message_json(message)


async def list_messages(ctx: AppContext, user_id: str, session_id: str, page: Page) -> dict[str, Any]:
    """GET /api/sessions/:id/messages: oldest first, at most 1000 a page."""
    row = await get_owned(ctx, session_id, user_id)
    rows = [
        r
        async for r in queries.messages.list_messages(
            ctx.pool, chat_session_id=row["id"], limit=page.limit, offset=page.offset
        )
    ]
    total = await queries.messages.count_messages(ctx.pool, chat_session_id=row["id"])
    return {"messages": [message_json(r) for r in rows], **page.fields(total, len(rows))}


async def add_event(ctx: AppContext, user_id: str, session_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST /api/sessions/:id/events: stored through the event log, so it gets an id and
    reaches live viewers on every replica."""
    if "eventData" not in body or body["eventData"] is None:
        raise ServiceError(400, "eventData is required")
    event_data = body["eventData"]
    if not isinstance(event_data, dict):
        raise ServiceError(400, "eventData must be a JSON object")
    if "type" in event_data and not isinstance(event_data["type"], str):
        raise ServiceError(400, "eventData.type must be a string")
    uuid_value = event_data.get("uuid")
    if isinstance(uuid_value, str) and len(uuid_value) > EVENT_UUID_MAX_CHARS:
        # The uuid is indexed (one per session); PostgreSQL refuses index entries this large.
        raise ServiceError(400, f"eventData.uuid must be at most {EVENT_UUID_MAX_CHARS} characters")
    row = await get_owned(ctx, session_id, user_id)
    ids = await event_log.append(ctx, row["id"], [event_data])
    if not ids:
        raise ServiceError(409, "An event with this uuid is already stored for this session")
    stored = await event_log.read_after(ctx, row["id"], ids[0] - 1, 1)
    timestamp = stored[0]["timestamp"] if stored and stored[0]["id"] == ids[0] else None
    return {"id": ids[0], "chatSessionId": row["id"], "eventData": event_data, "timestamp": iso(timestamp)}


# ---- rename, unlock ---------------------------------------------------------------------------


async def update_session(ctx: AppContext, user: CurrentUser, session_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """PATCH /api/sessions/:id: the title (`userRequest`, renamed upstream too) and/or branch."""
    title, branch = body.get("userRequest"), body.get("branch")
    for name, value in (("userRequest", title), ("branch", branch)):
        # A blank string or null means "not this field" (CONTRACT.md 1.6); another type is a mistake.
        if value is not None and not isinstance(value, str):
            raise ServiceError(400, f"{name} must be a string")
    title = title.strip() if isinstance(title, str) and title.strip() else None
    branch = branch.strip() if isinstance(branch, str) and branch.strip() else None
    if title is None and branch is None:
        raise ServiceError(400, "At least one field (userRequest or branch) must be provided")
    if title is not None and len(title) > TITLE_MAX_CHARS:
        raise ServiceError(400, f"Title must be {TITLE_MAX_CHARS} characters or less")
    if branch is not None and not valid_branch_name(branch):
        raise ServiceError(400, "Invalid branch name")
    row = await get_owned(ctx, session_id, user.id)
    updated = await queries.chat_sessions.update_session_fields(
        ctx.pool, id=row["id"], user_request=title, branch=branch
    )
    if updated is None:
        raise ServiceError(404, SESSION_NOT_FOUND)
    if title is not None and title != row["user_request"] and updated["remote_session_id"]:
        await rename_remote(ctx, user.id, updated["remote_session_id"], title, row["provider"])
    if updated["deleted_at"] is None:  # a trashed session is in nobody's list
        await announce(ctx, user.id, "updated", updated)
    return session_json(updated)


async def unlock(ctx: AppContext, user_id: str, session_id: str) -> dict[str, Any]:
    """POST /api/sessions/:id/unlock."""
    row = await get_owned(ctx, session_id, user_id)
    updated = await queries.chat_sessions.unlock_session(ctx.pool, id=row["id"])
    if updated is None:
        raise ServiceError(404, SESSION_NOT_FOUND)
    if row["locked"] and updated["deleted_at"] is None:
        await announce(ctx, user_id, "updated", updated)
    return session_json(updated)


# ---- delete, restore, trash -------------------------------------------------------------------


def _bulk_ids(body: dict[str, Any]) -> list[str]:
    ids = body.get("ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and 0 < len(i) <= 300 for i in ids):
        raise ServiceError(400, "Invalid session IDs")
    unique = list(dict.fromkeys(ids))
    if len(unique) > BULK_MAX_IDS:
        raise ServiceError(400, f"At most {BULK_MAX_IDS} session IDs per request")
    return unique


async def _bulk_change(
    ctx: AppContext,
    user_id: str,
    ids: list[str],
    *,
    in_trash: bool,
    query: Callable[..., AsyncIterator[asyncpg.Record]],
    not_found: str = "One or more sessions not found",
) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
    """Lock every named session (all the caller's, all in or out of the trash) and apply `query`
    (a named query taking `ids` and `user_id`), or change nothing and answer 404. Returns the
    rows as locked and as the query returned them."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        found = [
            r
            async for r in queries.chat_sessions.lock_owned_sessions(conn, ids=ids, user_id=user_id, in_trash=in_trash)
        ]
        if len(found) != len(ids):
            raise ServiceError(404, not_found)
        return found, [r async for r in query(conn, ids=ids, user_id=user_id)]


async def move_to_trash(ctx: AppContext, user_id: str, ids: list[str], not_found: str) -> list[asyncpg.Record]:
    """The one way a session goes to the trash: all of `ids` (the caller's, not in the trash
    yet) or none (404 `not_found`); each one leaves the person's session lists."""
    return await _move(ctx, user_id, ids, not_found, to_trash=True)


async def _move(
    ctx: AppContext, user_id: str, ids: list[str], not_found: str, *, to_trash: bool
) -> list[asyncpg.Record]:
    query = queries.chat_sessions.soft_delete_sessions if to_trash else queries.chat_sessions.restore_sessions
    _, rows = await _bulk_change(ctx, user_id, ids, in_trash=not to_trash, query=query, not_found=not_found)
    for row in rows:
        # Into the trash it leaves the list; back from it, for a list viewer it is a new entry.
        await announce(ctx, user_id, "deleted" if to_trash else "created", row)
    return rows


async def _delete_branch(ctx: AppContext, user: CurrentUser, token: str, row: asyncpg.Record) -> dict[str, Any]:
    """Delete the session's working branch on GitHub, unless something else still needs it."""
    if row["branch"] == row["base_branch"]:
        return {"success": True, "message": "Branch kept: it is the session's base branch"}
    others = await queries.chat_sessions.count_other_sessions_on_branch(
        ctx.pool,
        user_id=user.id,
        id=row["id"],
        repository_owner=row["repository_owner"],
        repository_name=row["repository_name"],
        branch=row["branch"],
    )
    if others:
        return {"success": True, "message": "Branch kept: another session uses it"}
    ok, message = await repos.delete_branch(ctx, token, row["repository_owner"], row["repository_name"], row["branch"])
    return {"success": ok, "message": message}


def _archives_for_anyone(ctx: AppContext, row: asyncpg.Record) -> bool:
    """Whether the session's backend archives without the person's Claude credentials (Managed
    Agents, with the deployment's key; a backend that cannot be reached says so in the result)."""
    try:
        return not ctx.require_runs().provider_for(row["provider"]).personal_credentials
    except ServiceError:
        return True


async def _cleanup(ctx: AppContext, user: CurrentUser, rows: list[asyncpg.Record]) -> dict[str, Any]:
    """Delete the branches and archive the remote sessions of trashed sessions, in parallel and
    bounded; every result is reported, none is fatal."""
    token = accounts.token_from_user(ctx, user.user)
    has_claude = bool(user.user["claude_auth"])
    limit = asyncio.Semaphore(CLEANUP_CONCURRENCY)

    async def bounded(call: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        async with limit:
            try:
                return await call
            except Exception as exc:
                log.warning("session cleanup step failed: %s", exc.__class__.__name__)
                return {"success": False, "message": "Cleanup failed"}

    branch_rows = [r for r in rows if token and r["branch"] and r["repository_owner"] and r["repository_name"]]
    remote_rows = [r for r in rows if r["remote_session_id"] and (has_claude or _archives_for_anyone(ctx, r))]
    branch_results, remote_results = await asyncio.gather(
        asyncio.gather(*(bounded(_delete_branch(ctx, user, token or "", r)) for r in branch_rows)),
        asyncio.gather(
            *(bounded(archive_remote(ctx, user.id, r["remote_session_id"], r["provider"])) for r in remote_rows)
        ),
    )
    return {
        "branches": [{"sessionId": r["id"], **res} for r, res in zip(branch_rows, branch_results, strict=True)],
        "remoteSessions": [
            {"remoteSessionId": r["remote_session_id"], **res}
            for r, res in zip(remote_rows, remote_results, strict=True)
        ],
    }


async def delete_session(ctx: AppContext, user: CurrentUser, session_id: str) -> dict[str, Any]:
    """DELETE /api/sessions/:id: to the trash; archive upstream and delete the branch."""
    row = await get_live(ctx, session_id, user.id)
    rows = await move_to_trash(ctx, user.id, [row["id"]], SESSION_NOT_FOUND)
    cleanup = await _cleanup(ctx, user, rows)
    result: dict[str, Any] = {}
    if cleanup["branches"]:
        branch = cleanup["branches"][0]
        result["branch"] = {"success": branch["success"], "message": branch["message"]}
    if cleanup["remoteSessions"]:
        remote_result = cleanup["remoteSessions"][0]
        result["remoteSession"] = {"success": remote_result["success"], "message": remote_result["message"]}
    return {"message": "Session deleted", "cleanup": result}


async def restore_session(ctx: AppContext, user_id: str, session_id: str) -> dict[str, Any]:
    """POST /api/sessions/:id/restore."""
    row = await get_owned(ctx, session_id, user_id)
    if row["deleted_at"] is None:
        raise ServiceError(404, "Session not found in trash")
    await _move(ctx, user_id, [row["id"]], "Session not found in trash", to_trash=False)
    return {"message": "Session restored"}


async def bulk_delete(ctx: AppContext, user: CurrentUser, body: dict[str, Any]) -> dict[str, Any]:
    """POST /api/sessions/bulk-delete."""
    ids = _bulk_ids(body)
    rows = await move_to_trash(ctx, user.id, ids, "One or more sessions not found")
    cleanup = await _cleanup(ctx, user, rows)
    return {"message": f"{len(rows)} session(s) deleted", "count": len(rows), "cleanup": cleanup}


async def bulk_restore(ctx: AppContext, user_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST /api/sessions/bulk-restore."""
    ids = _bulk_ids(body)
    rows = await _move(ctx, user_id, ids, "One or more sessions not found in trash", to_trash=False)
    return {"message": f"{len(rows)} session(s) restored", "count": len(rows)}


async def bulk_delete_permanent(ctx: AppContext, user_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST /api/sessions/bulk-delete-permanent: trashed sessions, with their events and
    messages, gone for good; their workspaces are removed too."""
    ids = _bulk_ids(body)
    trashed, deleted = await _bulk_change(
        ctx,
        user_id,
        ids,
        in_trash=True,
        query=queries.chat_sessions.delete_sessions_permanently,
        not_found="One or more sessions not found in trash",
    )
    for row in trashed:
        try:
            await workspaces.remove_workspace(ctx, row)
        except Exception:
            log.exception("could not remove the workspace of session %s", row["id"])
    return {"message": f"{len(deleted)} session(s) permanently deleted", "count": len(deleted)}
