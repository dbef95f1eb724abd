"""Managed Agents' push channel: a session's SSE event stream, read raw through the SDK so that
event types it does not know yet survive, preceded by the session's history."""

from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING, Any

import anthropic
from anthropic import AsyncStream

from services.agents.backend import PushChannel, PushItem, RemoteState, UpstreamError
from services.agents.managed_agents.client import call, upstream_error
from services.agents.managed_agents.translate import Translator, upstream_key

if TYPE_CHECKING:
    from services.agents.managed_agents.provider import ManagedAgentsProvider

log = logging.getLogger(__name__)

STREAM_READ_TIMEOUT_SECONDS = 120.0


class ManagedPushChannel(PushChannel):
    """A session's SSE event stream, read raw (unknown event types survive), preceded by its
    history: `open` connects first and lists second, `receive` hands out the history and then
    the live events, each upstream event once, translated."""

    def __init__(self, provider: ManagedAgentsProvider, remote_id: str) -> None:
        self.provider = provider
        self.remote_id = remote_id
        self.translator = Translator()
        self.seen: set[str] = set()
        self.pending: collections.deque[dict[str, Any]] = collections.deque()
        self._stream: AsyncStream[Any] | None = None
        self._events: Any = None
        self._closed = False

    async def open(self) -> None:
        client = self.provider.client
        await self.provider.budget.take()
        stream: AsyncStream[Any] = await call(
            "open event stream",
            lambda: client.beta.sessions.events.stream(self.remote_id, timeout=STREAM_READ_TIMEOUT_SECONDS),
        )
        self._stream = stream
        self._events = AsyncStream.raw_events(stream.response).__aiter__()
        try:
            for event in await self.provider.history(self.remote_id):
                self._take(event)
        except BaseException:
            await self.close()
            raise

    def _take(self, event: dict[str, Any]) -> dict[str, Any] | None:
        key = upstream_key(event)  # an interrupt echo may carry an empty id
        if key in self.seen:
            return None
        self.seen.add(key)
        translated = self.translator.translate(event)
        self.pending.append(translated)
        return translated

    async def _next_pending(self) -> PushItem:
        event = self.pending.popleft()
        if event["type"] == "result":
            await self.provider.after_turn_end(self.remote_id, [event])
        status = RemoteState.RUNNING if event["managed"].get("type") == "session.status_running" else None
        return PushItem(event=event, status=status)

    async def receive(self) -> PushItem | None:
        while True:
            if self.pending:
                return await self._next_pending()
            if self._closed or self._events is None:
                return None
            try:
                sse = await self._events.__anext__()
            except StopAsyncIteration:
                await self.close()
                return None
            except anthropic.AnthropicError as exc:
                log.info("event stream of %s ended: %s", self.remote_id, upstream_error("read events", exc).message)
                await self.close()
                return None
            except Exception as exc:  # the connection broke (httpx2's own errors)
                log.info("event stream of %s broke: %s", self.remote_id, exc.__class__.__name__)
                await self.close()
                return None
            if not sse.data:
                return PushItem()  # a heartbeat comment or an empty frame
            try:
                data = sse.json()
            except ValueError:
                return PushItem()
            if sse.event == "error":
                await self.close()
                error = data.get("error") if isinstance(data, dict) else None
                message = error.get("message") if isinstance(error, dict) else None
                raise UpstreamError("read events", str(message or "stream error"), kind="network")
            if not isinstance(data, dict) or data.get("type") in (None, "ping") or not data.get("processed_at"):
                return PushItem()  # a heartbeat, or an event that comes again once processed
            if self._take(data) is None:
                return PushItem()  # already delivered from the history

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._stream is not None:
            try:
                await self._stream.close()
            except Exception:  # closing a broken connection may fail too
                log.debug("closing the event stream of %s failed", self.remote_id)
