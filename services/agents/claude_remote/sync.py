"""Sync of Claude Remote sessions into chat sessions (CONTRACT.md 6.1, without its hazards 9.3:
redundant-session clean-up, guessed links, per-user full downloads).

Sessions people start elsewhere (claude.ai) are imported with their events, on an interval for
everyone with Claude credentials (`CLAUDE_SYNC_*`) and on demand (`POST /api/sessions/sync`).

How this differs from the original:
- A remote session is matched to a local row only by its remote id; a unique index on
  (user_id, remote_session_id) makes a second import impossible, so running a sync twice, or on
  two replicas at once, imports nothing new. There is no guessing by repository or time (the
  original's linking tiers could attach a stranger's run), and nothing is ever soft-deleted or
  failed: a local session, running or not, is never changed by the sync.
- A remote session started by one of our own runs whose id is not stored yet (the run has just
  created it) is recognised by its first prompt's uuid, which the run stored before creating it,
  and is left to that run.
- Events are stored through the event log with the run driver's de-duplication keys, so a sync
  and a run never store an event twice. A remote session still running is imported as `running`
  with no driver, and the run driver adopts it and follows it to its end.
- One replica leads each background cycle (`pg_try_advisory_lock`); the others skip it.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from services import event_log, locks, session_list
from services.agents.backend import RemoteState, UpstreamError
from services.agents.claude_remote.provider import claude_provider
from services.agents.ending import announce_ended, local_status
from services.agents.events import fetch_all_events, session_cost, stored_event
from services.chat_sessions import get_owned, session_json
from services.context import AppContext
from services.db import leading, queries
from services.errors import ServiceError
from services.github.workspaces import session_path
from services.periodic import PeriodicTask

log = logging.getLogger(__name__)

MANUAL_LIMIT_DEFAULT = 50
MANUAL_LIMIT_MAX = 100
USERS_PAGE = 200
TITLE_MAX_CHARS = 500
INITIAL_DELAY_SECONDS = 5.0
_GITHUB_REPO = re.compile(r"github\.com[/:]([^/]+)/([^/?#]+?)(?:\.git)?/?$")


@dataclass
class SyncReport:
    """What one sync of one person found and did (the manual route's `data`)."""

    total_from_api: int = 0
    already_exists: int = 0
    has_more: bool = False
    imported: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    running: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "totalFromApi": self.total_from_api,
            "alreadyExists": self.already_exists,
            "imported": len(self.imported),
            "errors": len(self.errors),
            "runningSessions": len(self.running),
            "hasMore": self.has_more,
            "details": {"imported": self.imported, "errors": self.errors, "running": self.running},
        }


# ---- reading a remote session --------------------------------------------------------------------


def _text_of(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [str(b["text"]) for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)]
        return " ".join(texts) if texts else None
    return None


def _title(remote: dict[str, Any], events: list[dict[str, Any]]) -> str:
    """The remote title, else the first prompt's text, else "Imported session"."""
    title = remote.get("title")
    if not isinstance(title, str) or not title.strip():
        title = None
        for event in events:
            message = event.get("message")
            if event.get("type") == "user" and isinstance(message, dict):
                title = _text_of(message.get("content"))
                if title and title.strip():
                    break
    title = " ".join((title or "").split())
    return title[:TITLE_MAX_CHARS] or "Imported session"


def _repository(remote: dict[str, Any]) -> tuple[str | None, str | None, str | None, str | None]:
    """(url, owner, name, branch) from the remote session's context."""
    context: dict[str, Any] = remote["session_context"] if isinstance(remote.get("session_context"), dict) else {}
    url = owner = name = branch = None
    for source in context.get("sources") or []:
        if isinstance(source, dict) and source.get("type") == "git_repository" and isinstance(source.get("url"), str):
            url = source["url"].removesuffix(".git")
            match = _GITHUB_REPO.search(url)
            if match:
                owner, name = match.group(1), match.group(2)
            break
    for outcome in context.get("outcomes") or []:
        git_info = outcome.get("git_info") if isinstance(outcome, dict) else None
        branches = git_info.get("branches") if isinstance(git_info, dict) else None
        if isinstance(branches, list) and branches and isinstance(branches[0], str):
            branch = branches[0]
            break
    return url, owner, name, branch


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None


