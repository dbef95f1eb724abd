"""Load: 2,000 open SSE streams plus steady REST traffic on one server process, for 60 s.

    .venv/bin/python bench/load.py                  # the full run; writes bench/RESULTS.md
    .venv/bin/python bench/load.py --seconds 120    # longer
    .venv/bin/python bench/load.py --quick          # 200 streams for 10 s; prints, writes nothing

Starts its own embedded PostgreSQL and one `python server.py` (both ended at the end, the server
by its process id), then:

- opens the streams (live event streams of 200 running sessions, 10 viewers each) with raw
  sockets and keeps them open for the whole run;
- appends an event to one of those sessions every half second (from this process, as a run
  driver on any replica would), so the streams carry traffic, and checks at the end that every
  viewer got every event of its session;
- sends REST requests at a steady rate (a mix of /health, GET /api/auth/session and
  GET /api/sessions with 100 sessions), and checks that every answer is a 2xx;
- samples the server process's RSS (/proc/<pid>/status) every few seconds.

It reports the RSS during warm-up and in the steady state after it (median, range, growth and
slope), REST latencies, and any error: a failed request, a stream the server closed, a missed
event, or an ERROR line in the server's log. Loopback only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from bench.database import fresh_database  # noqa: E402
from bench.results import machine_note, write_section  # noqa: E402
from bench.streams import StreamClient, request_bytes, rss_kib  # noqa: E402
from services import db, event_log  # noqa: E402
from tests.helpers import Replica, spawn_replica, test_env  # noqa: E402

VIEWERS_PER_SESSION = 10
REST_SESSIONS = 100
CONNECT_CONCURRENCY = 100
PASSWORD = "correct horse battery"


@dataclass
class Sample:
    at: float  # seconds since the measured run began
    rss_kib: int
    cpu_seconds: float
    fds: int
    requests: int  # REST answers so far


@dataclass
class Results:
    streams: int = 0
    open_seconds: float = 0.0
    rss_idle_kib: int = 0
    rss_streams_open_kib: int = 0
    samples: list[Sample] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    request_errors: list[str] = field(default_factory=list)
    streams_closed_by_server: int = 0
    events_appended: int = 0
    deliveries_missed: int = 0
    log_errors: list[str] = field(default_factory=list)
    duration: float = 0.0
    warmup: float = 0.0


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


def fd_count(pid: int) -> int:
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


class LoadBench:
    def __init__(self, streams: int, seconds: float, warmup: float, rps: float, sample_every: float) -> None:
        self.stream_count = streams
        self.seconds = seconds
        self.warmup = warmup
        self.rps = rps
        self.sample_every = sample_every
        self.workdir = Path(tempfile.mkdtemp(prefix="webedt-bench-load-"))
        self.replica: Replica | None = None
        self.results = Results(streams=streams, duration=seconds, warmup=warmup)
        self.received: dict[int, set[int]] = {}  # client index -> event ids it read
        self.appended: dict[str, list[int]] = {}  # session -> event ids appended during the run

    # ---- set-up and tear-down ------------------------------------------------------------------

    async def setup(self) -> None:
        database = await fresh_database(self.workdir, "webedt_load")
        self.pg, self.database_url, self.pg_version = database.server, database.url, database.version
        self.pool = await db.create_pool(self.database_url, 2, 4)
        env = test_env(self.database_url, NODE_ENV="production", LOG_LEVEL="WARNING")
        self.replica = await asyncio.to_thread(spawn_replica, env, self.workdir)

    async def teardown(self) -> None:
        if self.replica is not None:
            await asyncio.to_thread(self.replica.stop)
        with contextlib.suppress(Exception):
            await self.pool.close()
        with contextlib.suppress(Exception):
            self.pg.cleanup()
        shutil.rmtree(self.workdir, ignore_errors=True)

    async def person(self, sessions: int, status: str) -> tuple[str, str, list[str]]:
        """A new account with `sessions` chat sessions; (user id, cookie token, session ids)."""
        assert self.replica is not None
        async with httpx.AsyncClient(base_url=self.replica.url, timeout=30) as http:
            response = await http.post(
                "/api/auth/register",
                json={"email": f"load-{secrets.token_hex(4)}@example.com", "password": PASSWORD},
            )
            response.raise_for_status()
            user_id, token = response.json()["data"]["user"]["id"], http.cookies["auth_session"]
        ids = [str(uuid.uuid4()) for _ in range(sessions)]
        await self.pool.executemany(
            "INSERT INTO chat_sessions (id, user_id, user_request, status, repository_owner, repository_name,"
            " repository_url, base_branch, branch) VALUES ($1, $2, $3, $4, 'octo', 'repo',"
            " 'https://github.com/octo/repo', 'main', $5)",
            [(sid, user_id, f"Load session {n}", status, f"claude/load-{n}") for n, sid in enumerate(ids)],
        )
        return user_id, token, ids

    # ---- streams --------------------------------------------------------------------------------

    async def open_streams(self, token: str, sessions: list[str]) -> list[tuple[int, str, StreamClient]]:
        """One stream per viewer, `CONNECT_CONCURRENCY` connecting at a time; (index, session, client)."""
        assert self.replica is not None
        port = int(self.replica.url.rsplit(":", 1)[1])
        loop = asyncio.get_running_loop()
        semaphore = asyncio.Semaphore(CONNECT_CONCURRENCY)
        opened: list[tuple[int, str, StreamClient]] = []

        async def one(index: int) -> None:
            session_id = sessions[index % len(sessions)]
            seen = self.received.setdefault(index, set())
            client = StreamClient(
                request_bytes(port, f"/api/sessions/{session_id}/events/stream", token),
                lambda event_id, _t: seen.add(event_id),
            )
            async with semaphore:
                await loop.create_connection(lambda: client, "127.0.0.1", port)
                await asyncio.wait_for(client.ready, 60)
            opened.append((index, session_id, client))

        await asyncio.gather(*(one(n) for n in range(self.stream_count)))
        return opened

    async def append_events(self, sessions: list[str], stop: asyncio.Event) -> None:
        """One event every half second to a random session of the streams."""
        ctx = SimpleNamespace(pool=self.pool, row_turns=db.RowTurns())
        rng = random.Random(3)
        while not stop.is_set():
            session_id = rng.choice(sessions)
            (event_id,) = await event_log.append(
                ctx, session_id, [{"type": "assistant", "message": {"content": "z" * 300}, "uuid": str(uuid.uuid4())}]
            )
            self.appended.setdefault(session_id, []).append(event_id)
            self.results.events_appended += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    # ---- REST traffic ---------------------------------------------------------------------------

    async def rest_traffic(self, token: str, stop: asyncio.Event) -> None:
        """`rps` requests a second in total, spread over workers, each on a fixed schedule."""
        assert self.replica is not None
        routes = ["/health", "/api/auth/session", "/api/sessions"]
        workers = max(1, min(50, int(self.rps // 10)))
        interval = workers / self.rps
        results = self.results
        limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)

        async with httpx.AsyncClient(
            base_url=self.replica.url, timeout=30, cookies={"auth_session": token}, limits=limits
        ) as http:

            async def worker(n: int) -> None:
                due = time.monotonic() + interval * n / workers
                count = n
                while not stop.is_set():
                    delay = due - time.monotonic()
                    if delay > 0:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), delay)
                        if stop.is_set():
                            return
                    due += interval
                    path = routes[count % len(routes)]
                    count += 1
                    started = time.perf_counter()
                    try:
                        response = await http.get(path)
                        key = f"{path} {response.status_code}"
                        results.statuses[key] = results.statuses.get(key, 0) + 1
                        results.latencies_ms.append((time.perf_counter() - started) * 1000)
                        if response.status_code >= 300:
                            results.request_errors.append(f"{key}: {response.text[:200]}")
                    except httpx.HTTPError as exc:
                        results.request_errors.append(f"{path}: {type(exc).__name__} {exc}")

            await asyncio.gather(*(worker(n) for n in range(workers)))

    # ---- the run --------------------------------------------------------------------------------

    async def sample(self, started: float) -> None:
        assert self.replica is not None
        pid = self.replica.process.pid
        self.results.samples.append(
            Sample(
                at=time.monotonic() - started,
                rss_kib=rss_kib(pid),
                cpu_seconds=process_cpu_seconds(pid),
                fds=fd_count(pid),
                requests=sum(self.results.statuses.values()),
            )
        )

    async def run(self) -> None:
        assert self.replica is not None
        pid = self.replica.process.pid
        _, stream_token, stream_sessions = await self.person(self.stream_count // VIEWERS_PER_SESSION, "running")
        _, rest_token, _ = await self.person(REST_SESSIONS, "completed")
        await asyncio.sleep(1)
        self.results.rss_idle_kib = rss_kib(pid)

        began = time.monotonic()
        clients = await self.open_streams(stream_token, stream_sessions)
        self.results.open_seconds = time.monotonic() - began
        self.results.rss_streams_open_kib = rss_kib(pid)
        print(
            f"{len(clients)} streams open in {self.results.open_seconds:.1f} s; "
            f"RSS {self.results.rss_idle_kib / 1024:.0f} -> {self.results.rss_streams_open_kib / 1024:.0f} MiB",
            flush=True,
        )

        stop = asyncio.Event()
        started = time.monotonic()
        tasks = [
            asyncio.create_task(self.rest_traffic(rest_token, stop)),
            asyncio.create_task(self.append_events(stream_sessions, stop)),
        ]
        await self.sample(started)
        while time.monotonic() - started < self.seconds:
            await asyncio.sleep(min(self.sample_every, max(0.0, self.seconds - (time.monotonic() - started))))
            await self.sample(started)
            last = self.results.samples[-1]
            print(
                f"t={last.at:5.1f}s RSS {last.rss_kib / 1024:6.1f} MiB, CPU {last.cpu_seconds:6.1f} s, "
                f"fds {last.fds}, REST answers {last.requests}, errors {len(self.results.request_errors)}",
                flush=True,
            )
            if self.replica.process.poll() is not None:
                raise RuntimeError("the server process died")
        stop.set()
        await asyncio.gather(*tasks)
        await asyncio.sleep(1)  # the last appended event reaches every viewer

        self.results.streams_closed_by_server = sum(1 for _, _, c in clients if c.closed.done())
        viewers: dict[str, list[int]] = {}
        for index, session_id, _client in clients:
            viewers.setdefault(session_id, []).append(index)
        for session_id, ids in self.appended.items():
            for index in viewers.get(session_id, []):
                self.results.deliveries_missed += len(set(ids) - self.received.get(index, set()))
        for _, _, client in clients:
            client.close()
        log = self.replica.log()
        # JSON lines (NODE_ENV=production): an error is `"level":"error"`; a traceback is in "exception".
        self.results.log_errors = [
            line for line in log.splitlines() if '"level":"error"' in line or "Traceback" in line or " ERROR " in line
        ]


# ---- report -----------------------------------------------------------------------------------------


def summary(results: Results) -> dict[str, Any]:
    samples = results.samples
    steady = [s for s in samples if s.at >= results.warmup] or samples
    warm = [s for s in samples if s.at < results.warmup] or samples[:1]
    rss_steady = [s.rss_kib / 1024 for s in steady]
    times = [s.at for s in steady]
    slope = 0.0
    if len(steady) >= 2 and max(times) > min(times):
        mean_t, mean_r = statistics.fmean(times), statistics.fmean(rss_steady)
        slope = sum((t - mean_t) * (r - mean_r) for t, r in zip(times, rss_steady, strict=True)) / sum(
            (t - mean_t) ** 2 for t in times
        )
    latencies = sorted(results.latencies_ms)
    total = sum(results.statuses.values())
    cpu = samples[-1].cpu_seconds - samples[0].cpu_seconds if len(samples) > 1 else 0.0
    span = samples[-1].at - samples[0].at if len(samples) > 1 else 1.0
    return {
        "warm_start_mib": warm[0].rss_kib / 1024,
        "warm_end_mib": warm[-1].rss_kib / 1024,
        "steady_first_mib": rss_steady[0],
        "steady_last_mib": rss_steady[-1],
        "steady_min_mib": min(rss_steady),
        "steady_max_mib": max(rss_steady),
        "steady_median_mib": statistics.median(rss_steady),
        "steady_growth_mib": rss_steady[-1] - rss_steady[0],
        "slope_mib_per_min": slope * 60,
        "requests": total,
        "rps": total / results.duration if results.duration else 0.0,
        "p50_ms": latencies[len(latencies) // 2] if latencies else 0.0,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0,
        "cpu_percent": 100 * cpu / span if span else 0.0,
        "errors": len(results.request_errors)
        + results.streams_closed_by_server
        + results.deliveries_missed
        + len(results.log_errors),
    }


def render(results: Results, facts: dict[str, Any], pg_version: str, rps: float) -> str:
    flat = abs(facts["steady_growth_mib"]) <= max(5.0, 0.05 * facts["steady_median_mib"])
    lines = [
        f"{machine_note()}, Linux {platform.release()}, Python {platform.python_version()}; PostgreSQL "
        f"{pg_version} (embedded), one `server.py` process and this client on the same machine. Command: "
        f"`.venv/bin/python bench/load.py --seconds {results.duration:g}`.",
        "",
        "| Measure | Result |",
        "|---|---|",
        f"| Open SSE streams (live event streams, {VIEWERS_PER_SESSION} viewers a session) | "
        f"{results.streams:,}, held for the whole run (opened in {results.open_seconds:.1f} s) |",
        f"| REST traffic (`/health`, `GET /api/auth/session`, `GET /api/sessions` with {REST_SESSIONS} sessions) | "
        f"{facts['requests']:,} requests in {results.duration:g} s ({facts['rps']:.0f} req/s, target {rps:g}); "
        f"p50 {facts['p50_ms']:.1f} ms, p99 {facts['p99_ms']:.1f} ms |",
        f"| Events appended while streaming | {results.events_appended} (one every 0.5 s), "
        f"{results.events_appended * VIEWERS_PER_SESSION:,} deliveries |",
        f"| Errors (failed requests, streams closed by the server, missed deliveries, server log errors) | "
        f"{len(results.request_errors)}, {results.streams_closed_by_server}, {results.deliveries_missed}, "
        f"{len(results.log_errors)} |",
        f"| Server RSS: idle, then with the streams open | {results.rss_idle_kib / 1024:.1f} MiB, "
        f"{results.rss_streams_open_kib / 1024:.1f} MiB |",
        f"| RSS during warm-up (first {results.warmup:g} s) | {facts['warm_start_mib']:.1f} → "
        f"{facts['warm_end_mib']:.1f} MiB |",
        f"| RSS in the steady state (after warm-up) | median {facts['steady_median_mib']:.1f} MiB, range "
        f"{facts['steady_min_mib']:.1f} to {facts['steady_max_mib']:.1f} MiB, first → last "
        f"{facts['steady_first_mib']:.1f} → {facts['steady_last_mib']:.1f} MiB "
        f"({facts['steady_growth_mib']:+.1f} MiB; slope {facts['slope_mib_per_min']:+.2f} MiB/min): "
        f"{'flat' if flat else 'NOT flat'} |",
        f"| Server CPU during the run | {facts['cpu_percent']:.0f} % of one core |",
        "",
        "RSS samples (seconds since the REST traffic began → MiB): "
        + ", ".join(f"{s.at:.0f} → {s.rss_kib / 1024:.1f}" for s in results.samples)
        + ".",
    ]
    return "\n".join(lines)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the measured run (default 60)")
    parser.add_argument("--streams", type=int, default=2000, help="open SSE streams (default 2000)")
    parser.add_argument("--rps", type=float, default=200.0, help="REST requests per second (default 200)")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds (default a quarter of the run)")
    parser.add_argument("--sample-every", type=float, default=3.0, help="RSS sampling interval (default 3 s)")
    parser.add_argument("--quick", action="store_true", help="200 streams for 10 s; prints, writes nothing")
    args = parser.parse_args()
    if args.quick:
        args.streams, args.seconds = min(args.streams, 200), min(args.seconds, 10.0)
    warmup = args.warmup if args.warmup is not None else args.seconds / 4
    bench = LoadBench(args.streams, args.seconds, warmup, args.rps, args.sample_every)
    try:
        await bench.setup()
        await asyncio.wait_for(bench.run(), args.seconds + 600)
    finally:
        await bench.teardown()
    results = bench.results
    facts = summary(results)
    section = render(results, facts, bench.pg_version, args.rps)
    print(section)
    for line in (results.request_errors + results.log_errors)[:20]:
        print("error:", line)
    if not args.quick:
        write_section("load", "Load: open streams and REST traffic on one process", section)
        print("written to bench/RESULTS.md")
    return 1 if facts["errors"] else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
