"""A fake Claude Remote Sessions API and Claude OAuth token endpoint: a real Tornado HTTP server on
127.0.0.1 speaking the protocol of CONTRACT.md 5.2 and 5.8.

Sessions are scripted: creating a session, or sending it a user message, starts a "turn" whose
events (system, assistant, tool use, a tool result naming the `claude/...` branch, result) are
released a few at a time as the events are read, so a poller sees the run unfold. While a turn
has events left the session is `running`, afterwards `end_status` (`idle` by default). A user
message is echoed as a `user` event with the uuid it was sent with; so is the first prompt of a
created session.

Knobs: `fail(...)` queues faults for matching requests (a status such as 500, a `malformed`
200 reply, or a `slow` reply that sleeps before answering normally), `flaky_every` (every n-th
API request answers 503), `hold_at` (no more events released once a session holds that many),
`idle_polls_before_start` (a session stays `idle` for that many reads after a message before its
turn starts), `events_per_read`, `page_size`, `ignore_after_id`, `token_delay`, `token_status`. The token endpoint
rotates refresh tokens: each one works once, a used one is refused with 400 `invalid_grant`.

The push channel (`/v1/sessions/ws/{id}/subscribe`, a WebSocket): every event appended to a
session and every status change is pushed to its subscribers, events alternately wrapped as
`{"type": "event", "data": ...}` and bare. Push knobs: `release_every` (events are released by a
clock, one every so many seconds, instead of on reads: a live upstream), `refuse_upgrade` (answer
the upgrade with that status), `drop_after_frames` with `drops_left` (that many sockets close after
sending so many event frames), `close_on_open` (every socket closes as soon as it opened),
`heartbeats` (a non-JSON frame before each event frame),
`delay_frame(n, seconds)` (the n-th event frame sent waits, the later ones queue behind it),
`control_answer` ("success", "error", or None for never) for `control_request` interrupts.

Knobs of an upstream that misbehaves as real networks and real APIs do (issue 19):
- `turn_delay`: a turn's first event is released no sooner than that many seconds after its
  prompt (Claude Code's container takes a while to start), so a server that opens the socket at
  once sees the turn pushed from its first event.
- `status_ahead_seconds` (with `status_ahead_events`, default 3): once a turn has only that many
  events left, the session's status moves to `end_status` at once (the `session_status` frame and
  GET /v1/sessions/{id} say so) while those last events, the `result` among them, reach the
  sockets only that many seconds later. `list_lags_status`: False (default) lists them over REST
  as soon as the status says the turn ended (they were appended upstream, the socket lags); True
  lists them only when they are pushed (the event store lags the status as well).
- `stall_after_frames` with `stalls_left`: that many sockets from now on stop sending frames
  (events, statuses, control answers) after sending so many event frames; the connection stays
  up, pings are answered, keep-alives read, and the session goes on (events appended and listed
  by REST). `silent_sockets`: that many sockets from now on are accepted and never send a frame.
- `close_after_frames`: every socket closes right after sending that many event frames (a
  flapping socket, without limit).
- `fail(..., retry_after=s)`: the fault's answer carries `Retry-After: s`; the arrival time of each
  request it answered is in `fault.answered`. A fault whose `path` matches the subscribe path
  answers the WebSocket upgrade too (faults without a `path` apply to REST only).
- `on_create(session)`: called as a session is created, before the reply; a test installs faults
  for that session's own paths there (so that no other session's late request takes them).
Records: every API request and upgrade has its arrival time (`at`, time.monotonic()) and its
remote session (`session_id`); `upgrades(id)` and `gets(id)` list them per session;
`delivered_by[uuid]` says how an event first left the fake ("push" on a socket, "list" in a REST
page); `FakeSession.created_at_mono` is when the session was created. `settled(session)` is True
once the turn has released everything (nothing pending, no delayed tail on its way).
A TCP black hole between the server and the fake is `tests/fakes/proxy.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import tornado.httpserver
import tornado.netutil
import tornado.web
import tornado.websocket

from tests.fakes import AnthropicFakeHandler, FakeError, LoopbackServer
from tests.sse import SSEEvent, SSEStream

FAKE_ENVIRONMENT = "env_fake_0001"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_uuid() -> str:
    return str(uuid.uuid4())


@dataclass
class Fault:
    """What to do instead of (or before) answering a matching request."""

    kind: str  # "status", "malformed" or "slow"
    status: int = 500
    seconds: float = 0.0
    count: float = 1  # how many requests it applies to (float("inf") for all)
    method: str | None = None
    path: re.Pattern[str] | None = None
    retry_after: float | None = None  # seconds, sent as `Retry-After` with a status answer
    answered: list[float] = field(default_factory=list)  # time.monotonic() of each request answered

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (self.path is None or bool(self.path.search(path)))


@dataclass
class FakeSession:
    id: str
    title: str
    environment_id: str
    repo_url: str
    repo: str
    branch_prefix: str
    model: str
    created_at: str
    updated_at: str
    status: str = "running"
    events: list[dict[str, Any]] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)
    turns: int = 0
    idle_reads_left: int = 0
    prompts: list[Any] = field(default_factory=list)
    interrupts: int = 0
    archived: bool = False
    socket_interrupts: int = 0
    created_at_mono: float = field(default_factory=time.monotonic)
    # No event of the current turn is released before this time.monotonic() (`turn_delay`).
    starts_at: float = 0.0
    # Tail events set aside by `status_ahead_seconds` that have not reached the sockets yet.
    tail_in_flight: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "session_status": "archived" if self.archived else self.status,
            "environment_id": self.environment_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "session_context": {
                "model": self.model,
                "sources": [{"type": "git_repository", "url": self.repo_url}],
                "outcomes": [
                    {
                        "type": "git_repository",
                        "git_info": {"type": "github", "repo": self.repo, "branches": [self.branch_prefix]},
                    }
                ],
            },
        }


def prompt_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(b.get("text", "")) for b in content if isinstance(b, dict) and b.get("type") == "text")
    return ""


def default_turn(session: FakeSession, prompt: str) -> list[dict[str, Any]]:
    """One turn of Claude Code: init, a reply, a tool call that names the branch, a result."""
    branch = f"{session.branch_prefix}-{session.id[-6:].lower()}"
    return [
        {"type": "system", "subtype": "init", "uuid": new_uuid(), "session_id": session.id, "model": session.model},
        {
            "type": "assistant",
            "uuid": new_uuid(),
            "message": {
                "role": "assistant",
                "model": session.model,
                "content": [{"type": "text", "text": f"Working on: {prompt}"}],
            },
        },
        {
            "type": "assistant",
            "uuid": new_uuid(),
            "message": {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": f"toolu_{session.turns}",
                        "name": "Bash",
                        "input": {"command": "git push"},
                    }
                ],
            },
        },
        {
            "type": "user",
            "uuid": new_uuid(),
            "message": {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": f"toolu_{session.turns}", "content": "ok"}],
            },
            "tool_use_result": {"stdout": f"Switched to a new branch '{branch}'\npushed {branch}", "stderr": ""},
        },
        {
            "type": "assistant",
            "uuid": new_uuid(),
            "message": {"role": "assistant", "content": [{"type": "text", "text": "Done."}]},
        },
        {
            "type": "result",
            "subtype": "success",
            "uuid": new_uuid(),
            "is_error": False,
            "total_cost_usd": round(0.0125 * session.turns, 6),
            # Cumulative over the session's turns, like the cost.
            "usage": {
                "input_tokens": 1000 * session.turns,
                "output_tokens": 200 * session.turns,
                "cache_read_input_tokens": 50 * session.turns,
                "cache_creation_input_tokens": 10 * session.turns,
            },
            "duration_ms": 1500,
            "num_turns": 3,
            "result": "Done.",
        },
    ]


class FakeClaude(LoopbackServer):
    """The fake's state, knobs and Tornado server."""

    def __init__(self) -> None:
        super().__init__()
        self.sessions: dict[str, FakeSession] = {}
        self.requests: list[dict[str, Any]] = []
        self.access_tokens: set[str] = set()
        self.refresh_tokens: dict[str, bool] = {}  # token -> still usable
        self.token_requests: list[dict[str, Any]] = []
        self.token_delay = 0.0
        self.token_status: int | None = None  # answer the token endpoint with this status
        self.token_lifetime_seconds = 3600
        self.check_auth = True
        self.faults: list[Fault] = []
        self.flaky_every = 0
        self.hold_at: int | None = None
        self.idle_polls_before_start = 0
        self.events_per_read = 2
        self.page_size = 100
        self.ignore_after_id = False
        self.end_status = "idle"
        self.interrupt_result = False
        self.turn_factory: Callable[[FakeSession, str], list[dict[str, Any]]] = default_turn
        self._api_count = itertools.count(1)
        self.turn_delay = 0.0
        self.status_ahead_seconds: float | None = None
        self.status_ahead_events = 3
        self.list_lags_status = False
        self.delivered_by: dict[str, str] = {}
        self.on_create: Callable[[FakeSession], None] | None = None
        # The push channel.
        self.release_every: float | None = None
        self.refuse_upgrade: int | None = None
        self.drop_after_frames: int | None = None
        self.drops_left = 0
        self.heartbeats = False
        self.close_on_open = False
        self.frame_delays: dict[int, float] = {}
        self.control_answer: str | None = "success"
        self.stall_after_frames: int | None = None
        self.stalls_left = 0
        self.silent_sockets = 0
        self.close_after_frames: int | None = None
        self.subscribers: dict[str, list[FakeSubscriber]] = {}
        self.subscribe_requests: list[dict[str, Any]] = []
        self.socket_messages: list[dict[str, Any]] = []
        self.event_frames_sent = 0
        # time.monotonic() when each event (by uuid) was released, and when first sent on a socket.
        self.released_at: dict[str, float] = {}
        self.sent_at: dict[str, float] = {}
        self._clock: asyncio.Task[None] | None = None

    # ---- arranging ----------------------------------------------------------------------------

    def reset_knobs(self) -> None:
        """Back to a healthy, prompt upstream (sessions and tokens are kept)."""
        self.faults.clear()
        self.flaky_every = 0
        self.hold_at = None
        self.idle_polls_before_start = 0
        self.events_per_read = 2
        self.page_size = 100
        self.ignore_after_id = False
        self.end_status = "idle"
        self.interrupt_result = False
        self.token_delay = 0.0
        self.token_status = None
        self.check_auth = True
        self.turn_factory = default_turn
        self.release_every = None
        self.refuse_upgrade = None
        self.drop_after_frames = None
        self.drops_left = 0
        self.heartbeats = False
        self.close_on_open = False
        self.frame_delays = {}
        self.control_answer = "success"
        self.turn_delay = 0.0
        self.status_ahead_seconds = None
        self.status_ahead_events = 3
        self.list_lags_status = False
        self.stall_after_frames = None
        self.stalls_left = 0
        self.silent_sockets = 0
        self.close_after_frames = None
        self.on_create = None

    def delay_frame(self, number: int, seconds: float) -> None:
        """The `number`-th event frame sent from now on (1 = the next) waits `seconds` first."""
        self.frame_delays[self.event_frames_sent + number] = seconds

    def subscriber_count(self, session_id: str | None = None) -> int:
        return sum(len(subs) for key, subs in self.subscribers.items() if session_id in (None, key))

    def issue_tokens(self) -> tuple[str, str]:
        """A fresh (access token, refresh token) pair the fake accepts."""
        access, refresh = f"sk-ant-oat-{secrets.token_hex(8)}", f"sk-ant-ort-{secrets.token_hex(8)}"
        self.access_tokens.add(access)
        self.refresh_tokens[refresh] = True
        return access, refresh

    def fail(
        self,
        kind: str = "status",
        *,
        status: int = 500,
        seconds: float = 0.0,
        count: float = 1,
        method: str | None = None,
        path: str | None = None,
        retry_after: float | None = None,
    ) -> Fault:
        fault = Fault(kind, status, seconds, count, method, re.compile(path) if path else None, retry_after)
        self.faults.append(fault)
        return fault

    def upgrades(self, session_id: str) -> list[dict[str, Any]]:
        """The WebSocket upgrade requests for one remote session, refused ones included."""
        return [r for r in self.subscribe_requests if r["session_id"] == session_id]

    def gets(self, session_id: str) -> list[dict[str, Any]]:
        """The REST GETs of one remote session (its status and its events)."""
        return [r for r in self.requests if r["method"] == "GET" and r["session_id"] == session_id]

    def settled(self, session: FakeSession) -> bool:
        """Whether the session's turn has released all it has (nothing pending or on its way)."""
        return not session.pending and session.tail_in_flight == 0

    def seed_session(self, environment_id: str = FAKE_ENVIRONMENT, title: str = "Earlier session") -> FakeSession:
        """A finished session made elsewhere (claude.ai), for environment detection."""
        session = self._new_session(title, environment_id, "https://github.com/o/r", "o/r", "claude/earlier", "m")
        session.status = "idle"
        return session

    def only_session(self) -> FakeSession:
        assert len(self.sessions) == 1, list(self.sessions)
        return next(iter(self.sessions.values()))

    def api_requests(self, method: str | None = None, path: str | None = None) -> list[dict[str, Any]]:
        return [
            r
            for r in self.requests
            if (method is None or r["method"] == method) and (path is None or re.search(path, r["path"]))
        ]

    # ---- server -------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.serve(FakeClaudeHandler, [(r"/v1/sessions/ws/([^/]+)/subscribe", FakeSubscriber)])
        self._clock = asyncio.create_task(self._tick())

    async def stop(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
        for subscribers in list(self.subscribers.values()):
            for subscriber in list(subscribers):
                subscriber.close()
        await super().stop()

    def _by_clock(self, session: FakeSession) -> bool:
        """Whether the session's events come by the clock: always with `release_every`, and
        while someone subscribes (a live upstream does not wait for reads)."""
        return bool(self.release_every) or bool(self.subscribers.get(session.id))

    async def _tick(self) -> None:
        """Release one event per tick (`release_every`, else 20 ms) of every session by the clock."""
        while True:
            await asyncio.sleep(self.release_every or 0.02)
            for session in list(self.sessions.values()):
                if self._by_clock(session):
                    self._release(session)

    def _append(self, session: FakeSession, event: dict[str, Any], push: bool = True) -> None:
        """Append an event to a session's list and push it to the session's subscribers (later,
        with `_push`, when `push` is False)."""
        if self.release_every:
            event["created_at"] = now_iso()
        session.events.append(event)
        self.released_at[event["uuid"]] = time.monotonic()
        if push:
            self._push(session, event)

    def _push(self, session: FakeSession, event: dict[str, Any]) -> None:
        wrapped = session.events.index(event) % 2 == 1
        for subscriber in self.subscribers.get(session.id, []):
            subscriber.push({"type": "event", "data": event} if wrapped else event, event["uuid"])

    def _hold_back_tail(self, session: FakeSession) -> None:
        """`status_ahead_seconds`: the status says the turn ended; its last events follow later."""
        assert self.status_ahead_seconds is not None
        tail, session.pending = session.pending, []
        session.tail_in_flight = len(tail)
        if not self.list_lags_status:
            for event in tail:
                self._append(session, event, push=False)  # listed now, pushed later
        self._set_status(session, self.end_status)
        lags = self.list_lags_status

        def deliver() -> None:
            for event in tail:
                if lags:
                    self._append(session, event)
                else:
                    self._push(session, event)
            session.tail_in_flight = 0
            session.updated_at = now_iso()

        asyncio.get_running_loop().call_later(self.status_ahead_seconds, deliver)

    def _set_status(self, session: FakeSession, status: str) -> None:
        if status != session.status:
            session.status = status
            for subscriber in self.subscribers.get(session.id, []):
                subscriber.push({"type": "session_status", "status": status})

    def interrupt(self, session: FakeSession) -> None:
        session.interrupts += 1
        session.pending = []
        session.idle_reads_left = 0
        if self.interrupt_result:
            self._append(
                session, {"type": "result", "subtype": "error_during_execution", "uuid": new_uuid(), "is_error": True}
            )
        self._set_status(session, "idle")

    @property
    def token_url(self) -> str:
        return f"{self.url}/v1/oauth/token"

    # ---- behaviour ----------------------------------------------------------------------------

    def _new_session(
        self, title: str, environment_id: str, repo_url: str, repo: str, branch_prefix: str, model: str
    ) -> FakeSession:
        session_id = f"session_{secrets.token_hex(12)}"
        stamp = now_iso()
        session = FakeSession(session_id, title, environment_id, repo_url, repo, branch_prefix, model, stamp, stamp)
        self.sessions[session_id] = session
        return session

    def _start_turn(self, session: FakeSession, content: Any) -> None:
        session.turns += 1
        session.prompts.append(content)
        if session.pending:
            # Mid-turn, Claude Code queues the prompt and answers it as a turn of its own.
            session.pending.extend(self.turn_factory(session, prompt_text(content)))
            session.updated_at = now_iso()
            return
        session.pending = self.turn_factory(session, prompt_text(content))
        session.starts_at = time.monotonic() + self.turn_delay
        session.idle_reads_left = self.idle_polls_before_start
        self._set_status(session, "idle" if session.idle_reads_left > 0 else "running")
        session.updated_at = now_iso()

    def _read_status(self, session: FakeSession) -> None:
        """A read of the session: a turn that waits to start counts the reads down."""
        if session.idle_reads_left > 0:
            session.idle_reads_left -= 1
            if session.idle_reads_left == 0:
                self._set_status(session, "running")

    def _advance(self, session: FakeSession) -> None:
        """Release the next scripted events (on every read of the events, unless by the clock)."""
        if not self._by_clock(session):
            self._release(session, self.events_per_read)

    def _release(self, session: FakeSession, count: int = 1) -> None:
        if session.idle_reads_left > 0 or time.monotonic() < session.starts_at:
            return
        for _ in range(count):
            if not session.pending or (self.hold_at is not None and len(session.events) >= self.hold_at):
                break
            if (
                self.status_ahead_seconds
                and session.status == "running"
                and len(session.pending) <= self.status_ahead_events
            ):
                self._hold_back_tail(session)
                return
            self._append(session, session.pending.pop(0))
            session.updated_at = now_iso()
        if not session.pending and session.status == "running":
            self._set_status(session, self.end_status)

    def create_session(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            title = body["title"]
            first = body["events"][0]
            assert first["type"] == "event"
            data = first["data"]
            assert data["type"] == "user" and data["message"]["role"] == "user"
            context = body["session_context"]
            repo_url = context["sources"][0]["url"]
            git_info = context["outcomes"][0]["git_info"]
            environment_id = body["environment_id"]
            assert isinstance(title, str) and isinstance(environment_id, str) and environment_id
        except (KeyError, IndexError, TypeError, AssertionError):
            raise FakeError(400, "invalid_request_error", "malformed create session request") from None
        session = self._new_session(
            title, environment_id, repo_url, git_info["repo"], git_info["branches"][0], context.get("model", "")
        )
        if self.on_create is not None:
            self.on_create(session)
        self._append(
            session, {"type": "user", "uuid": data["uuid"], "session_id": session.id, "message": data["message"]}
        )
        self._start_turn(session, data["message"]["content"])
        return session.as_json()

    def post_events(self, session: FakeSession, body: dict[str, Any]) -> dict[str, Any]:
        events = body.get("events")
        if not isinstance(events, list) or not events:
            raise FakeError(400, "invalid_request_error", "events must be a non-empty list")
        for event in events:
            if event.get("type") == "control_request" and event.get("action") == "interrupt":
                self.interrupt(session)
            elif event.get("type") == "user" and isinstance(event.get("uuid"), str):
                self._append(
                    session,
                    {"type": "user", "uuid": event["uuid"], "session_id": session.id, "message": event["message"]},
                )
                self._start_turn(session, event["message"]["content"])
            else:
                raise FakeError(400, "invalid_request_error", f"unknown event {event.get('type')!r}")
        return {"data": []}

    def list_events(self, session: FakeSession, after_id: str | None, limit: int | None) -> dict[str, Any]:
        self._advance(session)
        start = 0
        if after_id and not self.ignore_after_id:
            for index, event in enumerate(session.events):
                if event["uuid"] == after_id:
                    start = index + 1
                    break
        size = limit or self.page_size
        page = session.events[start : start + size]
        for event in page:
            self.delivered_by.setdefault(event["uuid"], "list")
        return {
            "data": page,
            "has_more": start + size < len(session.events),
            "first_id": page[0]["uuid"] if page else None,
            "last_id": page[-1]["uuid"] if page else None,
        }

    def issue_refresh(self, body: dict[str, Any]) -> dict[str, Any]:
        refresh = body.get("refresh_token")
        if body.get("grant_type") != "refresh_token" or not body.get("client_id"):
            raise FakeError(400, "invalid_request", "grant_type and client_id are required")
        if not isinstance(refresh, str) or not self.refresh_tokens.get(refresh):
            raise FakeError(400, "invalid_grant", "Refresh token is invalid, expired or already used")
        self.refresh_tokens[refresh] = False
        access, new_refresh = self.issue_tokens()
        return {"access_token": access, "refresh_token": new_refresh, "expires_in": self.token_lifetime_seconds}


def check_headers(fake: FakeClaude, headers: Any) -> None:
    """The version and beta headers and a bearer token the fake issued, as on every API call."""
    if headers.get("anthropic-version") != "2023-06-01" or headers.get("anthropic-beta") != "ccr-byoc-2025-07-29":
        raise FakeError(400, "invalid_request_error", "missing anthropic-version or anthropic-beta header")
    if fake.check_auth:
        token = headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in fake.access_tokens:
            raise FakeError(401, "authentication_error", "Invalid bearer token")


class FakeSubscriber(tornado.websocket.WebSocketHandler):
    """One subscribe socket: frames are sent in order by one task, delays and drops applied."""

    def initialize(self, fake: FakeClaude) -> None:
        self.fake = fake
        self.session_id = ""
        self.queue: asyncio.Queue[tuple[dict[str, Any], str | None]] = asyncio.Queue()
        self.event_frames = 0
        self.sender: asyncio.Task[None] | None = None
        # Event frames after which this socket sends nothing more (`stall_after_frames`).
        self.stall_at: int | None = None

    def check_origin(self, origin: str) -> bool:
        return True

    async def get(self, *args: Any, **kwargs: Any) -> None:
        fake, session_id = self.fake, args[0]
        fake.subscribe_requests.append(
            {
                "path": self.request.path,
                "query": {k: self.get_query_argument(k) for k in self.request.query_arguments},
                "headers": {k.lower(): v for k, v in self.request.headers.items()},
                "at": time.monotonic(),
                "session_id": session_id,
            }
        )
        try:
            for fault in fake.faults:
                if (
                    fault.kind == "status"
                    and fault.path is not None
                    and fault.count > 0
                    and fault.matches("GET", self.request.path)
                ):
                    fault.count -= 1
                    fault.answered.append(fake.subscribe_requests[-1]["at"])
                    if fault.retry_after is not None:
                        self.set_header("Retry-After", f"{fault.retry_after:g}")
                    raise FakeError(fault.status, "overloaded_error", "Upgrade refused for now")
            if fake.refuse_upgrade is not None:
                raise FakeError(fake.refuse_upgrade, "permission_error", "WebSocket not allowed here")
            check_headers(fake, self.request.headers)
            if session_id not in fake.sessions:
                raise FakeError(404, "not_found_error", f"Session {session_id} not found")
        except FakeError as exc:
            self.set_status(exc.status)
            self.finish(orjson.dumps({"type": "error", "error": {"type": exc.kind, "message": exc.message}}))
            return
        await super().get(*args, **kwargs)

    def open(self, *args: str, **kwargs: str) -> None:
        self.session_id = args[0]
        fake = self.fake
        if fake.silent_sockets > 0:
            fake.silent_sockets -= 1
            self.stall_at = 0
        elif fake.stall_after_frames is not None and fake.stalls_left > 0:
            fake.stalls_left -= 1
            self.stall_at = fake.stall_after_frames
        self.fake.subscribers.setdefault(self.session_id, []).append(self)
        self.sender = asyncio.create_task(self._send_frames())
        if self.fake.close_on_open:
            self.close(1011, "closed at once by the fake")

    def push(self, frame: dict[str, Any], event_uuid: str | None = None) -> None:
        self.queue.put_nowait((frame, event_uuid))

    async def _send_frames(self) -> None:
        fake = self.fake
        while True:
            frame, event_uuid = await self.queue.get()
            if self.stall_at is not None and self.event_frames >= self.stall_at:
                continue  # stalled: the connection stays up, nothing more is sent on it
            try:
                if event_uuid is not None:
                    fake.event_frames_sent += 1
                    delay = fake.frame_delays.pop(fake.event_frames_sent, 0.0)
                    if delay:
                        await asyncio.sleep(delay)
                    if fake.heartbeats:
                        await self.write_message("ping")
                    fake.sent_at.setdefault(event_uuid, time.monotonic())
                    fake.delivered_by.setdefault(event_uuid, "push")
                await self.write_message(orjson.dumps(frame).decode())
            except tornado.websocket.WebSocketClosedError:
                return
            if event_uuid is not None:
                self.event_frames += 1
                if fake.close_after_frames is not None and self.event_frames >= fake.close_after_frames:
                    self.close(1011, "flapping: closed by the fake")
                    return
                if (
                    fake.drop_after_frames is not None
                    and self.event_frames >= fake.drop_after_frames
                    and fake.drops_left
                ):
                    fake.drops_left -= 1
                    self.close(1011, "dropped by the fake")
                    return

    def on_message(self, message: str | bytes) -> None:
        fake = self.fake
        try:
            frame = orjson.loads(message)
        except orjson.JSONDecodeError:
            return
        fake.socket_messages.append(frame)
        if frame.get("type") != "control_request":
            return
        request = frame.get("request") or {}
        session = fake.sessions.get(self.session_id)
        if request.get("subtype") == "interrupt" and session is not None and fake.control_answer == "success":
            session.socket_interrupts += 1
            fake.interrupt(session)
        if fake.control_answer is not None:
            response: dict[str, Any] = {"request_id": frame.get("request_id"), "subtype": fake.control_answer}
            if fake.control_answer == "error":
                response["error"] = "interrupt not possible now"
            self.push({"type": "control_response", "response": response})

    def on_close(self) -> None:
        subscribers = self.fake.subscribers.get(self.session_id, [])
        if self in subscribers:
            subscribers.remove(self)
        if self.sender is not None:
            self.sender.cancel()


class FakeClaudeHandler(AnthropicFakeHandler):
    SUPPORTED_METHODS = ("GET", "POST", "PATCH")

    async def handle(self) -> None:
        fake = self.fake
        method, path = self.request.method or "GET", self.request.path
        session_match = re.match(r"/v1/sessions/([^/]+)", path)
        record = {
            "method": method,
            "path": path,
            "query": {k: self.get_query_argument(k) for k in self.request.query_arguments},
            "headers": {k.lower(): v for k, v in self.request.headers.items()},
            "body": None,
            "at": time.monotonic(),
            "session_id": session_match.group(1) if session_match else None,
        }
        with contextlib.suppress(orjson.JSONDecodeError):
            record["body"] = orjson.loads(self.request.body) if self.request.body else None
        try:
            if path == "/v1/oauth/token" and method == "POST":
                fake.token_requests.append(record)
                if fake.token_delay:
                    await asyncio.sleep(fake.token_delay)
                if fake.token_status is not None:
                    raise FakeError(fake.token_status, "server_error", "token endpoint unavailable")
                self.reply(200, fake.issue_refresh(self.body_json()))
                return
            fake.requests.append(record)
            count = next(fake._api_count)
            for fault in fake.faults:
                if fault.count > 0 and fault.matches(method, path):
                    fault.count -= 1
                    fault.answered.append(record["at"])
                    if fault.kind == "slow":
                        await asyncio.sleep(fault.seconds)
                        break
                    if fault.kind == "malformed":
                        self.set_status(200)
                        self.set_header("Content-Type", "text/html")
                        self.finish(b"<html><body>upstream proxy hiccup</body></html>")
                        return
                    if fault.retry_after is not None:
                        self.set_header("Retry-After", f"{fault.retry_after:g}")
                    kind = {429: "rate_limit_error", 503: "overloaded_error"}.get(fault.status, "api_error")
                    raise FakeError(fault.status, kind, "Internal server error")
            if fake.flaky_every and count % fake.flaky_every == 0:
                raise FakeError(503, "overloaded_error", "Overloaded")
            self._check_headers()
            self.reply(200, self.route(method, path))
        except FakeError as exc:
            self.reply(exc.status, {"type": "error", "error": {"type": exc.kind, "message": exc.message}})

    def _check_headers(self) -> None:
        check_headers(self.fake, self.request.headers)

    def session_or_404(self, session_id: str) -> FakeSession:
        session = self.fake.sessions.get(session_id)
        if session is None:
            raise FakeError(404, "not_found_error", f"Session {session_id} not found")
        return session

    def route(self, method: str, path: str) -> Any:
        fake = self.fake
        if path == "/v1/sessions" and method == "POST":
            return fake.create_session(self.body_json())
        if path == "/v1/sessions" and method == "GET":
            limit = int(self.get_query_argument("limit", "20"))
            sessions = sorted(fake.sessions.values(), key=lambda s: s.created_at, reverse=True)
            page = [s.as_json() for s in sessions[:limit]]
            return {
                "data": page,
                "has_more": len(sessions) > limit,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
            }
        match = re.fullmatch(r"/v1/sessions/([^/]+)(/events|/archive)?", path)
        if match is None:
            raise FakeError(404, "not_found_error", "Not found")
        session = self.session_or_404(match.group(1))
        suffix = match.group(2)
        if suffix is None and method == "GET":
            fake._read_status(session)
            return session.as_json()
        if suffix is None and method == "PATCH":
            session.title = self.body_json().get("title", session.title)
            return session.as_json()
        if suffix == "/events" and method == "GET":
            limit = self.get_query_argument("limit", None)
            return fake.list_events(session, self.get_query_argument("after_id", None), int(limit) if limit else None)
        if suffix == "/events" and method == "POST":
            return fake.post_events(session, self.body_json())
        if suffix == "/archive" and method == "POST":
            session.archived = True
            return session.as_json()
        raise FakeError(405, "invalid_request_error", "Method not allowed")

    get = post = patch = handle  # type: ignore[assignment]


@contextlib.asynccontextmanager
async def running_fake_claude() -> AsyncIterator[FakeClaude]:
    """A started fake Claude, stopped afterwards."""
    fake = FakeClaude()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def claude_env(fake: FakeClaude, **overrides: Any) -> dict[str, str]:
    """Settings that point a server at the fake, with the run driver's timers made small."""
    env = {
        "CLAUDE_API_BASE_URL": fake.url,
        "CLAUDE_OAUTH_TOKEN_URL": fake.token_url,
        "CLAUDE_POLL_INTERVAL_MS": "50",
        "RUN_ADOPT_INTERVAL_SECONDS": "0.5",
        "CLAUDE_RETRY_WINDOW_SECONDS": "3",
        "CLAUDE_REQUEST_TIMEOUT_SECONDS": "2",
        # The tests of polling keep polling; tests/test_upstream_push.py turns the socket on.
        "CLAUDE_UPSTREAM_PUSH": "off",
    }
    env.update({key: str(value) for key, value in overrides.items()})
    return env


async def connect_claude(client: Any, fake: FakeClaude, expires_in_seconds: float = 3600) -> tuple[str, str]:
    """Store fresh fake credentials for the person logged in with `client`; returns the pair."""
    access, refresh = fake.issue_tokens()
    expires_at = int((datetime.now(UTC).timestamp() + expires_in_seconds) * 1000)
    response = await client.post(
        "/api/user/claude-auth", json={"accessToken": access, "refreshToken": refresh, "expiresAt": expires_at}
    )
    assert response.status_code == 200, response.text
    return access, refresh


# ---- helpers for tests that run sessions against the fake ------------------------------------------

REPO = {"repoUrl": "https://github.com/octo/widgets.git"}
# The upstream events of one default turn, as the streams name them: the echo of the prompt, then
# Claude's turn.
UPSTREAM_TYPES = ["user", "system", "assistant", "assistant", "user", "assistant", "result"]


@contextlib.asynccontextmanager
async def post_sse(client: httpx.AsyncClient, body: dict[str, Any]) -> AsyncIterator[SSEStream]:
    async with client.stream(
        "POST",
        "/api/execute-remote",
        json=body,
        headers={"Accept": "text/event-stream"},
        timeout=httpx.Timeout(30, read=None),
    ) as response:
        stream = SSEStream(response)
        stream._lines = response.aiter_lines()
        yield stream


async def run_to_end(client: httpx.AsyncClient, body: dict[str, Any]) -> list[SSEEvent]:
    async with post_sse(client, body) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        return await stream.until(lambda e: e.event in ("completed", "error"))


async def wait_status(client: httpx.AsyncClient, session_id: str, wanted: str, timeout: float = 15) -> dict[str, Any]:
    async def poll() -> dict[str, Any]:
        while True:
            session = (await client.get(f"/api/sessions/{session_id}")).json()["session"]
            if session["status"] == wanted:
                return session
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(poll(), timeout)


async def stored(client: httpx.AsyncClient, session_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/api/sessions/{session_id}/events")
    assert response.status_code == 200, response.text
    return response.json()["data"]["events"]


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["eventData"]["type"] for e in events]
