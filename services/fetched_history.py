"""What a browser has just fetched of a chat session's history, so its stream does not send it again.

The website's chat page loads a session with `GET /api/sessions/:id/events` (the whole history)
and then opens `/api/sessions/:id/events/stream` without a position. A stream without a position
replays the whole history marked `_replayed`, and the page drops replayed frames as already
shown: an event stored between the fetch and the stream would be lost to it. So the whole-history
fetch remembers the last event id it returned, for its login session and that chat session, and
a stream opened without `Last-Event-ID` or `lastEventId` takes it (once) and starts after it,
with live frames. Paged fetches (`after`, `limit`) remember nothing.

The position lives in PostgreSQL (`fetched_histories`), so a stream on any replica finds it; it
is keyed by the login session, so it never reaches another browser or person; and it expires
after `REMEMBERED_SECONDS`.
"""

from __future__ import annotations

from services.context import AppContext
from services.db import queries

# The page opens its stream as soon as the fetch's answer is parsed: well within a second, a few
# seconds on a slow device with a long history. Longer only widens the window in which a fetch
# that no stream followed (a page closed at once) holds back the next one's position.
REMEMBERED_SECONDS = 30


async def remember(ctx: AppContext, login_session_id: str, chat_session_id: str, last_event_id: int) -> None:
    """Record that this login session has just received the history up to `last_event_id`
    (0: an empty history). An unexpired position no stream has taken yet is kept: it is older."""
    await queries.fetched_histories.upsert_fetched_history(
        ctx.pool,
        login_session_id=login_session_id,
        chat_session_id=chat_session_id,
        last_event_id=last_event_id,
        seconds=float(REMEMBERED_SECONDS),
    )


async def take(ctx: AppContext, login_session_id: str, chat_session_id: str) -> int | None:
    """The position this login session fetched moments ago, removed so it serves one stream;
    None when there is none (or it expired)."""
    return await queries.fetched_histories.take_fetched_history(
        ctx.pool, login_session_id=login_session_id, chat_session_id=chat_session_id
    )


async def prune(ctx: AppContext) -> None:
    """Delete expired positions (those no stream took)."""
    await queries.fetched_histories.delete_expired_fetched_histories(ctx.pool)
