"""Chat sessions: ownership lookups and the SessionRow JSON shape (CONTRACT.md 0: the
camelCase keys of a chat_sessions row; 1.6: the sessions routes)."""

from __future__ import annotations

from typing import Any

import asyncpg

from services.clock import iso
from services.context import AppContext
from services.db import queries
from services.errors import ServiceError

SESSION_NOT_FOUND = "Session not found"
# Names under /api/sessions/ that are routes of their own, so never a session id (the route
# pattern handlers/base.SESSION_ID refuses them; the importer skips sessions named so).
RESERVED_SESSION_IDS = frozenset(
    {"updates", "deleted", "sync", "create-code-session", "bulk-delete", "bulk-restore", "bulk-delete-permanent"}
)


def session_json(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """A chat_sessions row as the contract's SessionRow (camelCase keys, ISO timestamps)."""
    return {
        "id": row["id"],
        "userId": row["user_id"],
        "sessionPath": row["session_path"],
        "repositoryOwner": row["repository_owner"],
        "repositoryName": row["repository_name"],
        "userRequest": row["user_request"],
        "status": row["status"],
        "repositoryUrl": row["repository_url"],
        "baseBranch": row["base_branch"],
        "branch": row["branch"],
        "provider": row["provider"],
        "providerSessionId": row["provider_session_id"],
        "remoteSessionId": row["remote_session_id"],
        "remoteWebUrl": row["remote_web_url"],
        "totalCost": row["total_cost"],
        "issueNumber": row["issue_number"],
        "autoCommit": row["auto_commit"],
        "locked": row["locked"],
        "createdAt": iso(row["created_at"]),
        "completedAt": iso(row["completed_at"]),
        "deletedAt": iso(row["deleted_at"]),
        "workerLastActivity": iso(row["worker_last_activity"]),
    }


async def get_owned(ctx: AppContext, session_id: str, user_id: str) -> asyncpg.Record:
    """The caller's own session (by id or session path, trash included); 404 for anyone else's."""
    if not session_id or len(session_id) > 300:
        raise ServiceError(404, SESSION_NOT_FOUND)
    row = await queries.chat_sessions.get_owned_session(ctx.pool, id=session_id, user_id=user_id)
    if row is None:
        raise ServiceError(404, SESSION_NOT_FOUND)
    return row
