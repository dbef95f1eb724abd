"""The agent backend behind a run: the interface every backend implements, and its value types.

The run driver (`services/agents/driver.py`, `run.py`, `follow.py`), the execute service and the
routes speak only `AgentProvider`, `PushChannel` and the types here; each backend is one folder
beside this module (`claude_remote/`, `managed_agents/`) with the same file roles (client, push,
provider) and one row in `registry.py`. Backends never import each other.
"""

from __future__ import annotations

import abc
import email.utils
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.context import AppContext

# Characters of an upstream reply quoted in an error message at most.
BODY_EXCERPT_CHARS = 300
# Pages of events fetched in one poll at most; the rest comes with the next poll.
MAX_PAGES_PER_POLL = 20
# The longest `Retry-After` obeyed (a bigger one is read as this: the run's retry window decides).
MAX_RETRY_AFTER_SECONDS = 300.0


class UpstreamError(Exception):
    """A request to the upstream failed; `message` says which operation and how."""

    def __init__(
        self,
        operation: str,
        detail: str,
        *,
        status: int | None = None,
        kind: str = "http",
        retry_after: float | None = None,
    ) -> None:
        self.operation = operation
        self.status = status
        # Seconds the upstream asked us to wait (`Retry-After` on a 429 or 503), when it said.
        self.retry_after = retry_after
        # http (a status code), timeout, network (could not connect or the connection broke),
        # malformed (a 2xx whose body is not what the API returns).
        self.kind = kind
        self.message = f"Failed to {operation}: {detail}"
        super().__init__(self.message)

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later: outages, throttling, broken replies."""
        if self.kind != "http":
            return True
        return self.status is not None and (self.status >= 500 or self.status in (408, 409, 425, 429))

    @property
    def unauthorized(self) -> bool:
        return self.kind == "http" and self.status == 401

    @property
    def not_found(self) -> bool:
        return self.kind == "http" and self.status == 404


def retry_after_seconds(value: str | None) -> float | None:
    """A `Retry-After` header (seconds, or an HTTP date) as seconds from now, capped at
    MAX_RETRY_AFTER_SECONDS; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text[:BODY_EXCERPT_CHARS] + ("..." if len(text) > BODY_EXCERPT_CHARS else "")


class RemoteState:
    """Normalised remote session states (CONTRACT.md 5.4, `session_status` values and mapping)."""

    RUNNING = "running"
    IDLE = "idle"
    COMPLETED = "completed"
    FAILED = "failed"
    ARCHIVED = "archived"
    UNKNOWN = "unknown"


@dataclass
class RemoteSession:
    id: str
    web_url: str
    state: str
    title: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass
class CreateRequest:
    """Everything needed to create a remote session for a chat session's first prompt."""

    title: str
    content: str | list[dict[str, Any]]
    environment_id: str
    repo_url: str
    repo_full_name: str
    branch_prefix: str
    model: str
    message_uuid: str
    # The branch the repository is checked out on (backends that mount it, like Managed Agents).
    base_branch: str | None = None


@dataclass
class EventBatch:
    """Events after a cursor, in upstream order, and the cursor to ask from next time.

    `complete` is False when more pages were left for the next poll."""

    events: list[dict[str, Any]]
    cursor: str | None
    complete: bool = True


@dataclass
class TurnUsage:
    """What a remote session has cost upstream so far, cumulative over its turns, as its backend
    reports it once a turn has ended (a turn's own share is the difference to the last report)."""

    cost_usd: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0


@dataclass
class PushItem:
    """One thing an upstream push channel delivered: an event, or a session status, or both empty
    for a frame that carries nothing for the run (a heartbeat, an acknowledgement)."""

    event: dict[str, Any] | None = None
    # A `RemoteState` value, when the upstream announced the session's status.
    status: str | None = None
    # The `events_after` cursor that follows `event`, when the backend can tell (else the
    # driver keeps its cursor, and the next backfill reads a little more and de-duplicates).
    cursor: str | None = None


