"""The HTTP server: bounded header and body reads, a JSON 431 for an over-long header, and a
lingering close, so that an answer sent before the request was read (an early 413) reaches the
client instead of a connection reset.

Tornado's `idle_connection_timeout` bounds the whole wait for a request's line and headers (the
first request's as well as a kept-alive connection's next one) and `body_timeout` the reading of
a body; neither touches a response once it streams, so open SSE streams are not affected
(ECOSYSTEM.md 1.4). One bound for idling and for sending headers would force a choice between
cutting proxies' kept-alive connections (which they reuse for up to 90 s) and letting a
slowloris hold a descriptor as long, so `ServerStream` adds its own clock: the headers must be
complete within `HEADER_TIMEOUT_SECONDS` of a new connection or of the first byte of a
kept-alive connection's next request, while `KEEPALIVE_TIMEOUT_SECONDS` bounds the idling.

Tornado closes a connection whose header outgrows `max_header_size` without a word, and closing
a socket with unread request bytes makes the kernel send a reset that destroys the answer in
flight; `ServerStream` answers the first with a 431 and closes lingering after the second. It
leans on internals of the pinned Tornado (`IOStream._check_max_bytes`, `_read_to_buffer` and
`close_fd`, and the header read being the server's only `read_until_regex`), re-checked on an
upgrade (README).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from asyncio import Future
from typing import Any

import tornado.httpserver
import tornado.httputil
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
# Per-connection state lives here, not on the streams: an attribute added to an IOStream after
# Tornado made it un-shares the instance's key table (about 1.2 KiB on every connection, open
# streams included). Connections whose first request has not begun, and the header reads under
# way with their clocks: both short-lived entries.
_fresh: set[tornado.iostream.IOStream] = set()
_header_reads: dict[tornado.iostream.IOStream, tuple[Future[bytes], object | None]] = {}


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
    """A server connection's stream with a clock on each request's headers (`header_seconds`),
    a JSON 431 for an over-long header, and a lingering close (`linger_on_close`) for answers
    sent before the request body was read."""

    linger_on_close = False  # set on the instance only for a connection about to close
    header_seconds: float | None = None  # a class attribute of each APIServer's own subclass

    def read_until_regex(self, regex: bytes, max_bytes: int | None = None) -> Future[bytes]:
        future: Future[bytes] = super().read_until_regex(regex, max_bytes)  # type: ignore[assignment]
        fresh = self in _fresh
        _fresh.discard(self)
        if self.header_seconds is not None and not future.done():
            _header_reads[self] = (future, None)
            future.add_done_callback(lambda _: self._header_read_done())
            # A new connection owes its first request at once; a kept-alive one may idle first.
            if fresh or self._read_buffer_size:
                self._start_header_clock()
        return future

    def _read_to_buffer(self) -> int | None:
        count = super()._read_to_buffer()
        if count and self in _header_reads:
            self._start_header_clock()  # the first bytes of the next request
        return count

    def _start_header_clock(self) -> None:
        read = _header_reads.get(self)
        if read is not None and read[1] is None and self.header_seconds is not None:
            _header_reads[self] = (read[0], self.io_loop.call_later(self.header_seconds, self._headers_too_slow))

    def _header_read_done(self) -> None:
        _, clock = _header_reads.pop(self, (None, None))
        if clock is not None:
            self.io_loop.remove_timeout(clock)

    def _headers_too_slow(self) -> None:
        if self in _header_reads and not self.closed():
            self.close()  # Tornado's header read ends with StreamClosedError, quietly

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
        _fresh.discard(self)
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

    stream_class: type[ServerStream] = ServerStream

    def handle_stream(self, stream: tornado.iostream.IOStream, address: Any) -> None:
        if type(stream) is tornado.iostream.IOStream:
            stream.__class__ = self.stream_class  # same state, a few methods more; TCPServer builds the stream
            _fresh.add(stream)
        super().handle_stream(stream, address)


def make_http_server(app: tornado.web.Application, config: Config) -> APIServer:
    """The server of `server.py` and the tests. Forwarded headers are read per request by the
    handlers from `TRUSTED_PROXIES` (Tornado's `xheaders` would trust them from anyone)."""
    server = APIServer(
        app,
        xheaders=False,
        max_header_size=MAX_HEADER_BYTES,
        max_body_size=MAX_BODY_BYTES_ACCEPTED,
        idle_connection_timeout=max(config.keepalive_timeout_seconds, config.header_timeout_seconds),
        body_timeout=config.body_timeout_seconds,
    )
    # Its own subclass, so that servers of different settings (tests) can share a process.
    server.stream_class = type("ServerStream", (ServerStream,), {"header_seconds": config.header_timeout_seconds})
    return server


def linger_after_answer(request: tornado.httputil.HTTPServerRequest) -> None:
    """Have the connection of `request`, whose body is still unread, close lingering after this
    answer (a request without a body closes at once)."""
    headers = request.headers
    if headers.get("Content-Length", "0") in ("", "0") and "Transfer-Encoding" not in headers:
        return
    stream = getattr(request.connection, "stream", None)
    if isinstance(stream, ServerStream):
        stream.linger_on_close = True
