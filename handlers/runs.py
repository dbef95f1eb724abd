"""Acting on a session's run without a stream (CONTRACT.md 1.6): follow-up, interrupt, abort."""

from __future__ import annotations

from handlers.base import SESSION_ID, APIHandler, authenticated
from services.agents import execute


class SendHandler(APIHandler):
    """POST /api/sessions/:id/send: the follow-up goes to Claude now, no stream needed."""

    @authenticated
    async def post(self, session_id: str) -> None:
        await execute.send_follow_up(
            self.ctx, self.user.id, session_id, self.json_body(), impersonator_id=self.user.impersonator_id
        )
        self.write_json({"success": True})


class InterruptHandler(APIHandler):
    """POST /api/sessions/:id/interrupt: stop Claude's current turn."""

    @authenticated
    async def post(self, session_id: str) -> None:
        self.ok(await execute.interrupt(self.ctx, self.user.id, session_id))


class AbortHandler(APIHandler):
    """POST /api/sessions/:id/abort: interrupt Claude and end the run as an error."""

    @authenticated
    async def post(self, session_id: str) -> None:
        result = await execute.abort(self.ctx, self.user.id, session_id)
        # 202: upstream is stopped, and the run ends once another server lets go of its row.
        self.ok(result, 202 if result.get("pending") else 200)


ROUTES = [
    (rf"/api/sessions/{SESSION_ID}/send", SendHandler),
    (rf"/api/sessions/{SESSION_ID}/interrupt", InterruptHandler),
    (rf"/api/sessions/{SESSION_ID}/abort", AbortHandler),
]
