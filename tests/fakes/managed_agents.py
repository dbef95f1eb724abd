"""A fake of Anthropic's Managed Agents API: a real HTTP server speaking what the SDK calls.

Agents (versioned: an update makes a new version), environments (names unique in the workspace:
a second `webedt` answers 409), sessions with resources (a `github_repository` that needs a known
token when it is private, mounted on the repository's default branch when no checkout is given),
events in (`user.message`, `user.interrupt`) and out, the paginated event list (`page` /
`next_page`; the page cursor does not carry the filters, so `created_at[gte]` must come again on
every page), the session list filtered by `agent_id` and `created_at[gte]`, the SSE stream with
heartbeats, update (POST `/v1/sessions/{id}`), archive, and a 409 for events sent to an archived
or terminated session. Every reply carries the key's workspace (`anthropic-workspace-id`).

Turns behave as the real API's documentation says: a user message sent while the agent works is
queued (its echo has `processed_at` null) until the agent picks it up; with `merge_queued` the
agent picks up every queued message inside the running turn and answers them with one
`session.status_idle`, else each queued message gets a turn of its own. An interrupt is echoed at
once (with an empty id when `empty_interrupt_ids`), and the interrupted turn ends with its own
`session.status_idle` (end_turn) after the interrupt request returned. `repository_error` makes
the first turn start with a `repository_*` `session.error` whose retry status is `retrying`, and
the turn goes on without the repository. The session object carries the cumulative `usage`
(tokens and `list_cost`), updated before the idle of each turn.

Every reply, emitted event and streamed frame is checked against the `anthropic` SDK's typed
models (generated from Anthropic's API specification); what does not fit is listed in
`nonconforming` (tests assert it stays empty), so a test that passes against this fake sends and
reads what the real API does. `agent.future_thing` is the one deliberate exception: a type the
SDK does not know yet, which the server must store all the same.

Knobs: `hold` (the turn waits at `hold_at` until released), `drop_stream_after` (close every SSE
stream after that many events), `faults` (answer 429/5xx/409 to matching requests, with
`Retry-After` when the fault says), `terminate()` (a terminal `session.error` then
`session.status_terminated`), `create_delay`, and the lists of calls (`calls`, `agents`,
`environments`) for tests to look at.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import typing
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pydantic
import tornado.iostream
import tornado.web
from anthropic.types.beta import BetaEnvironment, BetaManagedAgentsAgent, BetaManagedAgentsSession
from anthropic.types.beta.sessions import BetaManagedAgentsSendSessionEvents
from anthropic.types.beta.sessions.beta_managed_agents_session_event import BetaManagedAgentsSessionEvent

from tests.fakes import AnthropicFakeHandler, FakeError, LoopbackServer

API_KEY = "sk-ant-fake-managed-key"
BETA = "managed-agents-2026-04-01"
WORKSPACE_ID = "wrkspc_fake0123"
PRIVATE_REPO_TOKEN = "gho_fake_github_token_for_private"
BRANCH = "claude/fix-flaky-test"
# Repositories whose default branch is not `main` (upstream mounts the default when no checkout).
DEFAULT_BRANCHES = {"https://github.com/octo/widgets": "trunk"}
# Event types the SDK does not know on purpose: the server must keep them all the same.
FUTURE_TYPES = {"agent.future_thing"}
# Per turn, what the session's cumulative usage grows by.
TURN_USAGE = {"input_tokens": 100, "output_tokens": 20, "cache_read_input_tokens": 5, "cache_creation": 7}
TURN_COST_CENTS = 25
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


def _event_models() -> dict[str, type[pydantic.BaseModel]]:
    union = typing.get_args(BetaManagedAgentsSessionEvent)[0]
    models: dict[str, type[pydantic.BaseModel]] = {}
    for model in typing.get_args(union):
        (literal,) = typing.get_args(model.model_fields["type"].annotation)
        models[literal] = model
    return models


EVENT_MODELS = _event_models()


def nonconforming_event(event: Any) -> str | None:
    """Why an event does not fit the SDK's model of its type (None: it fits)."""
    kind = event.get("type") if isinstance(event, dict) else None
    if kind in FUTURE_TYPES:
        return None
    model = EVENT_MODELS.get(str(kind))
    if model is None:
        return f"unknown event type {kind!r}"
    try:
        model.model_validate(event)
    except pydantic.ValidationError as exc:
        return f"{kind}: {exc}"
    return None


