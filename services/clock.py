"""Timestamps as the API writes them: UTC ISO 8601 ending in `Z`, like JavaScript's
Date.toISOString() (milliseconds), or with whole seconds where GitHub's shapes are copied."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal


def iso(value: datetime | None, timespec: Literal["milliseconds", "seconds"] = "milliseconds") -> str | None:
    """`value` in UTC as ISO 8601 with `Z` (None stays None); a value without a zone is UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def now_iso() -> str:
    """The current time, as `iso()` writes it."""
    return iso(datetime.now(UTC)) or ""
