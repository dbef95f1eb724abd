"""The hub: live fan-out of the event log to the streams of this process.

One per process (`ctx.hub`). It holds one LISTEN connection of its own, never a pooled one: a
LISTEN belongs to its connection for as long as the process lives, while a pooled connection
serves every request in turn. It listens on four channels:

- `webedt_events` (payload: chat session id): new events were committed for that session;
- `webedt_session_status` (payload: chat session id): the session row changed;
- `webedt_session_list` (payload: user id): a session-list announcement was committed;
- `webedt_auth` (payload: user id): a person's row or login sessions changed; their remembered
  login-session lookups are dropped (services/login_cache.py, which is live only while this
  connection is up).

A notification only marks a topic dirty. The topic's worker then reads the new rows after the
topic's cursor, once per process per wake-up however many subscribers there are, encodes each
event once into its SSE frame, and hands the shared bytes to every subscriber: written straight
to a live stream that waits idle, else appended to its bounded queue (services/subscriber.py).
A subscriber too far behind (its queue, or its frames not yet flushed, over the limit) is
dropped (its stream ends; the client reconnects with Last-Event-ID and loses nothing), so a
slow reader never slows the others.

Ordering: a subscriber registers first and then replays from the table. Rows the hub had read
before the registration are in that replay; rows it reads afterwards reach the queue; the
subscriber skips ids it has already sent. A topic created by a new subscriber has no cursor
yet: the first subscriber to finish its replay sets it (`caught_up`), and a later, lower
position rewinds it, so no subscriber ever misses a row (appends to one session are serialised,
see services/event_log.py, so "after id N" is exact).

The LISTEN connection reconnects by itself with backoff and pings the server periodically (a
dead peer is otherwise noticed only when TCP gives up). Notifications sent while it was down
are lost, so after every (re)connect each topic reads again from its cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from services import event_log, login_cache, session_list
from services.context import AppContext
from services.db import UNAVAILABLE_ERRORS, database_outage, queries
from services.logs import detached_context
from services.sse import announcement_frame, stored_event_frame
from services.subscriber import EventFrame, StatusChange, StopReason, Subscriber

log = logging.getLogger("webedt.hub")

T = TypeVar("T", bound="_Topic")

# Frames a subscriber may have queued before it is dropped. Generous: a viewer that is this far
# behind reconnects and replays from the table faster than it would drain the queue.
DEFAULT_QUEUE_LIMIT = 2000
READ_BATCH = 500
PING_INTERVAL_SECONDS = 10.0
PING_TIMEOUT_SECONDS = 5.0
RECONNECT_MAX_DELAY_SECONDS = 5.0


class _Topic:
    """Subscribers that read the same rows, the position read so far, and the reading task."""

    __slots__ = ("cursor", "dirty", "key", "status_dirty", "worker")

    def __init__(self, key: str) -> None:
        self.key = key
        self.cursor: int | None = None
        self.dirty = False
        self.status_dirty = False
        self.worker: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        raise NotImplementedError


class _SessionTopic(_Topic):
    """The streams of one chat session."""

    __slots__ = ("subscribers",)

    def __init__(self, chat_session_id: str) -> None:
        super().__init__(chat_session_id)
        self.subscribers: set[Subscriber] = set()

    def __len__(self) -> int:
        return len(self.subscribers)


class _ListTopic(_Topic):
    """The session-list streams of every person on this process (one table, one cursor), by
    person: an announcement goes only to its person's streams."""

    __slots__ = ("by_user",)

    def __init__(self) -> None:
        super().__init__("")
        self.by_user: dict[str, set[Subscriber]] = {}

    def __len__(self) -> int:
        return sum(len(group) for group in self.by_user.values())


# ---- the hub ------------------------------------------------------------------------------------


