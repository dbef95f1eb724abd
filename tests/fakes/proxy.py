"""A TCP proxy on 127.0.0.1 in front of a fake, that can turn into a network black hole.

    proxy = TcpProxy(fake.url)        # the server talks to proxy.url instead of fake.url
    await proxy.start()
    proxy.blackhole(b"/subscribe")    # the connections open now whose first bytes name the
                                      # subscribe path stop carrying anything, both ways

A black-holed connection stays open on both sides: nothing is read from either socket any more
and nothing is written, no FIN and no RST, as when a NAT mapping or a load balancer silently
drops a flow. WebSocket pings get no pong; a request waits for an answer that never comes. New
connections are forwarded as usual (a new flow takes a working path). `stop()` closes everything.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlparse

CHUNK = 65536


class ProxiedConnection:
    """One client connection and its connection to the target, pumped both ways."""

    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        target: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.client = client
        self.target = target
        self.first_bytes = b""
        self.black_holed = False
        self.closed = False  # both ways ended (closed by the peers, passed on)
        self.ended_ways = 0
        self.pumps = [
            asyncio.create_task(self._pump(client[0], target[1], first=True)),
            asyncio.create_task(self._pump(target[0], client[1], first=False)),
        ]

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, first: bool) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while not self.black_holed:
                data = await reader.read(CHUNK)
                if self.black_holed:
                    return  # swallowed: it never arrives, and nothing after it is read
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()  # an orderly close is passed on, until the black hole
                    self.ended_ways += 1
                    if self.ended_ways == 2:
                        self.closed = True
                        for _, each in (self.client, self.target):
                            each.close()
                    return
                if first and not self.first_bytes:
                    self.first_bytes = data[:4096]
                writer.write(data)
                await writer.drain()

    def blackhole(self) -> None:
        self.black_holed = True
        # A pump waiting in read() sees the flag when data comes and drops it; cancelling the
        # pumps keeps the sockets open and unread, which is the same to both peers.
        for pump in self.pumps:
            pump.cancel()

    async def close(self) -> None:
        for pump in self.pumps:
            pump.cancel()
        for _, writer in (self.client, self.target):
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class TcpProxy:
    """Forwards every connection to `target_url`'s host and port; `url` once started."""

    def __init__(self, target_url: str) -> None:
        parsed = urlparse(target_url)
        self.target_host = parsed.hostname or "127.0.0.1"
        self.target_port = parsed.port or 80
        self.url = ""
        self.connections: list[ProxiedConnection] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            target = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.close()
            return
        self.connections.append(ProxiedConnection((reader, writer), target))

    def blackhole(self, first_bytes_contain: bytes | None = None) -> int:
        """Black-hole the open connections (those whose first bytes contain `first_bytes_contain`,
        if given); how many were."""
        chosen = [
            c
            for c in self.connections
            if not c.black_holed
            and not c.closed
            and (first_bytes_contain is None or first_bytes_contain in c.first_bytes)
        ]
        for connection in chosen:
            connection.blackhole()
        return len(chosen)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in self.connections:
            await connection.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)


@contextlib.asynccontextmanager
async def running_proxy(target_url: str) -> AsyncIterator[TcpProxy]:
    """A started proxy in front of `target_url`, stopped afterwards."""
    proxy = TcpProxy(target_url)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
