"""The request side of runs: execute-remote, follow-ups, interrupt and abort (CONTRACT.md 1.2, 1.6).

Each request checks its input (with the contract's messages, as 4xx), records what it asks for in
one transaction (the session row, the prompt in `messages`, the stored `input_preview` event) and
hands the run to the run driver (`ctx.runs`); it never waits for the run. Streams then follow the
event log like any other viewer, so a closed browser stops only its stream.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from services import event_log, session_list, usage
from services.agents import titles
from services.agents.backend import AgentProvider, UpstreamError
from services.agents.ending import Outcome, end_run
from services.agents.state import RunState, run_state_patch
from services.chat_sessions import get_owned, session_json
from services.clock import now_iso
from services.context import AppContext
from services.db import BUSY_ERRORS, queries
from services.errors import ServiceError

log = logging.getLogger(__name__)

PREVIEW_CHARS = 200
REPO_URL = re.compile(r"github\.com[/:]([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)")
NO_REMOTE_FOR_SEND = "Session has no remote session ID - cannot send follow-up message"
NO_REMOTE_FOR_INTERRUPT = "Session has no remote session ID - cannot interrupt"
# The send route's 401 when the person has no credentials for the session's backend (CONTRACT.md 1.6).
SEND_WITHOUT_CREDENTIALS = "Claude authentication not configured"
INVALID_BLOCKS = "userRequest must be text or a list of text and image blocks"
ABORT_PENDING = "Abort accepted: Claude was interrupted, and the session ends as soon as another server lets go of it"


@dataclass
class ExecuteParams:
    """execute-remote's parameters, from a JSON body (POST) or the query string (GET)."""

    user_request: str | list[dict[str, Any]] | None
    website_session_id: str | None
    repo_url: str | None
    last_event_id: int | None


@dataclass
class StreamPlan:
    """What the execute-remote stream sends around the event log it follows."""

    session_id: str
    created: bool
    after_id: int
    preview: dict[str, Any] | None = None
    preview_id: int | None = None


# ---- input ---------------------------------------------------------------------------------------


def _repo_url_of(github: Any) -> str | None:
    if isinstance(github, str):
        try:
            github = orjson.loads(github)
        except orjson.JSONDecodeError:
            return None  # unparseable JSON counts as absent (CONTRACT.md 1.2, the `github` form field)
    if isinstance(github, dict) and isinstance(github.get("repoUrl"), str) and github["repoUrl"].strip():
        return github["repoUrl"].strip()
    return None


def _last_event_id(value: Any) -> int | None:
    if isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
        return number if number < 2**63 else None
    return None


def _check_blocks(blocks: list[Any]) -> list[dict[str, Any]]:
    for block in blocks:
        if not isinstance(block, dict):
            raise ServiceError(400, INVALID_BLOCKS)
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            continue
        source = block.get("source")
        if (
            block.get("type") == "image"
            and isinstance(source, dict)
            and source.get("type") == "base64"
            and isinstance(source.get("data"), str)
            and source["data"]
        ):
            continue
        raise ServiceError(400, INVALID_BLOCKS)
    return blocks


def parse_params(raw: dict[str, Any], last_event_id_header: str | None) -> ExecuteParams:
    """ExecuteParams from a body or query; `userRequest` blocks are checked, the rest is lenient."""
    prompt = raw.get("userRequest")
    if isinstance(prompt, list):
        prompt = _check_blocks(prompt) or None
    elif isinstance(prompt, str):
        prompt = prompt if prompt.strip() else None
    elif prompt is not None:
        raise ServiceError(400, INVALID_BLOCKS)
    session_id = raw.get("websiteSessionId")
    session_id = session_id.strip() if isinstance(session_id, str) and session_id.strip() else None
    last_event_id = _last_event_id(last_event_id_header)
    if last_event_id is None:
        last_event_id = _last_event_id(raw.get("lastEventId"))
    return ExecuteParams(prompt, session_id, _repo_url_of(raw.get("github")), last_event_id)