def imported_status(remote_state: str) -> str:
    """The status of a remote session imported here (CONTRACT.md 5.4; unknown states: pending)."""
    return local_status(remote_state) or "pending"


# ---- importing ------------------------------------------------------------------------------------


async def _import_one(
    ctx: AppContext, user_id: str, token: str, remote: dict[str, Any], state: str, report: SyncReport
) -> None:
    remote_id = remote["id"]
    events = await fetch_all_events(claude_provider(ctx), token, remote_id)
    prompt_uuids = [e["uuid"] for e in events if e.get("type") == "user" and isinstance(e.get("uuid"), str)]
    if prompt_uuids and await queries.chat_sessions.find_session_by_prompt_uuid(
        ctx.pool, user_id=user_id, uuids=prompt_uuids
    ):
        # Started by a run of ours that has not stored the remote id yet: that run links it.
        report.already_exists += 1
        return
    url, owner, name, branch = _repository(remote)
    status = imported_status(state)
    title = _title(remote, events)
    path = session_path(owner, name, branch) if owner and name and branch else None
    values = {
        "user_id": user_id,
        "repository_owner": owner,
        "repository_name": name,
        "user_request": title,
        "status": status,
        "repository_url": url,
        "branch": branch,
        "remote_session_id": remote_id,
        "remote_web_url": claude_provider(ctx).web_url(remote_id),
        "total_cost": session_cost(claude_provider(ctx), events),
        "created_at": _timestamp(remote.get("created_at")),
        "completed_at": _timestamp(remote.get("updated_at")) if status in ("completed", "error") else None,
    }
    async with ctx.pool.acquire() as conn, conn.transaction():
        row = await queries.chat_sessions.insert_imported_session(
            conn, id=str(uuid.uuid4()), session_path=path, **values
        )
        if row is None and path is not None:
            # The repository/branch path belongs to another session; import without one.
            row = await queries.chat_sessions.insert_imported_session(
                conn, id=str(uuid.uuid4()), session_path=None, **values
            )
        if row is None:
            # Imported meanwhile (another replica, or a manual sync): nothing to do.
            report.already_exists += 1
            return
        if events:
            await event_log.append(ctx, row["id"], [stored_event(e) for e in events], conn=conn)
    await session_list.announce(ctx, user_id, "created", session_json(row))
    if status == "running" and ctx.runs is not None:
        # No run of ours drives it: the run driver follows it from here to its end.
        await ctx.runs.ensure_driving(row["id"])
    report.imported.append(
        {
            "id": row["id"],
            "remoteSessionId": remote_id,
            "title": title,
            "status": status,
            "eventsImported": len(events),
        }
    )


async def sync_user(ctx: AppContext, user_id: str, *, limit: int, active_only: bool = True) -> SyncReport:
    """Import one page (`limit`) of the person's remote sessions that have no row yet."""
    provider = claude_provider(ctx)
    token = await provider.authenticate(user_id)
    page = await provider.client.list_sessions(token, limit=limit)
    remotes = [r for r in page["data"] if isinstance(r.get("id"), str) and r["id"]]
    report = SyncReport(total_from_api=len(page["data"]), has_more=bool(page.get("has_more")))
    linked = {
        r["remote_session_id"]
        async for r in queries.chat_sessions.list_linked_remote_ids(
            ctx.pool, user_id=user_id, remote_session_ids=[r["id"] for r in remotes]
        )
    }
    for remote in remotes:
        remote_id = remote["id"]
        state = _state(remote)
        if state == RemoteState.RUNNING:
            report.running.append(
                {"remoteSessionId": remote_id, "title": remote.get("title"), "status": remote.get("session_status")}
            )
        if remote_id in linked:
            report.already_exists += 1
            continue
        if active_only and state == RemoteState.ARCHIVED:
            continue
        try:
            await _import_one(ctx, user_id, token, remote, state, report)
        except (UpstreamError, ServiceError) as exc:
            report.errors.append({"remoteSessionId": remote_id, "error": exc.message})
        except asyncpg.PostgresError as exc:
            log.warning("import of remote session %s failed: %s", remote_id, exc.__class__.__name__)
            report.errors.append({"remoteSessionId": remote_id, "error": "Could not store the session"})
    return report


def _state(remote: dict[str, Any]) -> str:
    value = remote.get("session_status")
    known = (RemoteState.RUNNING, RemoteState.IDLE, RemoteState.COMPLETED, RemoteState.FAILED, RemoteState.ARCHIVED)
    return value if value in known else RemoteState.UNKNOWN