class Hub:
    """Per-process fan-out of session events and session-list announcements (see module doc)."""

    def __init__(
        self,
        ctx: AppContext,
        *,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
        ping_interval: float = PING_INTERVAL_SECONDS,
    ) -> None:
        self.ctx = ctx
        self.queue_limit = queue_limit
        self.ping_interval = ping_interval
        self.stopping = False
        self._sessions: dict[str, _SessionTopic] = {}
        self._list = _ListTopic()
        self._session_subscribers = 0
        self._list_subscribers = 0
        self._conn: asyncpg.Connection | None = None
        self._connected = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._ever_connected = False
        self.listener_pid: int | None = None
        self.reconnects = 0
        self.dropped = 0
        self.frames_encoded = 0
        self._barriers: dict[str, asyncio.Future[None]] = {}

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self, wait_seconds: float = 10.0) -> None:
        """Start the LISTEN supervisor; wait (bounded) for the first connection."""
        self._supervisor = asyncio.create_task(self._supervise(), name="hub-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), wait_seconds)

    def end_list_streams(self) -> None:
        """End the session-list streams (draining): a bare EventSource reconnects them to another
        replica. Streams of sessions stay, fed until their runs end or the hub stops."""
        for group in list(self._list.by_user.values()):
            for sub in list(group):
                self._remove(sub, StopReason.DRAINING)

    async def stop(self) -> None:
        """End every subscription (draining: the streams close and clients reconnect
        elsewhere), then close the LISTEN connection and stop the readers."""
        self.stopping = True
        for topic in list(self._sessions.values()):
            for sub in list(topic.subscribers):
                self._remove(sub, StopReason.DRAINING)
        self.end_list_streams()
        # Let the woken streams write their last bytes before the listener goes away.
        await asyncio.sleep(0)
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
        workers = [t.worker for t in [*self._sessions.values(), self._list] if t.worker is not None]
        for worker in workers:
            worker.cancel()
        for worker in workers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await worker
        self._sessions.clear()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def stats(self) -> dict[str, Any]:
        """Counters for health pages and tests."""
        return {
            "connected": self.connected,
            "listenerPid": self.listener_pid,
            "reconnects": self.reconnects,
            "sessionTopics": len(self._sessions),
            "sessionSubscribers": self._session_subscribers,
            "listSubscribers": self._list_subscribers,
            "subscribers": self._session_subscribers + self._list_subscribers,
            "dropped": self.dropped,
            "framesEncoded": self.frames_encoded,
        }

    # ---- subscriptions --------------------------------------------------------------------------

    def subscribe_session(self, chat_session_id: str, *, limit: int | None = None) -> Subscriber:
        """Register for a chat session's new events and status changes. Register BEFORE replaying
        from the table, then call `caught_up` with the last id the replay read."""
        if self.stopping:
            sub = Subscriber(chat_session_id, None, 0, needs_seed=False)
            sub.close(StopReason.DRAINING)
            return sub
        topic = self._sessions.get(chat_session_id)
        if topic is None:
            topic = self._sessions[chat_session_id] = _SessionTopic(chat_session_id)
        sub = Subscriber(chat_session_id, None, limit or self.queue_limit, needs_seed=topic.cursor is None)
        topic.subscribers.add(sub)
        self._session_subscribers += 1
        return sub

    def subscribe_user(self, user_id: str, *, limit: int | None = None) -> Subscriber:
        """Register for a person's session-list announcements (same protocol as above)."""
        sub = Subscriber("", user_id, limit or self.queue_limit, needs_seed=self._list.cursor is None)
        if self.stopping:
            sub.close(StopReason.DRAINING)
            return sub
        self._list.by_user.setdefault(user_id, set()).add(sub)
        self._list_subscribers += 1
        return sub

    def caught_up(self, sub: Subscriber, position: int) -> None:
        """The subscriber's replay has read everything up to `position` (call it right after the
        last replay read). Seeds the topic's cursor when the topic was new."""
        if not sub.needs_seed or sub.closed:
            return
        sub.needs_seed = False
        topic: _Topic | None = self._list if sub.user_id is not None else self._sessions.get(sub.key)
        if topic is None:
            return
        if topic.cursor is None:
            topic.cursor = position
        elif position < topic.cursor:
            # Another subscriber seeded past this one's replay: read the gap again (the others
            # skip ids they already sent).
            topic.cursor = position
            topic.dirty = True
        self._kick(topic)

    def unsubscribe(self, sub: Subscriber, reason: StopReason = StopReason.CLIENT_GONE) -> None:
        """Leave the hub (idempotent) and wake the stream's coroutine. Streams leave through their
        subscription's `close` (services/subscriber.py), which calls this."""
        self._remove(sub, reason)

    def _remove(self, sub: Subscriber, reason: StopReason) -> None:
        already_closed = sub.closed
        sub.close(reason)
        if sub.user_id is not None:
            group = self._list.by_user.get(sub.user_id)
            if group is not None and sub in group:
                group.discard(sub)
                self._list_subscribers -= 1
                if not group:
                    del self._list.by_user[sub.user_id]
                if not self._list.by_user:
                    self._list.cursor = None
            return
        topic = self._sessions.get(sub.key)
        if topic is not None and sub in topic.subscribers:
            topic.subscribers.discard(sub)
            self._session_subscribers -= 1
            if not topic.subscribers:
                del self._sessions[sub.key]
        if not already_closed and reason is StopReason.OVERFLOW:
            self.dropped += 1

    # ---- notifications --------------------------------------------------------------------------

    async def barrier(self, timeout: float = 10.0) -> None:
        """Return once this process has heard every notification committed before the call (they
        arrive in commit order): after it, a change made anywhere is seen here. For tests."""
        token = f"{login_cache.BARRIER_PREFIX}{random.getrandbits(64):x}"
        heard = self._barriers[token] = asyncio.get_running_loop().create_future()
        try:
            await queries.auth_sessions.notify_login_change(self.ctx.pool, payload=token)
            await asyncio.wait_for(heard, timeout)
        finally:
            self._barriers.pop(token, None)

    def _on_notify(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        if channel == login_cache.CHANNEL:
            if payload.startswith(login_cache.BARRIER_PREFIX):
                heard = self._barriers.get(payload)
                if heard is not None and not heard.done():
                    heard.set_result(None)
            else:
                self.ctx.login_cache.forget_user(payload)
        elif channel == event_log.EVENTS_CHANNEL:
            topic = self._sessions.get(payload)
            if topic is not None:
                topic.dirty = True
                self._kick(topic)
        elif channel == event_log.STATUS_CHANNEL:
            topic = self._sessions.get(payload)
            if topic is not None:
                topic.status_dirty = True
                self._kick(topic)
        elif channel == session_list.LIST_CHANNEL and payload in self._list.by_user:
            self._list.dirty = True
            self._kick(self._list)

    def _catch_up_all(self) -> None:
        """After a (re)connect: notifications may have been lost, so every topic reads again."""
        for topic in self._sessions.values():
            topic.dirty = topic.status_dirty = True
            self._kick(topic)
        if self._list.by_user:
            self._list.dirty = True
            self._kick(self._list)

    def _kick(self, topic: _Topic) -> None:
        """Start the topic's reader unless one runs, it has no cursor yet, or nothing is pending."""
        if topic.worker is not None or topic.cursor is None or self.stopping:
            return
        if not (topic.dirty or topic.status_dirty) or not len(topic):
            return
        if isinstance(topic, _SessionTopic):
            work = self._run(topic, self._read_session)
        else:
            work = self._run(self._list, self._read_list)
        topic.worker = asyncio.create_task(work, name=f"hub-read-{topic.key or 'list'}", context=detached_context())

    # ---- readers --------------------------------------------------------------------------------

    async def _run(self, topic: T, reader: Callable[[T, bool], Awaitable[None]]) -> None:
        delay = 0.05
        try:
            while (topic.dirty or topic.status_dirty) and len(topic) and not self.stopping:
                status_wanted = topic.status_dirty
                topic.dirty = topic.status_dirty = False
                try:
                    await reader(topic, status_wanted)
                    delay = 0.05
                except Exception as exc:
                    # The database hiccupped: keep the work pending and try again shortly.
                    if isinstance(exc, UNAVAILABLE_ERRORS):
                        database_outage.failed("hub read", exc)
                    else:
                        log.warning("hub read failed for %s: %s", topic.key or "session list", exc.__class__.__name__)
                    topic.dirty = True
                    topic.status_dirty = topic.status_dirty or status_wanted
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RECONNECT_MAX_DELAY_SECONDS)
        finally:
            topic.worker = None
        # No await since the loop test: a wake-up that arrived meanwhile is still pending here.
        self._kick(topic)

    async def _read_session(self, topic: _SessionTopic, status_wanted: bool) -> None:
        # Events first: everything committed before the status change is delivered before it.
        while topic.cursor is not None and len(topic):
            start = topic.cursor
            rows = await event_log.read_texts_after(self.ctx, topic.key, start, READ_BATCH)
            rewound = topic.cursor != start
            if rows:
                frames = [EventFrame(r["id"], stored_event_frame(r)) for r in rows]
                self.frames_encoded += len(frames)
                if not rewound:
                    topic.cursor = rows[-1]["id"]
                self._dispatch_frames(list(topic.subscribers), frames)
            if not rewound and len(rows) < READ_BATCH:
                break
        if status_wanted and len(topic):
            status = await event_log.session_status(self.ctx, topic.key)
            self._dispatch(list(topic.subscribers), [StatusChange(status)])

    async def _read_list(self, topic: _ListTopic, _status_wanted: bool) -> None:
        while topic.cursor is not None and topic.by_user:
            start = topic.cursor
            rows = await session_list.read_after(self.ctx, start, READ_BATCH)
            for row in rows:
                group = topic.by_user.get(row["user_id"])
                if group:
                    frame = EventFrame(row["id"], announcement_frame(row, session_list.frame_data(row)))
                    self.frames_encoded += 1
                    self._dispatch_frames(list(group), [frame])
            if topic.cursor != start:
                continue  # rewound by a late subscriber while reading: read the gap again
            if rows:
                topic.cursor = rows[-1]["id"]
            if len(rows) < READ_BATCH:
                break

    def _dispatch_frames(self, subscribers: list[Subscriber], frames: list[EventFrame]) -> None:
        """New frames to every subscriber (one joined chunk, shared by the direct writes)."""
        joined = frames[0].data if len(frames) == 1 else b"".join(frame.data for frame in frames)
        now = asyncio.get_running_loop().time()
        self._drop([sub for sub in subscribers if not sub.deliver(frames, joined, now)])

    def _dispatch(self, subscribers: list[Subscriber], items: list[Any]) -> None:
        self._drop([sub for sub in subscribers if not sub.push(items)])

    def _drop(self, overflowed: list[Subscriber]) -> None:
        for sub in overflowed:
            log.info("dropping a subscriber of %s: it is too far behind", sub.key or "the session list")
            self._remove(sub, StopReason.OVERFLOW)
            if sub.sink is not None:
                sub.sink.dropped()

    # ---- the LISTEN connection ------------------------------------------------------------------

    async def _connect(self) -> tuple[asyncpg.Connection, asyncio.Event]:
        conn = await asyncpg.connect(
            self.ctx.dsn, timeout=10, server_settings={"application_name": "webedt-hub-listener"}
        )
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _c: lost.set())
        try:
            channels = (
                event_log.EVENTS_CHANNEL,
                event_log.STATUS_CHANNEL,
                session_list.LIST_CHANNEL,
                login_cache.CHANNEL,
            )
            for channel in channels:
                await conn.add_listener(channel, self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        return conn, lost

    async def _supervise(self) -> None:
        delay = 0.1
        while not self.stopping:
            try:
                conn, lost = await self._connect()
            except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
                database_outage.failed("hub cannot LISTEN", exc)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, RECONNECT_MAX_DELAY_SECONDS)
                continue
            delay = 0.1
            self._conn = conn
            self.listener_pid = conn.get_server_pid()
            if self._ever_connected:
                self.reconnects += 1
                log.debug("hub LISTEN connection re-established; catching up from the table")
            database_outage.recovered()
            self._ever_connected = True
            self._connected.set()
            self.ctx.login_cache.set_live(True)  # empty: invalidations sent while down are lost
            self._catch_up_all()
            try:
                while not self.stopping and not conn.is_closed():
                    try:
                        await asyncio.wait_for(lost.wait(), self.ping_interval)
                        break
                    except TimeoutError:
                        pass
                    try:
                        await asyncio.wait_for(queries.database.ping_database(conn), PING_TIMEOUT_SECONDS)
                        database_outage.recovered()
                    except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError):
                        # Any of these (InternalClientError too) would otherwise end the
                        # supervisor, and with it every live stream of this replica.
                        break
            finally:
                self.ctx.login_cache.set_live(False)
                self._connected.clear()
                self._conn = None
                self.listener_pid = None
                if not conn.is_closed():
                    conn.terminate()
            if not self.stopping:
                database_outage.failed("hub", "LISTEN connection lost")
