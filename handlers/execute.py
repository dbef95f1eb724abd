"""POST and GET /api/execute-remote (CONTRACT.md 1.2, 4.2): start or continue a run, and stream it.

The run itself belongs to the run driver; this route checks the input (JSON errors before any
stream), hands the run over, then follows the session's event log like any other viewer:
`input_preview`, `session-created` (new sessions), every stored event with its `id:`, then
`completed` or `error`. Closing the stream never stops the run, and a browser reconnecting with
`Last-Event-ID` joins the same run instead of starting another.
"""

from __future__ import annotations

import logging

from tornado.httputil import HTTPHeaders

from handlers.base import authenticated
from handlers.sse_base import SSEHandler
from services.agents import execute
from services.errors import ServiceError
from services.subscriber import ENDS_WITH_COMPLETED, StopReason

log = logging.getLogger("webedt.execute")

QUERY_PARAMETERS = ("userRequest", "websiteSessionId", "github", "lastEventId")
CROSS_SITE = "Cross-site requests cannot start a run"
NOT_EVENT_SOURCE = "A run can be started by GET only from an EventSource (Accept: text/event-stream)"


def started_by_event_source(headers: HTTPHeaders) -> bool:
    """Whether a GET looks like an EventSource: it always sends `Accept: text/event-stream`, and
    `Sec-Fetch-Dest: empty` where the browser sends Fetch Metadata (an <img> sends `image`)."""
    accepts = [part.split(";")[0].strip().lower() for part in headers.get("Accept", "").split(",")]
    destination = headers.get("Sec-Fetch-Dest")
    return "text/event-stream" in accepts and (destination is None or destination.lower() == "empty")


class ExecuteRemoteHandler(SSEHandler):
    @authenticated
    async def get(self) -> None:
        # A GET with side effects: a link, an image or a form must not start a paid run (defect
        # 29, issue 15.7). An EventSource sends mode `cors` and site `same-origin`/`same-site`.
        headers = self.request.headers
        if headers.get("Sec-Fetch-Site", "").lower() == "cross-site" or headers.get("Sec-Fetch-Mode", "").lower() == (
            "navigate"
        ):
            raise ServiceError(403, CROSS_SITE)
        if not started_by_event_source(headers):
            raise ServiceError(403, NOT_EVENT_SOURCE)
        raw = {name: self.get_query_argument(name, None) for name in QUERY_PARAMETERS}
        await self.start_and_stream(execute.parse_params(raw, headers.get("Last-Event-ID")))

    @authenticated
    async def post(self) -> None:
        await self.start_and_stream(execute.parse_params(self.json_body(), self.request.headers.get("Last-Event-ID")))

    async def start_and_stream(self, params: execute.ExecuteParams) -> None:
        plan = await execute.begin(self.ctx, self.user.id, params, impersonator_id=self.user.impersonator_id)
        await self.open_stream()
        reason = StopReason.ERROR
        try:
            if plan.preview is not None:
                await self.send("input_preview", plan.preview, plan.preview_id)
            if plan.created:
                await self.send("session-created", {"websiteSessionId": plan.session_id})
            reason = await self.follow_session(plan.session_id, plan.after_id, all_live=True)
            if reason in ENDS_WITH_COMPLETED:
                frame = await execute.stream_end(self.ctx, plan.session_id)
                if frame is not None:
                    await self.send(*frame)
        except Exception:
            # Headers are out. The run goes on regardless; the browser may reconnect and join it.
            log.exception("execute-remote stream of %s failed", plan.session_id, extra=self.log_extra())
            await self.send("error", {"type": "error", "error": "The stream failed; the run goes on"})
        await self.close_stream(reason)


ROUTES = [(r"/api/execute-remote", ExecuteRemoteHandler)]
