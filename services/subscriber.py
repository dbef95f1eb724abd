"""The subscriber protocol: how a stream follows a chat session, or a person's session list, from
any point, on any replica. Every streaming route iterates one of these; the SSE handler only
writes what they yield.

**The rule (no gap, no duplicate).** Register with the hub *before* reading the table. Replay the
rows after the requested position in keyset batches; when a read returns less than a full batch,
hand the last id read to the hub (`caught_up`). Then take live items from the hub's queue, and
send an item only if its id is above the last id sent. Registering first means a row committed
while the replay runs is either in the replay or in the queue (appends to one session become
visible in id order, see services/event_log.py), and skipping ids at or below the last one sent
means nothing is sent twice.

**Live frames go straight to the stream.** While a live stream's coroutine waits with an empty
queue, the hub writes new frames itself to the stream's `LiveSink` (the SSE handler), under the
same rule (ids above the last one sent), without waking the coroutine: one shared chunk per
batch, written to each stream in turn (a thousand viewers are a thousand socket writes, not a
thousand coroutine wake-ups). Everything else (a replay still running, frames queued while the
coroutine writes, a status change) goes through the queue, in order: once anything is queued,
the hub queues behind it until the coroutine has emptied the queue and waits again.

A subscription ends (`StopReason`) when its stream closes it (`close(reason)`: the client went
away, the stream's lifetime is over), when the hub drops it (its queue overflowed), when the hub
stops (draining), or, for a session followed `until_run_ends`, when the session is not or no
longer running (only these last two are followed by `completed`: `ENDS_WITH_COMPLETED`). Only
the subscription leaves the hub. Model: Mercure's LocalSubscriber, whose history dispatch and
live queue meet in one `Receive()`.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Protocol

from services import event_log, session_list
from services.clock import now_iso
from services.context import AppContext
from services.sse import announcement_frame, json_frame, stored_event_frame

REPLAY_BATCH = 500


class StopReason(enum.StrEnum):
    """Why a subscription (and the stream writing it) ended."""

    CLIENT_GONE = "client_gone"  # the client hung up
    LIFETIME = "lifetime"  # STREAM_LIFETIME_SECONDS is over
    OVERFLOW = "overflow"  # the hub dropped it: its queue was full (the client reconnects)
    DRAINING = "draining"  # the hub stops (the process ends)
    FINISHED = "finished"  # the stream's own code left the hub (its writing loop ended)
    NOT_RUNNING = "not_running"  # followed until its run ends, and the session was not running
    RUN_ENDED = "run_ended"  # followed until its run ends, and the run ended
    ERROR = "error"  # the route failed after its headers were sent


# The reasons after which a stream sends `completed` (the others end it without, so a client
# reconnects with its Last-Event-ID).
ENDS_WITH_COMPLETED = frozenset({StopReason.NOT_RUNNING, StopReason.RUN_ENDED})


# ---- what the hub queues, and a stream's place in the hub ----------------------------------------


class EventFrame:
    """A stored event (or announcement) ready to write: its id and its encoded frame."""

    __slots__ = ("data", "id")

    def __init__(self, event_id: int, data: bytes) -> None:
        self.id = event_id
        self.data = data


class StatusChange:
    """The session row changed; `status` is the row's status after the change (None: row gone)."""

    __slots__ = ("status",)

    def __init__(self, status: str | None) -> None:
        self.status = status


class LiveSink(Protocol):
    """Where the hub writes a live stream's frames directly (the SSE handler)."""

    def write_live(self, chunk: bytes, frames: int, now: float, limit: int) -> bool:
        """Write and start flushing `chunk` (`frames` frames); False, writing nothing, when the
        frames so written and not flushed yet would then be more than `limit` (overflow)."""
        ...

    def dropped(self) -> None:
        """The hub dropped the stream (too far behind): cut its connection."""
        ...


