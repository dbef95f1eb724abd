"""Following a run's events over its backend's push channel, with polling as the fallback.

The replica that holds a run's lease (and only it: the follower lives inside the run's task)
keeps one `PushChannel` open for the run's remote session. On every (re)connect it backfills once
through `events_after` from the run's cursor, so that what the channel missed while it was down
is stored before what it pushes next; events are keyed by upstream uuid, so the backfill, the
channel and a fallback poll may overlap without an event stored twice.

While the channel is `live` the run loop does not poll the event list; it checks the session
status slowly (`STATUS_CHECK_SECONDS`) and whenever the follower nudges it (an end-of-turn event,
a status frame, the channel closing). A channel can be alive in name only (it stalls with its
connection up, or never delivers a frame): when it has delivered no event for
`SILENCE_SECONDS`, the follower reads the list over REST; if that finds events the channel did
not deliver, the channel is closed and counts as a failure (a silent agent costs one list read
per `SILENCE_SECONDS`, nothing more). A dead connection is noticed by the channel itself
(WebSocket pings). A channel that cannot open, or closes within `STABLE_SECONDS` of opening (a
socket that flaps), counts as a failure; failures are retried with jittered exponential backoff
(at least as long as an upstream `Retry-After` asked), the run polling meanwhile; after
`MAX_FAILURES` failures in a row, or at once when the upstream refuses the upgrade, the run
follows by polling alone and the channel is tried again after `RETRY_LATER_SECONDS`.

The follower speaks only `PushChannel`, `PushItem` and `events_after`, so any backend whose
provider implements `open_push` is followed the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Protocol

from services.agents.backend import AgentProvider, PushChannel, PushItem, UpstreamError
from services.db import UNAVAILABLE_ERRORS, database_outage
from services.metrics import UPSTREAM_PUSH_FALLBACKS, UPSTREAM_PUSH_OPEN, UPSTREAM_PUSH_RECONNECTS

log = logging.getLogger(__name__)

# Failures in a row (connects refused or broken, channels closing before delivering anything)
# after which the run is followed by polling only, for a while.
MAX_FAILURES = 5
RETRY_LATER_SECONDS = 60.0
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
# How often a run with a live channel still reads the session status (a safety net).
STATUS_CHECK_SECONDS = 30.0
# A live channel that delivered no event for this long is checked against the REST list.
SILENCE_SECONDS = 5.0
# A channel must stay open this long before its failures are forgiven (else it flaps).
STABLE_SECONDS = 10.0


def backoff_seconds(failures: int) -> float:
    """Exponential in the failures so far, capped, with jitter so that runs do not reconnect in step."""
    ceiling = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(failures - 1, 0))
    return random.uniform(ceiling / 2, ceiling)


def refused(exc: UpstreamError) -> bool:
    """The upstream answered the upgrade with a client error: the channel is not for us now."""
    return exc.kind == "http" and exc.status is not None and 400 <= exc.status < 500 and exc.status not in (408, 429)


class FollowedRun(Protocol):
    """What the follower needs from the run it follows."""

    session_id: str
    provider: AgentProvider
    remote_id: str | None

    async def follow_token(self) -> str:
        """The upstream credential for the run's calls."""

    async def backfill(self, token: str) -> int:
        """Store every event after the run's cursor (all pages), before pushed ones; how many
        were new."""

    async def take(self, item: PushItem) -> None:
        """Store a pushed event / react to a pushed status."""

    def nudge(self) -> None:
        """Make the run loop look at the run now."""


