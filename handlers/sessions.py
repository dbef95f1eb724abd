"""/api/sessions: create, list, read, rename, trash and restore chat sessions (CONTRACT.md 1.6).

The streams (/updates, /:id/events/stream, /:id/stream) live in handlers/stream_routes.py and the run routes
(/:id/send, /:id/interrupt, /:id/abort) in handlers/runs.py. The legacy worker-status callback is
retired: nothing answers it but the 404 of unknown paths.
"""

from __future__ import annotations

import functools

from handlers.base import SESSION_ID, APIHandler, authenticated
from services import event_log, fetched_history, sessions
from services.agents.claude_remote import sync


class CreateCodeSessionHandler(APIHandler):
    @authenticated
    async def post(self) -> None:
        session = await sessions.create_code_session(self.ctx, self.user.id, self.json_body())
        self.write_json({"success": True, "session": session})


class SessionListHandler(APIHandler):
    @authenticated
    async def get(self) -> None:
        self.ok(
            await sessions.list_sessions(
                self.ctx,
                self.user.id,
                self.page(default=sessions.SESSIONS_PAGE_MAX, maximum=sessions.SESSIONS_PAGE_MAX),
                cursor=self.get_query_argument("cursor", None) or None,
            )
        )


class DeletedSessionsHandler(APIHandler):
    @authenticated
    async def get(self) -> None:
        self.ok(
            await sessions.list_deleted(
                self.ctx,
                self.user.id,
                self.page(default=sessions.DELETED_PAGE_DEFAULT, maximum=sessions.DELETED_PAGE_MAX),
            )
        )


class SessionHandler(APIHandler):
    @authenticated
    async def get(self, session_id: str) -> None:
        session = await sessions.get_session(self.ctx, self.user.id, session_id)
        self.write_json({"success": True, "session": session})

    @authenticated
    async def patch(self, session_id: str) -> None:
        self.ok(await sessions.update_session(self.ctx, self.user, session_id, self.json_body()))

    @authenticated
    async def delete(self, session_id: str) -> None:
        self.ok(await sessions.delete_session(self.ctx, self.user, session_id))


class MessagesHandler(APIHandler):
    @authenticated
    async def get(self, session_id: str) -> None:
        self.ok(
            await sessions.list_messages(
                self.ctx,
                self.user.id,
                session_id,
                self.page(default=sessions.MESSAGES_PAGE_MAX, maximum=sessions.MESSAGES_PAGE_MAX),
            )
        )

    @authenticated
    async def post(self, session_id: str) -> None:
        self.ok(await sessions.add_message(self.ctx, self.user.id, session_id, self.json_body()))


class EventsHandler(APIHandler):
    """GET /api/sessions/:id/events: the whole history without paging parameters (streamed in
    chunks), one keyset page with `after` or `limit`. POST: store one event.

    The whole history is what the chat page fetches before it opens the stream: its last id is
    remembered for this login session (services/fetched_history.py) before the answer ends."""

    @authenticated
    async def get(self, session_id: str) -> None:
        row = await self.owned_session(session_id)
        after, limit = self.get_query_argument("after", None), self.get_query_argument("limit", None)
        if after is None and limit is None:
            remember = functools.partial(fetched_history.remember, self.ctx, self.user.session_id, row["id"])
            await self.write_json_chunks(event_log.whole_history(self.ctx, row, remember))
            return
        after_id, size = event_log.page_arguments(after, limit)
        self.ok(await event_log.page(self.ctx, row, after_id, size))

    @authenticated
    async def post(self, session_id: str) -> None:
        self.ok(await sessions.add_event(self.ctx, self.user.id, session_id, self.json_body()))


class UnlockHandler(APIHandler):
    @authenticated
    async def post(self, session_id: str) -> None:
        self.ok(await sessions.unlock(self.ctx, self.user.id, session_id))


class RestoreHandler(APIHandler):
    @authenticated
    async def post(self, session_id: str) -> None:
        self.ok(await sessions.restore_session(self.ctx, self.user.id, session_id))


class BulkDeleteHandler(APIHandler):
    @authenticated
    async def post(self) -> None:
        self.ok(await sessions.bulk_delete(self.ctx, self.user, self.json_body()))


class BulkRestoreHandler(APIHandler):
    @authenticated
    async def post(self) -> None:
        self.ok(await sessions.bulk_restore(self.ctx, self.user.id, self.json_body()))


class BulkDeletePermanentHandler(APIHandler):
    @authenticated
    async def post(self) -> None:
        self.ok(await sessions.bulk_delete_permanent(self.ctx, self.user.id, self.json_body()))


class SyncHandler(APIHandler):
    @authenticated
    async def post(self) -> None:
        self.ok(
            await sync.sync_route(
                self.ctx,
                self.user.id,
                self.get_query_argument("activeOnly", None),
                self.get_query_argument("limit", None),
            )
        )


class SyncEventsHandler(APIHandler):
    @authenticated
    async def post(self, session_id: str) -> None:
        self.ok(await sync.sync_events(self.ctx, self.user.id, session_id))


ROUTES = [
    (r"/api/sessions/create-code-session", CreateCodeSessionHandler),
    (r"/api/sessions", SessionListHandler),
    (r"/api/sessions/deleted", DeletedSessionsHandler),
    (r"/api/sessions/bulk-delete", BulkDeleteHandler),
    (r"/api/sessions/bulk-restore", BulkRestoreHandler),
    (r"/api/sessions/bulk-delete-permanent", BulkDeletePermanentHandler),
    (r"/api/sessions/sync", SyncHandler),
    (rf"/api/sessions/{SESSION_ID}", SessionHandler),
    (rf"/api/sessions/{SESSION_ID}/messages", MessagesHandler),
    (rf"/api/sessions/{SESSION_ID}/events", EventsHandler),
    (rf"/api/sessions/{SESSION_ID}/unlock", UnlockHandler),
    (rf"/api/sessions/{SESSION_ID}/restore", RestoreHandler),
    (rf"/api/sessions/{SESSION_ID}/sync-events", SyncEventsHandler),
]
