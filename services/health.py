"""Database health, probed at most once a second however often /health is asked."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from services.db import UNAVAILABLE_ERRORS, database_outage, queries

PROBE_TTL_SECONDS = 1.0
PROBE_TIMEOUT_SECONDS = 2.0


class DatabaseProbe:
    """Caches the answer of a ping (`queries.database.ping_database`); concurrent callers share one probe.

    A caller waits at most PROBE_TIMEOUT_SECONDS from the start of the probe it shares, and is
    never held up by the probe's own cleanup: against a frozen PostgreSQL a cancelled query keeps
    its connection until the server answers the cancellation (up to asyncpg's command timeout),
    so the probe is not cancelled but left to finish in the background, and meanwhile every
    caller hears "unavailable" at once.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._state = "unknown"
        self._checked_at = float("-inf")
        self._running: asyncio.Task[str] | None = None
        self._running_since = 0.0

    async def _probe(self) -> str:
        try:
            await queries.database.ping_database(self.pool)
        except UNAVAILABLE_ERRORS as exc:
            database_outage.failed("health probe", exc)
            return "unavailable"
        except asyncpg.PostgresError as exc:
            # The server answers but refuses (it is starting up or shutting down, say).
            database_outage.failed("health probe", exc.__class__.__name__)
            return "unavailable"
        database_outage.recovered()
        return "ok"

    def _finished(self, task: asyncio.Task[str]) -> None:
        if self._running is task:
            self._running = None
        if not task.cancelled():
            self._state, self._checked_at = task.result(), time.monotonic()

    async def state(self) -> str:
        """Either "ok" or "unavailable", at most a second old, within PROBE_TIMEOUT_SECONDS."""
        if time.monotonic() - self._checked_at < PROBE_TTL_SECONDS:
            return self._state
        if self._running is None:
            self._running = asyncio.ensure_future(self._probe())
            self._running_since = time.monotonic()
            self._running.add_done_callback(self._finished)
        running = self._running
        wait = self._running_since + PROBE_TIMEOUT_SECONDS - time.monotonic()
        if wait > 0:
            await asyncio.wait({running}, timeout=wait)
        if running.done() and not running.cancelled():
            return running.result()
        database_outage.failed("health probe", f"no answer within {PROBE_TIMEOUT_SECONDS:.0f} s")
        return "unavailable"