class PushFollower:
    """Keeps a run's push channel open while the run's task runs; `live` once backfilled."""

    def __init__(self, run: FollowedRun) -> None:
        self.run = run
        self.channel: PushChannel | None = None
        self.live = False
        self.task: asyncio.Task[None] | None = None
        # When the live channel last delivered an event (or was last found complete by a check).
        self.last_event_at = 0.0

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.create_task(self._follow(), name=f"push-{self.run.session_id}")

    async def stop(self) -> None:
        """Close the channel and stop reconnecting (the run lost its lease, ended, or the replica stops)."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    async def interrupt(self) -> bool:
        """Interrupt over the live channel; False when there is none or it did not confirm."""
        channel = self.channel
        if not self.live or channel is None:
            return False
        return await channel.interrupt()

    async def _follow(self) -> None:
        failures = 0
        opened_before = False
        while True:
            retry_after = 0.0
            try:
                token = await self.run.follow_token()
                assert self.run.remote_id is not None
                channel = await self.run.provider.open_push(token, self.run.remote_id)
                if channel is None:
                    return  # this backend has no push (or it is turned off): the run polls
                if opened_before:
                    UPSTREAM_PUSH_RECONNECTS.inc()
                opened_before = True
                opened_at = time.monotonic()
                await self._listen(channel, token)
                failures = 0 if time.monotonic() - opened_at >= STABLE_SECONDS else failures
            except UpstreamError as exc:
                log.info("event channel of session %s: %s", self.run.session_id, exc.message)
                retry_after = exc.retry_after or 0.0
                if refused(exc):
                    failures = MAX_FAILURES
            except ChannelStalled:
                log.info("event channel of session %s missed events; reconnecting", self.run.session_id)
            except UNAVAILABLE_ERRORS as exc:  # the run loop deals with the database being away
                database_outage.failed(f"event channel of session {self.run.session_id}", exc)
            except Exception:  # credentials gone: the run loop deals with those too
                log.warning("event channel of session %s failed", self.run.session_id, exc_info=True)
            failures += 1
            if failures >= MAX_FAILURES:
                UPSTREAM_PUSH_FALLBACKS.inc()
                log.info(
                    "session %s follows by polling; its event channel is tried again in %.0f s",
                    self.run.session_id,
                    RETRY_LATER_SECONDS,
                )
                failures = 0
                await asyncio.sleep(max(RETRY_LATER_SECONDS, retry_after))
            else:
                await asyncio.sleep(max(backoff_seconds(failures), retry_after))

    async def _listen(self, channel: PushChannel, token: str) -> None:
        """Backfill, then store what the channel pushes until it closes (ChannelStalled when the
        silence check found events it did not deliver)."""
        UPSTREAM_PUSH_OPEN.inc()
        self.channel = channel
        watchdog: asyncio.Task[None] | None = None
        try:
            await self.run.backfill(token)
            self.live = True
            self.last_event_at = time.monotonic()
            watchdog = asyncio.create_task(
                self._watch_silence(channel, token), name=f"push-watch-{self.run.session_id}"
            )
            self.run.nudge()  # from now on the run loop waits for the channel
            while (item := await channel.receive()) is not None:
                if item.event is not None or item.status is not None:
                    self.last_event_at = time.monotonic()
                await self.run.take(item)
            if watchdog.done() and not watchdog.cancelled() and watchdog.exception() is None:
                raise ChannelStalled
        finally:
            self.live = False
            self.channel = None
            if watchdog is not None:
                watchdog.cancel()
            UPSTREAM_PUSH_OPEN.dec()
            await channel.close()
            self.run.nudge()  # poll at once until the channel is back

    async def _watch_silence(self, channel: PushChannel, token: str) -> None:
        """Return (after closing the channel) once a silence check finds events the channel did
        not deliver; runs until cancelled otherwise."""
        while True:
            await asyncio.sleep(max(self.last_event_at + SILENCE_SECONDS - time.monotonic(), 0.1))
            if time.monotonic() - self.last_event_at < SILENCE_SECONDS:
                continue
            try:
                missed = await self.run.backfill(token)
            except Exception:
                log.info("silence check of session %s failed", self.run.session_id, exc_info=True)
                missed = 0
            self.last_event_at = time.monotonic()
            if missed:
                await channel.close()
                return


class ChannelStalled(Exception):
    """The channel stayed open but a REST read found events it had not delivered."""