def serialize_prompt(prompt: str | list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]] | None]:
    """The prompt as the `messages` row stores it: text (blocks joined by spaces, plus
    " [N image(s)]"), and the images as `{id, data, mediaType, fileName}` records."""
    if isinstance(prompt, str):
        return prompt, None
    text = " ".join(block["text"] for block in prompt if block.get("type") == "text")
    sources = [block["source"] for block in prompt if block.get("type") == "image"]
    if not sources:
        return text, None
    stamp = int(time.time() * 1000)
    images = [
        {
            "id": f"img-{stamp}-{index}",
            "data": source["data"],
            "mediaType": source.get("media_type") or "image/png",
            "fileName": f"image-{index + 1}.png",
        }
        for index, source in enumerate(sources)
    ]
    return f"{text} [{len(images)} image(s)]", images


def input_preview(text: str) -> dict[str, Any]:
    """execute-remote's stored `input_preview` (CONTRACT.md 4.2). A server event: it has no
    uuid (CONTRACT.md 4.2: events without one are always stored), so the upstream echo of the
    prompt is stored as an event of its own."""
    truncated = len(text) > PREVIEW_CHARS
    preview = text[:PREVIEW_CHARS] + (f"... ({len(text)} characters in total)" if truncated else "")
    return {
        "type": "input_preview",
        "message": f"Request received: {preview}",
        "source": "claude",
        "timestamp": now_iso(),
        "data": {"preview": preview, "originalLength": len(text), "truncated": truncated},
    }


def follow_up_preview(text: str) -> dict[str, Any]:
    """The `input_preview` that `POST /api/sessions/:id/send` stores (CONTRACT.md 1.6)."""
    truncated = len(text) > PREVIEW_CHARS
    return {
        "type": "input_preview",
        "message": f"Request received: {text[:PREVIEW_CHARS]}{'...' if truncated else ''}",
        "source": "user",
        "timestamp": now_iso(),
        "data": {"preview": text, "truncated": truncated, "originalLength": len(text)},
    }


def parse_repo(url: str) -> tuple[str, str, str]:
    """(URL without `.git`, owner, name) of a GitHub repository URL."""
    cleaned = url.strip().rstrip("/")
    if cleaned.endswith(".git"):
        cleaned = cleaned[:-4]
    match = REPO_URL.search(cleaned)
    if not match:
        raise ServiceError(400, "github.repoUrl must be a GitHub repository URL such as https://github.com/owner/repo")
    return cleaned, match.group(1), match.group(2)


async def _authenticate(ctx: AppContext, provider_name: str | None, user_id: str) -> str:
    return await ctx.require_runs().provider_for(provider_name).authenticate(user_id)


def _running_baseline(row: asyncpg.Record) -> int:
    return RunState.read(row["run_state"]).baseline_event_id or 0


# ---- execute-remote ------------------------------------------------------------------------------


async def begin(
    ctx: AppContext, user_id: str, params: ExecuteParams, *, impersonator_id: str | None = None
) -> StreamPlan:
    """Start or continue a run for execute-remote, or find the run a reconnecting stream joins.

    Four modes: a reconnect (Last-Event-ID) joins what its stream followed; no prompt watches the
    running session; a prompt without a session starts a new one; a prompt for a session starts
    its next run or goes into the one going on. `impersonator_id`: the admin acting as the person
    (kept in the run state for the usage audit)."""
    if params.user_request is None and not params.website_session_id:
        raise ServiceError(400, "userRequest or websiteSessionId is required")
    if not params.repo_url and not params.website_session_id:
        raise ServiceError(400, "github.repoUrl is required for new sessions")
    if params.last_event_id is not None:
        return await _rejoin(ctx, user_id, params.website_session_id, params.last_event_id)
    row = await get_owned(ctx, params.website_session_id, user_id) if params.website_session_id else None
    if params.user_request is None:
        assert row is not None
        if row["status"] == "running":
            # Watching the current run without adding a prompt.
            return StreamPlan(row["id"], created=False, after_id=_running_baseline(row))
        raise ServiceError(400, "userRequest is required")
    if row is None:
        return await _start_new_session(ctx, user_id, params.user_request, params.repo_url, impersonator_id)
    return await _prompt_session(ctx, user_id, row, params.user_request, params.repo_url, impersonator_id)


