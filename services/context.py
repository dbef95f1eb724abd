"""The application context: the long-lived objects every handler and service shares.

Built once by `server.py` (or a test fixture) and handed to the Tornado application as the
`ctx` setting. `server.py` attaches the long-lived services (hub, run driver, background loops).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg

from services.config import Config
from services.db import RowTurns
from services.errors import ServiceError
from services.health import DatabaseProbe
from services.login_cache import LoginCache
from services.metrics import LiveGauges
from services.secrets import SecretBox

if TYPE_CHECKING:
    # Only for the annotations: these modules import this one, never the other way round.
    from services.agents.driver import RunDriver
    from services.hub import Hub
    from services.periodic import PeriodicTask


@dataclass
class AppContext:
    config: Config
    pool: asyncpg.Pool
    dsn: str
    secrets: SecretBox
    db_probe: DatabaseProbe
    # bcrypt and other CPU-bound work; separate from the GitHub executor so a slow GitHub call
    # never delays a login.
    cpu_executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(4, "cpu"))
    github_executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(8, "github"))
    gauges: LiveGauges = field(default_factory=LiveGauges)
    # Login-session lookups; kept live by the hub's LISTEN connection (off without a hub).
    login_cache: LoginCache = field(default_factory=lambda: LoginCache(0.0))
    started_at: float = field(default_factory=time.monotonic)
    draining: bool = False
    # Requests take turns at a session row before they take a pool connection (services/db.py).
    row_turns: RowTurns = field(default_factory=RowTurns)
    # Long-lived services attached by server.py once they exist (None before, and in tests that
    # need none): the event hub, the run driver, and the background loops.
    hub: Hub | None = None
    runs: RunDriver | None = None
    sync: PeriodicTask | None = None  # services.agents.claude_remote.sync.session_sync() when CLAUDE_SYNC_ENABLED
    cleanup: PeriodicTask | None = None  # services.cleanup.orphan_cleanup()

    @classmethod
    def create(cls, config: Config, pool: asyncpg.Pool, dsn: str) -> AppContext:
        return cls(
            config=config,
            pool=pool,
            dsn=dsn,
            secrets=SecretBox(config.encryption_key or config.session_secret),
            db_probe=DatabaseProbe(pool),
            row_turns=RowTurns(config.db_lock_timeout_seconds),
            login_cache=LoginCache(config.login_cache_seconds),
        )

    def require_runs(self) -> RunDriver:
        """The run driver, or a 503 a client can retry (not attached yet, or not in this process)."""
        if self.runs is None:
            raise ServiceError(503, "Runs are not available on this server right now, please retry shortly")
        return self.runs

    def close_executors(self) -> None:
        self.cpu_executor.shutdown(wait=False, cancel_futures=True)
        self.github_executor.shutdown(wait=False, cancel_futures=True)