def nonconforming_reply(model: Any, value: Any) -> str | None:
    """Why a reply body does not fit `model` (a model, or ("list", model) for a page)."""
    try:
        if isinstance(model, tuple):
            assert isinstance(value, dict) and isinstance(value.get("data"), list), "a page has a `data` list"
            for item in value["data"]:
                problem = nonconforming_event(item) if model[1] == "event" else None
                if problem:
                    return problem
                if model[1] != "event":
                    model[1].model_validate(item)
        elif model == "event":
            return nonconforming_event(value)
        else:
            model.model_validate(value)
    except (pydantic.ValidationError, AssertionError) as exc:
        return str(exc)
    return None


@dataclass
class Fault:
    status: int
    method: str
    path: re.Pattern[str]
    count: float = 1
    retry_after: str | None = None


@dataclass
class FakeManagedSession:
    id: str
    body: dict[str, Any]
    created_at: datetime
    status: str = "idle"
    archived_at: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    # Messages sent while the agent worked, not picked up yet (their echo has processed_at null).
    queued: list[dict[str, Any]] = field(default_factory=list)
    turn: asyncio.Task[None] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    turns: int = 0
    usage: dict[str, Any] = field(default_factory=dict)


class FakeManagedAgents(LoopbackServer):
    def __init__(self) -> None:
        super().__init__()
        self.agents: list[dict[str, Any]] = []
        self.agent_updates: list[dict[str, Any]] = []
        self.environments: list[dict[str, Any]] = []
        self.sessions: dict[str, FakeManagedSession] = {}
        self.calls: list[dict[str, Any]] = []
        self.nonconforming: list[str] = []
        self.private_repos: set[str] = {"https://github.com/octo/secret"}
        self._ids = itertools.count(1)
        # Real time at the start (a client filters by creation time), then two events a millisecond.
        self._clock = datetime.now(UTC).replace(microsecond=0)
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
        # Queued messages are answered inside the running turn, by its one idle.
        self.merge_queued = False
        self.empty_interrupt_ids = False
        # A `repository_*` error type the first turn of a new session starts with (retrying).
        self.repository_error: str | None = None
        # Whether the session object carries `list_cost` yet ("absent until cost tracking").
        self.cost_tracking = True

    async def start(self) -> None:
        await self.serve(FakeManagedHandler)

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}"

    def now(self) -> datetime:
        # Two events per millisecond (timestamps are shared, as upstream allows), never behind the
        # wall clock's second (clients filter sessions by creation time).
        self._ticks += 1
        moment = self._clock + timedelta(milliseconds=self._ticks // 2)
        wall = datetime.now(UTC).replace(microsecond=0)
        if wall > moment:
            self._clock, self._ticks, moment = wall, 0, wall
        return moment

    def processed_at(self) -> str:
        return self.now().isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def check_event(self, event: dict[str, Any]) -> None:
        problem = nonconforming_event(event)
        if problem:
            self.nonconforming.append(f"event {problem}")

    def emit(self, session: FakeManagedSession, event: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
        event_id = self.new_id("sevt") if event_id is None else event_id
        event = {"id": event_id, **event, "processed_at": self.processed_at()}
        self.check_event(event)
        session.events.append(event)
        if event["type"] == "session.status_running":
            session.status = "running"
        elif event["type"] == "session.status_idle":
            session.status = "idle"
        elif event["type"] == "session.status_terminated":
            session.status = "terminated"
        session.changed.set()
        session.changed = asyncio.Event()
        return event

    def busy(self, session: FakeManagedSession) -> bool:
        return session.turn is not None and not session.turn.done()

    def user_message(self, session: FakeManagedSession, event: dict[str, Any]) -> dict[str, Any]:
        """A user message: processed at once when the agent is idle, else queued."""
        if not self.busy(session) and not session.queued:
            echo = self.emit(session, event)
            self.start_turn(session, [echo])
            return echo
        echo = {"id": self.new_id("sevt"), **event, "processed_at": None}
        self.check_event(echo)
        session.queued.append(echo)
        return echo

    def start_turn(self, session: FakeManagedSession, messages: list[dict[str, Any]]) -> None:
        session.turns += 1
        session.turn = asyncio.create_task(self._play(session, messages, session.turns))

    def _pick_up(self, session: FakeManagedSession) -> list[dict[str, Any]]:
        """The queued messages, processed now (same ids as their queued echo)."""
        picked = [
            self.emit(session, {k: v for k, v in q.items() if k not in ("id", "processed_at")}, q["id"])
            for q in session.queued
        ]
        session.queued = []
        return picked

    def _next_queued(self, session: FakeManagedSession) -> None:
        if session.queued and session.status != "terminated":
            first = session.queued.pop(0)
            rest, session.queued = session.queued, []
            echo = self.emit(session, {k: v for k, v in first.items() if k not in ("id", "processed_at")}, first["id"])
            session.queued = rest
            self.start_turn(session, [echo])

    def _add_usage(self, session: FakeManagedSession) -> None:
        usage = session.usage
        for key in ("input_tokens", "output_tokens", "cache_read_input_tokens"):
            usage[key] = usage.get(key, 0) + TURN_USAGE[key]
        cache = usage.setdefault("cache_creation", {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0})
        cache["ephemeral_5m_input_tokens"] += TURN_USAGE["cache_creation"]
        usage["_cents"] = usage.get("_cents", 0) + TURN_COST_CENTS

    def usage_json(self, session: FakeManagedSession) -> dict[str, Any]:
        usage = {k: v for k, v in session.usage.items() if not k.startswith("_")}
        if self.cost_tracking and "_cents" in session.usage:
            usage["list_cost"] = {"amount": str(session.usage["_cents"]), "currency": "USD"}
        return usage

    async def _play(self, session: FakeManagedSession, messages: list[dict[str, Any]], number: int) -> None:
        text = messages[0]["content"][0]["text"]
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
            {"type": "session.usage"},
            {"type": "session.status_idle"},
        ]
        if number == 1 and self.repository_error:
            script.insert(
                1,
                {
                    "type": "session.error",
                    "error": {
                        "type": self.repository_error,
                        "message": "could not clone the repository",
                        "retry_status": {"type": "retrying"},
                    },
                },
            )
        last_use = ""
        last_start = ""
        for index, event in enumerate(script):
            if self.hold is not None and index == self.hold_at:
                await self.hold.wait()
            await asyncio.sleep(self.step_seconds)
            if event["type"] == "agent.tool_result":
                event = {**event, "tool_use_id": last_use}
            elif event["type"] == "span.model_request_end":
                event = {**event, "model_request_start_id": last_start}
            elif event["type"] == "session.usage":
                self._add_usage(session)
                # A periodic snapshot, a turn behind: the session object has the totals.
                snapshot = dict(self.usage_json(session))
                snapshot.pop("list_cost", None)
                event = {**event, "usage": snapshot}
            elif event["type"] == "session.status_idle":
                if self.merge_queued and session.queued:
                    for echo in self._pick_up(session):
                        more = echo["content"][0]["text"]
                        self.emit(
                            session,
                            {"type": "agent.message", "content": [{"type": "text", "text": f"Also done: {more}"}]},
                        )
                stop = self.stop_reason
                if stop.get("type") == "requires_action":
                    stop = {**stop, "event_ids": [last_use]}
                event = {**event, "stop_reason": stop}
            emitted = self.emit(session, event)
            if event["type"] == "agent.tool_use":
                last_use = emitted["id"]
            elif event["type"] == "span.model_request_start":
                last_start = emitted["id"]
        if self.stop_reason.get("type") != "requires_action":
            self._next_queued(session)

    def charge(self, session_id: str, cents: int) -> None:
        """Spend while the agent works: the session object's cumulative cost grows by `cents`,
        announced by a `session.usage` snapshot as upstream does."""
        session = self.sessions[session_id]
        session.usage["_cents"] = session.usage.get("_cents", 0) + cents
        self.emit(session, {"type": "session.usage", "usage": dict(self.usage_json(session))})

    async def _end_interrupted(self, session: FakeManagedSession, turn: asyncio.Task[None]) -> None:
        """The interrupted turn's own idle, emitted after the interrupt request returned."""
        await asyncio.sleep(self.step_seconds * 2)
        turn.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await turn
        self.emit(session, {"type": "session.status_idle", "stop_reason": {"type": "end_turn"}})
        self._next_queued(session)

    def interrupt(self, session: FakeManagedSession, event: dict[str, Any]) -> dict[str, Any]:
        echo = self.emit(session, event, "" if self.empty_interrupt_ids else None)
        waiting = session.events[-2:-1] and session.events[-2]["type"] == "session.status_idle"
        if self.busy(session):
            assert session.turn is not None
            session.turn = asyncio.create_task(self._end_interrupted(session, session.turn))
        elif waiting and session.events[-2]["stop_reason"]["type"] == "requires_action":
            # A session waiting for a confirmation: the interrupt ends that wait.
            self.emit(session, {"type": "session.status_idle", "stop_reason": {"type": "end_turn"}})
            self._next_queued(session)
        return echo

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

    def agent_json(self, agent: dict[str, Any]) -> dict[str, Any]:
        return agent

    def session_json(self, session: FakeManagedSession) -> dict[str, Any]:
        resources = []
        for index, given in enumerate(session.body.get("resources") or []):
            url = given["url"]
            name = url.rstrip("/").rsplit("/", 1)[-1]
            checkout = given.get("checkout") or {"type": "branch", "name": DEFAULT_BRANCHES.get(url, "main")}
            resources.append(
                {
                    "id": f"sesrsc_{index:04d}",
                    "type": "github_repository",
                    "url": url,
                    "mount_path": given.get("mount_path") or f"/workspace/{name}",
                    "checkout": checkout,
                    "created_at": session.created_at.isoformat(),
                    "updated_at": session.created_at.isoformat(),
                }
            )
        agent = next((a for a in self.agents if a["id"] == session.body["agent"]), None) or self.new_agent(
            {"name": "configured", "model": "claude-x"}, session.body["agent"]
        )
        return {
            "id": session.id,
            "type": "session",
            "status": session.status,
            "title": session.body.get("title"),
            "metadata": session.body.get("metadata") or {},
            "environment_id": session.body["environment_id"],
            "agent": {
                k: v for k, v in agent.items() if k not in ("created_at", "updated_at", "archived_at", "metadata")
            },
            "resources": resources,
            "archived_at": session.archived_at,
            "created_at": session.created_at.isoformat(),
            "updated_at": session.created_at.isoformat(),
            "usage": self.usage_json(session),
            "stats": {},
            "vault_ids": [],
            "outcome_evaluations": [],
        }

    def new_agent(self, body: dict[str, Any], agent_id: str | None = None, version: int = 1) -> dict[str, Any]:
        at = self._clock.isoformat()
        tools = []
        for tool in body.get("tools") or []:
            if tool.get("type") == "agent_toolset_20260401":
                default = tool.get("default_config") or {}
                tools.append(
                    {
                        "type": "agent_toolset_20260401",
                        "configs": tool.get("configs") or [],
                        "default_config": {
                            "enabled": default.get("enabled", True),
                            "permission_policy": default.get("permission_policy") or {"type": "always_allow"},
                        },
                    }
                )
            else:
                tools.append(tool)
        model = body.get("model")
        return {
            "id": agent_id or self.new_id("agent"),
            "type": "agent",
            "name": body.get("name") or "agent",
            "description": None,
            "model": model if isinstance(model, dict) else {"id": model},
            "system": body.get("system"),
            "tools": tools,
            "mcp_servers": body.get("mcp_servers") or [],
            "skills": [],
            "metadata": body.get("metadata") or {},
            "execution_identity": {"type": "service_account"},
            "version": version,
            "created_at": at,
            "updated_at": at,
            "archived_at": None,
        }

    def environment_json(self, body: dict[str, Any]) -> dict[str, Any]:
        at = self._clock.isoformat()
        packages = {"type": "packages", "apt": [], "cargo": [], "gem": [], "go": [], "npm": [], "pip": []}
        config = {"type": "cloud", "networking": {"type": "unrestricted"}, **(body.get("config") or {})}
        config["packages"] = {**packages, **(config.get("packages") or {})}
        return {
            "id": self.new_id("env"),
            "type": "environment",
            "name": body["name"],
            "description": None,
            "config": config,
            "metadata": {},
            "created_at": at,
            "updated_at": at,
            "archived_at": None,
        }


def parse_time(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise FakeError(400, "invalid_request_error", f"created_at[gte] is not a time: {value!r}") from None


SESSION_PATH = re.compile(r"^/v1/sessions/([A-Za-z0-9_]+)(/events/stream|/events|/archive)?$")
AGENT_PATH = re.compile(r"^/v1/agents/([A-Za-z0-9_]+)$")


class FakeManagedHandler(AnthropicFakeHandler):
    SUPPORTED_METHODS = ("GET", "POST", "DELETE")

    def reply(self, status: int, value: Any, model: Any = None) -> None:
        self.set_header("anthropic-workspace-id", WORKSPACE_ID)
        if model is not None:
            problem = nonconforming_reply(model, value)
            if problem:
                self.fake.nonconforming.append(f"{self.request.method} {self.request.path}: {problem}")
        super().reply(status, value)

    async def handle(self) -> None:
        fake = self.fake
        method, path = self.request.method or "GET", self.request.path
        headers = {k.lower(): v for k, v in self.request.headers.items()}
        fake.calls.append({"method": method, "path": path, "headers": headers, "query": self.request.query})
        try:
            for fault in fake.faults:
                if fault.count > 0 and fault.method == method and fault.path.search(path):
                    fault.count -= 1
                    if fault.retry_after is not None:
                        self.set_header("retry-after", fault.retry_after)
                    kind = {409: "invalid_request_error", 429: "rate_limit_error"}.get(fault.status, "api_error")
                    raise FakeError(fault.status, kind, f"injected {fault.status}")
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
            agent = fake.new_agent(self.body_json())
            fake.agents.append(agent)
            return self.reply(200, agent, BetaManagedAgentsAgent)
        agent_match = AGENT_PATH.match(path)
        if agent_match is not None:
            agent = next((a for a in fake.agents if a["id"] == agent_match.group(1)), None)
            if agent is None:
                raise FakeError(404, "not_found_error", "agent not found")
            if method == "GET":
                return self.reply(200, agent, BetaManagedAgentsAgent)
            if method == "POST":
                update = self.body_json()
                if "version" in update and update["version"] != agent["version"]:
                    raise FakeError(409, "invalid_request_error", "the agent was changed since that version")
                fake.agent_updates.append(update)
                merged = {**agent, **{k: v for k, v in update.items() if k != "version"}}
                changed = fake.new_agent(merged, agent["id"], agent["version"] + 1)
                agent.clear()
                agent.update(changed)
                return self.reply(200, agent, BetaManagedAgentsAgent)
        if path == "/v1/environments" and method == "POST":
            await asyncio.sleep(fake.create_delay)
            body = self.body_json()
            if any(e["name"] == body.get("name") and not e["archived_at"] for e in fake.environments):
                raise FakeError(
                    409, "invalid_request_error", f"an environment named {body.get('name')!r} already exists"
                )
            environment = fake.environment_json(body)
            fake.environments.append(environment)
            return self.reply(200, environment, BetaEnvironment)
        if path == "/v1/environments" and method == "GET":
            start = int(self.get_query_argument("page", "0") or 0)
            limit = int(self.get_query_argument("limit", "2"))
            chunk = fake.environments[start : start + limit]
            end = start + len(chunk)
            next_page = str(end) if end < len(fake.environments) else None
            return self.reply(200, {"data": chunk, "next_page": next_page}, ("list", BetaEnvironment))
        if path == "/v1/sessions" and method == "POST":
            return await self.create_session()
        if path == "/v1/sessions" and method == "GET":
            return self.list_sessions()
        match = SESSION_PATH.match(path)
        if match is None or match.group(1) not in fake.sessions:
            raise FakeError(404, "not_found_error", "session not found")
        session = fake.sessions[match.group(1)]
        tail = match.group(2)
        if tail is None and method == "GET":
            return self.reply(200, fake.session_json(session), BetaManagedAgentsSession)
        if tail is None and method == "POST":  # update: only what the body names changes
            update = self.body_json()
            if isinstance(update.get("title"), str):
                session.body["title"] = update["title"]
            return self.reply(200, fake.session_json(session), BetaManagedAgentsSession)
        if tail == "/archive" and method == "POST":
            session.archived_at = session.archived_at or datetime.now(UTC).isoformat()
            return self.reply(200, fake.session_json(session), BetaManagedAgentsSession)
        if tail == "/events" and method == "GET":
            return self.list_events(session)
        if tail == "/events" and method == "POST":
            return await self.send_events(session)
        if tail == "/events/stream" and method == "GET":
            return await self.stream(session)
        raise FakeError(404, "not_found_error", f"no route {method} {path}")

    def list_sessions(self) -> None:
        fake = self.fake
        sessions = sorted(fake.sessions.values(), key=lambda s: (s.created_at, s.id), reverse=True)
        agent_id = self.get_query_argument("agent_id", None)
        since = self.get_query_argument("created_at[gte]", None)
        if agent_id:
            sessions = [s for s in sessions if s.body["agent"] == agent_id]
        if since:
            after = parse_time(since)
            sessions = [s for s in sessions if s.created_at >= after]
        start = int(self.get_query_argument("page", "0") or 0)
        limit = int(self.get_query_argument("limit", "20"))
        chunk = sessions[start : start + limit]
        end = start + len(chunk)
        next_page = str(end) if end < len(sessions) else None
        page = {"data": [fake.session_json(s) for s in chunk], "next_page": next_page}
        self.reply(200, page, ("list", BetaManagedAgentsSession))

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
        session = FakeManagedSession(fake.new_id("sesn"), body, fake.now())
        fake.sessions[session.id] = session
        for event in body.get("initial_events") or []:
            if event.get("type") == "user.message":
                fake.user_message(session, event)
            else:
                fake.emit(session, event)
        await asyncio.sleep(fake.create_reply_delay)  # past the client's timeout, the reply is lost
        self.reply(200, fake.session_json(session), BetaManagedAgentsSession)

    def list_events(self, session: FakeManagedSession) -> None:
        events = session.events
        since = self.get_query_argument("created_at[gte]", None)
        # The page cursor is an offset into the filtered list: it does not carry the filter.
        start = int(self.get_query_argument("page", "0") or 0)
        # Compared as instants, as upstream does (never as strings).
        after = parse_time(since) if since and not self.fake.ignore_since else None
        matching = [e for e in events if after is None or parse_time(e["processed_at"]) >= after]
        chunk = matching[start : start + self.fake.page_size]
        end = start + len(chunk)
        next_page = str(end) if end < len(matching) else None
        self.reply(200, {"data": chunk, "next_page": next_page}, ("list", "event"))

    async def send_events(self, session: FakeManagedSession) -> None:
        if session.status == "terminated" or session.archived_at:
            state = "terminated" if session.status == "terminated" else "archived"
            raise FakeError(409, "invalid_request_error", f"session {session.id} is {state} and accepts no events")
        sent = []
        for event in self.body_json().get("events") or []:
            if event.get("type") == "user.message":
                sent.append(self.fake.user_message(session, event))
            elif event.get("type") == "user.interrupt":
                sent.append(self.fake.interrupt(session, event))
            else:
                sent.append(self.fake.emit(session, event))
        self.reply(200, {"data": sent}, BetaManagedAgentsSendSessionEvents)

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
        # Tests poll every 50 ms: a budget that never makes them wait (one test lowers it).
        "MANAGED_AGENTS_REQUESTS_PER_MINUTE": "1000000",
    }
    env.update({key: str(value) for key, value in overrides.items()})
    return env