async def _rejoin(ctx: AppContext, user_id: str, website_session_id: str | None, last_event_id: int) -> StreamPlan:
    """A browser's EventSource reconnecting: join whatever that stream was following, never start
    a second run or send the prompt again. Its URL may not name the session (a new session's id
    only came in the `session-created` frame); the event id does."""
    if website_session_id:
        row = await get_owned(ctx, website_session_id, user_id)
    else:
        row = await queries.chat_sessions.find_owned_session_by_event(ctx.pool, event_id=last_event_id, user_id=user_id)
        if row is None:
            raise ServiceError(404, "Session not found")
    return StreamPlan(row["id"], created=False, after_id=last_event_id)


async def _environment(provider: AgentProvider, token: str) -> str:
    try:
        return await provider.environment(token)
    except UpstreamError as exc:
        # Detection lets only a refused token through (anything else reads as "not found").
        if exc.unauthorized:
            raise ServiceError(401, provider.credentials_expired) from None
        raise ServiceError(502, exc.message) from None


def _title_event(title: str, branch: str) -> dict[str, Any]:
    return {
        "type": "title_generation",
        "timestamp": now_iso(),
        "source": "claude",
        "method": "local",
        "status": "success",
        "title": title,
        "branch_name": branch,
    }


async def _start_new_session(
    ctx: AppContext,
    user_id: str,
    user_request: str | list[dict[str, Any]],
    repo_url: str | None,
    impersonator_id: str | None,
) -> StreamPlan:
    """A prompt without a session: a new chat session on the deployment's AGENT_BACKEND, running."""
    runs = ctx.require_runs()
    provider_name = ctx.config.new_session_provider
    provider = runs.provider_for(provider_name)
    await usage.check_before_run(ctx, user_id, provider)  # before anything goes upstream
    token = await provider.authenticate(user_id)
    assert repo_url is not None  # begin() refuses a new session without one
    repo_url, owner, name = parse_repo(repo_url)
    environment_id = await _environment(provider, token)
    text, images = serialize_prompt(user_request)
    preview = input_preview(text)
    title, branch = titles.derive(user_request)
    session_id = str(uuid.uuid4())
    async with ctx.pool.acquire() as conn, conn.transaction():
        created = await queries.chat_sessions.insert_running_session(
            conn,
            id=session_id,
            user_id=user_id,
            user_request=title,
            provider=provider_name,
            repository_url=repo_url,
            repository_owner=owner,
            repository_name=name,
            branch=branch,
            run_owner=runs.owner,
            run_state=RunState(
                baseline_event_id=0, environment_id=environment_id, default_branch=True, impersonator_id=impersonator_id
            ).to_json(),
        )
        await queries.messages.insert_prompt(
            conn, chat_session_id=session_id, content=text, images=images, upstream_uuid=str(uuid.uuid4())
        )
        ids = await event_log.append(ctx, session_id, [preview, _title_event(title, branch)], conn=conn)
    await session_list.announce(ctx, user_id, "created", session_json(created))
    await runs.ensure_driving(session_id)
    return StreamPlan(session_id, created=True, after_id=ids[0], preview=preview, preview_id=ids[0])


async def _prompt_session(
    ctx: AppContext,
    user_id: str,
    row: asyncpg.Record,
    user_request: str | list[dict[str, Any]],
    repo_url: str | None,
    impersonator_id: str | None,
) -> StreamPlan:
    """A prompt for an existing session: its next run (the first, for a pending session), or one
    more prompt for the run going on (the driver delivers it)."""
    provider = ctx.require_runs().provider_for(row["provider"])
    await usage.check_before_run(ctx, user_id, provider)  # before anything goes upstream
    token = await provider.authenticate(user_id)
    repo: tuple[str, str, str] | None = None
    environment_id = None
    if row["remote_session_id"] is None and row["status"] != "running":
        # A session keeps its repository; the request's only fills in a row that has none.
        if row["repository_url"] and row["repository_owner"] and row["repository_name"]:
            repo = (row["repository_url"], row["repository_owner"], row["repository_name"])
        elif repo_url:
            repo = parse_repo(repo_url)
        else:
            raise ServiceError(400, "github.repoUrl is required")
        environment_id = await _environment(provider, token)
    text, images = serialize_prompt(user_request)
    preview = input_preview(text)
    title, branch = titles.derive(user_request)
    session_id = row["id"]
    async with ctx.row_turns.turn(session_id), ctx.pool.acquire() as conn, conn.transaction():
        locked, started = await _queue_prompt(
            ctx, conn, session_id, text, images, environment_id, repo, impersonator_id=impersonator_id
        )
        events = [preview]
        first_run = started and locked["remote_session_id"] is None
        if first_run:
            # A pending session (create-code-session) starts its first run.
            await queries.chat_sessions.set_title_and_branch(conn, id=session_id, user_request=title, branch=branch)
            events.append(_title_event(title, branch))
        ids = await event_log.append(ctx, session_id, events, conn=conn)
    renamed = {"id": session_id, "userRequest": title, "branch": branch} if first_run else None
    await _announce_start(ctx, user_id, session_id, started, renamed)
    return StreamPlan(session_id, created=False, after_id=ids[0], preview=preview, preview_id=ids[0])


