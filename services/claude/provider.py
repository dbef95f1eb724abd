"""The agent backend behind a run, as a small interface (`AgentProvider`).

The run driver and the routes only speak this interface, so another backend (for example
Anthropic's Managed Agents API, with API-key auth and `{domain}.{action}` events) can be added as
one more class in `PROVIDERS` without touching handlers or the driver. `ClaudeRemoteProvider` is
the one backend today: Claude Remote Sessions with the user's Claude OAuth token.
"""

from __future__ import annotations

import abc
import math
import re
from dataclasses import dataclass, field
from typing import Any

from services import claude_auth
from services.claude.client import ClaudeRemoteClient, UpstreamError, web_url
from services.context import AppContext
from services.errors import ServiceError

ENVIRONMENT_NOT_FOUND = (
    "Could not detect Claude environment ID. Please create a session at claude.ai/code first, "
    "or ask an admin to configure CLAUDE_ENVIRONMENT_ID."
)
# Pages of events fetched in one poll at most; the rest comes with the next poll.
MAX_PAGES_PER_POLL = 20
# How many of the user's latest remote sessions are checked when looking for one whose creation
# reply was lost (a timeout, or a replica that died right after creating it).
FIND_CREATED_LOOKBACK = 10

BRANCH_IN_OUTPUT = re.compile(r"claude/[A-Za-z0-9_-]+")
BRANCH_IN_ARGS = re.compile(r"branch\s+[`'\"]?(claude/[A-Za-z0-9_-]+)")


class RemoteState:
    """Normalised remote session states (CONTRACT.md 5.4)."""

    RUNNING = "running"
    IDLE = "idle"
    COMPLETED = "completed"
    FAILED = "failed"
    ARCHIVED = "archived"
    UNKNOWN = "unknown"


@dataclass
class RemoteSession:
    id: str
    web_url: str
    state: str
    title: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass
class CreateRequest:
    """Everything needed to create a remote session for a chat session's first prompt."""

    title: str
    content: str | list[dict[str, Any]]
    environment_id: str
    repo_url: str
    repo_full_name: str
    branch_prefix: str
    model: str
    message_uuid: str
    # The branch the repository is checked out on (backends that mount it, like Managed Agents).
    base_branch: str | None = None


@dataclass
class EventBatch:
    """Events after a cursor, in upstream order, and the cursor to ask from next time.

    `complete` is False when more pages were left for the next poll."""

    events: list[dict[str, Any]]
    cursor: str | None
    complete: bool = True


@dataclass
class PushItem:
    """One thing an upstream push channel delivered: an event, or a session status, or both empty
    for a frame that carries nothing for the run (a heartbeat, an acknowledgement)."""

    event: dict[str, Any] | None = None
    # A `RemoteState` value, when the upstream announced the session's status.
    status: str | None = None
    # The `events_after` cursor that follows `event`, when the backend can tell (else the
    # driver keeps its cursor, and the next backfill reads a little more and de-duplicates).
    cursor: str | None = None


