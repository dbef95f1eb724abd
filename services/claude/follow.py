"""Following a run's events over its backend's push channel, with polling as the fallback.

The replica that holds a run's lease (and only it: the follower lives inside the run's task)
keeps one `PushChannel` open for the run's remote session. On every (re)connect it backfills once
through `events_after` from the run's cursor, so that what the channel missed while it was down
is stored before what it pushes next; events are keyed by upstream uuid, so the backfill, the
channel and a fallback poll may overlap without an event stored twice.

While the channel is `live` the run loop does not poll the event list; it checks the session
status slowly (`STATUS_CHECK_SECONDS`) and whenever the follower nudges it (an end-of-turn event,
a status frame, the channel closing). A channel that cannot open or keeps closing is retried with
jittered exponential backoff, the run polling meanwhile; after `MAX_FAILURES` failures in a row,
or at once when the upstream refuses the upgrade, the run follows by polling alone and the
channel is tried again after `RETRY_LATER_SECONDS`.

The follower speaks only `PushChannel`, `PushItem` and `events_after`, so any backend whose
provider implements `open_push` is followed the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Protocol

from services.claude.client import UpstreamError
from services.claude.provider import AgentProvider, PushChannel, PushItem
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

    async def backfill(self, token: str) -> None:
        """Store every event after the run's cursor (all pages), before pushed ones."""

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
            try:
                token = await self.run.follow_token()
                assert self.run.remote_id is not None
                channel = await self.run.provider.open_push(token, self.run.remote_id)
                if channel is None:
                    return  # this backend has no push (or it is turned off): the run polls
                if opened_before:
                    UPSTREAM_PUSH_RECONNECTS.inc()
                opened_before = True
                failures = await self._listen(channel, token, failures)
            except UpstreamError as exc:
                log.info("event channel of session %s: %s", self.run.session_id, exc.message)
                if refused(exc):
                    failures = MAX_FAILURES
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
                await asyncio.sleep(RETRY_LATER_SECONDS)
            else:
                await asyncio.sleep(backoff_seconds(failures))

    async def _listen(self, channel: PushChannel, token: str, failures: int) -> int:
        """Backfill, then store what the channel pushes until it closes; the failures in a row
        that remain (reset once the channel delivered something)."""
        UPSTREAM_PUSH_OPEN.inc()
        self.channel = channel
        try:
            await self.run.backfill(token)
            self.live = True
            self.run.nudge()  # from now on the run loop waits for the channel
            while (item := await channel.receive()) is not None:
                failures = 0
                await self.run.take(item)
        finally:
            self.live = False
            self.channel = None
            UPSTREAM_PUSH_OPEN.dec()
            await channel.close()
            self.run.nudge()  # poll at once until the channel is back
        return failures