async def _queue_prompt(
    ctx: AppContext,
    conn: asyncpg.Connection,
    session_id: str,
    text: str,
    images: list[dict[str, Any]] | None,
    environment_id: str | None = None,
    repo: tuple[str, str, str] | None = None,
    *,
    impersonator_id: str | None = None,
) -> tuple[asyncpg.Record, bool]:
    """In the caller's transaction: record the prompt in the outbox, starting a run (this
    replica's lease) when none goes on. Returns the session row as it was, and whether a run
    started. The caller then announces it (`_announce_start`), which also wakes the driver."""
    locked = await queries.chat_sessions.lock_session(conn, id=session_id)
    started = locked["status"] != "running"
    if started:
        await queries.chat_sessions.start_run(
            conn,
            id=session_id,
            run_owner=ctx.require_runs().owner,
            run_state=RunState(
                baseline_event_id=await queries.events.get_last_event_id(conn, chat_session_id=session_id),
                environment_id=environment_id,
                impersonator_id=impersonator_id,
            ).to_json(),
            repository_url=repo[0] if repo else None,
            repository_owner=repo[1] if repo else None,
            repository_name=repo[2] if repo else None,
        )
        await event_log.announce_status(ctx, session_id, conn=conn)
    await queries.messages.insert_prompt(
        conn, chat_session_id=session_id, content=text, images=images, upstream_uuid=str(uuid.uuid4())
    )
    return locked, started


async def _announce_start(
    ctx: AppContext, user_id: str, session_id: str, started: bool, renamed: dict[str, Any] | None = None
) -> None:
    """After `_queue_prompt` committed: tell the session list a run started (and the session's new
    title), and have the run driven (here, unless another live replica drives it and sees the
    outbox itself)."""
    if started:
        await session_list.announce(ctx, user_id, "status_changed", {"id": session_id, "status": "running"})
    if renamed is not None:
        await session_list.announce(ctx, user_id, "updated", renamed)
    await ctx.require_runs().ensure_driving(session_id)


async def stream_end(ctx: AppContext, session_id: str) -> tuple[str, dict[str, Any]] | None:
    """The frame that closes an execute-remote stream once the run is over: `completed` with the
    session's outcome, or `error` with the run's error; None while the run still goes on."""
    row = await queries.chat_sessions.get_session_by_id(ctx.pool, id=session_id)
    if row is None:
        return "error", {"type": "error", "timestamp": now_iso(), "error": "Session not found"}
    if row["status"] == "running":
        return None
    if row["status"] == "completed":
        data: dict[str, Any] = {"websiteSessionId": session_id, "completed": True}
        if row["branch"]:
            data["branch"] = row["branch"]
        if row["total_cost"] is not None:
            data["totalCost"] = row["total_cost"]
        data["remoteSessionId"] = row["remote_session_id"]
        data["remoteWebUrl"] = row["remote_web_url"]
        return "completed", data
    message = await queries.events.get_last_error_message(ctx.pool, chat_session_id=session_id)
    return "error", {
        "type": "error",
        "timestamp": now_iso(),
        "websiteSessionId": session_id,
        "error": message or "The session ended with an error",
    }


# ---- follow-up, interrupt, abort -----------------------------------------------------------------