class Subscriber:
    """One stream's place in the hub: a bounded queue, the coroutine waiting on it, the last id
    sent and where live frames go. The hub keeps it in its topic; only the stream's subscription
    (below) reads it or takes it out."""

    __slots__ = ("items", "key", "last_id", "limit", "needs_seed", "reason", "sink", "user_id", "waiter")

    def __init__(self, key: str, user_id: str | None, limit: int, needs_seed: bool) -> None:
        self.key = key
        self.user_id = user_id
        self.limit = limit
        self.needs_seed = needs_seed
        self.items: list[EventFrame | StatusChange] = []
        self.waiter: asyncio.Future[None] | None = None
        self.last_id = 0  # the newest id sent to the stream
        # Why the subscription ended, or None while it lasts.
        self.reason: StopReason | None = None
        # The stream's writer: takes live frames while `waiter` is pending; told when dropped.
        self.sink: LiveSink | None = None

    @property
    def closed(self) -> bool:
        return self.reason is not None

    def deliver(self, frames: list[EventFrame], joined: bytes, now: float) -> bool:
        """New frames (`joined`: their bytes, shared by every subscriber of the batch): written
        straight to the sink while the coroutine waits idle, else queued. False on overflow."""
        waiter = self.waiter
        if self.sink is None or waiter is None or waiter.done() or self.reason is not None:
            return self.push(frames)
        last_id = self.last_id
        if frames[0].id > last_id:
            chunk, count = joined, len(frames)
        else:
            fresh = [frame.data for frame in frames if frame.id > last_id]
            if not fresh:
                return True
            chunk, count = b"".join(fresh), len(fresh)
        self.last_id = frames[-1].id
        return self.sink.write_live(chunk, count, now, self.limit)

    def push(self, items: list[Any]) -> bool:
        """Queue shared items; False when that would overflow the queue."""
        if self.reason is not None:
            return True
        if len(self.items) + len(items) > self.limit:
            return False
        self.items.extend(items)
        self.wake()
        return True

    def take(self) -> list[EventFrame | StatusChange]:
        items, self.items = self.items, []
        return items

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self, reason: StopReason) -> None:
        if self.reason is None:
            self.reason = reason
        self.wake()


class Mark(enum.Enum):
    """Points in a subscription where a route may add frames of its own."""

    SUBSCRIBED = "subscribed"  # registered with the hub, nothing sent yet (session list)
    REPLAY_START = "replay_start"  # before the first replayed frame
    REPLAY_END = "replay_end"  # after the replay, before going live
    LIVE = "live"  # the session runs: live frames follow


@dataclass(slots=True)
class Replay:
    """What a session subscription replays; the routes' hooks read it."""

    chat_session_id: str
    after_id: int  # the position the replay starts after (0 after a history reset)
    boundary: int  # the newest id when the stream started: ids up to it are `_replayed`
    status: str | None  # the session's status when the stream started (None: row gone)
    requested_id: int  # what the client asked for (Last-Event-ID), 0 when nothing
    history_reset: bool = False  # the requested id was not in this session's history
    replayed: int = 0  # frames sent with `_replayed: true`
    final_status: str | None = None  # the status that ended a followed run


