"""A small Server-Sent Events client for tests, parsing the stream as a browser would.

    async with open_sse(client, "/api/sessions/x/events/stream", last_event_id=5) as stream:
        assert stream.status_code == 200
        event = await stream.next()            # the next dispatched event (comments skipped)
        events = await stream.until("completed")  # every event up to and including `completed`

Unlike httpx-sse, a block holding only comments or `retry:` dispatches nothing (browsers do the
same), so tests never see empty pseudo-events. Comments (heartbeats) and `retry:` values are
recorded on the stream for tests that check them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

# What a browser's `new EventSource(url, {withCredentials: true})` sends from the website's page.
EVENT_SOURCE_HEADERS = {
    "Accept": "text/event-stream",
    "Cache-Control": "no-cache",
    "Sec-Fetch-Dest": "empty",
    "Sec-Fetch-Mode": "cors",
    "Sec-Fetch-Site": "same-origin",
}


@dataclass
class SSEEvent:
    """One dispatched event: `event` is "message" when the frame had no `event:` line."""

    event: str
    data: str
    id: str | None
    named: bool

    def json(self) -> Any:
        return orjson.loads(self.data)


@dataclass
class SSEStream:
    response: httpx.Response
    comments: list[str] = field(default_factory=list)
    retries: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    ended: bool = False
    _lines: AsyncIterator[str] | None = None
    # The last `id:` seen (what a browser would send as Last-Event-ID).
    last_event_id: str | None = None

    @property
    def status_code(self) -> int:
        return self.response.status_code

    @property
    def headers(self) -> httpx.Headers:
        return self.response.headers

    async def _next_event(self) -> SSEEvent | None:
        assert self._lines is not None
        name: str | None = None
        data: list[str] = []
        event_id: str | None = None
        async for line in self._lines:
            if line == "":
                if data or name is not None:
                    if event_id is not None:
                        self.last_event_id = event_id
                        self.ids.append(event_id)
                    return SSEEvent(name or "message", "\n".join(data), event_id, name is not None)
                if event_id is not None:
                    self.last_event_id = event_id
                name, data, event_id = None, [], None
                continue
            if line.startswith(":"):
                self.comments.append(line[1:])
                continue
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "data":
                data.append(value)
            elif key == "event":
                name = value
            elif key == "id" and "\0" not in value:
                event_id = value
            elif key == "retry" and value.isdigit():
                self.retries.append(int(value))
        self.ended = True
        return None

    async def next(self, timeout: float = 10) -> SSEEvent:
        """The next event; AssertionError when the stream ends first or nothing comes in time."""
        event = await asyncio.wait_for(self._next_event(), timeout)
        if event is None:
            raise AssertionError("the stream ended")
        return event

    async def next_or_end(self, timeout: float = 10) -> SSEEvent | None:
        """The next event, or None once the server ended the stream."""
        return await asyncio.wait_for(self._next_event(), timeout)

    async def until(self, stop: str | Callable[[SSEEvent], bool], timeout: float = 20) -> list[SSEEvent]:
        """Every event up to and including the first that matches `stop` (an event name or a test)."""
        matches = (lambda e: e.event == stop) if isinstance(stop, str) else stop
        events: list[SSEEvent] = []

        async def read() -> None:
            while True:
                event = await self._next_event()
                if event is None:
                    raise AssertionError(f"the stream ended before the stop event; got {[e.event for e in events]}")
                events.append(event)
                if matches(event):
                    return

        await asyncio.wait_for(read(), timeout)
        return events

    async def rest(self, timeout: float = 20) -> list[SSEEvent]:
        """Every remaining event until the server ends the stream."""
        events: list[SSEEvent] = []

        async def read() -> None:
            while (event := await self._next_event()) is not None:
                events.append(event)

        await asyncio.wait_for(read(), timeout)
        return events


@contextlib.asynccontextmanager
async def open_sse(
    client: httpx.AsyncClient,
    url: str,
    *,
    last_event_id: int | str | None = None,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    timeout: float = 30,
) -> AsyncIterator[SSEStream]:
    """Open a stream with the headers a browser's EventSource sends (optional `Last-Event-ID`);
    closes it on exit."""
    request_headers = {**EVENT_SOURCE_HEADERS, **(headers or {})}
    if last_event_id is not None:
        request_headers["Last-Event-ID"] = str(last_event_id)
    async with client.stream(
        method, url, params=params, headers=request_headers, timeout=httpx.Timeout(timeout, read=None)
    ) as response:
        stream = SSEStream(response)
        stream._lines = response.aiter_lines()
        yield stream


def stored_events(events: list[SSEEvent]) -> list[SSEEvent]:
    """The frames that carry stored events (those with an `id:`)."""
    return [e for e in events if e.id is not None]
