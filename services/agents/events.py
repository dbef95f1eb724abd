"""Upstream events as the run driver, the orphan cleanup and the sync store them.

Every backend's events are keyed the same way (`event_key`: the upstream `uuid`, else a digest of
the content), so a poll, a push channel, a backfill and an import may overlap without an event
stored twice.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from services.agents.backend import AgentProvider
from services.clock import now_iso
from services.metrics import UPSTREAM_EVENT_LATENCY

# Pages read at most when a whole remote history is fetched at once (cleanup, sync).
MAX_EVENT_BATCHES = 10


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


def stored_event(event: dict[str, Any]) -> dict[str, Any]:
    """An upstream event as the run driver stores it (same key), keeping its own time."""
    stored = stored_upstream_event(event)
    if isinstance(event.get("timestamp"), str):
        stored["timestamp"] = event["timestamp"]
    return stored


async def fetch_all_events(provider: AgentProvider, token: str, remote_id: str) -> list[dict[str, Any]]:
    """A remote session's whole event list, in upstream order (at most MAX_EVENT_BATCHES reads)."""
    events: list[dict[str, Any]] = []
    cursor = None
    for _ in range(MAX_EVENT_BATCHES):
        batch = await provider.events_after(token, remote_id, cursor)
        events.extend(batch.events)
        if batch.complete or batch.cursor in (None, cursor):
            break
        cursor = batch.cursor
    return events


def session_cost(provider: AgentProvider, events: list[dict[str, Any]]) -> str | None:
    """The session's total cost as its last turn end reports it (None before any end)."""
    ends = [e for e in events if e.get("type") in provider.end_event_types]
    return provider.cost(ends[-1]) if ends else None
