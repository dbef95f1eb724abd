"""One run, carried from start to end by the replica that holds it, on any backend.

A run belongs to no HTTP request. The request that starts one marks the chat session `running`,
stores the prompt as an undelivered `messages` row (the outbox) and takes the run's lease; this
module then does the rest in a task of its own:

1. creates the remote session (once: a creation whose reply was lost is found again by the
   uuid of its first event) and stores its id and web URL at once;
2. every `CLAUDE_POLL_INTERVAL_MS` reads the remote status and the events after its cursor,
   appends new ones to the event log (the upstream `uuid` makes repeats harmless), detects the
   branch, and delivers prompts waiting in the outbox (follow-ups sent from any replica); while
   the backend's push channel is live (`services/agents/follow.py`) the events come over it and
   the status is read only every 30 s and when the channel shows something ended;
3. ends the run once every prompt it delivered has had its `result` (Claude Code queues a prompt
   sent mid-turn and answers it as a turn of its own, so a run that delivered two prompts waits
   for two results), or the remote session is completed, failed, or idle after having worked
   (CONTRACT.md 5.6, polling and completion, without defects 13 and 15: no 10-minute cap on a
   run, and no end before the first poll has seen the new turn): one transaction stores the
   final status, cost, branch and completedAt (and, for a failure, ONE `error` event).

Upstream 5xx, timeouts and malformed replies are retried with exponential backoff; once they have
lasted `CLAUDE_RETRY_WINDOW_SECONDS` the run ends in error.

The backend is reached only through `AgentProvider` (`services/agents/backend.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from services import event_log, session_list, usage
from services.agents.backend import (
    AgentProvider,
    CreateRequest,
    PushItem,
    RemoteSession,
    RemoteState,
    UpstreamError,
)
from services.agents.ending import Outcome, end_run
from services.agents.events import event_key, observe_latency, prompt_content, stored_upstream_event
from services.agents.follow import STATUS_CHECK_SECONDS, PushFollower
from services.agents.retries import Retries
from services.agents.state import RunState, run_state_patch
from services.agents.turns import TurnTracker
from services.db import queries
from services.errors import ServiceError

if TYPE_CHECKING:
    from services.agents.driver import RunDriver

log = logging.getLogger(__name__)

# Event types the server itself stores: they never show that the agent is at work.
SERVER_EVENT_TYPES = ("input_preview", "title_generation", "error", "interrupted")
# After the verdict, upstream is read once more this much later (a late result, a usage frame).
RECONCILE_DELAY_SECONDS = 2.0
# Credentials are re-read (and refreshed when due) this often; a 401 re-reads them at once.
CREDENTIALS_TTL_SECONDS = 60.0
# Prompts delivered per poll at most (the rest go on the next one).
PROMPT_BATCH = 20
# Stored events read per query when a run rebuilds its view of the turns.
TURN_READ_BATCH = 1000
# Remote states after which nothing more happens upstream.
ENDED_REMOTE_STATES = (RemoteState.COMPLETED, RemoteState.ARCHIVED, RemoteState.FAILED)


class Run:
    """One run, driven by this replica for as long as it holds the lease."""

    def __init__(self, driver: RunDriver, session_id: str) -> None:
        self.driver = driver
        self.ctx = driver.ctx
        self.session_id = session_id
        self.provider: AgentProvider = driver.provider_for(None)
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
        # The turn rule's view of the stored log after the baseline (read when the run starts),
        # and the id of the last stored event it has seen.
        self.turns = TurnTracker(self.provider)
        self.observed_id = 0
        # Since when the remote session has been idle without the end that answers the last prompt.
        self.idle_since: float | None = None
        self.create_attempted = False
        self.create_grace_seconds = 2 * driver.ctx.config.claude_request_timeout_seconds
        self.create_in_doubt_until = 0.0
        self.retries = Retries(session_id, driver.poll_seconds, driver.retry_window_seconds)
        # Events are stored by one coroutine at a time (the poll, or the push follower).
        self.store_lock = asyncio.Lock()
        self.follower: PushFollower | None = None

    # ---- the loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        if not await self._prepare():
            return
        wakeup = self.driver.wakeups.setdefault(self.session_id, asyncio.Event())

        while True:
            control = await queries.chat_sessions.get_run_control(self.ctx.pool, id=self.session_id)
            if control is None or control["status"] != "running" or control["run_owner"] != self.driver.owner:
                return
            state = RunState.read(control["run_state"])
            if state.baseline_event_id is not None:
                self.baseline = state.baseline_event_id
            self.turns_delivered = state.turns_delivered
            delay = self.driver.poll_seconds
            try:
                outcome = await self._step(state, control["has_pending"])
                delay = self._follow_delay()
                self.retries.succeeded()
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
                self.driver.reconcile_later(self)
                return
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), delay)
            wakeup.clear()

    async def _prepare(self) -> bool:
        """Read the run from its row (False: it is not this replica's to drive) and start
        following it upstream at once."""
        row = await queries.chat_sessions.get_session_by_id(self.ctx.pool, id=self.session_id)
        if row is None or row["status"] != "running" or row["run_owner"] != self.driver.owner:
            return False
        self.user_id = row["user_id"]
        self.remote_id = row["remote_session_id"]
        self.branch = row["branch"]
        self.provider = self.driver.provider_for(row["provider"])
        state = RunState.read(row["run_state"])
        self.baseline = state.baseline_event_id or 0
        self.turns_delivered = state.turns_delivered
        if state.baseline_event_id is None:
            # Adopted without a run state (for instance a running session imported by the sync):
            # only what happens from now on can end the run.
            self.baseline = await queries.events.get_last_event_id(self.ctx.pool, chat_session_id=self.session_id)
            await queries.chat_sessions.patch_run_state(
                self.ctx.pool, id=self.session_id, patch=run_state_patch(baseline_event_id=self.baseline)
            )
        await self._read_turns()
        if self.remote_id is not None:
            self._start_following()  # at once, also on adoption: the first events come pushed
        self.create_attempted = state.create_attempted
        if self.create_attempted:
            # Adopted mid-creation: the dead replica's request may still be on its way.
            self.create_in_doubt_until = time.monotonic() + self.create_grace_seconds
        return True

    async def _read_turns(self) -> None:
        """Rebuild the turn rule's view from what is stored after the baseline (an adopting
        replica continues exactly where the last driver stopped)."""
        self.turns = TurnTracker(self.provider)
        self.observed_id = self.baseline
        await self._observe_stored()

    async def _observe_stored(self) -> None:
        """Feed the turn rule every event stored after the last one it saw, in stored order,
        whoever stored it (this run, the last look of the run before it, a sync)."""
        while rows := await event_log.read_after(self.ctx, self.session_id, self.observed_id, TURN_READ_BATCH):
            for row in rows:
                self.turns.observe(row["event_data"])
            self.observed_id = rows[-1]["id"]
            if len(rows) < TURN_READ_BATCH:
                return

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
        self.retries.succeeded("get session")
        over_budget = await self._usage_so_far(remote)
        if over_budget is not None:
            # The agent stops spending: interrupted upstream (a failure is retried by the loop).
            await self.provider.interrupt(token, self.remote_id)
            return Outcome("error", over_budget)
        await self._collect(token)
        self.retries.succeeded("get events")
        self.retried_unauthorized = False
        if has_pending:
            # Deliver only after catching up, so that `seen` holds every echo of a prompt already
            # sent (no prompt goes out twice); no verdict while prompts wait.
            if self.caught_up:
                await self._deliver(token)
            return None
        return await self._judge(token, remote.state, state.interrupted)

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

    async def _store(self, events: list[dict[str, Any]], via: str) -> int:
        """Append the events this run has not stored yet (by upstream key), in the order given.

        A key is marked seen only once its event is durable: a failed write leaves it to the next
        attempt (the cursor does not move either), and the database tells which were new."""
        new: list[dict[str, Any]] = []
        keys: set[str] = set()
        for event in events:
            key = event_key(event)
            if key in self.seen or key in keys:
                continue
            keys.add(key)
            new.append(event)
        fresh = [stored_upstream_event(event) for event in new]
        if not fresh:
            return 0
        inserted = await event_log.append_upstream(self.ctx, self.session_id, fresh)
        self.seen |= keys
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
        return len(inserted)

    # ---- following over the push channel (services/agents/follow.py) ------------------------------

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
        """Until the next look at the run: a slow status check while the push channel delivers
        the events (it nudges the loop at every end signal), else the poll interval (also while
        the remote session is idle without the end that answers the last prompt)."""
        if self.follower is not None and self.follower.live and self.idle_since is None:
            return STATUS_CHECK_SECONDS
        return self.driver.poll_seconds

    async def follow_token(self) -> str:
        return await self._token_now()

    async def backfill(self, token: str) -> int:
        """Store every event after the cursor, all pages, until the list is complete; how many
        of them were new."""
        assert self.remote_id is not None
        stored = 0
        async with self.store_lock:
            while True:
                await self.retries.wait_if_told()
                batch = await self.provider.events_after(token, self.remote_id, self.cursor)
                stored += await self._store(batch.events, "poll")
                self.cursor = batch.cursor
                if batch.complete:
                    self.caught_up = True
                    return stored

    async def take(self, item: PushItem) -> None:
        if item.event is not None:
            async with self.store_lock:
                await self._store([item.event], "push")
                if item.cursor is not None:
                    self.cursor = item.cursor
            if item.event.get("type") in self.provider.end_event_types or self.provider.reports_usage(item.event):
                self.nudge()  # a usage report: the budget is checked at the status read it causes
        if item.status is not None:
            self.nudge()  # the loop reads the status itself and judges as always

    def nudge(self) -> None:
        self.driver.wake(self.session_id)

    async def _judge(self, token: str, remote_state: str, interrupted: bool) -> Outcome | None:
        """Whether the run is over: the turn rule (`services/agents/turns.py`), taken only after a
        backfill has made the stored log complete up to now, at every end signal (an answering
        end stored, a remote session no longer running)."""
        await self._observe_stored()  # once a step, not once an event
        if remote_state == RemoteState.RUNNING:
            self.idle_since = None
            if self.turns.answered(self.turns_delivered) is None:
                return None
        await self.backfill(token)
        await self._observe_stored()  # also what another writer stored meanwhile
        end = self.turns.answered(self.turns_delivered)
        if end is not None:
            await self._record_usage(token, end)
            failure = self.provider.end_error(end)
            if failure is not None:
                return Outcome("error", failure, total_cost=self.provider.cost(end))
            return Outcome("completed", total_cost=self.provider.cost(end))
        if remote_state in (RemoteState.COMPLETED, RemoteState.ARCHIVED):
            return Outcome("completed")
        if remote_state == RemoteState.FAILED:
            return Outcome("error", "Claude reported that the session failed")
        if remote_state != RemoteState.IDLE:
            return None
        if interrupted:
            return Outcome("completed")  # the person stopped the turn: no answer is coming
        now = time.monotonic()
        if self.idle_since is None:
            self.idle_since = now
        elif now - self.idle_since >= self.ctx.config.run_idle_grace_seconds:
            log.warning(
                "run of session %s ends: idle for %.0f s without the end of its turn",
                self.session_id,
                now - self.idle_since,
            )
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
            base_branch=None if state.default_branch else row["base_branch"],
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
            self._start_following()  # push from the first second, not one poll interval later
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
        self.idle_since = None

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

    async def reconcile(self) -> None:
        """After the verdict, one last look upstream: what it stored after the end (a late result,
        a usage frame) is appended and streamed, and the session's cost updated, without
        reopening the run."""
        await self.stop_following()
        if self.remote_id is None:
            return
        await asyncio.sleep(RECONCILE_DELAY_SECONDS)
        if await self._rerun():
            return
        before = self.turns.last_end
        try:
            await self.backfill(await self._token_now())
        except (UpstreamError, ServiceError) as exc:
            log.info("last look at session %s after its run failed: %s", self.session_id, exc.message)
            return
        await self._observe_stored()
        end = self.turns.last_end
        if end is None or end is before:
            return
        if await self._rerun():
            return
        try:
            await self._record_usage(await self._token_now(), end)
        except (UpstreamError, ServiceError) as exc:
            log.info("usage of session %s after its run could not be read: %s", self.session_id, exc.message)
        cost = self.provider.cost(end)
        if cost is None:
            return
        row = await queries.chat_sessions.set_ended_session_cost(self.ctx.pool, id=self.session_id, total_cost=cost)
        if row is not None:
            await session_list.announce(self.ctx, self.user_id, "updated", {"id": self.session_id, "totalCost": cost})

    async def _rerun(self) -> bool:
        """Whether a new run of the session has started (what comes now is its to store, judge
        and record), or the session is gone."""
        row = await queries.chat_sessions.get_run_control(self.ctx.pool, id=self.session_id)
        return row is None or row["status"] == "running"

    # ---- usage and budgets (services/usage.py) ---------------------------------------------------

    async def _record_usage(self, token: str, end: dict[str, Any]) -> None:
        assert self.remote_id is not None
        try:
            await usage.record_turn_end(
                self.ctx,
                self.provider,
                token,
                session_id=self.session_id,
                user_id=self.user_id,
                remote_id=self.remote_id,
                end_event=end,
            )
        except UpstreamError as exc:
            if exc.retryable:
                raise  # the loop tries again, and records it then
            # Reading the usage never decides how the run ends.
            log.warning("usage of session %s could not be read: %s", self.session_id, exc.message)

    async def _usage_so_far(self, remote: RemoteSession) -> str | None:
        """Why the run must stop now (its owner's budget is spent), from a status read."""
        return await usage.check_running(
            self.ctx, self.provider, session_id=self.session_id, user_id=self.user_id, remote=remote
        )

    # ---- failures and the end --------------------------------------------------------------------

    async def _upstream_failure(self, exc: UpstreamError) -> tuple[Outcome | None, float]:
        """Retry what may pass (with backoff, within the retry window); end the run otherwise."""
        if exc.unauthorized:
            if self.retried_unauthorized:
                return Outcome("error", self.provider.credentials_expired), 0
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
        return self._retry(exc.operation, exc.message, exc.retry_after)

    def _retry(self, operation: str, message: str, retry_after: float | None = None) -> tuple[Outcome | None, float]:
        delay = self.retries.failed(operation, message, retry_after)
        return (Outcome("error", message), 0) if delay is None else (None, delay)

    async def finish(self, outcome: Outcome) -> bool:
        """End the run (services/agents/ending.py), only while this replica still holds it.

        False (the run goes on) when a prompt arrived just now: a follow-up recorded before the
        row was locked must be delivered, not dropped."""
        ended = await end_run(self.ctx, self.session_id, outcome, owner=self.driver.owner, unless_prompts_wait=True)
        return ended != "prompts_wait"
