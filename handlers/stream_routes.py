"""The Server-Sent Events streams of the event log (CONTRACT.md 1.3, 4.3-4.5): resume, the
session event stream and the session-list stream. (The JSON pages of a session's events belong
to its events resource in handlers/sessions.py.)

No route here changes a session: resume and the event stream only read (the original marked
running sessions as errors on resume).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import asyncpg

from handlers.base import SESSION_ID, authenticated
from handlers.sse_base import SSEHandler
from services import event_log, fetched_history
from services.clock import iso, now_iso
from services.subscriber import ENDS_WITH_COMPLETED, Replay, StopReason

log = logging.getLogger("webedt.streams")


class SessionStreamHandler(SSEHandler):
    """Shared by the per-session streams: ownership first (404 before any stream starts)."""

    @authenticated
    async def head(self, session_id: str) -> None:
        # What a GET would answer, without subscribing, replaying or anything else.
        await self.owned_session(session_id)
        self.set_stream_headers()
        self.finish()


class SessionEventsStreamHandler(SessionStreamHandler):
    """GET /api/sessions/:id/events/stream (and /api/sessions/:id/stream): the replay after
    Last-Event-ID, then, while the session runs, its live events; then `completed`.

    Without a position, after this login session fetched the whole history moments ago (the chat
    page's order), it starts after what that fetch returned and sends everything live: the page
    drops replayed frames, so an event stored in between would otherwise be lost to it."""

    @authenticated
    async def get(self, session_id: str) -> None:
        # Only the id is kept: this stream may stay open for a long time.
        chat_session_id = (await self.owned_session(session_id))["id"]
        after_id, all_live = self.requested_last_event_id(), False
        if not self.position_given:
            fetched = await fetched_history.take(self.ctx, self.user.session_id, chat_session_id)
            if fetched is not None:
                after_id, all_live = fetched, True
        await self.open_stream()
        reason = StopReason.ERROR
        try:
            reason = await self.follow_session(chat_session_id, after_id, all_live=all_live)
            if reason in ENDS_WITH_COMPLETED and self.replay is not None:
                await self.send(
                    "completed",
                    {
                        "websiteSessionId": chat_session_id,
                        "completed": True,
                        "replayed": reason is StopReason.NOT_RUNNING,
                        "status": self.replay.final_status,
                    },
                )
        except Exception:
            # Headers are out: end the stream without `completed`, so the browser reconnects with
            # its Last-Event-ID and loses nothing.
            log.exception("event stream of %s failed", chat_session_id, extra=self.log_extra())
        await self.close_stream(reason)


class ResumeHandler(SessionStreamHandler):
    """GET /api/resume/:sessionId: the frames of CONTRACT.md 4.3 around the same replay."""

    @authenticated
    async def get(self, session_id: str) -> None:
        row = await self.owned_session(session_id)
        self.session_row = row
        chat_session_id = row["id"]
        await self.open_stream()
        reason = StopReason.ERROR
        try:
            await self.send(None, submission_preview(row))
            await self.send(None, reconnected(row))
            reason = await self.follow_session(chat_session_id, self.requested_last_event_id())
            if reason in ENDS_WITH_COMPLETED:
                await self.send(
                    "completed",
                    {
                        "websiteSessionId": chat_session_id,
                        "completed": True,
                        "replayed": reason is StopReason.NOT_RUNNING,
                    },
                )
        except Exception:
            log.exception("resume of %s failed", chat_session_id, extra=self.log_extra())
            await self.send("error", {"error": "Resume failed"})
            await self.send("completed", {"completed": True, "error": True})
        await self.close_stream(reason)

    async def on_replay_start(self, replay: Replay) -> None:
        total = await event_log.count_between(self.ctx, replay.chat_session_id, replay.after_id, replay.boundary)
        await self.send(None, {"type": "replay_start", "totalEvents": total, "timestamp": now_iso()})

    async def on_replay_end(self, replay: Replay) -> None:
        row = self.session_row
        await self.send(None, {"type": "replay_end", "totalEvents": replay.replayed, "timestamp": now_iso()})
        await self.send(
            None,
            {
                "type": "session_info",
                "sessionId": row["id"],
                "sessionPath": row["session_path"],
                "status": replay.status,
                "branch": row["branch"],
                "baseBranch": row["base_branch"],
                "repositoryOwner": row["repository_owner"],
                "repositoryName": row["repository_name"],
                "repositoryUrl": row["repository_url"],
                "userRequest": row["user_request"],
                "createdAt": iso(row["created_at"]),
                "completedAt": iso(row["completed_at"]),
                "timestamp": now_iso(),
            },
        )

    async def on_live_start(self, replay: Replay) -> None:
        await self.send(None, {"type": "live_stream_start", "message": "Streaming live events", "timestamp": now_iso()})


def submission_preview(row: asyncpg.Record) -> dict[str, Any]:
    owner, name = row["repository_owner"], row["repository_name"]
    return {
        "type": "submission_preview",
        "message": f"Resuming session: {row['user_request']} ({owner}/{name})",
        "source": "internal-api-server:/resume",
        "timestamp": now_iso(),
        "data": {
            "sessionId": row["id"],
            "sessionName": row["user_request"],
            "repositoryOwner": owner,
            "repositoryName": name,
            "branch": row["branch"],
            "status": row["status"],
        },
    }


def reconnected(row: asyncpg.Record) -> dict[str, Any]:
    status = row["status"]
    message = "Reconnected to active session" if status == "running" else f"Session {status}"
    return {"type": "reconnected", "sessionId": row["id"], "status": status, "message": message, "timestamp": now_iso()}


class SessionUpdatesHandler(SSEHandler):
    """GET /api/sessions/updates: the person's session-list changes from every replica."""

    heartbeat_comment = b":heartbeat\n\n"

    @authenticated
    async def get(self) -> None:
        user_id = self.user.id
        await self.open_stream()
        reason = StopReason.ERROR
        try:
            reason = await self.follow_session_list(user_id, self.requested_last_event_id())
        except Exception:
            log.exception("session-list stream failed", extra=self.log_extra())
        await self.close_stream(reason)

    async def on_list_subscribed(self) -> None:
        await self.send(
            "connected", {"subscriberId": str(uuid.uuid4()), "userId": self.user.id, "timestamp": now_iso()}
        )

    @authenticated
    async def head(self) -> None:
        self.set_stream_headers()
        self.finish()


ROUTES = [
    (r"/api/sessions/updates", SessionUpdatesHandler),
    (rf"/api/resume/{SESSION_ID}", ResumeHandler),
    (rf"/api/sessions/{SESSION_ID}/events/stream", SessionEventsStreamHandler),
    (rf"/api/sessions/{SESSION_ID}/stream", SessionEventsStreamHandler),
]
