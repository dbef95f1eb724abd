"""The login-session lookup (the login session and its user's row) remembered in the process.

Every authenticated request needs the row of `queries.auth_sessions.get_auth_session_with_user`;
it rarely changes, so each process keeps it for `LOGIN_CACHE_SECONDS` (default 5) and asks
PostgreSQL again only after that.

Invalidation, on every replica at once: triggers on `users` and `sessions` (migration 0009)
send `NOTIFY webedt_auth, '<user id>'` whenever a person's row or one of their login sessions is
updated or deleted (a logout, a password change, a deletion, an admin flag, a setting, an expired
session purged), whichever process or tool made the change. The hub's LISTEN connection
(services/hub.py) hears it and drops that person's entries here. The process that made the change
also drops them itself before it answers, so its own next request never sees the old row.

How long a stale entry can live: entries are only served while the hub's LISTEN connection is up,
and the cache is emptied whenever that connection is lost or re-established (notifications sent
meanwhile are lost). A notification can so only be missed while a dead connection has not been
noticed yet (the hub pings every 10 s); the TTL bounds that case: no entry is served more than
`LOGIN_CACHE_SECONDS` after it was read from the database.

A lookup that was in flight while any invalidation arrived is not stored (`generation`), so a
row read just before a logout committed cannot be cached after the logout was heard.
"""

from __future__ import annotations

import time
from typing import Any

CHANNEL = "webedt_auth"
# Payloads on CHANNEL starting with this are barriers (Hub.barrier), not user ids.
BARRIER_PREFIX = "#barrier:"
MAX_ENTRIES = 20_000


class LoginCache:
    """Session id (the token's SHA-256) -> the row of `get_auth_session_with_user` (`id` is the
    user's), for a while."""

    __slots__ = ("_by_user", "_entries", "generation", "hits", "live", "misses", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        # True only while the hub's LISTEN connection is up: without it invalidations are missed.
        self.live = False
        # Counts invalidations; a lookup stores its row only if none happened while it ran.
        self.generation = 0
        self.hits = 0
        self.misses = 0
        self._entries: dict[str, tuple[float, Any]] = {}
        self._by_user: dict[str, set[str]] = {}

    def get(self, session_id: str) -> Any | None:
        """The remembered row, or None (not remembered, too old, or the cache is not live)."""
        entry = self._entries.get(session_id)
        if entry is None or not self.live:
            self.misses += 1
            return None
        if entry[0] <= time.monotonic():
            self._drop(session_id, entry[1]["id"])
            self.misses += 1
            return None
        self.hits += 1
        return entry[1]

    def put(self, session_id: str, row: Any, generation: int) -> None:
        """Remember `row` (read when `self.generation` was `generation`) unless invalidated since."""
        if not self.live or self.seconds <= 0 or generation != self.generation:
            return
        if len(self._entries) >= MAX_ENTRIES:
            self.clear()  # rare, and every entry is one query away
        self._entries[session_id] = (time.monotonic() + self.seconds, row)
        self._by_user.setdefault(row["id"], set()).add(session_id)

    def forget_user(self, user_id: str) -> None:
        """Drop every entry of this person (their row or one of their login sessions changed)."""
        self.generation += 1
        for session_id in self._by_user.pop(user_id, ()):
            self._entries.pop(session_id, None)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._by_user.clear()

    def set_live(self, live: bool) -> None:
        """The hub's LISTEN connection came up or went away: either way, start empty."""
        self.clear()
        self.live = live

    def _drop(self, session_id: str, user_id: str) -> None:
        self._entries.pop(session_id, None)
        group = self._by_user.get(user_id)
        if group is not None:
            group.discard(session_id)
            if not group:
                del self._by_user[user_id]

    def __len__(self) -> int:
        return len(self._entries)
