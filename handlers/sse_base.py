"""SSEHandler: the one Server-Sent Events writer every streaming route uses.

- `open_stream()` sends status 200 with `text/event-stream`, `Cache-Control: no-cache` and
  `X-Accel-Buffering: no`, plus a `retry:` hint, and flushes at once.
- `send(event, data, event_id)` writes one frame and flushes it (one flush at a time: Tornado
  loses track of a flush started while another is pending).
- A heartbeat comment after every `sse_heartbeat_seconds` of silence, on every stream, driven by
  a timer so it also runs while the route waits on something else.
- An optional lifetime cap (`stream_lifetime_seconds`, minus up to 10 % so that reconnects spread
  out; 0, the default, means none, because the website's chat page never reconnects): the stream
  then ends without `completed`, and a client that reconnects does so with Last-Event-ID.
- Draining (SIGTERM) does not end a stream: it is fed from the shared log until its run ends, and
  only the hub's stop, when `SHUTDOWN_GRACE_SECONDS` is over, ends what is still open.
- A client that goes away is noticed by `on_connection_close`, which closes the stream's
  subscription (taking it out of the hub) and wakes its coroutine at once (not at the next
  heartbeat).
- `follow_session()` and `follow_session_list()` write what a subscription of
  services/subscriber.py yields (which holds the no-gap, no-duplicate rule), calling the routes'
  hooks at its marks; while the subscription waits idle, the hub writes live frames here itself
  (`write_live`), flushing them one flush at a time as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import random
from collections.abc import Awaitable
from typing import Any

from tornado.httputil import HTTPHeaders
from tornado.iostream import StreamClosedError

from handlers.base import APIHandler
from services.metrics import OPEN_STREAMS
from services.sse import event_name, json_frame
from services.subscriber import ListSubscription, Mark, Replay, SessionSubscription, StopReason

DEFAULT_RETRY_MS = 3000


class SSEHandler(APIHandler):
    """Base class of streaming routes (see the module docstring)."""

    heartbeat_comment = b": heartbeat\n\n"

    def initialize(self) -> None:
        super().initialize()
        self.stream_open = False
        self.client_gone = False
        self.end_reason: StopReason | None = None
        self._requested_id = 0
        # Whether the client named a position at all (`Last-Event-ID: 0` is one: everything).
        self.position_given = False
        self.replay: Replay | None = None
        self._subscription: SessionSubscription | ListSubscription | None = None
        self._pending_flush: asyncio.Future[None] | None = None
        # Frames the hub wrote (write_live) not flushed yet, those in the flush under way, and
        # whether a callback on the pending flush will flush the rest.
        self._unflushed = 0
        self._flushing = 0
        self._live_chained = False
        self._last_write = 0.0
        self._deadline = 0.0
        # One timer per stream drives both the heartbeat and the lifetime cap.
        self._timer: asyncio.TimerHandle | None = None
        # Streams never render templates; Tornado's per-request UI namespace is dead weight here.
        self.ui = None  # type: ignore[assignment]

    async def prepare(self) -> None:
        await super().prepare()
        # A process holds thousands of streams for up to `stream_lifetime_seconds`: keep only
        # what a stream needs, not the whole user row or the parsed cookies.
        user = self.current_user
        if user is not None:
            # The impersonating admin too: execute-remote keeps it for the usage audit, and every
            # error's log line names it (`log_extra`).
            kept = {"id": user.id, "is_admin": user.is_admin, "impersonator_id": user.impersonator_id}
            self.current_user = dataclasses.replace(user, user=kept)
        self.request.__dict__.pop("_cookies", None)
        self._requested_id = self._read_last_event_id()

    # ---- opening, writing, closing -----------------------------------------------------------

    def set_stream_headers(self) -> None:
        self.set_status(200)
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("Connection", "keep-alive")
        self.set_header("X-Accel-Buffering", "no")

    async def open_stream(self) -> None:
        """Send the headers and a `retry:` hint now; start the heartbeat and lifetime timers."""
        self.set_stream_headers()
        self.stream_open = True
        OPEN_STREAMS.inc()
        config = self.ctx.config
        loop = asyncio.get_running_loop()
        lifetime = config.stream_lifetime_seconds
        self._deadline = loop.time() + lifetime * random.uniform(0.9, 1.0) if lifetime > 0 else math.inf
        self._timer = loop.call_at(min(self._deadline, loop.time() + config.sse_heartbeat_seconds), self._tick)
        self.write(b"retry: %d\n\n" % DEFAULT_RETRY_MS)
        await self.flush_stream()
        # The headers are on the wire, and the request's were read (Last-Event-ID in prepare):
        # nothing reads either again (about a KiB per stream, more for a browser's headers).
        self._headers = HTTPHeaders()
        # Cleared in place: Tornado's connection keeps a reference to the same object.
        self.request.headers.clear()

    async def send(self, event: str | None, data: dict[str, Any], event_id: int | None = None) -> bool:
        """Write one frame (`event: <event>` unless None) and flush it; False once the client is gone."""
        if self.client_gone or self._finished:
            return False
        name = event_name(event) if event is not None else None
        self.write(json_frame(data, name, event_id))
        return await self.flush_stream()

    async def flush_stream(self) -> bool:
        """Flush what was written, one flush at a time; False once the client is gone."""
        while self._pending_flush is not None and not self._pending_flush.done():
            with contextlib.suppress(StreamClosedError):
                await asyncio.shield(self._pending_flush)
        if self.client_gone or self._finished:
            return False
        self._last_write = asyncio.get_running_loop().time()
        future = self.flush()
        if not future.done():
            self._pending_flush = future
        try:
            await future
        except StreamClosedError:
            self._client_went_away()
            return False
        finally:
            if self._pending_flush is future:
                self._pending_flush = None
        return not self.client_gone

    async def close_stream(self, reason: StopReason | None = None) -> None:
        """End the response. After draining or the lifetime cap the `retry:` hint spreads the
        reconnects (a draining replica's viewers should not all arrive elsewhere at once)."""
        self._stop_timers()
        if self._finished:
            return
        if not self.client_gone and self.stream_open:
            if reason is StopReason.DRAINING:
                self.write(b"retry: %d\n\n" % random.randint(500, 5000))
            elif reason is StopReason.LIFETIME:
                self.write(b"retry: %d\n\n" % random.randint(100, 1000))
        with contextlib.suppress(StreamClosedError):
            while self._pending_flush is not None and not self._pending_flush.done():
                await asyncio.shield(self._pending_flush)
            if not self._finished:
                await self.finish()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self._client_went_away()

    def on_finish(self) -> None:
        self._stop_timers()
        if self.stream_open:
            self.stream_open = False
            OPEN_STREAMS.dec()
        if self._subscription is not None:
            self._subscription.close(StopReason.FINISHED)

    def _client_went_away(self) -> None:
        if self.client_gone:
            return
        self.client_gone = True
        self._stop_timers()
        if self._subscription is not None:
            self._subscription.close(StopReason.CLIENT_GONE)

    # ---- live frames written by the hub (services/subscriber.LiveSink) --------------------------

    def write_live(self, chunk: bytes, frames: int, now: float, limit: int) -> bool:
        """The hub's direct write of live frames (only while the subscription waits idle, so
        nothing of this stream's own is being written): written and flushed now, or after the
        flush under way. False, writing nothing, when more than `limit` frames so written would
        be waiting for their flush (a client that stopped reading)."""
        if self.client_gone or self._finished:
            return True
        if self._unflushed + frames > limit:
            return False
        self.write(chunk)
        self._last_write = now
        self._unflushed += frames
        pending = self._pending_flush
        if pending is None or pending.done():
            self._flush_live()
        elif not self._live_chained:
            self._live_chained = True
            pending.add_done_callback(self._live_flushed)
        return True

    def _flush_live(self) -> None:
        self._flushing = self._unflushed
        self._live_chained = True
        future = self.flush()
        self._pending_flush = future
        future.add_done_callback(self._live_flushed)

    def _live_flushed(self, future: asyncio.Future[None]) -> None:
        """A flush under way when live frames came ended: count what it carried, flush the rest."""
        self._live_chained = False
        if self._pending_flush is future:
            self._pending_flush = None
        if future.cancelled() or future.exception() is not None:
            self._client_went_away()
            return
        self._unflushed -= self._flushing
        self._flushing = 0
        if self._unflushed > 0 and not self.client_gone and not self._finished:
            pending = self._pending_flush
            if pending is None or pending.done():
                self._flush_live()
            else:
                self._live_chained = True
                pending.add_done_callback(self._live_flushed)

    def dropped(self) -> None:
        """The hub dropped this stream (too far behind): cut the connection so that even a
        flush stuck on a client that stopped reading ends; the client reconnects with its last id.

        The socket (IOStream) is closed, not the HTTP connection: closing the HTTP1Connection
        forgets its pending write future without resolving it and skips `on_connection_close`, so
        the handler, its subscriber and its full queue would wait forever. A closed socket fails
        the pending flush and calls `on_connection_close`, as when the client hangs up."""
        self._stop_timers()
        connection = self.request.connection
        stream = getattr(connection, "stream", None)
        if stream is not None:
            stream.close()
        elif connection is not None and hasattr(connection, "close"):
            connection.close()

    # ---- timers -------------------------------------------------------------------------------

    def _stop_timers(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        """The stream's timer: a heartbeat after `sse_heartbeat_seconds` of silence, and the end of
        its lifetime."""
        self._timer = None
        if self.client_gone or self._finished:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now >= self._deadline:
            self._lifetime_over()
            return
        interval = self.ctx.config.sse_heartbeat_seconds
        flushing = self._pending_flush is not None and not self._pending_flush.done()
        if not flushing and now - self._last_write >= interval * 0.95:
            self.write(self.heartbeat_comment)
            self._last_write = now
            future = self.flush()
            if not future.done():
                self._pending_flush = future
            future.add_done_callback(_consume_exception)
        self._timer = loop.call_at(min(self._deadline, max(self._last_write, now) + interval), self._tick)

    def _lifetime_over(self) -> None:
        if self.end_reason is None:
            self.end_reason = StopReason.LIFETIME
        if self._subscription is not None:
            self._subscription.close(StopReason.LIFETIME)

    # ---- Last-Event-ID ------------------------------------------------------------------------

    def requested_last_event_id(self) -> int:
        """The `Last-Event-ID` header, else `?lastEventId=`: 0 when absent, -1 when not an id
        (which then counts as "not in this session's history"). Read once, in `prepare`."""
        return self._requested_id

    def _read_last_event_id(self) -> int:
        raw = self.request.headers.get("Last-Event-ID")
        if raw is None:
            # Read as is: the stream may be open already, and a value that is not clean text (a
            # NUL, bad UTF-8) is just "not an id", not an error to raise mid-stream.
            values = self.request.query_arguments.get("lastEventId")
            raw = values[-1].decode("utf-8", "replace") if values else None
        if raw is None or raw.strip() == "":
            return 0
        self.position_given = True
        raw = raw.strip()
        if not raw.isdigit() or len(raw) > 19:
            return -1
        return int(raw)

    # ---- hooks for routes ---------------------------------------------------------------------

    async def on_replay_start(self, replay: Replay) -> None:
        """Called before the first replayed frame (resume adds `replay_start` here)."""

    async def on_replay_end(self, replay: Replay) -> None:
        """Called after the replay, before going live (resume adds `replay_end`, `session_info`)."""

    async def on_live_start(self, replay: Replay) -> None:
        """Called when the stream goes live for a running session."""

    # ---- following a session ------------------------------------------------------------------

    def _stop_reason(self) -> StopReason | None:
        if self.client_gone:
            return StopReason.CLIENT_GONE
        if self.end_reason is not None:
            return self.end_reason
        # Not `ctx.draining`: a draining process keeps its streams fed until the hub stops.
        if self.ctx.hub is None or self.ctx.hub.stopping:
            return StopReason.DRAINING
        return None

    def follow_session(
        self, chat_session_id: str, after_id: int, *, until_run_ends: bool = True, all_live: bool = False
    ) -> Awaitable[StopReason]:
        """Write a `SessionSubscription` (services/subscriber.py): the session's events after
        `after_id`, then its live events, with the route's hooks at its marks. Every stored event
        is a frame named by its `type` with `id: <events.id>`. With `until_run_ends` it returns
        once the session is not (or no longer) `running`; with `all_live` nothing is `_replayed`.

        Resolves to why it stopped (a `StopReason`); only those in `ENDS_WITH_COMPLETED` should
        be followed by `completed`.
        """
        return self._write_frames(
            SessionSubscription(self.ctx, chat_session_id, until_run_ends=until_run_ends, all_live=all_live), after_id
        )

    async def on_list_subscribed(self) -> None:
        """Hook: the session-list subscription is registered; nothing is sent yet."""

    def follow_session_list(self, user_id: str, after_id: int) -> Awaitable[StopReason]:
        """Write a `ListSubscription`: the person's session-list announcements after `after_id`
        still kept (a reconnect with Last-Event-ID), then live ones. Resolves to why it stopped."""
        return self._write_frames(ListSubscription(self.ctx, user_id), after_id)

    async def _write_frames(self, subscription: SessionSubscription | ListSubscription, after_id: int) -> StopReason:
        """The one writing loop: each chunk written and flushed, each mark handed to its hook.
        (Awaited directly by the routes' methods, so an idle stream has one frame fewer.)"""
        reason = self._stop_reason()
        if reason is not None:
            subscription.close()
            return reason
        subscription.attach(self)
        self._subscription = subscription
        frames = subscription.frames(after_id)
        try:
            async for item in frames:
                if isinstance(item, Mark):
                    await self._on_mark(item, subscription)
                    continue
                self.write(item)
                if not await self.flush_stream():
                    return StopReason.CLIENT_GONE
        finally:
            await frames.aclose()
            self._subscription = None
        return self._stop_reason() or subscription.reason or StopReason.CLIENT_GONE

    async def _on_mark(self, mark: Mark, subscription: SessionSubscription | ListSubscription) -> None:
        if mark is Mark.SUBSCRIBED:
            await self.on_list_subscribed()
            return
        assert isinstance(subscription, SessionSubscription) and subscription.replay is not None
        self.replay = subscription.replay
        if mark is Mark.REPLAY_START:
            await self.on_replay_start(subscription.replay)
        elif mark is Mark.REPLAY_END:
            await self.on_replay_end(subscription.replay)
        elif mark is Mark.LIVE:
            await self.on_live_start(subscription.replay)


def _consume_exception(future: asyncio.Future[Any]) -> None:
    """A heartbeat's flush may fail once the client is gone; that is expected."""
    if not future.cancelled():
        future.exception()
