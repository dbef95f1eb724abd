"""The push channel of Claude Remote Sessions: a WebSocket per remote session (ECOSYSTEM.md 7).

`wss://<CLAUDE_API_BASE_URL host>/v1/sessions/ws/{id}/subscribe` with the REST calls' headers
pushes the session's events as JSON text frames (`{"type": "event", "data": {...}}` or a bare
event with `uuid` and `type`), `session_status` frames, and `control_response` frames answering
our `control_request`s. Frames that are not JSON are heartbeats and ignored. We send
`{"type": "keep_alive"}` every 30 s. The socket is Tornado's own client (`websocket_connect`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any
from urllib.parse import quote, urlencode

import orjson
import tornado.httpclient
import tornado.iostream
import tornado.websocket

from services.agents.backend import PushChannel, PushItem, RemoteState, UpstreamError, retry_after_seconds
from services.metrics import UPSTREAM_CALLS

log = logging.getLogger(__name__)

KEEP_ALIVE_SECONDS = 30.0
# WebSocket pings detect a connection that died without a close (a black hole) within
# PING_INTERVAL_SECONDS + PING_TIMEOUT_SECONDS; a connection up but silent is the follower's
# silence check's (services/agents/follow.py).
PING_INTERVAL_SECONDS = 5.0
PING_TIMEOUT_SECONDS = 5.0
# How long an interrupt waits for its control_response before the caller falls back to REST.
CONTROL_TIMEOUT_SECONDS = 5.0
MAX_FRAME_BYTES = 16 * 1024 * 1024
KNOWN_STATES = (RemoteState.RUNNING, RemoteState.IDLE, RemoteState.COMPLETED, RemoteState.FAILED, RemoteState.ARCHIVED)


def subscribe_url(base_url: str, remote_id: str, organization_uuid: str = "") -> str:
    """The subscribe URL: the API base with http→ws and https→wss, plus the organization if set."""
    base = base_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base.removeprefix("https://")
    elif base.startswith("http://"):
        base = "ws://" + base.removeprefix("http://")
    url = f"{base}/v1/sessions/ws/{quote(remote_id, safe='')}/subscribe"
    if organization_uuid:
        url += "?" + urlencode({"organization_uuid": organization_uuid})
    return url


def event_cursor(event: dict[str, Any]) -> str | None:
    """The `after_id` cursor that follows `event` (as `events_after` derives it from a page)."""
    value = event.get("id") or event.get("uuid")
    return str(value) if value else None


def parse_frame(message: str | bytes) -> dict[str, Any] | None:
    """A JSON object frame, or None for anything else (heartbeats, binary noise)."""
    try:
        value = orjson.loads(message)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


class ClaudeRemoteChannel(PushChannel):
    """One open subscribe socket. Only the run's follower calls `receive`; `interrupt` may be
    called from a request handler meanwhile (its answer is matched by `request_id`)."""

    def __init__(
        self,
        connection: tornado.websocket.WebSocketClientConnection,
        keep_alive_seconds: float = KEEP_ALIVE_SECONDS,
        control_timeout_seconds: float = CONTROL_TIMEOUT_SECONDS,
    ) -> None:
        self.connection = connection
        self.keep_alive_seconds = keep_alive_seconds
        self.control_timeout_seconds = control_timeout_seconds
        self.closed = False
        self.pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.keep_alive = asyncio.create_task(self._keep_alive(), name="claude-push-keep-alive")

    @classmethod
    async def open(
        cls, url: str, headers: dict[str, str], timeout_seconds: float, **options: float
    ) -> ClaudeRemoteChannel:
        """Connect; an UpstreamError (operation "open event socket") when the upgrade fails.
        `options`: keep_alive_seconds, control_timeout_seconds."""
        operation = "open event socket"
        request = tornado.httpclient.HTTPRequest(url, headers=headers, connect_timeout=timeout_seconds)
        try:
            connection = await asyncio.wait_for(
                tornado.websocket.websocket_connect(
                    request,
                    ping_interval=PING_INTERVAL_SECONDS,
                    ping_timeout=PING_TIMEOUT_SECONDS,
                    max_message_size=MAX_FRAME_BYTES,
                ),
                timeout_seconds,
            )
        except TimeoutError:
            UPSTREAM_CALLS.labels("claude", "timeout").inc()
            raise UpstreamError(operation, f"no answer within {timeout_seconds:g} s", kind="timeout") from None
        except tornado.httpclient.HTTPClientError as exc:
            if exc.code == 599:
                UPSTREAM_CALLS.labels("claude", "network").inc()
                raise UpstreamError(operation, "connection failed", kind="network") from None
            UPSTREAM_CALLS.labels("claude", "http").inc()
            reply: Any = exc.response.headers if exc.response is not None else {}
            raise UpstreamError(
                operation,
                f"{exc.code} upgrade refused",
                status=exc.code,
                retry_after=retry_after_seconds(reply.get("Retry-After")),
            ) from None
        except (OSError, tornado.iostream.StreamClosedError, tornado.websocket.WebSocketError) as exc:
            UPSTREAM_CALLS.labels("claude", "network").inc()
            raise UpstreamError(operation, f"connection failed ({exc.__class__.__name__})", kind="network") from None
        UPSTREAM_CALLS.labels("claude", "ok").inc()
        return cls(connection, **options)

    async def receive(self) -> PushItem | None:
        while True:
            if self.closed:
                return None
            message = await self.connection.read_message()
            if message is None:
                self._shut(lost=True)
                return None
            frame = parse_frame(message)
            if frame is None:
                return PushItem()  # a heartbeat: the channel is alive
            kind = frame.get("type")
            if kind == "event" and isinstance(frame.get("data"), dict):
                return PushItem(event=frame["data"], cursor=event_cursor(frame["data"]))
            if kind == "session_status":
                status = frame.get("status")
                return PushItem(status=status if status in KNOWN_STATES else RemoteState.UNKNOWN)
            if kind == "control_response":
                self._answer(frame.get("response"))
                return PushItem()
            if isinstance(frame.get("uuid"), str) and isinstance(kind, str):
                return PushItem(event=frame, cursor=event_cursor(frame))
            return PushItem()  # something this server does not use (keep-alive echoes, …)

    def _answer(self, response: Any) -> None:
        if not isinstance(response, dict):
            return
        future = self.pending.pop(str(response.get("request_id")), None)
        if future is not None and not future.done():
            future.set_result(response)

    async def interrupt(self) -> bool:
        """Send an interrupt control request and wait for its success; False otherwise."""
        if self.closed:
            return False
        request_id = str(uuid.uuid4())
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        try:
            await self._send({"request_id": request_id, "type": "control_request", "request": {"subtype": "interrupt"}})
            response = await asyncio.wait_for(future, self.control_timeout_seconds)
        except (TimeoutError, tornado.websocket.WebSocketClosedError, tornado.iostream.StreamClosedError):
            return False
        finally:
            self.pending.pop(request_id, None)
        if response.get("subtype") != "success":
            log.info("interrupt over the event socket refused: %s", response.get("error"))
            return False
        return True

    async def _send(self, value: dict[str, Any]) -> None:
        await self.connection.write_message(orjson.dumps(value).decode())

    async def _keep_alive(self) -> None:
        while not self.closed:
            await asyncio.sleep(self.keep_alive_seconds)
            with contextlib.suppress(tornado.websocket.WebSocketClosedError, tornado.iostream.StreamClosedError):
                await self._send({"type": "keep_alive"})

    async def close(self) -> None:
        self._shut(lost=False)

    def _shut(self, *, lost: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self.keep_alive.cancel()
        for future in self.pending.values():
            if future.done():
                continue
            if lost:  # the upstream went away: the interrupt may not have arrived, send it by REST
                future.set_result({"subtype": "error", "error": "the event socket closed"})
            else:  # we close only when the run ends here: the interrupt was sent, nothing to redo
                future.set_result({"subtype": "success"})
        self.connection.close()
