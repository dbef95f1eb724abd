"""The HTTP server: bounded header and body reads, a JSON 431 for an over-long header, and a
lingering close, so that an answer sent before the request was read (an early 413) reaches the
client instead of a connection reset.

Tornado's `idle_connection_timeout` bounds the whole wait for a request's line and headers (the
first request's as well as a kept-alive connection's next one) and `body_timeout` the reading of
a body; neither touches a response once it streams, so open SSE streams are not affected
(ECOSYSTEM.md 1.4). Tornado closes a connection whose header outgrows `max_header_size` without a
word, and closing a socket with unread request bytes makes the kernel send a reset that destroys
the answer in flight; `ServerStream` below handles both. It leans on two internals of the pinned
Tornado (`IOStream._check_max_bytes` and `close_fd`), re-checked on an upgrade (README).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from typing import Any

import tornado.httpserver
import tornado.iostream
import tornado.web

from services.config import Config

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES_ACCEPTED = 64 * 1024 * 1024
# After an early answer the rest of the request is read and discarded, within these bounds.
LINGER_SECONDS = 5.0
LINGER_MAX_BYTES = MAX_BODY_BYTES_ACCEPTED
HEADER_TOO_LARGE_BODY = b'{"success":false,"error":"Request headers are too large (at most 64 KiB)"}'
HEADER_TOO_LARGE_RESPONSE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"Content-Type: application/json; charset=utf-8\r\n"
    b"Content-Length: " + str(len(HEADER_TOO_LARGE_BODY)).encode() + b"\r\n"
    b"Connection: close\r\n\r\n" + HEADER_TOO_LARGE_BODY
)
_lingering: set[asyncio.Task[None]] = set()


async def _linger(sock: socket.socket) -> None:
    """Half-close (the client reads the answer and sees its end), discard what it still sends, close."""
    loop = asyncio.get_running_loop()
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = loop.time() + LINGER_SECONDS
        received = 0
        while received < LINGER_MAX_BYTES:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 256 * 1024), max(0.0, deadline - loop.time()))
            if not chunk:
                break
            received += len(chunk)
    except (OSError, TimeoutError):
        pass
    finally:
        sock.close()


class ServerStream(tornado.iostream.IOStream):
    """A server connection's stream that answers an over-long header with a JSON 431 and can close
    lingering (`linger_on_close`), for answers sent before the request body was read."""

    linger_on_close = False

    def _check_max_bytes(self, delimiter: bytes | re.Pattern[bytes], size: int) -> None:
        try:
            super()._check_max_bytes(delimiter, size)
        except tornado.iostream.UnsatisfiableReadError:
            # Only the request line and headers are read up to a regex (a chunk-size line is
            # read up to bytes): this is an over-long header. Tornado closes the stream next.
            if isinstance(delimiter, re.Pattern) and not self.linger_on_close and self.socket is not None:
                with contextlib.suppress(OSError):
                    self.socket.send(HEADER_TOO_LARGE_RESPONSE)  # small: fits the empty send buffer
                self.linger_on_close = True
            raise

    def close_fd(self) -> None:
        # Tornado has already unregistered the descriptor from the loop.
        if self.linger_on_close and self.socket is not None:
            sock, self.socket = self.socket, None  # type: ignore[assignment]
            with contextlib.suppress(RuntimeError):  # no loop: the process is ending
                task = asyncio.get_running_loop().create_task(_linger(sock))
                _lingering.add(task)
                task.add_done_callback(_lingering.discard)
                return
            sock.close()
            return
        super().close_fd()


class APIServer(tornado.httpserver.HTTPServer):
    """Tornado's HTTPServer with `ServerStream` connections."""

    def handle_stream(self, stream: tornado.iostream.IOStream, address: Any) -> None:
        if type(stream) is tornado.iostream.IOStream:
            stream.__class__ = ServerStream  # same state, two methods more; TCPServer builds the stream
        super().handle_stream(stream, address)


def make_http_server(app: tornado.web.Application, config: Config) -> APIServer:
    """The server of `server.py` and the tests. Forwarded headers are read per request by the
    handlers from `TRUSTED_PROXIES` (Tornado's `xheaders` would trust them from anyone)."""
    return APIServer(
        app,
        xheaders=False,
        max_header_size=MAX_HEADER_BYTES,
        max_body_size=MAX_BODY_BYTES_ACCEPTED,
        idle_connection_timeout=config.header_timeout_seconds,
        body_timeout=config.body_timeout_seconds,
    )


def linger_after_answer(request: tornado.httputil.HTTPServerRequest) -> None:
    """Have the connection of `request` close lingering after this answer: its body is unread."""
    stream = getattr(request.connection, "stream", None)
    if isinstance(stream, ServerStream):
        stream.linger_on_close = True
