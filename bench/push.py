"""Upstream push benchmark (issue 12): how long an event takes from the fake Claude sending it to a
viewer of `/api/sessions/:id/events/stream` reading it, with the event WebSocket (`auto`) and with
polling only (`off`), both at `CLAUDE_POLL_INTERVAL_MS=2000`; and upstream requests per minute of
one run, push against polling. Loopback only, bounded, not part of `make test`.

    .venv/bin/python bench/push.py            # full run (about 5 minutes), writes bench/RESULTS.md
    .venv/bin/python bench/push.py --quick    # small counts, for a smoke test; writes nothing

It starts its own embedded PostgreSQL, the fake Claude (in this process, so that its send times
and the viewers' read times are on one clock) and two `python server.py` replicas per mode, ended
by their process ids at the end. "Sent" is when the fake wrote the event's frame on the socket;
with `off` (no socket) it is when the event appeared upstream, ready for the next poll.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from bench.database import fresh_database  # noqa: E402
from bench.results import machine_note, write_section  # noqa: E402
from bench.streams import close_streams, open_streams  # noqa: E402
from tests.fakes.claude import (  # noqa: E402
    REPO,
    FakeClaude,
    FakeSession,
    claude_env,
    connect_claude,
    new_uuid,
    post_sse,
    running_fake_claude,
)
from tests.helpers import Replica, register, spawn_replica, test_env  # noqa: E402

POLL_MS = 2000
# The fake releases one event this often: 20 a second, a busy agent (at 50 a second, 200 viewers
# on this shared 2-core machine already queue: 10,000 frames a second through one client process).
EVENT_INTERVAL = 0.05


def turn_of(count: int) -> Any:
    """A turn factory: `count` assistant messages, then a result."""

    def turn(session: FakeSession, prompt: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = [
            {
                "type": "assistant",
                "uuid": new_uuid(),
                "message": {"role": "assistant", "content": [{"type": "text", "text": f"step {n}"}]},
            }
            for n in range(count)
        ]
        events.append({"type": "result", "subtype": "success", "uuid": new_uuid(), "total_cost_usd": 0.1})
        return events

    return turn


async def latency_run(
    fake: FakeClaude, replicas: list[Replica], events: int, viewers_per_replica: list[int], push: bool
) -> list[float]:
    """One run of `events` events watched by the given number of viewers on each replica; the
    latencies in milliseconds of every (viewer, event)."""
    fake.reset_knobs()
    fake.turn_factory = turn_of(events)
    fake.release_every = EVENT_INTERVAL
    fake.hold_at = 1  # only the echo of the prompt until every viewer is connected
    async with httpx.AsyncClient(base_url=replicas[0].url, timeout=30) as http:
        await register(http)
        await connect_claude(http, fake)
        async with post_sse(http, {"userRequest": "Benchmark the push", "github": REPO}) as stream:
            frames = await stream.until("title_generation", timeout=30)
            session_id = frames[1].json()["websiteSessionId"]
        while not fake.sessions:  # the run creates its remote session right after the title
            await asyncio.sleep(0.02)
        remote = fake.only_session()
        if push:
            while fake.subscriber_count(remote.id) == 0:
                await asyncio.sleep(0.05)
        # Raw-socket viewers (bench/streams.py): the time each frame id arrived, per viewer.
        read_at: list[dict[int, float]] = []

        def recorder(seen: dict[int, float]) -> Any:
            return lambda event_id, _: seen.setdefault(event_id, time.monotonic())

        clients = []
        path = f"/api/sessions/{session_id}/events/stream"
        for replica, count in zip(replicas, viewers_per_replica, strict=True):
            port = int(replica.url.rsplit(":", 1)[1])
            for _ in range(count):
                read_at.append({})
                clients += await open_streams([(port, path)], http.cookies["auth_session"], recorder(read_at[-1]))
        try:
            await asyncio.sleep(1.0)  # the socket's backfill is done; the run waits for pushes
            sent = fake.sent_at if push else fake.released_at
            fake.hold_at = None
            while (await http.get(f"/api/sessions/{session_id}")).json()["session"]["status"] == "running":
                await asyncio.sleep(0.1)  # the run ends before the next one starts
            log = (await http.get(f"/api/sessions/{session_id}/events")).json()["data"]["events"]
            turn = {e["uuid"] for e in remote.events[1:]}  # not the echo of the prompt
            ids = {e["id"]: e["eventData"]["uuid"] for e in log if e["eventData"].get("uuid") in turn}
            deadline = time.monotonic() + 60
            while any(len(ids.keys() & seen.keys()) < len(ids) for seen in read_at):
                assert time.monotonic() < deadline, "some viewers never read some events"
                await asyncio.sleep(0.1)
        finally:
            await close_streams(clients)
        assert len(ids) == events + 1, (len(ids), events)
        return [(seen[i] - sent[u]) * 1000 for seen in read_at for i, u in ids.items()]


async def request_rate(fake: FakeClaude, replica: Replica, seconds: float) -> float:
    """Upstream API requests per minute while one run produces an event every 0.5 s."""
    fake.reset_knobs()
    fake.release_every = 0.5
    fake.turn_factory = turn_of(int(seconds / 0.5) + 20)  # still running when the window ends
    async with httpx.AsyncClient(base_url=replica.url, timeout=30) as client:
        await register(client)
        await connect_claude(client, fake)
        async with post_sse(client, {"userRequest": "Count the requests", "github": REPO}) as stream:
            await stream.until("title_generation", timeout=30)
        await asyncio.sleep(5)  # past the start (creation, first reads, the socket's backfill)
        before = len(fake.requests) + len(fake.subscribe_requests)
        await asyncio.sleep(seconds)
        after = len(fake.requests) + len(fake.subscribe_requests)
        for session in fake.sessions.values():
            session.pending = []  # let the run end
    return (after - before) * 60 / seconds


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts; prints results, writes nothing")
    args = parser.parse_args()
    events, fan_out, rate_seconds = (60, 10, 10.0) if args.quick else (500, 100, 60.0)
    load_before = os.getloadavg()[0]
    results: list[tuple[str, str, list[float]]] = []
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-push-") as tmp:
        workdir = Path(tmp)
        database = await fresh_database(workdir, "bench_push")
        try:
            async with running_fake_claude() as fake:
                for mode in ("auto", "off"):
                    env = test_env(
                        database.url,
                        **claude_env(
                            fake,
                            CLAUDE_UPSTREAM_PUSH=mode,
                            CLAUDE_POLL_INTERVAL_MS=str(POLL_MS),
                            CLAUDE_ENVIRONMENT_ID="env_bench",
                            RUN_ADOPT_INTERVAL_SECONDS="30",
                            CLAUDE_REQUEST_TIMEOUT_SECONDS="30",
                            CLAUDE_RETRY_WINDOW_SECONDS="300",
                        ),
                    )
                    replicas = list(
                        await asyncio.gather(*(asyncio.to_thread(spawn_replica, env, workdir) for _ in range(2)))
                    )
                    try:
                        push = mode == "auto"
                        fake.sessions.clear()
                        one = await latency_run(fake, replicas, events, [1, 0], push)
                        results.append((mode, "1 viewer", one))
                        print(mode, "1 viewer", f"p50 {percentile(one, 0.5):.1f} ms p99 {percentile(one, 0.99):.1f}")
                        fake.sessions.clear()
                        many = await latency_run(fake, replicas, events, [fan_out, fan_out], push)
                        results.append((mode, f"{fan_out} viewers on each of 2 replicas", many))
                        print(mode, "fan-out", f"p50 {percentile(many, 0.5):.1f} ms p99 {percentile(many, 0.99):.1f}")
                        fake.sessions.clear()
                        fake.requests.clear()
                        fake.subscribe_requests.clear()
                        rates[mode] = await request_rate(fake, replicas[0], rate_seconds)
                        print(mode, f"{rates[mode]:.1f} upstream requests per minute")
                    finally:
                        for replica in replicas:
                            with contextlib.suppress(Exception):
                                await asyncio.to_thread(replica.stop, signal.SIGTERM, 20)
        finally:
            database.server.cleanup()
    lines = [
        f"Machine: {machine_note()}. PostgreSQL {database.version}. Two `server.py` replicas per mode, "
        f"`CLAUDE_POLL_INTERVAL_MS={POLL_MS}`; the fake Claude releases one event every "
        f"{EVENT_INTERVAL * 1000:.0f} ms "
        f"({events} events per run plus a result). Load average (1 min) {load_before:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end, on a machine shared with other work: figures under load. "
        "Latency is from the fake sending an event (on the "
        "socket; with `off`, when it appeared upstream) to a viewer of "
        "`/api/sessions/:id/events/stream` reading it, over every (viewer, event) pair.",
        "",
        "| Mode | Viewers | Samples | p50 | p99 | max |",
        "|---|---|---|---|---|---|",
    ]
    for mode, viewers, values in results:
        lines.append(
            f"| `{mode}` | {viewers} | {len(values)} | {percentile(values, 0.5):.1f} ms | "
            f"{percentile(values, 0.99):.1f} ms | {max(values):.1f} ms |"
        )
    lines += [
        "",
        f"Upstream requests per minute of one run producing an event every 0.5 s, counted over "
        f"{rate_seconds:.0f} s (shortened from the issue's 5 minutes to keep the benchmark bounded; the "
        "rates are steady after the start): "
        + ", ".join(f"`{mode}` {rate:.1f}" for mode, rate in rates.items())
        + ". With push the run reads the session status every 30 s and on each pushed status or "
        "result; polling reads the status and the events every 2 s.",
    ]
    section = "\n".join(lines)
    print(section)
    if not args.quick:
        write_section("push", "Upstream push: event latency to viewers, upstream requests", section)
        print("written to bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