async def send_follow_up(
    ctx: AppContext, user_id: str, session_id: str, body: dict[str, Any], *, impersonator_id: str | None = None
) -> None:
    """POST /api/sessions/:id/send: deliver a follow-up now (through the run driver), no stream."""
    ctx.require_runs()  # 503 before anything is recorded when runs are unavailable here
    content = body.get("content")
    if not isinstance(content, str) or not content.strip():
        raise ServiceError(400, "Message content is required")
    row = await get_owned(ctx, session_id, user_id)
    if row["deleted_at"] is not None:
        raise ServiceError(404, "Session not found")
    session_id = row["id"]
    if row["remote_session_id"] is None and row["status"] != "running":
        raise ServiceError(400, NO_REMOTE_FOR_SEND)
    provider = ctx.require_runs().provider_for(row["provider"])
    await usage.check_before_run(ctx, user_id, provider)  # before anything goes upstream
    try:
        await provider.authenticate(user_id)
    except ServiceError as exc:
        if exc.message == provider.credentials_missing:
            raise ServiceError(401, SEND_WITHOUT_CREDENTIALS) from None
        raise
    async with ctx.row_turns.turn(session_id), ctx.pool.acquire() as conn, conn.transaction():
        _, started = await _queue_prompt(ctx, conn, session_id, content, None, impersonator_id=impersonator_id)
        await event_log.append(ctx, session_id, [follow_up_preview(content)], conn=conn)
    await _announce_start(ctx, user_id, session_id, started)


async def interrupt(ctx: AppContext, user_id: str, session_id: str) -> dict[str, Any]:
    """POST /api/sessions/:id/interrupt: stop Claude's current turn; recorded as an event."""
    runs = ctx.require_runs()
    row = await get_owned(ctx, session_id, user_id)
    session_id = row["id"]
    if row["remote_session_id"] is None:
        raise ServiceError(400, NO_REMOTE_FOR_INTERRUPT)
    provider = runs.provider_for(row["provider"])
    token = await provider.authenticate(user_id)
    if runs.has_live_push(session_id):
        # Over the run's event socket (this replica drives it): recorded first, because the
        # socket may show the turn ended, and so end the run, before the interrupt is answered.
        await _record_interrupt(ctx, session_id)
        if not await runs.interrupt_over_push(session_id):
            await _interrupt_upstream(provider, token, row["remote_session_id"])
    else:
        await _interrupt_upstream(provider, token, row["remote_session_id"])
        await _record_interrupt(ctx, session_id)
    runs.wake(session_id)
    return {"message": "Interrupt sent", "sessionId": session_id}


async def _interrupt_upstream(provider: AgentProvider, token: str, remote_id: str) -> None:
    try:
        await provider.interrupt(token, remote_id)
    except UpstreamError as exc:
        raise ServiceError(502, exc.message) from None


async def _record_interrupt(ctx: AppContext, session_id: str) -> None:
    event = {"type": "interrupted", "message": "Interrupt requested", "source": "user", "timestamp": now_iso()}
    await event_log.append(ctx, session_id, [event])
    # Once interrupted, an idle remote session ends the run even if the agent had done nothing.
    await queries.chat_sessions.patch_run_state(ctx.pool, id=session_id, patch=run_state_patch(interrupted=True))


async def abort(ctx: AppContext, user_id: str, session_id: str) -> dict[str, Any]:
    """POST /api/sessions/:id/abort: interrupt upstream (best effort) and end the run as `error`."""
    runs = ctx.require_runs()
    row = await get_owned(ctx, session_id, user_id)
    session_id = row["id"]
    interrupted = False
    if row["remote_session_id"] and row["status"] == "running":
        try:
            provider = runs.provider_for(row["provider"])
            await provider.interrupt(await provider.authenticate(user_id), row["remote_session_id"])
            interrupted = True
        except (ServiceError, UpstreamError) as exc:
            # The local abort stands even when Claude cannot be told.
            log.info("abort of %s could not interrupt upstream: %s", session_id, exc)
    # Whoever drives it, and even when it is not running (an abort always leaves `error`).
    outcome = Outcome("error", "Session aborted", source="user")
    try:
        async with ctx.row_turns.turn(session_id):
            await end_run(ctx, session_id, outcome, owner=None)
    except BUSY_ERRORS:
        if not interrupted:
            raise  # a 503 with Retry-After, and nothing was done
        # Upstream has stopped already: the abort stands, and ends the run once the row is free.
        runs.end_when_free(session_id, outcome)
        return {"message": ABORT_PENDING, "sessionId": session_id, "remoteInterrupted": True, "pending": True}
    runs.wake(session_id)
    return {"message": "Session aborted", "sessionId": session_id, "remoteInterrupted": interrupted}