async def sync_route(ctx: AppContext, user_id: str, active_only: Any, limit: Any) -> dict[str, Any]:
    """POST /api/sessions/sync?activeOnly=&limit=."""
    try:
        limit_value = int(limit) if limit is not None else MANUAL_LIMIT_DEFAULT
    except ValueError:
        limit_value = MANUAL_LIMIT_DEFAULT
    limit_value = min(max(limit_value, 1), MANUAL_LIMIT_MAX)
    try:
        report = await sync_user(ctx, user_id, limit=limit_value, active_only=active_only != "false")
    except UpstreamError as exc:
        raise ServiceError(502, exc.message) from None
    return report.as_json()


# ---- one session's events -------------------------------------------------------------------------


async def sync_events(ctx: AppContext, user_id: str, session_id: str) -> dict[str, Any]:
    """POST /api/sessions/:id/sync-events: store the remote events this session lacks, and take
    the remote status when no run drives the session (a running one is left to its driver)."""
    row = await get_owned(ctx, session_id, user_id)
    remote_id = row["remote_session_id"]
    if not remote_id:
        raise ServiceError(400, "Session is not a Claude Remote session")
    provider = claude_provider(ctx)
    token = await provider.authenticate(user_id)
    try:
        remote = await provider.get(token, remote_id)
        events = await fetch_all_events(claude_provider(ctx), token, remote_id)
    except UpstreamError as exc:
        raise ServiceError(404 if exc.not_found else 502, exc.message) from None
    existing = await queries.events.count_event_uuids(ctx.pool, chat_session_id=row["id"])
    new_ids = await event_log.append(ctx, row["id"], [stored_event(e) for e in events]) if events else []
    local = row["status"]
    mapped = local_status(remote.state)
    if mapped is not None and row["status"] != "running":
        cost = session_cost(claude_provider(ctx), events)
        if mapped != row["status"] or (cost is not None and cost != row["total_cost"]):
            updated = await queries.chat_sessions.apply_remote_status(
                ctx.pool, id=row["id"], status=mapped, total_cost=cost
            )
            if updated is not None:
                local = updated["status"]
                await event_log.announce_status(ctx, row["id"])
                await announce_ended(ctx, updated)
                if local == "running" and ctx.runs is not None:
                    await ctx.runs.ensure_driving(row["id"])
    return {
        "sessionId": row["id"],
        "remoteSessionId": remote_id,
        "existingEvents": existing,
        "newEventsImported": len(new_ids),
        "totalEvents": len(events),
        "remoteStatus": remote.raw.get("session_status"),
        "localStatus": local,
    }


# ---- the background cycle -------------------------------------------------------------------------


async def run_cycle(ctx: AppContext) -> dict[str, int] | None:
    """One sync of everyone with Claude credentials, if this replica gets the lead; None if not."""
    async with leading(ctx.dsn, locks.SYNC) as leader:
        return await _sync_everyone(ctx) if leader else None


async def _sync_everyone(ctx: AppContext) -> dict[str, int]:
    totals = {"users": 0, "imported": 0, "errors": 0}
    after = ""
    while True:
        users = [r["id"] async for r in queries.users.list_claude_users(ctx.pool, after_id=after, limit=USERS_PAGE)]
        for user_id in users:
            totals["users"] += 1
            try:
                report = await sync_user(ctx, user_id, limit=ctx.config.claude_sync_limit)
            except (UpstreamError, ServiceError) as exc:
                log.info("sync of user %s skipped: %s", user_id, exc.message)
                totals["errors"] += 1
                continue
            totals["imported"] += len(report.imported)
            totals["errors"] += len(report.errors)
        if len(users) < USERS_PAGE:
            return totals
        after = users[-1]


def session_sync(ctx: AppContext) -> PeriodicTask:
    """The background loop: a cycle shortly after start, then every CLAUDE_SYNC_INTERVAL_MS."""
    interval = ctx.config.claude_sync_interval_ms / 1000
    return PeriodicTask(
        "session sync",
        lambda: run_cycle(ctx),
        interval=interval,
        initial_delay=min(INITIAL_DELAY_SECONDS, interval),
        worth_logging=lambda totals: totals is not None and bool(totals["imported"] or totals["errors"]),
    )
