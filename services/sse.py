"""The Server-Sent Events wire format: frames and event names, and the frame of a stored event.

Everything that writes SSE bytes (the hub's live frames, the subscriptions' replays, the SSE
handler's own frames) encodes them here, so the format is written down once. Model: Mercure's
`event.go`.
"""

from __future__ import annotations

from typing import Any

import orjson


def event_name(value: Any) -> bytes | None:
    """An SSE event name from an event's `type`: a non-empty string without line breaks."""
    if not isinstance(value, str) or not value or "\n" in value or "\r" in value:
        return None
    return value.encode()


def sse_frame(data: bytes, event: bytes | None = None, event_id: int | None = None) -> bytes:
    """One SSE frame: optional `id:` and `event:` lines, one `data:` line, a blank line.

    `data` must be single-line JSON (orjson never emits raw line breaks).
    """
    head = b""
    if event_id is not None:
        head = b"id: %d\n" % event_id
    if event is not None:
        head += b"event: " + event + b"\n"
    return head + b"data: " + data + b"\n\n"


def json_frame(data: Any, event: bytes | None = None, event_id: int | None = None) -> bytes:
    """`sse_frame` of a JSON value (dict keys that are not strings are written as strings)."""
    return sse_frame(orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS), event, event_id)


def event_frame(event_id: int, event_data: Any, original_timestamp: str | None = None) -> bytes:
    """The frame of a stored event, named by its `type`, with `id:` = events.id.

    With `original_timestamp` it is a replayed frame: the data gains `_replayed: true` and
    `_originalTimestamp` (CONTRACT.md 4.1).
    """
    payload = event_data
    if original_timestamp is not None and isinstance(event_data, dict):
        payload = {**event_data, "_replayed": True, "_originalTimestamp": original_timestamp}
    name = event_name(event_data.get("type")) if isinstance(event_data, dict) else None
    return json_frame(payload, name, event_id)


_REPLAY_KEYS = (b'"_replayed"', b'"_originalTimestamp"')


def stored_event_frame(row: Any, original_timestamp: str | None = None) -> bytes:
    """`event_frame` of a row of `event_log.read_texts_after`, from its stored JSON text, which is
    embedded as it is (no decoding and re-encoding: the same JSON, in PostgreSQL's spacing)."""
    data: bytes = row["event_json"].encode()
    if original_timestamp is not None and data.startswith(b"{"):
        if any(key in data for key in _REPLAY_KEYS):
            # The event has such a key already: the dict merge replaces it in its place.
            return event_frame(row["id"], orjson.loads(data), original_timestamp)
        extra = b'"_replayed": true, "_originalTimestamp": ' + orjson.dumps(original_timestamp) + b"}"
        data = data[:-1] + (extra if data == b"{}" else b", " + extra)
    name = row["type"]
    return sse_frame(data, event_name(name) if name is not None else None, row["id"])


def announcement_frame(row: Any, data: Any) -> bytes:
    """The frame of a session-list announcement row: named by its kind, `id:` = its row id."""
    return json_frame(data, row["kind"].encode(), row["id"])
