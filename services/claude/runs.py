"""The run driver: carries Claude Remote runs from start to end, on whichever replica holds them.

A run belongs to no HTTP request. The request that starts one marks the chat session `running`,
stores the prompt as an undelivered `messages` row (the outbox) and takes the run's lease; this
module then does the rest in a task of its own:

1. creates the remote session (once: a creation whose reply was lost is found again by the
   uuid of its first event) and stores its id and web URL at once;
2. every `CLAUDE_POLL_INTERVAL_MS` reads the remote status and the events after its cursor,
   appends new ones to the event log (the upstream `uuid` makes repeats harmless), detects the
   branch, and delivers prompts waiting in the outbox (follow-ups sent from any replica); while
   the backend's push channel is live (`services/claude/follow.py`) the events come over it and
   the status is read only every 30 s and when the channel shows something ended;
3. ends the run once every prompt it delivered has had its `result` (Claude Code queues a prompt
   sent mid-turn and answers it as a turn of its own, so a run that delivered two prompts waits
   for two results), or the remote session is completed, failed, or idle after having worked
   (CONTRACT.md 5.6 without defects 13 and 15): one transaction stores the final status, cost,
   branch and completedAt (and, for a failure, ONE `error` event).

Upstream 5xx, timeouts and malformed replies are retried with exponential backoff; once they have
lasted `CLAUDE_RETRY_WINDOW_SECONDS` the run ends in error.

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
import hashlib
import logging
import os
import secrets
import socket
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from services import claude_auth, event_log, locks, session_list
from services.claude.client import UpstreamError
from services.claude.ending import Outcome, end_run
from services.claude.follow import STATUS_CHECK_SECONDS, PushFollower
from services.claude.provider import (
    PROVIDERS,
    AgentProvider,
    ClaudeRemoteProvider,
    CreateRequest,
    PushItem,
    RemoteState,
)
from services.claude.run_state import RunState, run_state_patch
from services.clock import now_iso
from services.context import AppContext
from services.db import UNAVAILABLE_ERRORS, database_outage, log_failure, queries
from services.errors import ServiceError
from services.logs import detached_context
from services.metrics import UPSTREAM_EVENT_LATENCY

log = logging.getLogger(__name__)

# Event types the server itself stores: they never show that the agent is at work.
SERVER_EVENT_TYPES = ("input_preview", "title_generation", "error", "interrupted")
# A remote session that stays idle this many polls after a prompt, without doing anything, is done.
IDLE_GRACE_POLLS = 30
# Longest wait between two attempts while the upstream is failing.
MAX_BACKOFF_SECONDS = 30.0
# Credentials are re-read (and refreshed when due) this often; a 401 re-reads them at once.
CREDENTIALS_TTL_SECONDS = 60.0
ADOPT_BATCH = 50
# Prompts delivered per poll at most (the rest go on the next one).
PROMPT_BATCH = 20
# Remote states after which nothing more happens upstream.
ENDED_REMOTE_STATES = (RemoteState.COMPLETED, RemoteState.ARCHIVED, RemoteState.FAILED)
# Every backend a chat session can name in `chat_sessions.provider`.
MANAGED_AGENTS = "managed-agents"
BACKENDS = (*PROVIDERS, MANAGED_AGENTS)


def backend_class(name: str) -> type[AgentProvider] | None:
    """The provider class a `chat_sessions.provider` name stands for, None when unknown.

    Managed Agents is imported on first use: the Anthropic SDK (and pydantic) costs a process
    about 50 MiB, which a deployment that never uses it need not pay."""
    if name == MANAGED_AGENTS:
        from services.managed_agents.provider import ManagedAgentsProvider

        return ManagedAgentsProvider
    return PROVIDERS.get(name)


def event_key(event: dict[str, Any]) -> str:
    """The de-duplication key of an upstream event: its `uuid`, else a digest of its content."""
    value = event.get("uuid")
    if isinstance(value, str) and value:
        return value
    return "sha1:" + hashlib.sha1(orjson.dumps(event, option=orjson.OPT_SORT_KEYS)).hexdigest()  # noqa: S324


def stored_upstream_event(event: dict[str, Any]) -> dict[str, Any]:
    """An upstream event as stored and streamed: server time as `timestamp`, `source: claude`."""
    stored = dict(event)
    stored["uuid"] = event_key(event)
    stored["timestamp"] = now_iso()
    stored["source"] = "claude"
    return stored


def prompt_content(message: asyncpg.Record | dict[str, Any]) -> str | list[dict[str, Any]]:
    """The upstream content of a stored prompt: its text, plus its images as base64 blocks."""
    images = message["images"] or []
    text = message["content"]
    if not images:
        return text
    suffix = f" [{len(images)} image(s)]"
    if text.endswith(suffix):
        text = text[: -len(suffix)]
    blocks: list[dict[str, Any]] = []
    if text:
        blocks.append({"type": "text", "text": text})
    for image in images:
        blocks.append(
            {
                "type": "image",
                "source": {
                    "type": "base64",
                    "media_type": image.get("mediaType") or "image/png",
                    "data": image["data"],
                },
            }
        )
    return blocks


def observe_latency(events: list[dict[str, Any]], via: str) -> None:
    """Record how long ago upstream stamped each event, where it did (`created_at`, `timestamp`)."""
    now = datetime.now(UTC)
    for event in events:
        stamp = event.get("created_at") or event.get("timestamp") or event.get("processed_at")
        if not isinstance(stamp, str):
            continue
        try:
            when = datetime.fromisoformat(stamp)
        except ValueError:
            continue
        if when.tzinfo is not None:
            UPSTREAM_EVENT_LATENCY.labels(via).observe(max((now - when).total_seconds(), 0.0))


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

    def __init__(self, ctx: AppContext, provider: AgentProvider | None = None) -> None:
        self.ctx = ctx
        self.provider: ClaudeRemoteProvider = provider or ClaudeRemoteProvider(ctx)  # type: ignore[assignment]
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
        # Backends other than `provider` (Managed Agents), by `chat_sessions.provider` name.
        self.other_providers: dict[str, AgentProvider] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.wakeups: dict[str, asyncio.Event] = {}
        # The push followers of the runs driven here, by session id (for interrupts).
        self.followers: dict[str, PushFollower] = {}
        self._maintainer: asyncio.Task[None] | None = None
        self._preparer: asyncio.Task[None] | None = None
        # Aborts waiting for their session row (see end_when_free).
        self._pending_ends: set[asyncio.Task[None]] = set()
        self._stopping = False

    def provider_for(self, name: str | None) -> AgentProvider:
        """The backend a chat session runs on (`chat_sessions.provider`), made on first use."""
        if name in (None, self.provider.name):
            return self.provider
        provider = self.other_providers.get(name)
        if provider is None:
            backend = backend_class(name)
            if backend is None:
                raise ServiceError(400, f"Unknown agent provider {name!r}; known: {', '.join(BACKENDS)}")
            provider = self.other_providers[name] = backend(self.ctx)
        return provider

    # ---- life cycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Take the liveness lock, then adopt orphaned runs, keep leases fresh and adopt periodically."""
        await self.liveness.ensure()
        self._maintainer = asyncio.create_task(self._maintain(), name="run-driver-maintenance")
        if self.ctx.config.agent_backend == "managed-agents":
            # The deployment's agent and environment, made now by whichever replica comes first
            # rather than in someone's first request (which makes them itself if this failed).
            self._preparer = asyncio.create_task(
                self.provider_for(MANAGED_AGENTS).prepare(),  # type: ignore[attr-defined]
                name="managed-agents-resources",
            )

    async def stop(self) -> None:
        """Stop driving (the runs go on upstream) and release the leases so another replica adopts
        them at once instead of after the lease expires."""
        self._stopping = True
        tasks = [
            t for t in (self._maintainer, self._preparer, *self.tasks.values(), *self._pending_ends) if t is not None
        ]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(*UNAVAILABLE_ERRORS, asyncpg.PostgresError):
            await queries.chat_sessions.release_runs(self.ctx.pool, run_owner=self.owner)
        await self.liveness.close()
        await self.provider.aclose()
        for provider in self.other_providers.values():
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
        task = asyncio.create_task(
            self._end_when_free(session_id, outcome), name=f"end-{session_id}", context=detached_context()
        )
        self._pending_ends.add(task)
        task.add_done_callback(self._pending_ends.discard)

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
        run = _Run(self, session_id)
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
                await _Run(self, session_id).finish(Outcome("error", "The run stopped because of an internal error"))
            except Exception:
                log.exception("could not record the failure of session %s", session_id)
        finally:
            await run.stop_following()
            if self.tasks.get(session_id) is asyncio.current_task():
                del self.tasks[session_id]
                self.wakeups.pop(session_id, None)


