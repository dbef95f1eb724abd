"""Fakes of Anthropic and GitHub: real HTTP servers on loopback speaking their protocols."""

from __future__ import annotations

import asyncio
import contextlib

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