class PushChannel(abc.ABC):
    """An open push connection to one remote session (a WebSocket, an SSE stream).

    Events it delivers are keyed like polled ones (`event_key`), so a channel, a backfill and a
    fallback poll may overlap: the run driver stores each upstream event once."""

    @abc.abstractmethod
    async def receive(self) -> PushItem | None:
        """The next item, waiting as long as it takes; None once the channel has closed."""

    async def interrupt(self) -> bool:
        """Interrupt the current turn over the channel; False when this channel cannot (the caller
        then interrupts the usual way)."""
        return False

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection; safe to call more than once."""


class AgentProvider(abc.ABC):
    """What the run driver needs from an agent backend."""

    name: str
    # Whether upstream calls need the person's own credentials (a deployment-wide key does not:
    # its sessions can be archived for anyone).
    personal_credentials: bool = True
    # Upstream event types that end a turn (the run ends when a new one arrives).
    end_event_types: tuple[str, ...]
    # Upstream event types that do not show the agent at work (echoes of user turns).
    quiet_event_types: tuple[str, ...]

    @abc.abstractmethod
    async def authenticate(self, user_id: str, *, force: bool = False) -> str:
        """A credential for the user's upstream calls; ServiceError (4xx) when there is none."""

    @abc.abstractmethod
    async def environment(self, token: str) -> str:
        """The environment new sessions run in; ServiceError (4xx) when it cannot be found."""

    @abc.abstractmethod
    async def create(self, token: str, request: CreateRequest) -> RemoteSession: ...

    @abc.abstractmethod
    async def find_created(self, token: str, request: CreateRequest) -> RemoteSession | None:
        """The session an earlier `create` made, if the request reached upstream after all."""

    @abc.abstractmethod
    async def get(self, token: str, remote_id: str) -> RemoteSession: ...

    @abc.abstractmethod
    async def events_after(self, token: str, remote_id: str, cursor: str | None) -> EventBatch: ...

    @abc.abstractmethod
    async def send(self, token: str, remote_id: str, content: str | list[dict[str, Any]], message_uuid: str) -> None:
        """Deliver a user turn; the upstream echoes it as an event with `message_uuid`."""

    @abc.abstractmethod
    async def interrupt(self, token: str, remote_id: str) -> None: ...

    @abc.abstractmethod
    async def archive(self, token: str, remote_id: str) -> None: ...

    @abc.abstractmethod
    async def rename(self, token: str, remote_id: str, title: str) -> None:
        """Give the remote session a new title."""

    @abc.abstractmethod
    def web_url(self, remote_id: str) -> str: ...

    @abc.abstractmethod
    def cost(self, end_event: dict[str, Any]) -> str | None:
        """The session's total cost in USD as the SessionRow's string, from a turn's end event."""

    @abc.abstractmethod
    def branch(self, event: dict[str, Any]) -> str | None:
        """The git branch the agent works on, when this event reveals it."""

    def end_error(self, end_event: dict[str, Any]) -> str | None:
        """Why a turn's end event ends the run in error (None: the turn completed)."""
        return None

    async def open_push(self, token: str, remote_id: str) -> PushChannel | None:
        """Open the backend's push channel for a remote session, or None when it has none (or it
        is turned off); raises UpstreamError when the channel exists but cannot be opened."""
        return None

    async def aclose(self) -> None:  # noqa: B027 - optional for providers without connections
        """Release connections."""