class _Run:
    """One run, driven by this replica for as long as it holds the lease."""

    def __init__(self, driver: RunDriver, session_id: str) -> None:
        self.driver = driver
        self.ctx = driver.ctx
        self.session_id = session_id
        self.provider: AgentProvider = driver.provider
        self.user_id = ""
        self.remote_id: str | None = None
        self.token: str | None = None
        self.token_read_at = 0.0
        self.retried_unauthorized = False
        self.cursor: str | None = None
        # Every upstream event key read by this run; complete once `caught_up` (the first polls
        # of a run read the whole list, later ones only what follows the cursor).
        self.seen: set[str] = set()
        self.caught_up = False
        self.baseline = 0
        # Prompts delivered in this run (run_state `turns_delivered`); each ends with one result.
        self.turns_delivered = 0
        self.branch: str | None = None
        self.saw_running = False
        self.idle_polls = 0
        self.create_attempted = False
        self.create_grace_seconds = 2 * driver.ctx.config.claude_request_timeout_seconds
        self.create_in_doubt_until = 0.0
        # Since when each upstream operation has failed without a success in between: a flaky
        # upstream that answers now and then keeps the run going, one that stays broken ends it.
        self.failing_since: dict[str, float] = {}
        self.backoff = driver.poll_seconds
        # Events are stored by one coroutine at a time (the poll, or the push follower).
        self.store_lock = asyncio.Lock()
        self.follower: PushFollower | None = None

    # ---- the loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        row = await queries.chat_sessions.get_session_by_id(self.ctx.pool, id=self.session_id)
        if row is None or row["status"] != "running" or row["run_owner"] != self.driver.owner:
            return
        self.user_id = row["user_id"]
        self.remote_id = row["remote_session_id"]
        self.branch = row["branch"]
        self.provider = self.driver.provider_for(row["provider"])
        state = RunState.read(row["run_state"])
        if state.baseline_event_id is None:
            # Adopted without a run state (for instance a running session imported by the sync):
            # only what happens from now on can end the run.
            self.baseline = await queries.events.get_last_event_id(self.ctx.pool, chat_session_id=self.session_id)
            await queries.chat_sessions.patch_run_state(
                self.ctx.pool, id=self.session_id, patch=run_state_patch(baseline_event_id=self.baseline)
            )
        self.create_attempted = state.create_attempted
        if self.create_attempted:
            # Adopted mid-creation: the dead replica's request may still be on its way.
            self.create_in_doubt_until = time.monotonic() + self.create_grace_seconds
        wakeup = self.driver.wakeups.setdefault(self.session_id, asyncio.Event())

        while True:
            control = await queries.chat_sessions.get_run_control(self.ctx.pool, id=self.session_id)
            if control is None or control["status"] != "running" or control["run_owner"] != self.driver.owner:
                return
            state = RunState.read(control["run_state"])
            if state.baseline_event_id is not None:
                self.baseline = state.baseline_event_id
            self.turns_delivered = state.turns_delivered
            delay = self._follow_delay()
            try:
                outcome = await self._step(state, control["has_pending"])
                self.failing_since.clear()
                self.backoff = self.driver.poll_seconds
            except UpstreamError as exc:
                outcome, delay = await self._upstream_failure(exc)
            except ServiceError as exc:
                if exc.status >= 500:
                    # The token endpoint is down: the stored credentials are still good later.
                    outcome, delay = self._retry("refresh token", exc.message)
                else:
                    # No credentials any more, or Claude refused to refresh them.
                    outcome = Outcome("error", exc.message)
            if outcome is not None and await self.finish(outcome):
                return
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), delay)
            wakeup.clear()

    async def _token_now(self, force: bool = False) -> str:
        if force or self.token is None or time.monotonic() - self.token_read_at > CREDENTIALS_TTL_SECONDS:
            self.token = await self.provider.authenticate(self.user_id, force=force)
            self.token_read_at = time.monotonic()
        return self.token

    async def _step(self, state: RunState, has_pending: bool) -> Outcome | None:
        token = await self._token_now()
        if self.remote_id is None:
            await self._create(token, state)
            return None
        remote = await self.provider.get(token, self.remote_id)
        self.failing_since.pop("get session", None)
        if remote.state in ENDED_REMOTE_STATES and self.follower is not None and self.follower.live:
            # The status may be ahead of the pushed events: store those that explain the end (a
            # final result, an error) before judging, as a poll would have.
            await self.backfill(token)
        else:
            await self._collect(token)
        self.failing_since.pop("get events", None)
        self.retried_unauthorized = False
        if has_pending:
            # Deliver only after catching up, so that `seen` holds every echo of a prompt already
            # sent (no prompt goes out twice); no verdict while prompts wait.
            if self.caught_up:
                await self._deliver(token)
            return None
        return await self._judge(remote.state, state.interrupted)

    async def _collect(self, token: str) -> None:
        """Append every event after the cursor that this run has not stored yet, in order; while
        the push channel is live it does that instead."""
        assert self.remote_id is not None
        self._start_following()
        if self.follower is not None and self.follower.live:
            return
        async with self.store_lock:
            batch = await self.provider.events_after(token, self.remote_id, self.cursor)
            await self._store(batch.events, "poll")
            self.cursor = batch.cursor
            self.caught_up = self.caught_up or batch.complete

    async def _store(self, events: list[dict[str, Any]], via: str) -> None:
        """Append the events this run has not stored yet (by upstream key), in the order given."""
        new: list[dict[str, Any]] = []
        for event in events:
            key = event_key(event)
            if key in self.seen:
                continue
            self.seen.add(key)
            new.append(event)
        fresh = [stored_upstream_event(event) for event in new]
        if fresh:
            await event_log.append(self.ctx, self.session_id, fresh)
            observe_latency(new, via)
        for event in fresh:
            branch = self.provider.branch(event)
            if branch and branch != self.branch:
                self.branch = branch
                changed = await queries.chat_sessions.set_branch(self.ctx.pool, id=self.session_id, branch=branch)
                if changed is not None:
                    await session_list.announce(
                        self.ctx, self.user_id, "updated", {"id": self.session_id, "branch": branch}
                    )

    # ---- following over the push channel (services/claude/follow.py) ------------------------------

    def _start_following(self) -> None:
        if self.follower is None and self.remote_id is not None:
            self.follower = PushFollower(self)
            self.driver.followers[self.session_id] = self.follower
            self.follower.start()

    async def stop_following(self) -> None:
        if self.follower is not None:
            if self.driver.followers.get(self.session_id) is self.follower:
                del self.driver.followers[self.session_id]
            await self.follower.stop()

    def _follow_delay(self) -> float:
        """Until the next look at the run: the poll interval, or a slow status check while the
        push channel delivers the events (it nudges the loop when something ends). Until the
        turn is seen running the status is still read at the poll interval (only the status):
        the idle grace of `_judge` counts reads, and must not grow to IDLE_GRACE_POLLS times 30 s."""
        if self.follower is not None and self.follower.live and self.saw_running:
            return STATUS_CHECK_SECONDS
        return self.driver.poll_seconds

    async def follow_token(self) -> str:
        return await self._token_now()

    async def backfill(self, token: str) -> None:
        assert self.remote_id is not None
        async with self.store_lock:
            while True:
                batch = await self.provider.events_after(token, self.remote_id, self.cursor)
                await self._store(batch.events, "poll")
                self.cursor = batch.cursor
                if batch.complete:
                    self.caught_up = True
                    return

    async def take(self, item: PushItem) -> None:
        if item.event is not None:
            async with self.store_lock:
                await self._store([item.event], "push")
                if item.cursor is not None:
                    self.cursor = item.cursor
            if item.event.get("type") in self.provider.end_event_types:
                self.nudge()
        if item.status is not None:
            self.nudge()  # the loop reads the status itself and judges as always

    def nudge(self) -> None:
        self.driver.wake(self.session_id)

    async def _judge(self, remote_state: str, interrupted: bool) -> Outcome | None:
        """Whether the run is over (CONTRACT.md 5.6, without the 10-minute cap and the early idle)."""
        progress = await queries.events.get_run_progress(
            self.ctx.pool,
            chat_session_id=self.session_id,
            after_id=self.baseline,
            end_types=list(self.provider.end_event_types),
            quiet_types=[*self.provider.quiet_event_types, *SERVER_EVENT_TYPES],
        )
        last_end = progress["last_end"] if progress else None
        if last_end is not None and progress["end_count"] >= max(self.turns_delivered, 1):
            failure = self.provider.end_error(last_end)
            if failure is not None:
                return Outcome("error", failure, total_cost=self.provider.cost(last_end))
            return Outcome("completed", total_cost=self.provider.cost(last_end))
        if remote_state in (RemoteState.COMPLETED, RemoteState.ARCHIVED):
            return Outcome("completed")
        if remote_state == RemoteState.FAILED:
            return Outcome("error", "Claude reported that the session failed")
        if remote_state == RemoteState.RUNNING:
            self.saw_running = True
            self.idle_polls = 0
            return None
        if remote_state == RemoteState.IDLE:
            # Idle right after a prompt only means the agent has not started yet (defect 15).
            if interrupted or self.saw_running or (progress is not None and progress["active"]):
                return Outcome("completed")
            self.idle_polls += 1
            if self.idle_polls >= IDLE_GRACE_POLLS:
                return Outcome("completed")
        return None

    # ---- creating the remote session and delivering prompts ---------------------------------------

    async def _create(self, token: str, state: RunState) -> None:
        prompts = [
            p
            async for p in queries.messages.get_undelivered_prompts(
                self.ctx.pool, chat_session_id=self.session_id, limit=PROMPT_BATCH
            )
        ]
        row = await queries.chat_sessions.get_session_by_id(self.ctx.pool, id=self.session_id)
        if row is None:
            raise ServiceError(404, "Session not found")
        if not prompts:
            raise ServiceError(400, "The session has no prompt to start a run with")
        if not row["repository_url"] or not row["repository_owner"] or not row["repository_name"]:
            raise ServiceError(400, "github.repoUrl is required")
        first = prompts[0]
        environment_id = state.environment_id or await self.provider.environment(token)
        request = CreateRequest(
            title=row["user_request"],
            content=prompt_content(first),
            environment_id=environment_id,
            repo_url=row["repository_url"],
            repo_full_name=f"{row['repository_owner']}/{row['repository_name']}",
            branch_prefix=row["branch"] or "claude/session",
            model=self.ctx.config.claude_default_model,
            message_uuid=first["upstream_uuid"],
            base_branch=row["base_branch"],
        )
        remote = None
        if self.create_attempted:
            # An earlier attempt may have reached upstream although its reply was lost; after a
            # timeout it may even still be in flight, so look for it a while before creating again.
            remote = await self.provider.find_created(token, request)
            if remote is None and time.monotonic() < self.create_in_doubt_until:
                return
        if remote is None:
            self.create_attempted = True
            await queries.chat_sessions.patch_run_state(
                self.ctx.pool, id=self.session_id, patch=run_state_patch(create_attempted=True)
            )
            try:
                remote = await self.provider.create(token, request)
            except UpstreamError as exc:
                if exc.kind in ("timeout", "network"):
                    self.create_in_doubt_until = time.monotonic() + self.create_grace_seconds
                raise
        stored = await queries.chat_sessions.set_remote_session(
            self.ctx.pool, id=self.session_id, remote_session_id=remote.id, remote_web_url=remote.web_url
        )
        if stored is None:
            # Someone stored another remote session meanwhile (a replica that took over while
            # this one stalled): keep theirs and archive the spare one.
            current = await queries.chat_sessions.get_session_by_id(self.ctx.pool, id=self.session_id)
            if current is not None and current["remote_session_id"] != remote.id:
                with contextlib.suppress(UpstreamError):
                    await self.provider.archive(token, remote.id)
            self.remote_id = current["remote_session_id"] if current is not None else remote.id
        else:
            self.remote_id = remote.id
            await session_list.announce(
                self.ctx,
                self.user_id,
                "updated",
                {"id": self.session_id, "remoteSessionId": remote.id, "remoteWebUrl": remote.web_url},
            )
        await self._mark_delivered(first["id"])

    async def _mark_delivered(self, message_id: int) -> None:
        """The prompt left the outbox, and the run waits for one more `result` (in one transaction,
        so an adopting replica counts the same turns)."""
        turns = self.turns_delivered + 1
        async with self.ctx.pool.acquire() as conn, conn.transaction():
            await queries.messages.mark_prompt_delivered(conn, id=message_id)
            await queries.chat_sessions.patch_run_state(
                conn, id=self.session_id, patch=run_state_patch(turns_delivered=turns, interrupted=False)
            )
        self.turns_delivered = turns
        self.saw_running = False
        self.idle_polls = 0

    async def _deliver(self, token: str) -> None:
        assert self.remote_id is not None
        prompts = [
            p
            async for p in queries.messages.get_undelivered_prompts(
                self.ctx.pool, chat_session_id=self.session_id, limit=PROMPT_BATCH
            )
        ]
        for prompt in prompts:
            # `seen` holds every upstream uuid up to now (the first poll of a run reads the whole
            # list), so a prompt sent by a replica that died before recording it is not sent twice.
            if prompt["upstream_uuid"] not in self.seen:
                await self.provider.send(token, self.remote_id, prompt_content(prompt), prompt["upstream_uuid"])
            await self._mark_delivered(prompt["id"])

    # ---- failures and the end --------------------------------------------------------------------

    async def _upstream_failure(self, exc: UpstreamError) -> tuple[Outcome | None, float]:
        """Retry what may pass (with backoff, within the retry window); end the run otherwise."""
        if exc.unauthorized:
            if self.retried_unauthorized:
                return Outcome("error", claude_auth.EXPIRED), 0
            self.retried_unauthorized = True
            try:
                await self._token_now(force=True)
            except ServiceError as auth_error:
                if auth_error.status >= 500:
                    # The token endpoint is down; the next 401 asks it again.
                    self.retried_unauthorized = False
                    return self._retry("refresh token", auth_error.message)
                return Outcome("error", auth_error.message), 0
            return None, 0
        if not exc.retryable:
            return Outcome("error", exc.message), 0
        return self._retry(exc.operation, exc.message)

    def _retry(self, operation: str, message: str) -> tuple[Outcome | None, float]:
        """Try again after a backoff, unless `operation` has failed for the whole retry window."""
        now = time.monotonic()
        elapsed = now - self.failing_since.setdefault(operation, now)
        if elapsed >= self.driver.retry_window_seconds:
            log.warning("run of session %s gives up after %.1f s: %s", self.session_id, elapsed, message)
            return Outcome("error", message), 0
        log.info("run of session %s retries: %s", self.session_id, message)
        delay = min(self.backoff, MAX_BACKOFF_SECONDS, max(self.driver.retry_window_seconds - elapsed, 0.0))
        self.backoff = min(self.backoff * 2, MAX_BACKOFF_SECONDS)
        return None, delay

    async def finish(self, outcome: Outcome) -> bool:
        """End the run (services/claude/ending.py), only while this replica still holds it.

        False (the run goes on) when a prompt arrived just now: a follow-up recorded before the
        row was locked must be delivered, not dropped."""
        ended = await end_run(self.ctx, self.session_id, outcome, owner=self.driver.owner, unless_prompts_wait=True)
        return ended != "prompts_wait"