class _Subscription:
    """A hub registration and the position sent so far; `frames()` is the one way to read it.

    One async generator per stream, with no generator or coroutine nested in it while it waits:
    a process holds thousands of idle streams, and each suspended frame costs memory."""

    __slots__ = ("ctx", "reason", "replaying", "sub")

    def __init__(self, ctx: AppContext, sub: Subscriber) -> None:
        self.ctx = ctx
        self.sub = sub
        self.replaying = True  # until a replay read comes back short
        self.reason: StopReason | None = None

    @property
    def last_id(self) -> int:
        """The newest id sent (kept on the hub's subscriber, which writes live frames too)."""
        return self.sub.last_id

    @last_id.setter
    def last_id(self, value: int) -> None:
        self.sub.last_id = value

    def close(self, reason: StopReason = StopReason.FINISHED) -> None:
        """Leave the hub (idempotent); a waiting `frames()` wakes and ends with `reason`. The one
        way out of the hub: streams call it when their client goes or their lifetime is over."""
        if self.ctx.hub is not None:
            self.ctx.hub.unsubscribe(self.sub, reason)
        else:
            self.sub.close(reason)

    def attach(self, sink: LiveSink) -> None:
        """The stream that writes this subscription: the hub writes live frames to it directly
        while `frames()` waits idle, and tells it when it drops the subscription (overflow)."""
        self.sub.sink = sink

    async def frames(self, after_id: int) -> AsyncGenerator[bytes | Mark, None]:
        """Encoded frames (a batch per item) and the marks between them; when it ends, `reason`
        says why."""
        sub = self.sub
        try:
            for item in await self._before_replay(after_id):
                yield item
            while self.replaying and not self._stopped():
                chunk = await self._replay_chunk()
                if chunk:
                    yield chunk
            if self._stopped():
                return
            for item in self._after_replay():
                yield item
            loop = asyncio.get_running_loop()
            while self.reason is None and not self._stopped():
                items = sub.take()
                if items:
                    chunk = self._live_chunk(items)
                    if chunk:
                        yield chunk
                    continue
                # Waiting inline (not in Subscriber.wait) keeps an idle stream's frames few. While
                # it waits with an empty queue, the hub writes live frames to the sink itself.
                sub.waiter = loop.create_future()
                try:
                    await sub.waiter
                finally:
                    sub.waiter = None
        finally:
            self._leave()

    def _live_chunk(self, items: list[EventFrame | StatusChange]) -> bytes:
        """The frames of the hub's items after `last_id`; a status change that ends the followed
        run sets `reason` (the frames before it still go out)."""
        parts: list[bytes] = []
        for item in items:
            if isinstance(item, EventFrame):
                if item.id > self.last_id:
                    parts.append(item.data)
                    self.last_id = item.id
            elif self._ends_run(item.status):
                break
        return b"".join(parts)

    def _leave(self) -> None:
        self.close(StopReason.FINISHED)
        if self.reason is None:
            reason = self.sub.reason
            self.reason = reason if reason not in (None, StopReason.FINISHED) else StopReason.CLIENT_GONE

    def _stopped(self) -> bool:
        if self.sub.reason is not None:
            self.reason = self.sub.reason
        elif self.ctx.hub is None or self.ctx.hub.stopping:
            self.reason = StopReason.DRAINING
        return self.reason is not None

    # ---- what differs between a session and the session list ------------------------------------

    async def _before_replay(self, after_id: int) -> list[bytes | Mark]:
        raise NotImplementedError

    async def _replay_chunk(self) -> bytes:
        """The next batch of stored frames; clears `replaying` once a read comes back short (from
        there on the hub's queue has the rest)."""
        raise NotImplementedError

    def _after_replay(self) -> list[Mark]:
        return []

    def _ends_run(self, status: str | None) -> bool:
        """Whether a status change ends the subscription (a followed run that stopped running)."""
        return False


