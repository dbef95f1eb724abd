"""Fakes of Anthropic and GitHub: real HTTP servers on loopback speaking their protocols."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
import tornado.httpserver
import tornado.netutil
import tornado.web


class LoopbackServer:
    """Serves one catch-all handler class on a random 127.0.0.1 port (`url` once started).

    The handler is constructed with `fake=self`, so it reads and changes the fake's state.
    """

    def __init__(self) -> None:
        self.url = ""
        self._server: tornado.httpserver.HTTPServer | None = None

    async def serve(
        self,
        handler_class: type[tornado.web.RequestHandler],
        routes: list[tuple[str, type[tornado.web.RequestHandler]]] = (),  # type: ignore[assignment]
    ) -> None:
        """`routes` (pattern, handler class) are matched before the catch-all handler."""
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        handlers = [(pattern, handler, {"fake": self}) for pattern, handler in routes]
        app = tornado.web.Application([*handlers, (r"/.*", handler_class, {"fake": self})])
        self._server = tornado.httpserver.HTTPServer(app)
        self._server.add_sockets(sockets)
        self.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.close_all_connections(), 5)


class FakeError(Exception):
    """An error answer of an Anthropic API: `{"type": "error", "error": {"type", "message"}}`."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


class AnthropicFakeHandler(tornado.web.RequestHandler):
    """What the fakes of Anthropic's APIs share: JSON bodies in and out, no XSRF."""

    def initialize(self, fake: Any) -> None:
        self.fake = fake

    def check_xsrf_cookie(self) -> None:
        return None

    def body_json(self) -> dict[str, Any]:
        try:
            value = orjson.loads(self.request.body or b"{}")
        except orjson.JSONDecodeError:
            raise FakeError(400, "invalid_request_error", "body is not JSON") from None
        if not isinstance(value, dict):
            raise FakeError(400, "invalid_request_error", "body is not an object")
        return value

    def reply(self, status: int, value: Any) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(value))
