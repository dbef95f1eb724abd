"""`ManagedAgentsProvider`: runs on Anthropic's Managed Agents API (chat_sessions.provider
"managed-agents"), through the official SDK's async client with the deployment's API key.

- `authenticate` needs nothing from the person's Claude account: the credential it hands the run
  driver is the person's GitHub token (or "" when GitHub is not connected), which `create` gives
  upstream as the `github_repository` resource's `authorization_token`. It is never logged nor
  stored in an event.
- `environment` makes sure the deployment's agent and environment exist (`resources.ensure`).
- `events_after` pages through the event list from a cursor of its own: a JSON object with the
  last `processed_at` read, the ids read at that instant (several events can share one, so the
  next read asks `created_at[gte]` and skips those ids) and the translation state
  (`translate.Translator`). No cursor means the whole history, translated from the start.
- `open_push` opens the SSE stream first, then lists the history, so that nothing emitted in
  between is missed; both are translated by one translator and de-duplicated by event id.
- A session's idle status read by a GET never ends a turn (its last events may not be listed yet):
  only the translated `session.status_idle` event, the `result`, does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from services.agents.backend import (
    MAX_PAGES_PER_POLL,
    AgentProvider,
    CreateRequest,
    EventBatch,
    PushChannel,
    RemoteSession,
    RemoteState,
    TurnUsage,
    UpstreamError,
    format_cost,
)
from services.agents.managed_agents import resources
from services.agents.managed_agents.client import RequestBudget, call, call_json, make_client
from services.agents.managed_agents.push import ManagedPushChannel
from services.agents.managed_agents.translate import (
    TOOL_NAMES,
    Translator,
    branch_of,
    cost_usd,
    parse_time,
    upstream_key,
)
from services.context import AppContext
from services.db import UNAVAILABLE_ERRORS
from services.errors import ServiceError
from services.github import accounts

log = logging.getLogger(__name__)

NO_API_KEY = (
    "This session runs on Managed Agents, but ANTHROPIC_API_KEY is not set on this server; "
    "an operator must set it to continue the session"
)
# The Console's page of a session; the workspace is the one the API key belongs to, which every
# reply names in its `anthropic-workspace-id` header ("default" until a reply has said).
CONSOLE_URL = "https://platform.claude.com/workspaces/{workspace}/sessions/{id}"
# Looking for a session whose create reply was lost: this deployment's agent's sessions created
# since shortly before the attempt (clocks differ), a page of this many at a time, so many pages.
FIND_CREATED_PAGE = 50
FIND_CREATED_PAGES = 10
FIND_CREATED_SLACK = timedelta(minutes=5)
# When this process made no attempt itself (another replica did, then died): how far back to look.
FIND_CREATED_UNKNOWN = timedelta(hours=24)
# The session status as the run driver knows it. An idle or rescheduling session is left to
# the events: the end of a turn is the `session.status_idle` event, never a GET's status.
STATES = {"running": RemoteState.RUNNING, "rescheduling": RemoteState.RUNNING, "terminated": RemoteState.FAILED}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def turn_usage_of(session: dict[str, Any]) -> TurnUsage | None:
    """The cumulative usage of a session object (SDK: BetaManagedAgentsSessionUsage), or None."""
    usage = session.get("usage")
    if not isinstance(usage, dict) or not usage:
        return None
    cache_creation = usage.get("cache_creation")  # broken down by cache lifetime (5m / 1h)
    created = (
        sum(_count(v) for v in cache_creation.values())
        if isinstance(cache_creation, dict)
        else _count(usage.get("cache_creation_input_tokens"))
    )
    return TurnUsage(
        cost_usd=cost_usd(usage.get("list_cost")),
        input_tokens=_count(usage.get("input_tokens")),
        output_tokens=_count(usage.get("output_tokens")),
        cache_read_tokens=_count(usage.get("cache_read_input_tokens")),
        cache_creation_tokens=created,
    )


def _content(content: str | list[dict[str, Any]]) -> list[Any]:
    # Any: the SDK's TypedDicts for content blocks; ours are plain dicts of the same shape.
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def user_message(content: str | list[dict[str, Any]]) -> Any:
    """A `user.message` event (the SDK's BetaManagedAgentsUserMessageEventParams)."""
    return {"type": "user.message", "content": _content(content)}


def _cursor(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _earlier(processed_at: str, since: str | None) -> bool:
    """Whether an event is from before the cursor's instant (compared as times, not strings)."""
    if since is None:
        return False
    at, cursor = parse_time(processed_at), parse_time(since)
    return at is not None and cursor is not None and at < cursor


class ManagedAgentsProvider(AgentProvider):
    """Anthropic's Managed Agents API (beta `managed-agents-2026-04-01`), with an API key."""

    name = "managed-agents"
    personal_credentials = False
    end_event_types = ("result",)
    quiet_event_types = ("user", "system")
    end_answers_every_queued_prompt = True
    credentials_expired = (
        "Anthropic refused this server's API key; an operator must check ANTHROPIC_API_KEY to continue the session"
    )
    credentials_missing = NO_API_KEY

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        if not ctx.config.anthropic_api_key:
            raise ServiceError(502, NO_API_KEY)
        self.client = make_client(ctx.config)
        self._resources: resources.Resources | None = None
        self._resources_lock = asyncio.Lock()
        # Shared by every run's polling in this process (client.RequestBudget).
        self.budget = RequestBudget(ctx.config.managed_agents_requests_per_minute)
        self.workspace = "default"
        # When this process last tried to create a session for a prompt (find_created's window).
        self._create_attempts: dict[str, datetime] = {}
        # Sessions already told to stop waiting for a confirmation (requires_action), by event.
        self._released: set[str] = set()

    def _note_reply(self, headers: Mapping[str, str]) -> None:
        workspace = headers.get("anthropic-workspace-id")
        if workspace:
            self.workspace = workspace

    async def aclose(self) -> None:
        await self.client.close()

    async def authenticate(self, user_id: str, *, force: bool = False) -> str:
        return await accounts.token_for_user_id(self.ctx, user_id) or ""

    async def deployment_resources(self) -> resources.Resources:
        """The agent and environment, read (or made) once per process; concurrent callers wait
        for the first instead of each holding a pooled connection on the database lock."""
        async with self._resources_lock:
            if self._resources is None:
                self._resources = await resources.ensure(self.ctx, self.client)
            return self._resources

    async def prepare(self) -> None:
        """Make sure the deployment's agent and environment exist (at start-up); a failure is
        logged, and the first run that needs them tries again."""
        try:
            await self.deployment_resources()
        except UpstreamError as exc:
            log.warning("could not prepare the Managed Agents agent and environment: %s", exc.message)
        except (asyncpg.PostgresError, *UNAVAILABLE_ERRORS):
            log.warning("could not prepare the Managed Agents agent and environment: database unavailable")

    async def environment(self, token: str) -> str:
        return (await self.deployment_resources()).environment_id

    def _session(self, value: dict[str, Any]) -> RemoteSession:
        if not isinstance(value.get("id"), str) or not value["id"]:
            raise UpstreamError("get session", "reply has no session id", kind="malformed")
        state = (
            RemoteState.ARCHIVED
            if value.get("archived_at")
            else STATES.get(str(value.get("status")), RemoteState.UNKNOWN)
        )
        title = value.get("title")
        return RemoteSession(
            value["id"], self.web_url(value["id"]), state, title if isinstance(title, str) else None, value
        )

    async def create(self, token: str, request: CreateRequest) -> RemoteSession:
        agent_id = (await self.deployment_resources()).agent_id
        repository: Any = {  # the SDK's BetaManagedAgentsGitHubRepositoryResourceParams
            "type": "github_repository",
            "url": f"https://github.com/{request.repo_full_name}",
        }
        if request.base_branch:
            # Without a checkout upstream mounts the repository's own default branch.
            repository["checkout"] = {"type": "branch", "name": request.base_branch}
        if token:
            repository["authorization_token"] = token
        self._create_attempts.setdefault(request.message_uuid, datetime.now(UTC))
        self.budget.spend()
        try:
            value = await call_json(
                "create session",
                lambda: self.client.beta.sessions.with_raw_response.create(
                    agent=agent_id,
                    environment_id=request.environment_id,
                    title=request.title,
                    resources=[repository],
                    initial_events=[user_message(request.content)],
                    metadata={"webedt_message_uuid": request.message_uuid},
                ),
                self._note_reply,
            )
        except UpstreamError as exc:
            if exc.kind == "http" and exc.status in (400, 403, 404, 422):
                hint = "" if token else " without a GitHub connection only public repositories can be used;"
                raise UpstreamError(
                    "create session",
                    f"Managed Agents refused the GitHub repository {request.repo_full_name} "
                    f"({exc.message.removeprefix('Failed to create session: ')});{hint} "
                    "check the repository URL and your GitHub connection",
                    status=exc.status,
                ) from None
            raise
        return self._session(value)

    async def find_created(self, token: str, request: CreateRequest) -> RemoteSession | None:
        """The session made for this prompt: sessions carry the uuid of their first prompt in
        their metadata; only this deployment's agent's sessions created since shortly before the
        attempt are read (the whole workspace may hold thousands)."""
        agent_id = (await self.deployment_resources()).agent_id
        attempted = self._create_attempts.get(request.message_uuid)
        since = (attempted - FIND_CREATED_SLACK) if attempted else datetime.now(UTC) - FIND_CREATED_UNKNOWN
        kwargs: dict[str, Any] = {"agent_id": agent_id, "created_at_gte": since.isoformat(), "limit": FIND_CREATED_PAGE}
        for _ in range(FIND_CREATED_PAGES):
            await self.budget.take()
            page = await call_json(
                "list sessions", lambda: self.client.beta.sessions.with_raw_response.list(**kwargs), self._note_reply
            )
            for value in page.get("data") or []:
                metadata = value.get("metadata") if isinstance(value, dict) else None
                if isinstance(metadata, dict) and metadata.get("webedt_message_uuid") == request.message_uuid:
                    return self._session(value)
            if not page.get("next_page"):
                break
            kwargs["page"] = page["next_page"]
        return None

    async def _retrieve(self, remote_id: str) -> dict[str, Any]:
        await self.budget.take()
        return await call_json(
            "get session", lambda: self.client.beta.sessions.with_raw_response.retrieve(remote_id), self._note_reply
        )

    async def get(self, token: str, remote_id: str) -> RemoteSession:
        return self._session(await self._retrieve(remote_id))

    async def turn_usage(self, token: str, remote_id: str, end_event: dict[str, Any]) -> TurnUsage | None:
        """The session's cumulative usage and list cost, read from the session object (what
        Anthropic bills) when the turn's result was stored, else read now. None when upstream
        reports no usage."""
        stored = end_event.get("session_usage")
        if isinstance(stored, dict):
            cost = stored.get("cost_usd")
            return TurnUsage(
                cost_usd=float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None,
                input_tokens=_count(stored.get("input_tokens")),
                output_tokens=_count(stored.get("output_tokens")),
                cache_read_tokens=_count(stored.get("cache_read_input_tokens")),
                cache_creation_tokens=_count(stored.get("cache_creation_input_tokens")),
            )
        return turn_usage_of(await self._retrieve(remote_id))

    async def _page(self, remote_id: str, since: str | None, page: str | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if since:
            # On every page: a page cursor is not promised to carry the filters it was made with.
            kwargs["created_at_gte"] = since
        if page:
            kwargs["page"] = page
        await self.budget.take()
        value = await call_json(
            "get events", lambda: self.client.beta.sessions.events.with_raw_response.list(remote_id, **kwargs)
        )
        if not isinstance(value.get("data"), list):
            raise UpstreamError("get events", "reply has no list of events under `data`", kind="malformed")
        return value

    async def history(self, remote_id: str) -> list[dict[str, Any]]:
        """Every processed upstream event of the session so far, raw, in upstream order."""
        events: list[dict[str, Any]] = []
        page: str | None = None
        while True:
            value = await self._page(remote_id, None, page)
            events.extend(e for e in value["data"] if isinstance(e, dict) and e.get("processed_at"))
            page = value.get("next_page")
            if not page:
                return events

    async def events_after(self, token: str, remote_id: str, cursor: str | None) -> EventBatch:
        state = _cursor(cursor)
        translator = Translator(state.get("translation"))
        since: str | None = state.get("since")
        seen_at_since: set[str] = set(state.get("ids") or [])
        events: list[dict[str, Any]] = []
        page: str | None = None
        page_since = since  # the filter the pages of this read share
        complete = False
        for _ in range(MAX_PAGES_PER_POLL):
            value = await self._page(remote_id, page_since, page)
            for event in value["data"]:
                if not isinstance(event, dict):
                    continue
                processed_at = event.get("processed_at")
                if not processed_at:
                    continue  # queued, not processed yet: it comes again once it is
                key = upstream_key(event)  # an interrupt echo may have an empty id
                if key in seen_at_since or _earlier(processed_at, since):
                    continue  # read before (the list starts at `since`, inclusive)
                if processed_at != since:
                    since, seen_at_since = processed_at, set()
                seen_at_since.add(key)
                events.append(translator.translate(event))
            page = value.get("next_page")
            if not page:
                complete = True
                break
        # A cursor left mid-way (more pages) restarts from `since`, skipping what was read there.
        next_cursor = orjson.dumps(
            {"since": since, "ids": sorted(seen_at_since), "translation": translator.state}
        ).decode()
        await self.after_turn_end(remote_id, events)
        return EventBatch(events, next_cursor, complete)

    async def after_turn_end(self, remote_id: str, events: list[dict[str, Any]]) -> None:
        """What the end of a turn needs from upstream, on the last `result` among `events`:
        the session's cumulative usage and list cost (read from the session object, which is
        what Anthropic bills, not from a `session.usage` snapshot that may be a turn behind),
        and, for a turn stopped for a confirmation, an interrupt so the session does not wait."""
        result = next((e for e in reversed(events) if e.get("type") == "result"), None)
        if result is None:
            return
        managed = result.get("managed") or {}
        stop = managed.get("stop_reason") if isinstance(managed, dict) else None
        if isinstance(stop, dict) and stop.get("type") == "requires_action":
            await self._release(remote_id, str(result.get("uuid")))
        try:
            usage = turn_usage_of(await self._retrieve(remote_id))
        except UpstreamError as exc:
            # The snapshot's cost stays; the next turn's end reads the totals again.
            log.info("could not read the usage of session %s: %s", remote_id, exc.message)
            return
        if usage is None:
            return
        # Stored with Claude Code's usage names, as the website knows them.
        result["session_usage"] = {
            "cost_usd": usage.cost_usd,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_read_input_tokens": usage.cache_read_tokens,
            "cache_creation_input_tokens": usage.cache_creation_tokens,
        }
        if usage.cost_usd is not None:
            result["total_cost_usd"] = usage.cost_usd

    async def _release(self, remote_id: str, event_key: str) -> None:
        """Interrupt a session that stopped for a tool confirmation or a custom tool result
        (requires_action): WebEDT gives neither, and the session would wait for ever, holding
        the next prompt. The run ends with an error saying so (translate.STOP_MESSAGES)."""
        if event_key in self._released:
            return
        self._released.add(event_key)
        try:
            await self.interrupt("", remote_id)
        except UpstreamError as exc:
            log.warning("could not interrupt session %s waiting for a confirmation: %s", remote_id, exc.message)

    async def send(self, token: str, remote_id: str, content: str | list[dict[str, Any]], message_uuid: str) -> None:
        self.budget.spend()
        await call(
            "send message",
            lambda: self.client.beta.sessions.events.with_raw_response.send(remote_id, events=[user_message(content)]),
        )

    async def interrupt(self, token: str, remote_id: str) -> None:
        self.budget.spend()
        await call(
            "interrupt session",
            lambda: self.client.beta.sessions.events.with_raw_response.send(
                remote_id, events=[{"type": "user.interrupt"}]
            ),
        )

    async def archive(self, token: str, remote_id: str) -> None:
        try:
            await call("archive session", lambda: self.client.beta.sessions.with_raw_response.archive(remote_id))
        except UpstreamError as exc:
            if not exc.not_found:  # already gone counts as archived
                raise

    async def rename(self, token: str, remote_id: str, title: str) -> None:
        await call("rename session", lambda: self.client.beta.sessions.with_raw_response.update(remote_id, title=title))

    def web_url(self, remote_id: str) -> str:
        return CONSOLE_URL.format(workspace=self.workspace, id=remote_id)

    def cost(self, end_event: dict[str, Any]) -> str | None:
        return format_cost(end_event.get("total_cost_usd"))

    # ---- usage (issue 24): the session object's cumulative `usage` ---------------------------------

    def session_usage(self, remote: RemoteSession) -> TurnUsage | None:
        return turn_usage_of(remote.raw)

    def reports_usage(self, event: dict[str, Any]) -> bool:
        managed = event.get("managed")
        return isinstance(managed, dict) and managed.get("type") == "session.usage"

    def end_error(self, end_event: dict[str, Any]) -> str | None:
        error = end_event.get("error")
        return error if end_event.get("is_error") and isinstance(error, str) else None

    def prompt_echo(self, event: dict[str, Any]) -> bool:
        managed = event.get("managed")
        return isinstance(managed, dict) and managed.get("type") == "user.message"

    def branch(self, event: dict[str, Any]) -> str | None:
        managed = event.get("managed")
        if not isinstance(managed, dict) or managed.get("type") != "agent.tool_use":
            return None
        if TOOL_NAMES.get(str(managed.get("name")), managed.get("name")) != "Bash":
            return None
        command = managed.get("input", {}).get("command") if isinstance(managed.get("input"), dict) else None
        return branch_of(command) if isinstance(command, str) else None

    async def open_push(self, token: str, remote_id: str) -> PushChannel | None:
        channel = ManagedPushChannel(self, remote_id)
        await channel.open()
        return channel
