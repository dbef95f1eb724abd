"""A background loop that runs one pass now and then, surviving failures of a single pass."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from services.db import database_outage, log_failure

log = logging.getLogger(__name__)


class PeriodicTask:
    """Runs `run_pass()` after `initial_delay` seconds, then every `interval` seconds.

    A pass that fails is logged (once per outage when the database is away) and the loop goes on; a
    pass's result is logged when `worth_logging(result)` says so.
    """

    def __init__(
        self,
        name: str,
        run_pass: Callable[[], Awaitable[Any]],
        interval: float,
        initial_delay: float = 0.0,
        worth_logging: Callable[[Any], bool] = bool,
    ) -> None:
        self.name = name
        self.run_pass = run_pass
        self.interval = interval
        self.initial_delay = initial_delay
        self.worth_logging = worth_logging
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        await asyncio.sleep(self.initial_delay)
        while True:
            try:
                result = await self.run_pass()
                database_outage.recovered()
                if self.worth_logging(result):
                    log.info("%s: %s", self.name, result)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log_failure(log, exc, "%s failed", self.name)
            await asyncio.sleep(self.interval)
