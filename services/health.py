"""Database health, probed at most once a second however often /health is asked."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from services.db import UNAVAILABLE_ERRORS, database_outage, queries

PROBE_TTL_SECONDS = 1.0
PROBE_TIMEOUT_SECONDS = 2.0
PROBE_FAILURES: tuple[type[BaseException], ...] = (*UNAVAILABLE_ERRORS, TimeoutError)


class DatabaseProbe:
    """Caches the answer of a ping (`queries.database.ping_database`); concurrent callers share one probe."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._state = "unknown"
        self._checked_at = float("-inf")
        self._running: asyncio.Task[str] | None = None

    async def _probe(self) -> str:
        try:
            await asyncio.wait_for(queries.database.ping_database(self.pool), timeout=PROBE_TIMEOUT_SECONDS)
        except PROBE_FAILURES as exc:
            database_outage.failed("health probe", exc)
            return "unavailable"
        database_outage.recovered()
        return "ok"

    async def state(self) -> str:
        """Either "ok" or "unavailable", at most a second old."""
        if time.monotonic() - self._checked_at < PROBE_TTL_SECONDS:
            return self._state
        if self._running is None:
            self._running = asyncio.ensure_future(self._probe())
        running = self._running
        try:
            state = await asyncio.shield(running)
        finally:
            if self._running is running and running.done():
                self._running = None
        self._state, self._checked_at = state, time.monotonic()
        return state
