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
- A client that goes away is noticed by `on_connection_close`, which takes the stream out of
  the hub and wakes its coroutine at once (not at the next heartbeat).
- `follow_session()` registers with the hub first, then replays the log after an id in keyset
  batches, then goes live, never sending an id twice and never skipping one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import random
from dataclasses import dataclass
from typing import Any

import orjson
from tornado.httputil import HTTPHeaders
from tornado.iostream import StreamClosedError

from handlers.base import APIHandler
from services import event_log, session_list
from services.hub import EventFrame, StatusChange, Subscriber, event_frame, event_name, now_iso, sse_frame
from services.metrics import OPEN_STREAMS
from services.users import iso

REPLAY_BATCH = 500
DEFAULT_RETRY_MS = 3000


@dataclass(slots=True)
class Replay:
    """What `follow_session` is replaying; handed to the hooks so routes can add their frames."""

    chat_session_id: str
    after_id: int  # the position the replay starts after (0 after a history reset)
    boundary: int  # the newest id when the stream started: ids up to it are `_replayed`
    status: str | None  # the session's status when the stream started (None: row gone)
    requested_id: int  # what the client asked for (Last-Event-ID), 0 when nothing
    history_reset: bool = False  # the requested id was not in this session's history
    replayed: int = 0  # frames sent with `_replayed: true`
    final_status: str | None = None  # the status that ended a followed run


