"""Streams benchmark: idle SSE streams per process, memory per stream, append-to-delivery
latency to 1,000 and 5,000 viewers on one replica and across two, and the replay of a
10,000-event session. Loopback only, bounded, and not part of `make test`.

    .venv/bin/python bench/streams.py            # full run (a few minutes), writes bench/RESULTS.md
    .venv/bin/python bench/streams.py --quick    # smaller counts, for a smoke test; writes nothing

It starts its own embedded PostgreSQL and `python server.py` replicas (ended by their process
ids at the end), appends events from this process through `services.event_log.append` (as a run
driver on any replica would), and reads the streams with raw sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from bench.database import fresh_database  # noqa: E402
from bench.results import machine_note, write_section  # noqa: E402
from services import db, event_log  # noqa: E402
from tests.helpers import Replica, spawn_replica, test_env  # noqa: E402

CONNECT_CONCURRENCY = 100
ID_PATTERN = re.compile(rb"(?:^|\n)id: (\d+)\n")


# ---- a raw SSE client that only notes when each event id arrives ---------------------------------


class StreamClient(asyncio.Protocol):
    """One SSE connection. `ready` resolves at the `retry:` hint (the stream is open);
    `on_id(event_id, seconds)` is called for every frame with an id, timed on arrival."""

    def __init__(self, request: bytes, on_id: Callable[[int, float], None] | None) -> None:
        loop = asyncio.get_running_loop()
        self.request = request
        self.on_id = on_id
        self.ready: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.tail = b""
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if not self.ready.done():
            self.head += data
            if not self.head.startswith(b"HTTP/1.1 200"):
                if b"\r\n" in self.head:
                    self.ready.set_exception(RuntimeError(self.head[:200].decode(errors="replace")))
                return
            if b"retry:" not in self.head:
                return
            self.ready.set_result(None)
            data, self.head = self.head, b""
        if self.on_id is None:
            return
        chunk = self.tail + data
        cut = chunk.rfind(b"\n\n")
        if cut < 0:
            self.tail = chunk
            return
        self.tail = chunk[cut + 2 :]
        for match in ID_PATTERN.finditer(chunk, 0, cut + 2):
            self.on_id(int(match.group(1)), now)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before the stream opened"))
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def request_bytes(port: int, path: str, cookie: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n"
        f"Cookie: auth_session={cookie}\r\n\r\n"
    ).encode()


async def open_streams(
    targets: list[tuple[int, str]], cookie: str, on_id: Callable[[int, float], None] | None
) -> list[StreamClient]:
    """Open one stream per (port, path), CONNECT_CONCURRENCY at a time; wait until each is open."""
    loop = asyncio.get_running_loop()
    semaphore = asyncio.Semaphore(CONNECT_CONCURRENCY)
    clients: list[StreamClient] = []

    async def one(port: int, path: str) -> None:
        async with semaphore:
            client = StreamClient(request_bytes(port, path, cookie), on_id)
            await loop.create_connection(lambda: client, "127.0.0.1", port)
            clients.append(client)
            await asyncio.wait_for(client.ready, 60)

    await asyncio.gather(*(one(port, path) for port, path in targets))
    return clients


async def close_streams(clients: list[StreamClient]) -> None:
    for client in clients:
        client.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(c.closed for c in clients)), 30)


# ---- the environment ----------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def hub_subscribers(url: str) -> float:
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"{url}/metrics")).text
    match = re.search(r"^webedt_hub_subscribers (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else -1.0


async def wait_subscribers(url: str, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while await hub_subscribers(url) != count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} never reached {count} subscribers")
        await asyncio.sleep(0.2)


def machine() -> str:
    return (
        f"{machine_note()}, Linux {platform.release()}, Python {platform.python_version()}; the servers, "
        "PostgreSQL and the client share the machine"
    )


class Bench:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.workdir = Path(tempfile.mkdtemp(prefix="webedt-bench-streams-"))
        self.replicas: list[Replica] = []
        self.results: dict[str, Any] = {}

    async def setup(self) -> None:
        database = await fresh_database(self.workdir, "webedt_bench")
        self.pg, self.database_url, self.pg_version = database.server, database.url, database.version
        self.pool = await db.create_pool(self.database_url, 2, 4)
        self.ctx = SimpleNamespace(pool=self.pool, row_turns=db.RowTurns())

    def spawn(self) -> Replica:
        replica = spawn_replica(test_env(self.database_url), self.workdir)
        self.replicas.append(replica)
        return replica

    async def teardown(self) -> None:
        for replica in self.replicas:
            await asyncio.to_thread(replica.stop)
        with contextlib.suppress(Exception):
            await self.pool.close()
        with contextlib.suppress(Exception):
            self.pg.cleanup()
        shutil.rmtree(self.workdir, ignore_errors=True)

    async def login(self, replica: Replica) -> tuple[str, str]:
        async with httpx.AsyncClient(base_url=replica.url, timeout=30) as http:
            response = await http.post(
                "/api/auth/register",
                json={"email": f"bench-{secrets.token_hex(4)}@example.com", "password": "correct horse battery"},
            )
            response.raise_for_status()
            return response.json()["data"]["user"]["id"], http.cookies["auth_session"]

    async def new_session(self, user_id: str, status: str = "running") -> str:
        session_id = str(uuid.uuid4())
        await self.pool.execute(
            "INSERT INTO chat_sessions (id, user_id, user_request, status) VALUES ($1, $2, 'bench', $3)",
            session_id,
            user_id,
            status,
        )
        return session_id

    # ---- measurements -------------------------------------------------------------------------

    async def fan_out(self, replicas: list[Replica], viewers: int, rounds: int, user_id: str, cookie: str) -> dict:
        """p50/p99 from the start of an append to each viewer reading the frame."""
        session_id = await self.new_session(user_id)
        arrivals: dict[int, list[float]] = {}
        ports = [int(r.url.rsplit(":", 1)[1]) for r in replicas]
        targets = [(ports[n % len(ports)], f"/api/sessions/{session_id}/events/stream") for n in range(viewers)]
        clients = await open_streams(targets, cookie, lambda i, t: arrivals.setdefault(i, []).append(t))
        for replica in replicas:
            await wait_subscribers(replica.url, viewers // len(replicas))
        try:

            async def publish() -> tuple[int, float]:
                started = time.perf_counter()
                (event_id,) = await event_log.append(
                    self.ctx, session_id, [{"type": "assistant", "message": {"content": "x" * 200}}]
                )
                return event_id, started

            async def delivered(event_id: int) -> None:
                deadline = time.perf_counter() + 30
                while len(arrivals.get(event_id, ())) < viewers:
                    if time.perf_counter() > deadline:
                        raise RuntimeError(f"event {event_id} reached {len(arrivals.get(event_id, ()))}/{viewers}")
                    await asyncio.sleep(0.002)

            await delivered((await publish())[0])  # warm-up: every viewer is live now
            cpu_before = sum(process_cpu_seconds(r.process.pid) for r in replicas)
            samples: list[float] = []
            last_viewer: list[float] = []
            for _ in range(rounds):
                event_id, started = await publish()
                await delivered(event_id)
                times = [t - started for t in arrivals[event_id]]
                samples += times
                last_viewer.append(max(times))
                await asyncio.sleep(0.05)
            # Heartbeats aside (every 15 s), the servers' CPU here is the fan-out's.
            cpu = sum(process_cpu_seconds(r.process.pid) for r in replicas) - cpu_before
        finally:
            await close_streams(clients)
        samples.sort()
        return {
            "viewers": viewers,
            "replicas": len(replicas),
            "events": rounds,
            "p50_ms": 1000 * samples[len(samples) // 2],
            "p99_ms": 1000 * samples[min(len(samples) - 1, int(len(samples) * 0.99))],
            "max_ms": 1000 * samples[-1],
            "last_viewer_p50_ms": 1000 * statistics.median(last_viewer),
            "server_cpu_ms_per_event": 1000 * cpu / rounds,
        }

    async def idle_streams(self, replica: Replica, count: int, user_id: str, cookie: str) -> dict:
        """RSS growth of one process holding `count` idle live streams (10 viewers per session)."""
        port = int(replica.url.rsplit(":", 1)[1])
        sessions = [await self.new_session(user_id) for _ in range(max(1, count // 10))]
        warm = await open_streams([(port, f"/api/sessions/{sessions[0]}/events/stream")] * 50, cookie, None)
        await close_streams(warm)
        await wait_subscribers(replica.url, 0)
        await asyncio.sleep(1)
        before = rss_kib(replica.process.pid)
        started = time.perf_counter()
        targets = [(port, f"/api/sessions/{sessions[n % len(sessions)]}/events/stream") for n in range(count)]
        clients = await open_streams(targets, cookie, None)
        await wait_subscribers(replica.url, count)
        opened = time.perf_counter() - started
        await asyncio.sleep(2)
        after = rss_kib(replica.process.pid)
        held = await hub_subscribers(replica.url)
        await close_streams(clients)
        return {
            "streams": count,
            "held": int(held),
            "open_seconds": opened,
            "rss_before_mib": before / 1024,
            "rss_after_mib": after / 1024,
            "kib_per_stream": (after - before) / count,
        }

    async def replay(self, replica: Replica, events: int, user_id: str, cookie: str, runs: int = 5) -> dict:
        """Time from sending the GET to reading `completed` after `events` replayed frames."""
        session_id = await self.new_session(user_id, status="completed")
        for start in range(0, events, 2000):
            batch = [
                {"type": "assistant", "n": n, "message": {"content": "y" * 200}}
                for n in range(start, min(events, start + 2000))
            ]
            await event_log.append(self.ctx, session_id, batch)
        port = int(replica.url.rsplit(":", 1)[1])
        request = request_bytes(port, f"/api/sessions/{session_id}/events/stream", cookie)
        timings = []
        for _ in range(runs):
            started = time.perf_counter()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            received = bytearray()
            while b"event: completed" not in received[-4096:]:
                chunk = await asyncio.wait_for(reader.read(1 << 20), 30)
                if not chunk:
                    raise RuntimeError("stream ended before completed")
                received += chunk
            timings.append(time.perf_counter() - started)
            frames = received.count(b"\nid: ")
            writer.close()
            if frames != events:
                raise RuntimeError(f"replayed {frames} frames, expected {events}")
        return {
            "events": events,
            "runs": runs,
            "median_s": statistics.median(timings),
            "best_s": min(timings),
            "bytes": len(received),
        }

    async def run(self) -> None:
        quick = self.quick
        replica_a, replica_b = await asyncio.gather(asyncio.to_thread(self.spawn), asyncio.to_thread(self.spawn))
        user_id, cookie = await self.login(replica_a)
        self.results["replay"] = await self.replay(replica_a, 1_000 if quick else 10_000, user_id, cookie)
        print("replay", self.results["replay"], flush=True)
        fan = []
        for viewers in (100, 500) if quick else (1_000, 5_000):
            for replicas in ([replica_a], [replica_a, replica_b]):
                result = await self.fan_out(replicas, viewers, 5 if quick else 30, user_id, cookie)
                print("fan-out", result, flush=True)
                fan.append(result)
        self.results["fan_out"] = fan
        replica_c = await asyncio.to_thread(self.spawn)
        self.results["idle"] = await self.idle_streams(replica_c, 1_000 if quick else 10_000, user_id, cookie)
        print("idle", self.results["idle"], flush=True)


def render(results: dict[str, Any], machine_line: str, pg_version: str) -> str:
    idle, replay = results["idle"], results["replay"]
    lines = [
        f"{machine_line}; PostgreSQL {pg_version} (embedded, Unix socket). "
        "Command: `.venv/bin/python bench/streams.py`.",
        "",
        "| Measure | Result | Target |",
        "|---|---|---|",
        f"| Idle SSE streams held by one process | {idle['held']:,} (opened in {idle['open_seconds']:.1f} s) "
        "| 10,000 |",
        f"| Memory per idle stream (RSS growth / streams) | {idle['kib_per_stream']:.1f} KiB "
        f"({idle['rss_before_mib']:.0f} → {idle['rss_after_mib']:.0f} MiB) | < 18 KiB |",
    ]
    for row in results["fan_out"]:
        where = "one replica" if row["replicas"] == 1 else "two replicas (half on each)"
        target = ""
        if row["viewers"] == 1000:
            target = "p99 < 50 ms" if row["replicas"] == 1 else "p99 < 100 ms"
        lines.append(
            f"| Append → delivery, {row['viewers']:,} viewers, {where} | p50 {row['p50_ms']:.1f} ms, "
            f"p99 {row['p99_ms']:.1f} ms, max {row['max_ms']:.1f} ms; last viewer p50 "
            f"{row['last_viewer_p50_ms']:.1f} ms ({row['events']} events) | {target} |"
        )
    lines += [
        f"| Replay of a {replay['events']:,}-event session (GET → `completed` read) | median "
        f"{replay['median_s'] * 1000:.0f} ms, best {replay['best_s'] * 1000:.0f} ms ({replay['runs']} runs, "
        f"{replay['bytes'] / 1024 / 1024:.1f} MiB) | < 100 ms |",
        "",
        "How: the viewers are raw sockets in one asyncio client process on the same machine, so "
        "their reading competes with the servers for the CPUs (the figures are pessimistic). "
        "Latency runs from just before `event_log.append` (insert, NOTIFY, commit) to the client "
        'reading the frame, over every viewer of every event; "last viewer" is the time until the '
        "slowest viewer of an event had it. Idle streams are live event streams of running "
        "sessions (10 viewers per session), measured as the server process's RSS growth.",
    ]
    return "\n".join(lines)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts; prints results, writes nothing")
    args = parser.parse_args()
    bench = Bench(args.quick)
    try:
        await bench.setup()
        await asyncio.wait_for(bench.run(), 1200)
    finally:
        await bench.teardown()
    section = render(bench.results, machine(), bench.pg_version)
    print(section)
    if not args.quick:
        write_section("streams", "Streams: idle SSE streams, fan-out latency, replay", section)
        print("written to bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
