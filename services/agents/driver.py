"""The run driver: owns this replica's runs on every backend, and proves this process is alive.

**Ownership: a lease row, and liveness judged by PostgreSQL.** `chat_sessions.run_owner` names
the process that drives the run (the record of who drives; `worker_last_activity` is its
heartbeat, renewed for all of a process's runs by one UPDATE every lease/4 seconds). Whether that
process is alive is told by one session-level advisory lock per process, held on a connection of
its own (`Liveness`): PostgreSQL drops it by itself when the connection ends, whatever ended the
process. Every `RUN_ADOPT_INTERVAL_SECONDS` each replica runs one cheap query that takes over
running sessions whose owner's lock is free (`run_driver_gone`, migration 0008), so a killed
driver's runs go on elsewhere within a second or two, and a stopping one's at once (it releases
them). A driver that is only stalled still holds its lock and keeps its runs: two drivers never
share a run. A process that loses its liveness connection stops driving at once, until it holds
the lock again. Everything a run needs to carry on is in the database (outbox, `run_state`, the
events stored so far), so an adopting replica continues from the stored history with no gap (it
re-reads the upstream list once) and no duplicate (uuids).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Coroutine
from typing import Any

import asyncpg

from services import locks
from services.agents import registry
from services.agents.backend import AgentProvider
from services.agents.ending import Outcome, end_run
from services.agents.follow import PushFollower
from services.agents.run import Run
from services.context import AppContext
from services.db import UNAVAILABLE_ERRORS, database_outage, log_failure, queries
from services.errors import ServiceError
from services.logs import detached_context

log = logging.getLogger(__name__)

ADOPT_BATCH = 50


class Liveness:
    """This process's liveness lock: one session-level advisory lock on a connection outside the
    pool, held for the life of the process (see the module docstring)."""

    def __init__(self, dsn: str, owner: str) -> None:
        self.dsn = dsn
        self.owner = owner
        self._conn: asyncpg.Connection | None = None
        self._lost_logged = False

    async def ensure(self) -> bool:
        """Whether this process holds its lock now, (re)connecting and taking it if needed."""
        if self._conn is not None and not self._conn.is_closed():
            try:
                await queries.database.ping_database(self._conn)
                return True
            except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError):
                await self.close()
        try:
            # Keepalives make the server notice a vanished host in seconds, not hours.
            conn = await asyncpg.connect(
                self.dsn,
                timeout=5,
                server_settings={
                    "tcp_keepalives_idle": "5",
                    "tcp_keepalives_interval": "2",
                    "tcp_keepalives_count": "3",
                    "application_name": "webedt-liveness",
                },
            )
        except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError, OSError) as exc:
            # The database is away: its outage is reported once, by services.db.
            database_outage.failed("run driver liveness", exc)
            return self._lost(logging.INFO)
        try:
            held = await queries.database.try_driver_liveness_lock(
                conn, key=locks.DRIVER_LIVENESS, run_owner=self.owner
            )
        except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError):
            held = False
        if not held:
            # The server still keeps the lock of this process's previous connection; later.
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)
            return self._lost(logging.WARNING)
        self._conn = conn
        if self._lost_logged:
            log.info("run driver liveness lock held again")
            self._lost_logged = False
        return True

    def _lost(self, level: int) -> bool:
        if not self._lost_logged:
            log.log(level, "run driver liveness lock lost; this process drives no run until it holds it again")
            self._lost_logged = True
        return False

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)


class RunDriver:
    """Owns this replica's runs: starts, adopts, heartbeats, and releases them on shutdown."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        # `live:` says this owner proves it is alive with its lock (migration 0008).
        self.owner = f"live:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.liveness = Liveness(ctx.dsn, self.owner)
        config = ctx.config
        self.poll_seconds = config.claude_poll_interval_ms / 1000
        self.adopt_seconds = config.run_adopt_interval_seconds
        # Only for owners without a liveness lock (older servers, the orphan cleanup's claims).
        self.lease_seconds = config.run_lease_seconds
        self.heartbeat_seconds = self.lease_seconds / 4
        self.retry_window_seconds = config.claude_retry_window_seconds
        # The backends' providers made so far, by `chat_sessions.provider` name.
        self.providers: dict[str, AgentProvider] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.wakeups: dict[str, asyncio.Event] = {}
        # The push followers of the runs driven here, by session id (for interrupts).
        self.followers: dict[str, PushFollower] = {}
        # Work that outlives a request or a run: aborts waiting for their session row
        # (`end_when_free`) and last looks upstream after runs ended here (`reconcile_later`).
        self.background: set[asyncio.Task[None]] = set()
        self._maintainer: asyncio.Task[None] | None = None
        self._preparer: asyncio.Task[None] | None = None
        self._stopping = False

    def provider_for(self, name: str | None) -> AgentProvider:
        """The backend a chat session runs on (`chat_sessions.provider`; None for sessions stored
        before it existed), made on first use."""
        name = name or registry.DEFAULT_NAME
        provider = self.providers.get(name)
        if provider is None:
            backend = registry.provider_class(name)
            if backend is None:
                raise ServiceError(400, f"Unknown agent provider {name!r}; known: {', '.join(registry.NAMES)}")
            provider = self.providers[name] = backend(self.ctx)
        return provider

    # ---- life cycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Take the liveness lock, then adopt orphaned runs, keep leases fresh and adopt periodically."""
        await self.liveness.ensure()
        self._maintainer = asyncio.create_task(self._maintain(), name="run-driver-maintenance")
        # The deployment's upstream resources (Managed Agents' agent and environment), made now by
        # whichever replica comes first rather than in someone's first request.
        provider = self.provider_for(self.ctx.config.new_session_provider)
        self._preparer = asyncio.create_task(provider.prepare(), name="agent-backend-resources")

    async def stop(self) -> None:
        """Stop driving (the runs go on upstream) and release the leases so another replica adopts
        them at once instead of after the lease expires."""
        self._stopping = True
        tasks = [t for t in (self._maintainer, self._preparer, *self.tasks.values(), *self.background) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(*UNAVAILABLE_ERRORS, asyncpg.PostgresError):
            await queries.chat_sessions.release_runs(self.ctx.pool, run_owner=self.owner)
        await self.liveness.close()
        for provider in self.providers.values():
            await provider.aclose()

    def _stop_driving(self) -> None:
        for task in self.tasks.values():
            task.cancel()

    async def _maintain(self) -> None:
        next_heartbeat = next_adopt = 0.0
        while True:
            try:
                if not await self.liveness.ensure():
                    # Others may take these runs over any moment now: drive none of them, and
                    # once the lock is back, drive again what is still this process's at once.
                    self._stop_driving()
                    next_heartbeat = 0.0
                else:
                    now = time.monotonic()
                    if now >= next_heartbeat:
                        next_heartbeat = now + self.heartbeat_seconds
                        await self._heartbeat()
                    if now >= next_adopt:
                        next_adopt = now + self.adopt_seconds
                        await self.adopt()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log_failure(log, exc, "run maintenance failed; trying again shortly")
            await asyncio.sleep(min(self.heartbeat_seconds, self.adopt_seconds))

    async def _heartbeat(self) -> None:
        """Renew this process's leases, stop driving what it no longer owns, drive what it does."""
        owned = {r["id"] async for r in queries.chat_sessions.renew_run_leases(self.ctx.pool, run_owner=self.owner)}
        for session_id, task in list(self.tasks.items()):
            if session_id not in owned and not task.done():
                # Aborted, finished elsewhere, or taken over: stop driving.
                task.cancel()
        for session_id in owned - self.tasks.keys():
            self._spawn(session_id)

    async def adopt(self) -> list[str]:
        """Take over running sessions whose driver is gone; returns their ids."""
        adopted = [
            r["id"]
            async for r in queries.chat_sessions.claim_orphan_runs(
                self.ctx.pool, run_owner=self.owner, lease_seconds=self.lease_seconds, limit=ADOPT_BATCH
            )
        ]
        for session_id in adopted:
            log.info("adopting run of session %s", session_id)
            self._spawn(session_id)
        return adopted

    def _spawn(self, session_id: str) -> None:
        if self._stopping:
            return
        task = self.tasks.get(session_id)
        if task is not None and not task.done():
            return
        self.tasks[session_id] = asyncio.create_task(
            self._drive(session_id), name=f"run-{session_id}", context=detached_context()
        )

    async def ensure_driving(self, session_id: str) -> None:
        """Drive the run here unless another live replica does (it then sees the outbox itself)."""
        self.wake(session_id)
        task = self.tasks.get(session_id)
        if task is not None and not task.done():
            return
        claimed = await queries.chat_sessions.claim_run(
            self.ctx.pool, id=session_id, run_owner=self.owner, lease_seconds=self.lease_seconds
        )
        if claimed is not None:
            self._spawn(session_id)

    def end_when_free(self, session_id: str, outcome: Outcome) -> None:
        """End the run with `outcome` as soon as its session row is free: for an abort whose
        upstream interrupt went through while another connection (a stalled replica) held the
        row longer than DB_LOCK_TIMEOUT_SECONDS. Tried every second, in the background."""
        self._in_background(self._end_when_free(session_id, outcome), f"end-{session_id}")

    def _in_background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name, context=detached_context())
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _end_when_free(self, session_id: str, outcome: Outcome) -> None:
        while True:
            try:
                await end_run(self.ctx, session_id, outcome, owner=None)
            except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
                log_failure(log, exc, "ending the run of session %s failed", session_id)
                await asyncio.sleep(1.0)
                continue
            self.wake(session_id)
            return

    def reconcile_later(self, run: Run) -> None:
        """Take the last look upstream after a run's verdict (`Run.reconcile`) in a task of its
        own: the run's task ends now, and its lease is gone."""
        if self._stopping:
            return
        self._in_background(self._reconcile(run), f"reconcile-{run.session_id}")

    async def _reconcile(self, run: Run) -> None:
        try:
            await run.reconcile()
        except asyncio.CancelledError:
            raise
        except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
            database_outage.failed(f"last look at session {run.session_id}", exc)
        except Exception:
            log.exception("last look at session %s after its run failed", run.session_id)

    def wake(self, session_id: str) -> None:
        """Make the session's driver poll now (a follow-up or interrupt was just recorded)."""
        event = self.wakeups.get(session_id)
        if event is not None:
            event.set()

    def has_live_push(self, session_id: str) -> bool:
        """Whether this replica follows the run over a live push channel."""
        follower = self.followers.get(session_id)
        return follower is not None and follower.live

    async def interrupt_over_push(self, session_id: str) -> bool:
        """Interrupt the run's current turn over its live push channel, if this replica drives it
        and the channel confirms; False means: interrupt the usual way."""
        follower = self.followers.get(session_id)
        return follower is not None and await follower.interrupt()

    async def _drive(self, session_id: str) -> None:
        run = Run(self, session_id)
        try:
            await run.run()
        except asyncio.CancelledError:
            raise
        except (*UNAVAILABLE_ERRORS, asyncpg.PostgresConnectionError) as exc:
            # The database is away for a moment (or the row is busy): stop here, keep the lease;
            # the maintenance loop starts the run again once the heartbeat goes through (nothing
            # is lost: all is stored).
            database_outage.failed(f"run of session {session_id} paused", exc)
        except Exception:
            log.exception("run of session %s failed unexpectedly", session_id)
            try:
                await Run(self, session_id).finish(Outcome("error", "The run stopped because of an internal error"))
            except Exception:
                log.exception("could not record the failure of session %s", session_id)
        finally:
            await run.stop_following()
            if self.tasks.get(session_id) is asyncio.current_task():
                del self.tasks[session_id]
                self.wakeups.pop(session_id, None)
