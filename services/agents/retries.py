"""How a run retries upstream failures (one policy for every backend).

Each failed operation is tried again after a backoff that starts at the poll interval and doubles
up to MAX_BACKOFF_SECONDS, and never sooner than upstream's `Retry-After` asked; a `Retry-After`
told to one path (a poll) holds every path of the run (the push channel's backfill waits it out
too). An operation that has failed for the whole retry window, without a success in between,
ends the run: a flaky upstream that answers now and then keeps the run going, one that stays
broken ends it.
"""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger(__name__)

# Longest wait between two attempts while the upstream is failing.
MAX_BACKOFF_SECONDS = 30.0


class Retries:
    """The retry state of one run."""

    def __init__(self, session_id: str, first_backoff_seconds: float, window_seconds: float) -> None:
        self.session_id = session_id
        self.first_backoff_seconds = first_backoff_seconds
        self.window_seconds = window_seconds
        self.backoff = first_backoff_seconds
        # Since when each upstream operation has failed without a success in between.
        self.failing_since: dict[str, float] = {}
        # Until when upstream asked us to send nothing (`Retry-After`).
        self.quiet_until = 0.0

    def succeeded(self, operation: str | None = None) -> None:
        """`operation` (None: everything the run did) went through."""
        if operation is not None:
            self.failing_since.pop(operation, None)
            return
        self.failing_since.clear()
        self.backoff = self.first_backoff_seconds

    def failed(self, operation: str, message: str, retry_after: float | None = None) -> float | None:
        """The delay before trying again, or None when `operation` has failed for the whole window."""
        now = time.monotonic()
        if retry_after:
            self.quiet_until = max(self.quiet_until, now + retry_after)
        elapsed = now - self.failing_since.setdefault(operation, now)
        if elapsed >= self.window_seconds:
            log.warning("run of session %s gives up after %.1f s: %s", self.session_id, elapsed, message)
            return None
        log.info("run of session %s retries: %s", self.session_id, message)
        delay = min(self.backoff, MAX_BACKOFF_SECONDS, max(self.window_seconds - elapsed, 0.0))
        self.backoff = min(self.backoff * 2, MAX_BACKOFF_SECONDS)
        return max(delay, retry_after or 0.0)

    async def wait_if_told(self) -> None:
        """Wait out a `Retry-After` another path of the run was told."""
        wait = self.quiet_until - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