class PushChannel(abc.ABC):
    """An open push connection to one remote session (a WebSocket, an SSE stream).

    Events it delivers are keyed like polled ones (`event_key`), so a channel, a backfill and a
    fallback poll may overlap: the run driver stores each upstream event once."""

    @abc.abstractmethod
    async def receive(self) -> PushItem | None:
        """The next item, waiting as long as it takes; None once the channel has closed."""

    async def interrupt(self) -> bool:
        """Interrupt the current turn over the channel; False when this channel cannot (the caller
        then interrupts the usual way)."""
        return False

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection; safe to call more than once."""


class AgentProvider(abc.ABC):
    """What the run driver needs from an agent backend."""

    name: str
    # Whether upstream calls need the person's own credentials (a deployment-wide key does not:
    # its sessions can be archived for anyone).
    personal_credentials: bool = True
    # Upstream event types that end a turn (the run ends when a new one arrives).
    end_event_types: tuple[str, ...]
    # Upstream event types that do not show the agent at work (echoes of user turns).
    quiet_event_types: tuple[str, ...]
    # How a turn end answers prompts that were queued while the agent worked: False when each
    # end answers one prompt (Claude Code answers a queued prompt as a turn of its own), True
    # when one end answers every prompt echoed before it (Managed Agents may merge them).
    end_answers_every_queued_prompt: bool = False
    # What a person is told when upstream refuses the credential (after one refresh), and when
    # there is none to use.
    credentials_expired: str
    credentials_missing: str

    @abc.abstractmethod
    def __init__(self, ctx: AppContext) -> None:
        """Made once per process, on first use, by the run driver (which closes it with `aclose`);
        no I/O here: connections open lazily."""

    @abc.abstractmethod
    async def authenticate(self, user_id: str, *, force: bool = False) -> str:
        """A credential for the user's upstream calls; ServiceError (4xx) when there is none."""

    @abc.abstractmethod
    async def environment(self, token: str) -> str:
        """The environment new sessions run in; ServiceError (4xx) when it cannot be found."""

    @abc.abstractmethod
    async def create(self, token: str, request: CreateRequest) -> RemoteSession: ...

    @abc.abstractmethod
    async def find_created(self, token: str, request: CreateRequest) -> RemoteSession | None:
        """The session an earlier `create` made, if the request reached upstream after all."""

    @abc.abstractmethod
    async def get(self, token: str, remote_id: str) -> RemoteSession: ...

    @abc.abstractmethod
    async def events_after(self, token: str, remote_id: str, cursor: str | None) -> EventBatch: ...

    @abc.abstractmethod
    async def send(self, token: str, remote_id: str, content: str | list[dict[str, Any]], message_uuid: str) -> None:
        """Deliver a user turn; the upstream echoes it as an event with `message_uuid`."""

    @abc.abstractmethod
    async def interrupt(self, token: str, remote_id: str) -> None: ...

    @abc.abstractmethod
    async def archive(self, token: str, remote_id: str) -> None: ...

    @abc.abstractmethod
    async def rename(self, token: str, remote_id: str, title: str) -> None:
        """Give the remote session a new title."""

    @abc.abstractmethod
    def web_url(self, remote_id: str) -> str: ...

    @abc.abstractmethod
    def cost(self, end_event: dict[str, Any]) -> str | None:
        """The session's total cost in USD as the SessionRow's string, from a turn's end event."""

    @abc.abstractmethod
    def branch(self, event: dict[str, Any]) -> str | None:
        """The git branch the agent works on, when this event reveals it."""

    @abc.abstractmethod
    def prompt_echo(self, event: dict[str, Any]) -> bool:
        """Whether a stored upstream event is the echo of a person's prompt (a user turn, not a
        tool result): the turn rule of `services/agents/run.py` counts ends after these."""

    async def turn_usage(self, token: str, remote_id: str, end_event: dict[str, Any]) -> TurnUsage | None:
        """The session's cumulative usage once a turn has ended with `end_event` (None: the
        backend does not say)."""
        return None

    def session_usage(self, remote: RemoteSession) -> TurnUsage | None:
        """The session's cumulative usage so far as a status read (`get`) shows it, also mid-turn
        (None: the backend's session status does not say; its usage is known at turn ends only)."""
        return None

    def reports_usage(self, event: dict[str, Any]) -> bool:
        """Whether a stored event announces that the session's usage grew (the run then reads its
        status at once, so a budget is checked mid-turn; see `session_usage`)."""
        return False

    def end_error(self, end_event: dict[str, Any]) -> str | None:
        """Why a turn's end event ends the run in error (None: the turn completed)."""
        return None

    async def open_push(self, token: str, remote_id: str) -> PushChannel | None:
        """Open the backend's push channel for a remote session, or None when it has none (or it
        is turned off); raises UpstreamError when the channel exists but cannot be opened."""
        return None

    async def prepare(self) -> None:  # noqa: B027 - optional for backends without shared resources
        """Make the deployment's upstream resources (run once at start-up, in the background)."""

    async def aclose(self) -> None:  # noqa: B027 - optional for providers without connections
        """Release connections."""


def format_cost(value: Any) -> str | None:
    """A cost as JavaScript's String(number) writes it ("0.0123", "2")."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)
