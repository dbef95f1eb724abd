"""A fake of Anthropic's Managed Agents API: a real HTTP server speaking what the SDK calls.

Agents, environments, sessions with resources (a `github_repository` that needs a known token
when it is private), events in (`user.message`, `user.interrupt`) and out, the paginated event
list (`page` / `next_page`, `created_at[gte]` on `processed_at`), the SSE stream with heartbeats,
archive. Each user message plays a scripted turn, one event every `step_seconds`, ending with
`session.status_idle` (end_turn). Several events share one `processed_at`, as upstream allows.

Knobs: `hold` (the turn waits at `hold_at` until released), `drop_stream_after` (close every SSE
stream after that many events), `faults` (answer 429/5xx to matching requests), `terminate()`
(a terminal `session.error` then `session.status_terminated`), `create_delay`, and the lists of
calls (`calls`, `agents`, `environments`) for tests to look at.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import tornado.iostream
import tornado.web

from tests.fakes import AnthropicFakeHandler, FakeError, LoopbackServer

API_KEY = "sk-ant-fake-managed-key"
BETA = "managed-agents-2026-04-01"
PRIVATE_REPO_TOKEN = "gho_fake_github_token_for_private"
BRANCH = "claude/fix-flaky-test"
# The upstream types of one default turn after the user's message, in order.
TURN_TYPES = [
    "session.status_running",
    "span.model_request_start",
    "agent.message",
    "agent.tool_use",
    "agent.tool_result",
    "agent.tool_use",
    "agent.tool_result",
    "span.model_request_end",
    "agent.message",
    "agent.future_thing",
    "session.usage",
    "session.status_idle",
]


@dataclass
class Fault:
    status: int
    method: str
    path: re.Pattern[str]
    count: float = 1


@dataclass
class FakeManagedSession:
    id: str
    body: dict[str, Any]
    status: str = "idle"
    archived_at: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    turn: asyncio.Task[None] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    turns: int = 0
    # The session object's cumulative `usage`, as upstream keeps it: tokens added at each model
    # request's end, `list_cost` (minor units) from the latest `session.usage` event.
    usage: dict[str, Any] = field(default_factory=dict)


class FakeManagedAgents(LoopbackServer):
    def __init__(self) -> None:
        super().__init__()
        self.agents: list[dict[str, Any]] = []
        self.environments: list[dict[str, Any]] = []
        self.sessions: dict[str, FakeManagedSession] = {}
        self.calls: list[dict[str, Any]] = []
        self.private_repos: set[str] = {"https://github.com/octo/secret"}
        self._ids = itertools.count(1)
        self._clock = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
        self._ticks = 0
        self.reset_knobs()

    def reset_knobs(self) -> None:
        self.step_seconds = 0.02
        self.page_size = 4
        self.heartbeat_seconds = 0.05
        self.hold: asyncio.Event | None = None
        self.hold_at = 5
        self.drop_stream_after: int | None = None
        self.faults: list[Fault] = []
        self.create_delay = 0.0
        self.stop_reason: dict[str, Any] = {"type": "end_turn"}
        # Seconds a session creation waits before answering (past the client's timeout: lost).
        self.create_reply_delay = 0.0
        # Answer the event list from the start whatever `created_at[gte]` says.
        self.ignore_since = False

    async def start(self) -> None:
        await self.serve(FakeManagedHandler)

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}"

    def processed_at(self) -> str:
        # Two events per millisecond: timestamps are shared, as upstream allows.
        self._ticks += 1
        moment = self._clock + timedelta(milliseconds=self._ticks // 2)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def emit(self, session: FakeManagedSession, event: dict[str, Any]) -> dict[str, Any]:
        event = {"id": self.new_id("sevt"), **event, "processed_at": self.processed_at()}
        session.events.append(event)
        if event["type"] == "session.status_running":
            session.status = "running"
        elif event["type"] == "session.status_idle":
            session.status = "idle"
        elif event["type"] == "session.status_terminated":
            session.status = "terminated"
        elif event["type"] == "span.model_request_end":
            model_usage = event.get("model_usage") or {}
            usage = session.usage
            for key in ("input_tokens", "output_tokens", "cache_read_input_tokens"):
                usage[key] = usage.get(key, 0) + model_usage.get(key, 0)
            creation = usage.setdefault("cache_creation", {"ephemeral_5m_input_tokens": 0})
            creation["ephemeral_5m_input_tokens"] += model_usage.get("cache_creation_input_tokens", 0)
        elif event["type"] == "session.usage" and "list_cost" in (event.get("usage") or {}):
            session.usage["list_cost"] = event["usage"]["list_cost"]
        session.changed.set()
        session.changed = asyncio.Event()
        return event

    def start_turn(self, session: FakeManagedSession, text: str) -> None:
        session.turns += 1
        previous = session.turn
        session.turn = asyncio.create_task(self._play(session, text, session.turns, previous))

    async def _play(
        self, session: FakeManagedSession, text: str, number: int, previous: asyncio.Task[None] | None
    ) -> None:
        if previous is not None:  # a message sent during a turn waits for it (upstream queues it)
            with contextlib.suppress(asyncio.CancelledError):
                await previous
        command_push = f"git push -u origin {BRANCH}" if number == 1 else "git push"
        script: list[dict[str, Any]] = [
            {"type": "session.status_running"},
            {"type": "span.model_request_start"},
            {"type": "agent.message", "content": [{"type": "text", "text": f"Working on: {text}"}]},
            {"type": "agent.tool_use", "name": "bash", "input": {"command": f"git checkout -b {BRANCH}"}},
            {"type": "agent.tool_result", "content": [{"type": "text", "text": "Switched to a new branch"}]},
            {"type": "agent.tool_use", "name": "bash", "input": {"command": command_push}},
            {"type": "agent.tool_result", "content": [{"type": "text", "text": "pushed"}]},
            {
                "type": "span.model_request_end",
                "model_usage": {
                    "input_tokens": 100,
                    "output_tokens": 20,
                    "cache_creation_input_tokens": 3,
                    "cache_read_input_tokens": 5,
                },
            },
            {"type": "agent.message", "content": [{"type": "text", "text": f"Done: {text}"}]},
            {"type": "agent.future_thing", "detail": {"kept": True}},
            {"type": "session.usage", "usage": {"list_cost": {"amount": str(25 * number), "currency": "USD"}}},
            {"type": "session.status_idle", "stop_reason": self.stop_reason},
        ]
        last_use = ""
        for index, event in enumerate(script):
            if self.hold is not None and index == self.hold_at:
                await self.hold.wait()
            await asyncio.sleep(self.step_seconds)
            if event["type"] == "agent.tool_result":
                event = {**event, "tool_use_id": last_use}
            emitted = self.emit(session, event)
            if event["type"] == "agent.tool_use":
                last_use = emitted["id"]

    def charge(self, session_id: str, cents: int) -> None:
        """Spend while the agent works: the session's cumulative cost grows by `cents`, announced
        by a `session.usage` event as upstream does."""
        session = self.sessions[session_id]
        amount = int(session.usage.get("list_cost", {}).get("amount", "0")) + cents
        cost = {"amount": str(amount), "currency": "USD"}
        self.emit(session, {"type": "session.usage", "usage": {"list_cost": cost}})

    async def interrupt(self, session: FakeManagedSession) -> None:
        if session.turn is not None and not session.turn.done():
            session.turn.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session.turn
            # An interrupted turn ends like any other.
            self.emit(session, {"type": "session.status_idle", "stop_reason": {"type": "end_turn"}})

    async def terminate(self, session_id: str) -> None:
        """End the session upstream with a terminal error, as when its container cannot go on."""
        session = self.sessions[session_id]
        if session.turn is not None and not session.turn.done():
            session.turn.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session.turn
        self.emit(
            session,
            {
                "type": "session.error",
                "error": {
                    "type": "unknown_error",
                    "message": "container crashed",
                    "retry_status": {"type": "terminal"},
                },
            },
        )
        self.emit(session, {"type": "session.status_terminated"})

    def session_json(self, session: FakeManagedSession) -> dict[str, Any]:
        resources = [{k: v for k, v in r.items() if k != "authorization_token"} for r in session.body["resources"]]
        return {
            "id": session.id,
            "type": "session",
            "status": session.status,
            "title": session.body.get("title"),
            "metadata": session.body.get("metadata") or {},
            "environment_id": session.body["environment_id"],
            "agent": {"id": session.body["agent"], "type": "agent"},
            "resources": resources,
            "archived_at": session.archived_at,
            "created_at": self._clock.isoformat(),
            "updated_at": self._clock.isoformat(),
            "usage": session.usage,
            "stats": {},
            "vault_ids": [],
            "outcome_evaluations": [],
        }


def parse_time(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise FakeError(400, "invalid_request_error", f"created_at[gte] is not a time: {value!r}") from None


SESSION_PATH = re.compile(r"^/v1/sessions/([A-Za-z0-9_]+)(/events/stream|/events|/archive)?$")


class FakeManagedHandler(AnthropicFakeHandler):
    SUPPORTED_METHODS = ("GET", "POST", "DELETE")

    async def handle(self) -> None:
        fake = self.fake
        method, path = self.request.method or "GET", self.request.path
        headers = {k.lower(): v for k, v in self.request.headers.items()}
        fake.calls.append({"method": method, "path": path, "headers": headers, "query": self.request.query})
        try:
            for fault in fake.faults:
                if fault.count > 0 and fault.method == method and fault.path.search(path):
                    fault.count -= 1
                    raise FakeError(fault.status, "api_error", f"injected {fault.status}")
            if headers.get("authorization") != f"Bearer {API_KEY}" and headers.get("x-api-key") != API_KEY:
                raise FakeError(401, "authentication_error", "invalid x-api-key")
            if BETA not in headers.get("anthropic-beta", ""):
                raise FakeError(400, "invalid_request_error", f"this endpoint needs the {BETA} beta header")
            await self.route(method, path)
        except FakeError as exc:
            if not self._finished:
                self.reply(exc.status, {"type": "error", "error": {"type": exc.kind, "message": exc.message}})

    async def route(self, method: str, path: str) -> None:
        fake = self.fake
        if path == "/v1/agents" and method == "POST":
            await asyncio.sleep(fake.create_delay)
            agent = {"id": fake.new_id("agent"), "type": "agent", "version": 1, **self.body_json()}
            fake.agents.append(agent)
            return self.reply(200, agent)
        if path == "/v1/environments" and method == "POST":
            await asyncio.sleep(fake.create_delay)
            environment = {"id": fake.new_id("env"), "type": "environment", **self.body_json()}
            fake.environments.append(environment)
            return self.reply(200, environment)
        if path == "/v1/sessions" and method == "POST":
            return await self.create_session()
        if path == "/v1/sessions" and method == "GET":
            newest = sorted(fake.sessions.values(), key=lambda s: s.id, reverse=True)
            limit = int(self.get_query_argument("limit", "20"))
            return self.reply(200, {"data": [fake.session_json(s) for s in newest[:limit]], "next_page": None})
        match = SESSION_PATH.match(path)
        if match is None or match.group(1) not in fake.sessions:
            raise FakeError(404, "not_found_error", "session not found")
        session = fake.sessions[match.group(1)]
        tail = match.group(2)
        if tail is None and method == "GET":
            return self.reply(200, fake.session_json(session))
        if tail is None and method == "POST":  # update: only what the body names changes
            update = self.body_json()
            if isinstance(update.get("title"), str):
                session.body["title"] = update["title"]
            return self.reply(200, fake.session_json(session))
        if tail == "/archive" and method == "POST":
            session.archived_at = session.archived_at or datetime.now(UTC).isoformat()
            return self.reply(200, fake.session_json(session))
        if tail == "/events" and method == "GET":
            return self.list_events(session)
        if tail == "/events" and method == "POST":
            return await self.send_events(session)
        if tail == "/events/stream" and method == "GET":
            return await self.stream(session)
        raise FakeError(404, "not_found_error", f"no route {method} {path}")

    async def create_session(self) -> None:
        fake = self.fake
        body = self.body_json()
        if not any(a["id"] == body.get("agent") for a in fake.agents) and not str(body.get("agent")).startswith(
            "agent_conf"
        ):
            raise FakeError(400, "invalid_request_error", "agent not found")
        for resource in body.get("resources") or []:
            if resource.get("type") != "github_repository":
                raise FakeError(400, "invalid_request_error", "unknown resource type")
            if resource["url"] in fake.private_repos and resource.get("authorization_token") != PRIVATE_REPO_TOKEN:
                raise FakeError(400, "invalid_request_error", f"could not access repository {resource['url']}")
        session = FakeManagedSession(fake.new_id("sesn"), body)
        fake.sessions[session.id] = session
        for event in body.get("initial_events") or []:
            fake.emit(session, event)
            if event.get("type") == "user.message":
                fake.start_turn(session, event["content"][0]["text"])
        await asyncio.sleep(fake.create_reply_delay)  # past the client's timeout, the reply is lost
        self.reply(200, fake.session_json(session))

    def list_events(self, session: FakeManagedSession) -> None:
        events = session.events
        since = self.get_query_argument("created_at[gte]", None)
        page = self.get_query_argument("page", None)
        start = 0
        if page:
            start, since = int(page.split(":")[0]), page.split(":", 1)[1] or None
        # Compared as instants, as upstream does (never as strings).
        after = parse_time(since) if since and not self.fake.ignore_since else None
        matching = [e for e in events if after is None or parse_time(e["processed_at"]) >= after]
        chunk = matching[start : start + self.fake.page_size]
        end = start + len(chunk)
        next_page = f"{end}:{since or ''}" if end < len(matching) else None
        self.reply(200, {"data": chunk, "next_page": next_page})

    async def send_events(self, session: FakeManagedSession) -> None:
        if session.status == "terminated":
            raise FakeError(400, "invalid_request_error", "session is terminated")
        sent = []
        for event in self.body_json().get("events") or []:
            sent.append(self.fake.emit(session, event))
            if event.get("type") == "user.message":
                self.fake.start_turn(session, event["content"][0]["text"])
            elif event.get("type") == "user.interrupt":
                await self.fake.interrupt(session)
        self.reply(200, {"data": sent})

    async def stream(self, session: FakeManagedSession) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        await self.flush()
        position = len(session.events)  # no replay: only what happens from now on
        sent = 0
        try:
            while True:
                while position < len(session.events):
                    event = session.events[position]
                    position += 1
                    self.write(b"event: message\ndata: " + orjson.dumps(event) + b"\n\n")
                    await self.flush()
                    sent += 1
                    if self.fake.drop_stream_after is not None and sent >= self.fake.drop_stream_after:
                        self.request.connection.close()  # type: ignore[union-attr]
                        return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(session.changed.wait(), self.fake.heartbeat_seconds)
                if position >= len(session.events):
                    self.write(b'event: ping\ndata: {"type": "ping"}\n\n')
                    await self.flush()
        except tornado.iostream.StreamClosedError:
            return

    async def get(self) -> None:
        await self.handle()

    async def post(self) -> None:
        await self.handle()

    async def delete(self) -> None:
        await self.handle()


@contextlib.asynccontextmanager
async def running_fake_managed_agents() -> AsyncIterator[FakeManagedAgents]:
    fake = FakeManagedAgents()
    await fake.start()
    try:
        yield fake
    finally:
        for session in fake.sessions.values():
            if session.turn is not None:
                session.turn.cancel()
        await fake.stop()


def managed_env(fake: FakeManagedAgents, **overrides: Any) -> dict[str, str]:
    """Settings that point a server at the fake with AGENT_BACKEND=managed-agents."""
    env = {
        "AGENT_BACKEND": "managed-agents",
        "ANTHROPIC_API_KEY": API_KEY,
        "MANAGED_AGENTS_API_BASE_URL": fake.url,
        "CLAUDE_POLL_INTERVAL_MS": "50",
        "RUN_ADOPT_INTERVAL_SECONDS": "0.5",
        "CLAUDE_RETRY_WINDOW_SECONDS": "3",
        "CLAUDE_REQUEST_TIMEOUT_SECONDS": "2",
    }
    env.update({key: str(value) for key, value in overrides.items()})
    return env
