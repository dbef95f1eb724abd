"""Claude Remote Sessions (CONTRACT.md 5) with the person's Claude OAuth credentials."""

from __future__ import annotations

import re
from typing import Any

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
from services.agents.claude_remote.client import ClaudeRemoteClient, web_url
from services.agents.claude_remote.credentials import EXPIRED, NOT_CONFIGURED, valid_credentials
from services.context import AppContext
from services.errors import ServiceError

ENVIRONMENT_NOT_FOUND = (
    "Could not detect Claude environment ID. Please create a session at claude.ai/code first, "
    "or ask an admin to configure CLAUDE_ENVIRONMENT_ID."
)
# How many of the user's latest remote sessions are checked when looking for one whose creation
# reply was lost (a timeout, or a replica that died right after creating it).
FIND_CREATED_LOOKBACK = 10

BRANCH_IN_OUTPUT = re.compile(r"claude/[A-Za-z0-9_-]+")
BRANCH_IN_ARGS = re.compile(r"branch\s+[`'\"]?(claude/[A-Za-z0-9_-]+)")


class ClaudeRemoteProvider(AgentProvider):
    """Claude Remote Sessions (CONTRACT.md 5) with the user's Claude OAuth credentials."""

    name = "claude"
    end_event_types = ("result",)
    quiet_event_types = ("user",)
    credentials_expired = EXPIRED
    credentials_missing = NOT_CONFIGURED

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
        credentials, _ = await valid_credentials(self.ctx, user_id, force=force)
        token = credentials.get("accessToken")
        if not isinstance(token, str) or not token:
            raise ServiceError(400, NOT_CONFIGURED)
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
        from services.agents.claude_remote.push import ClaudeRemoteChannel, subscribe_url  # push imports this module

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

    async def turn_usage(self, token: str, remote_id: str, end_event: dict[str, Any]) -> TurnUsage | None:
        # Claude Code's `result` carries the session's cost so far and its token counts.
        cost = end_event.get("total_cost_usd")
        raw_usage = end_event.get("usage")
        usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}

        def tokens(key: str) -> int:
            value = usage.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

        return TurnUsage(
            cost_usd=float(cost) if isinstance(cost, int | float) and format_cost(cost) is not None else None,
            input_tokens=tokens("input_tokens"),
            output_tokens=tokens("output_tokens"),
            cache_read_tokens=tokens("cache_read_input_tokens"),
            cache_creation_tokens=tokens("cache_creation_input_tokens"),
        )

    def prompt_echo(self, event: dict[str, Any]) -> bool:
        if event.get("type") != "user":
            return False
        message = event.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            return not any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)
        return isinstance(content, str)

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


def claude_provider(ctx: AppContext) -> ClaudeRemoteProvider:
    """The process's Claude Remote provider (made and closed by the run driver)."""
    provider = ctx.require_runs().provider_for(ClaudeRemoteProvider.name)
    assert isinstance(provider, ClaudeRemoteProvider)
    return provider