class SessionSubscription(_Subscription):
    """A chat session's stored events after a position, then its live ones (see module doc).

    With `all_live` nothing is marked `_replayed` (execute-remote: everything after the position
    belongs to the run the client is watching, even what was stored before it caught up)."""

    __slots__ = ("all_live", "chat_session_id", "replay", "until_run_ends")

    def __init__(self, ctx: AppContext, chat_session_id: str, *, until_run_ends: bool = True, all_live: bool = False):
        assert ctx.hub is not None
        super().__init__(ctx, ctx.hub.subscribe_session(chat_session_id))
        self.chat_session_id = chat_session_id
        self.until_run_ends = until_run_ends
        self.all_live = all_live
        self.replay: Replay | None = None

    async def _before_replay(self, after_id: int) -> list[bytes | Mark]:
        ctx, chat_session_id = self.ctx, self.chat_session_id
        # The status is read before the replay: if the run ends during the replay, its last events
        # are in the replay or queued ahead of the status change, never lost behind an early end.
        status = await event_log.session_status(ctx, chat_session_id)
        newest = await event_log.last_id(ctx, chat_session_id)
        replay = Replay(chat_session_id, max(after_id, 0), 0 if self.all_live else newest, status, after_id)
        known = 0 < after_id <= newest and await event_log.has_event(ctx, chat_session_id, after_id)
        if after_id != 0 and not known:
            replay.after_id = 0
            replay.history_reset = True
        self.replay = replay
        self.last_id = replay.after_id
        if self._stopped():
            return []
        return [self._history_reset_frame(), Mark.REPLAY_START] if replay.history_reset else [Mark.REPLAY_START]

    def _history_reset_frame(self) -> bytes:
        """The frame that tells a client its Last-Event-ID is not in this session's history."""
        assert self.replay is not None
        data = {
            "type": "history_reset",
            "lastEventId": self.replay.requested_id,
            "message": "The requested event is not in this session's history; replaying it from the start",
            "timestamp": now_iso(),
        }
        return json_frame(data, b"history_reset")

    async def _replay_chunk(self) -> bytes:
        ctx, replay = self.ctx, self.replay
        assert replay is not None and ctx.hub is not None
        rows = await event_log.read_texts_after(ctx, self.chat_session_id, self.last_id, REPLAY_BATCH)
        if len(rows) < REPLAY_BATCH:
            # The end of the table as of this read: from here on the hub's queue has the rest.
            ctx.hub.caught_up(self.sub, rows[-1]["id"] if rows else self.last_id)
            self.replaying = False
        if not rows:
            return b""
        chunk: list[bytes] = []
        for row in rows:
            if row["id"] <= replay.boundary:
                chunk.append(stored_event_frame(row, row["timestamp"]))
                replay.replayed += 1
            else:
                chunk.append(stored_event_frame(row))
        self.last_id = rows[-1]["id"]
        return b"".join(chunk)

    def _after_replay(self) -> list[Mark]:
        assert self.replay is not None
        if self.until_run_ends and self.replay.status != "running":
            self.replay.final_status = self.replay.status
            self.reason = StopReason.NOT_RUNNING
            return [Mark.REPLAY_END]
        return [Mark.REPLAY_END, Mark.LIVE]

    def _ends_run(self, status: str | None) -> bool:
        if not self.until_run_ends or status == "running":
            return False
        self.reason = StopReason.RUN_ENDED
        if self.replay is not None:
            self.replay.final_status = status
        return True


class ListSubscription(_Subscription):
    """A person's session-list announcements: those after a position still kept, then live ones."""

    __slots__ = ("high", "position", "user_id")

    def __init__(self, ctx: AppContext, user_id: str) -> None:
        assert ctx.hub is not None
        super().__init__(ctx, ctx.hub.subscribe_user(user_id))
        self.user_id = user_id
        self.position = 0
        self.high = 0

    async def _before_replay(self, after_id: int) -> list[bytes | Mark]:
        self.high = self.last_id = await session_list.last_id(self.ctx)
        self.position = after_id
        # Subscribed before the first frame: a change announced right after it is not lost.
        return [Mark.SUBSCRIBED]

    async def _replay_chunk(self) -> bytes:
        rows = []
        if 0 < self.position < self.high:
            rows = await session_list.read_for_user(self.ctx, self.user_id, self.position, self.high, REPLAY_BATCH)
        if len(rows) < REPLAY_BATCH:
            assert self.ctx.hub is not None
            self.ctx.hub.caught_up(self.sub, self.high)
            self.replaying = False
        if not rows:
            return b""
        self.position = rows[-1]["id"]
        return b"".join(announcement_frame(row, session_list.frame_data(row)) for row in rows)
