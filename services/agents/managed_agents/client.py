"""The official `anthropic` SDK's async client for Managed Agents, and its errors as `UpstreamError`.

The SDK authenticates its own way (the key, its own `anthropic-version`) and adds the
`managed-agents-2026-04-01` beta header on every beta call; nothing here adds headers. Its own
retries are turned off: the run driver retries 429, 5xx and network failures with its backoff and
retry window, exactly as for Remote Sessions. Replies are read raw (`with_raw_response`, the raw
SSE events) so that event types this SDK release does not know are kept, not dropped or reshaped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import anthropic

from services.agents.backend import UpstreamError, excerpt, retry_after_seconds
from services.config import Config
from services.metrics import UPSTREAM_CALLS

T = TypeVar("T")

# Operations on one session, where a 409 means the session is archived or terminated.
SESSION_OPERATIONS = frozenset(
    {"send message", "interrupt session", "get events", "get session", "open event stream", "rename session"}
)


class FinalError(UpstreamError):
    """An error that the same request will meet again: never retried (a 409 on this backend)."""

    @property
    def retryable(self) -> bool:
        return False


class ApiKeyRefused(UpstreamError):
    """Upstream refused the deployment's ANTHROPIC_API_KEY: neither retried nor a person's login."""

    @property
    def retryable(self) -> bool:
        return False

    @property
    def unauthorized(self) -> bool:
        # Not the person's credentials (the driver would ask them to reconnect Claude).
        return False


def make_client(config: Config) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        api_key=config.anthropic_api_key,
        base_url=config.managed_agents_api_base_url,
        timeout=config.claude_request_timeout_seconds,
        max_retries=0,
    )


def upstream_error(operation: str, exc: Exception) -> UpstreamError:
    """The SDK's exception as an UpstreamError; the message never holds the key or a token."""
    if isinstance(exc, anthropic.APITimeoutError):
        return UpstreamError(operation, "no answer in time", kind="timeout")
    if isinstance(exc, anthropic.APIConnectionError):
        return UpstreamError(operation, "connection failed", kind="network")
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        if status == 401:
            return ApiKeyRefused(
                operation,
                "the Anthropic API refused the deployment's ANTHROPIC_API_KEY (401); an operator must set a valid key",
                status=401,
            )
        detail = f"{status} {excerpt(error_message(exc))}".rstrip()
        if status == 409:
            # Managed Agents answers 409 for a state that does not change by waiting: an archived
            # or terminated session refuses new events (platform docs, "errors").
            if operation in SESSION_OPERATIONS:
                detail += (
                    "; the Managed Agents session has ended upstream (archived or terminated) and takes "
                    "no more messages: start a new chat session to go on"
                )
            return FinalError(operation, detail, status=status)
        return UpstreamError(operation, detail, status=status, retry_after=retry_after(exc.response.headers))
    if isinstance(exc, anthropic.APIResponseValidationError | ValueError):
        return UpstreamError(operation, "reply is not what the API returns", kind="malformed")
    return UpstreamError(operation, exc.__class__.__name__, kind="network")


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait before asking again: Anthropic's `retry-after-ms` first, else `Retry-After`."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return max(float(milliseconds) / 1000, 0.0)
        except ValueError:
            pass
    return retry_after_seconds(headers.get("retry-after"))


def error_message(exc: anthropic.APIStatusError) -> str:
    """The `error.message` of an API error body, else the SDK's message."""
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
    return exc.message


async def call(operation: str, request: Callable[[], Awaitable[T]]) -> T:
    """Run one SDK call, counted in the metrics; SDK exceptions become UpstreamError."""
    try:
        result = await request()
    except anthropic.AnthropicError as exc:
        error = upstream_error(operation, exc)
        UPSTREAM_CALLS.labels("managed-agents", error.kind).inc()
        raise error from None
    UPSTREAM_CALLS.labels("managed-agents", "ok").inc()
    return result


async def call_json(
    operation: str,
    request: Callable[[], Awaitable[Any]],
    on_reply: Callable[[Mapping[str, str]], None] | None = None,
) -> dict[str, Any]:
    """An SDK call made through `with_raw_response`, its body decoded as a JSON object;
    `on_reply` sees the reply's headers first."""

    async def raw() -> dict[str, Any]:
        response = await request()
        if on_reply is not None:
            on_reply(response.headers)
        try:
            value = await response.json()
        except ValueError:
            raise UpstreamError(operation, "reply is not JSON", kind="malformed") from None
        if not isinstance(value, dict):
            raise UpstreamError(operation, "reply is not a JSON object", kind="malformed")
        return value

    return await call(operation, raw)


class RequestBudget:
    """A per-process budget of upstream requests a minute (a token bucket), shared by every run's
    polling, so that many runs polling together stay inside the organization's documented rate
    limit (sessions: 600 requests a minute) instead of meeting 429s. `take` waits for a token;
    `spend` (a person's own action: send, interrupt) counts without waiting."""

    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(per_minute / 12.0, 1.0)  # a burst of five seconds' worth
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self.waited = 0  # requests that had to wait (for the metrics and the tests)

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def spend(self) -> None:
        self._refill()
        self.tokens -= 1

    async def take(self) -> None:
        self._refill()
        if self.tokens < 1:
            self.waited += 1
        while self.tokens < 1:
            await asyncio.sleep((1 - self.tokens) / self.rate)
            self._refill()
        self.tokens -= 1