class SSEHandler(APIHandler):
    """Base class of streaming routes (see the module docstring)."""

    heartbeat_comment = b": heartbeat\n\n"

    def initialize(self) -> None:
        super().initialize()
        self.stream_open = False
        self.client_gone = False
        self.end_reason: str | None = None
        # The newest stored event id this stream has sent (execute-remote reads it).
        self.last_sent_id = 0
        self.replay: Replay | None = None
        self._subscriber: Subscriber | None = None
        self._pending_flush: asyncio.Future[None] | None = None
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
            self.current_user = dataclasses.replace(user, user={"id": user.id, "is_admin": user.is_admin})
        self.request.__dict__.pop("_cookies", None)

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
        # The headers are on the wire; nothing reads them again (saves about a KiB per stream).
        self._headers = HTTPHeaders()

    async def send(self, event: str | None, data: dict[str, Any], event_id: int | None = None) -> bool:
        """Write one frame (`event: <event>` unless None) and flush it; False once the client is gone."""
        if self.client_gone or self._finished:
            return False
        name = event_name(event) if event is not None else None
        self.write(sse_frame(orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS), name, event_id))
        return await self.flush_stream()

    async def send_raw(self, frame: bytes) -> bool:
        """Write already-encoded frame bytes and flush them."""
        if self.client_gone or self._finished:
            return False
        self.write(frame)
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

    async def close_stream(self, reason: str | None = None) -> None:
        """End the response. After "draining" or "lifetime" the `retry:` hint spreads the
        reconnects (a draining replica's viewers should not all arrive elsewhere at once)."""
        self._stop_timers()
        if self._finished:
            return
        if not self.client_gone and self.stream_open:
            if reason == "draining":
                self.write(b"retry: %d\n\n" % random.randint(500, 5000))
            elif reason == "lifetime":
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
        if self._subscriber is not None and self.ctx.hub is not None:
            self.ctx.hub.unsubscribe(self._subscriber, "finished")

    def _client_went_away(self) -> None:
        if self.client_gone:
            return
        self.client_gone = True
        self._stop_timers()
        if self._subscriber is not None and self.ctx.hub is not None:
            self.ctx.hub.unsubscribe(self._subscriber, "client_gone")

    def _drop_connection(self) -> None:
        """The hub dropped this stream (its queue overflowed): cut the connection so that even a
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
            self.end_reason = "lifetime"
        if self._subscriber is not None and self.ctx.hub is not None:
            self.ctx.hub.unsubscribe(self._subscriber, "lifetime")

    # ---- Last-Event-ID ------------------------------------------------------------------------

    def requested_last_event_id(self) -> int:
        """The `Last-Event-ID` header, else `?lastEventId=`: 0 when absent, -1 when not an id
        (which then counts as "not in this session's history")."""
        raw = self.request.headers.get("Last-Event-ID")
        if raw is None:
            # Read as is: the stream may be open already, and a value that is not clean text (a
            # NUL, bad UTF-8) is just "not an id", not an error to raise mid-stream.
            values = self.request.query_arguments.get("lastEventId")
            raw = values[-1].decode("utf-8", "replace") if values else None
        if raw is None or raw.strip() == "":
            return 0
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

    def _stop_reason(self, sub: Subscriber | None = None) -> str | None:
        if self.client_gone:
            return "client_gone"
        if sub is not None and sub.reason is not None:
            return sub.reason
        if self.end_reason is not None:
            return self.end_reason
        # Not `ctx.draining`: a draining process keeps its streams fed until the hub stops.
        if self.ctx.hub is None or self.ctx.hub.stopping:
            return "draining"
        return None

    async def follow_session(
        self, chat_session_id: str, after_id: int, *, until_run_ends: bool = True, all_live: bool = False
    ) -> str:
        """Replay the session's events after `after_id`, then its live events.

        Registers with the hub first, then replays in keyset batches, then goes live; every
        stored event is a frame named by its `type` with `id: <events.id>`; frames of ids that
        existed when the stream started carry `_replayed` and `_originalTimestamp`. An
        `after_id` that is not in this session's history means a full replay, announced by an
        `event: history_reset` frame. With `until_run_ends` it returns once the session is not
        (or no longer) `running`; otherwise it follows until the stream ends. With `all_live`
        nothing is marked `_replayed` (execute-remote: everything after `after_id` belongs to the
        run the client is watching, even what was stored before the stream caught up).

        Returns why it stopped: "not_running", "run_ended", "client_gone", "lifetime",
        "draining" or "overflow". Only the first two should be followed by `completed`.
        """
        reason = self._stop_reason()
        if reason is not None:
            return reason
        hub = self.ctx.hub
        sub = hub.subscribe_session(chat_session_id)
        sub.on_drop = self._drop_connection
        self._subscriber = sub
        try:
            replay = await self._replay(sub, chat_session_id, after_id, all_live)
            if replay is None:
                return self._stop_reason(sub) or "client_gone"
            if until_run_ends and replay.status != "running":
                replay.final_status = replay.status
                return "not_running"
            await self.on_live_start(replay)
            last = self.last_sent_id
            loop = asyncio.get_running_loop()
            while True:
                reason = self._stop_reason(sub)
                if reason is not None:
                    return reason
                items = sub.take()
                if not items:
                    # Waiting inline (not in a helper coroutine) keeps an idle stream's frames few.
                    sub.waiter = loop.create_future()
                    try:
                        await sub.waiter
                    finally:
                        sub.waiter = None
                    continue
                wrote = False
                for item in items:
                    if isinstance(item, EventFrame):
                        if item.id > last:
                            self.write(item.data)
                            last = self.last_sent_id = item.id
                            wrote = True
                    elif isinstance(item, StatusChange) and until_run_ends and item.status != "running":
                        replay.final_status = item.status
                        if wrote:
                            await self.flush_stream()
                        return "client_gone" if self.client_gone else "run_ended"
                if wrote and not await self.flush_stream():
                    return "client_gone"
        finally:
            self._subscriber = None
            hub.unsubscribe(sub, "finished")

    async def _replay(self, sub: Subscriber, chat_session_id: str, after_id: int, all_live: bool) -> Replay | None:
        """Send the stored events after `after_id` (keyset batches) and hand the position to the
        hub. None when the stream ended meanwhile."""
        ctx = self.ctx
        # Read the status before replaying: if the run ends during the replay, its last events are
        # in the replay or queued ahead of the status change, never lost behind an early return.
        status = await event_log.session_status(ctx, chat_session_id)
        newest = await event_log.last_id(ctx, chat_session_id)
        boundary = 0 if all_live else newest
        replay = Replay(chat_session_id, max(after_id, 0), boundary, status, requested_id=after_id)
        known = 0 < after_id <= newest and await event_log.has_event(ctx, chat_session_id, after_id)
        if after_id != 0 and not known:
            replay.after_id = 0
            replay.history_reset = True
        self.replay = replay
        if replay.history_reset:
            await self.send(
                "history_reset",
                {
                    "type": "history_reset",
                    "lastEventId": after_id,
                    "message": "The requested event is not in this session's history; replaying it from the start",
                    "timestamp": now_iso(),
                },
            )
        await self.on_replay_start(replay)
        last = self.last_sent_id = replay.after_id
        while True:
            if self._stop_reason(sub) is not None:
                return None
            rows = await event_log.read_after(ctx, chat_session_id, last, REPLAY_BATCH)
            if len(rows) < REPLAY_BATCH:
                # The end of the table as of this read: from here on the hub's queue has the rest.
                ctx.hub.caught_up(sub, rows[-1]["id"] if rows else last)
            for row in rows:
                event_id = row["id"]
                if event_id <= boundary:
                    self.write(event_frame(event_id, row["event_data"], iso(row["timestamp"])))
                    replay.replayed += 1
                else:
                    self.write(event_frame(event_id, row["event_data"]))
            if rows:
                last = self.last_sent_id = rows[-1]["id"]
                if not await self.flush_stream():
                    return None
            if len(rows) < REPLAY_BATCH:
                break
        await self.on_replay_end(replay)
        return replay

    async def on_list_subscribed(self) -> None:
        """Hook: the session-list subscription is registered; nothing is sent yet."""

    async def follow_session_list(self, user_id: str, after_id: int) -> str:
        """The person's session-list announcements: those after `after_id` still kept (when the
        client reconnects with Last-Event-ID), then live ones. Returns why it stopped."""
        reason = self._stop_reason()
        if reason is not None:
            return reason
        hub = self.ctx.hub
        sub = hub.subscribe_user(user_id)
        sub.on_drop = self._drop_connection
        self._subscriber = sub
        try:
            high = await session_list.last_id(self.ctx)
            last = high
            # Subscribed before the first frame: a change announced right after it is not lost.
            await self.on_list_subscribed()
            if 0 < after_id < high:
                position = after_id
                while True:
                    rows = await session_list.read_for_user(self.ctx, user_id, position, high, REPLAY_BATCH)
                    for row in rows:
                        data = orjson.dumps(session_list.frame_data(row), option=orjson.OPT_NON_STR_KEYS)
                        self.write(sse_frame(data, row["kind"].encode(), row["id"]))
                    if rows:
                        position = rows[-1]["id"]
                        if not await self.flush_stream():
                            return "client_gone"
                    if len(rows) < REPLAY_BATCH:
                        break
            hub.caught_up(sub, high)
            while True:
                reason = self._stop_reason(sub)
                if reason is not None:
                    return reason
                items = sub.take()
                if not items:
                    sub.waiter = asyncio.get_running_loop().create_future()
                    try:
                        await sub.waiter
                    finally:
                        sub.waiter = None
                    continue
                wrote = False
                for item in items:
                    if isinstance(item, EventFrame) and item.id > last:
                        self.write(item.data)
                        last = item.id
                        wrote = True
                if wrote and not await self.flush_stream():
                    return "client_gone"
        finally:
            self._subscriber = None
            hub.unsubscribe(sub, "finished")


def _consume_exception(future: asyncio.Future[Any]) -> None:
    """A heartbeat's flush may fail once the client is gone; that is expected."""
    if not future.cancelled():
        future.exception()