def format_cost(value: Any) -> str | None:
    """A cost as JavaScript's String(number) writes it ("0.0123", "2")."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


class ClaudeRemoteProvider(AgentProvider):
    """Claude Remote Sessions (CONTRACT.md 5) with the user's Claude OAuth credentials."""

    name = "claude"
    end_event_types = ("result",)
    quiet_event_types = ("user",)

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        config = ctx.config
        self.client = ClaudeRemoteClient(
            config.claude_api_base_url,
            config.claude_request_timeout_seconds,
            organization_uuid=config.claude_organization_uuid or None,
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def authenticate(self, user_id: str, *, force: bool = False) -> str:
        credentials, _ = await claude_auth.valid_credentials(self.ctx, user_id, force=force)
        token = credentials.get("accessToken")
        if not isinstance(token, str) or not token:
            raise ServiceError(400, claude_auth.NOT_CONFIGURED)
        return token

    async def environment(self, token: str) -> str:
        if self.ctx.config.claude_environment_id:
            return self.ctx.config.claude_environment_id
        environment_id = await self.client.detect_environment(token)
        if not environment_id:
            raise ServiceError(400, ENVIRONMENT_NOT_FOUND)
        return environment_id

    def _session(self, value: dict[str, Any]) -> RemoteSession:
        state = value.get("session_status")
        known = (RemoteState.RUNNING, RemoteState.IDLE, RemoteState.COMPLETED, RemoteState.FAILED, RemoteState.ARCHIVED)
        return RemoteSession(
            id=value["id"],
            web_url=web_url(value["id"]),
            state=state if state in known else RemoteState.UNKNOWN,
            title=value.get("title") if isinstance(value.get("title"), str) else None,
            raw=value,
        )

    async def create(self, token: str, request: CreateRequest) -> RemoteSession:
        value = await self.client.create_session(
            token,
            title=request.title,
            content=request.content,
            environment_id=request.environment_id,
            repo_url=request.repo_url,
            repo_full_name=request.repo_full_name,
            branch_prefix=request.branch_prefix,
            model=request.model,
            event_uuid=request.message_uuid,
        )
        return self._session(value)

    async def find_created(self, token: str, request: CreateRequest) -> RemoteSession | None:
        # The first user event of a session carries the uuid we chose, so a session whose event
        # list holds it is ours. Only recent sessions with the same title are looked into.
        page = await self.client.list_sessions(token, limit=FIND_CREATED_LOOKBACK)
        for value in page["data"]:
            if not isinstance(value.get("id"), str) or value.get("title") != request.title:
                continue
            events = await self.client.list_events(token, value["id"])
            if any(event.get("uuid") == request.message_uuid for event in events["data"]):
                return self._session(value)
        return None

    async def get(self, token: str, remote_id: str) -> RemoteSession:
        return self._session(await self.client.get_session(token, remote_id))

    async def events_after(self, token: str, remote_id: str, cursor: str | None) -> EventBatch:
        """Every event after `cursor`, page by page; the upstream may also ignore the cursor and
        answer with the whole list, which the caller de-duplicates by `uuid`."""
        events: list[dict[str, Any]] = []
        complete = False
        for _ in range(MAX_PAGES_PER_POLL):
            page = await self.client.list_events(token, remote_id, after_id=cursor)
            data = page["data"]
            events.extend(data)
            last_id = page.get("last_id")
            if not isinstance(last_id, str) or not last_id:
                last_id = next(
                    (str(e.get("id") or e.get("uuid")) for e in reversed(data) if e.get("id") or e.get("uuid")), None
                )
            if not data or last_id is None or last_id == cursor:
                complete = True
                break
            cursor = last_id
            if not page.get("has_more"):
                complete = True
                break
        return EventBatch(events, cursor, complete)

    async def open_push(self, token: str, remote_id: str) -> PushChannel | None:
        """The session's subscribe WebSocket; None when `CLAUDE_UPSTREAM_PUSH=off`."""
        config = self.ctx.config
        if config.claude_upstream_push == "off":
            return None
        from services.claude.push import ClaudeRemoteChannel, subscribe_url  # push imports this module

        url = subscribe_url(config.claude_api_base_url, remote_id, config.claude_organization_uuid)
        return await ClaudeRemoteChannel.open(url, self.client.headers(token), config.claude_request_timeout_seconds)

    async def send(self, token: str, remote_id: str, content: str | list[dict[str, Any]], message_uuid: str) -> None:
        await self.client.send_message(token, remote_id, content, message_uuid)

    async def interrupt(self, token: str, remote_id: str) -> None:
        await self.client.interrupt(token, remote_id)

    async def archive(self, token: str, remote_id: str) -> None:
        try:
            await self.client.archive(token, remote_id)
        except UpstreamError as exc:
            if not exc.not_found:  # already gone counts as archived
                raise

    async def rename(self, token: str, remote_id: str, title: str) -> None:
        await self.client.rename(token, remote_id, title)

    def web_url(self, remote_id: str) -> str:
        return web_url(remote_id)

    def cost(self, end_event: dict[str, Any]) -> str | None:
        return format_cost(end_event.get("total_cost_usd"))

    def branch(self, event: dict[str, Any]) -> str | None:
        result = event.get("tool_use_result")
        if isinstance(result, dict) and isinstance(result.get("stdout"), str):
            match = BRANCH_IN_OUTPUT.search(result["stdout"])
            if match:
                return match.group(0)
        data = event.get("data")
        extra = data.get("extra") if isinstance(data, dict) else None
        args = extra.get("args") if isinstance(extra, dict) else None
        if isinstance(args, list):
            match = BRANCH_IN_ARGS.search(" ".join(str(arg) for arg in args))
            if match:
                return match.group(1)
        return None


PROVIDERS: dict[str, type[AgentProvider]] = {"claude": ClaudeRemoteProvider}
