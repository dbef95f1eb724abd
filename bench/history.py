"""Events-list benchmark: `GET /api/sessions/:id/events` without paging parameters (the whole
history, as the website's `getEvents` asks) for a 100,000-event session: time to the last byte and
the server process's peak memory while it answers. Loopback only, bounded, not part of `make test`.

    .venv/bin/python bench/history.py            # 100,000 events, writes bench/RESULTS.md
    .venv/bin/python bench/history.py --quick    # 10,000 events; prints, writes nothing
    .venv/bin/python bench/history.py --ab before=/tmp/before [--rounds 5]   # 10,000 events, A/B

With `--ab NAME=PATH` (repeatable) it compares this checkout with other checkouts instead: each
tree's own `server.py` on its own database (bench/fanout.py's way), one 10,000-event session
each, the whole history fetched 3 times per tree per round, the trees alternated round by round
(the machine is shared). Prints the medians; writes nothing.

It starts its own embedded PostgreSQL and one `python server.py` (ended by its process id), stores
the events through `services.event_log.append`, and reads the answer with httpx, counting bytes
without keeping them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import orjson

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from bench.results import write_section  # noqa: E402
from bench.streams import Bench, machine, process_cpu_seconds  # noqa: E402
from services import db, event_log  # noqa: E402

RUNS = 3


def status_kib(pid: int, field: str) -> int:
    """A `/proc/<pid>/status` figure in KiB (VmRSS now, VmHWM the peak so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field}")


def reset_peak(pid: int) -> None:
    """Make VmHWM start again from the current RSS (Linux 4.0+: write 5 to clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


async def fill(bench: Bench, session_id: str, events: int) -> None:
    """`events` stored assistant events of about 230 bytes each, in batches of 2,000."""
    for start in range(0, events, 2000):
        batch = [
            {"type": "assistant", "n": n, "message": {"content": "y" * 200}}
            for n in range(start, min(events, start + 2000))
        ]
        await event_log.append(bench.ctx, session_id, batch)


async def measure(bench: Bench, events: int) -> dict[str, float]:
    replica = bench.spawn()
    user_id, cookie = await bench.login(replica)
    session_id = await bench.new_session(user_id, status="completed")
    await fill(bench, session_id, events)
    pid = replica.process.pid
    timings, peaks, sizes = [], [], []
    async with httpx.AsyncClient(base_url=replica.url, cookies={"auth_session": cookie}, timeout=120) as http:
        for _ in range(RUNS):
            reset_peak(pid)
            before = status_kib(pid, "VmRSS")
            started = time.perf_counter()
            size = 0
            tail = b""
            async with http.stream("GET", f"/api/sessions/{session_id}/events") as response:
                response.raise_for_status()
                async for chunk in response.aiter_raw():
                    size += len(chunk)
                    tail = (tail + chunk)[-512:]
            timings.append(time.perf_counter() - started)
            peaks.append((status_kib(pid, "VmHWM") - before) / 1024)
            sizes.append(size)
            if f'"total":{events}'.encode() not in tail:
                raise RuntimeError("the answer did not end with the whole history")
        # One parse, to check the answer is the whole history in order.
        data = orjson.loads((await http.get(f"/api/sessions/{session_id}/events")).content)["data"]
        if [e["eventData"]["n"] for e in data["events"]] != list(range(events)):
            raise RuntimeError("events missing or out of order")
    return {
        "events": events,
        "median_s": statistics.median(timings),
        "best_s": min(timings),
        "peak_growth_mib": max(peaks),
        "rss_mib": status_kib(pid, "VmRSS") / 1024,
        "mib": sizes[0] / 1024 / 1024,
    }


def render(result: dict[str, float], pg_version: str) -> str:
    return "\n".join(
        [
            f"{machine()}; PostgreSQL {pg_version} (embedded). Command: `.venv/bin/python bench/history.py`.",
            "",
            "| Measure | Result |",
            "|---|---|",
            f"| Whole history of a {result['events']:,}-event session ({result['mib']:.0f} MiB of JSON), "
            f"GET → last byte | median {result['median_s']:.2f} s, best {result['best_s']:.2f} s ({RUNS} runs) |",
            f"| Server's peak memory growth while answering (VmHWM minus RSS before) | "
            f"{result['peak_growth_mib']:.1f} MiB (process RSS afterwards {result['rss_mib']:.0f} MiB) |",
            "",
            "The answer is read in keyset batches of 1,000 events and sent chunk by chunk, so the peak "
            "stays at a few batches whatever the session's length.",
        ]
    )


async def ab(others: list[str], events: int, rounds: int) -> str:
    """Time to the last byte and server CPU of the whole history, this checkout against others."""
    import asyncpg

    from bench.database import fresh_database
    from bench.fanout import Tree, spawn

    trees = [Tree("after", PROJECT_ROOT)] + [Tree(n, Path(p).resolve()) for n, p in (o.split("=", 1) for o in others)]
    workdir = Path(tempfile.mkdtemp(prefix="webedt-bench-history-"))
    database = await fresh_database(workdir, "webedt_history_after")
    pools = []
    timings: dict[str, list[float]] = {t.name: [] for t in trees}
    cpu: dict[str, list[float]] = {t.name: [] for t in trees}
    try:
        trees[0].database_url = database.url
        admin = await asyncpg.connect(database.server.get_uri())
        try:
            for tree in trees[1:]:
                name = f"webedt_history_{tree.name}_{secrets.token_hex(3)}"
                await admin.execute(f'CREATE DATABASE "{name}"')
                tree.database_url = database.server.get_uri(database=name)
        finally:
            await admin.close()
        sessions: dict[str, str] = {}
        for tree in trees:
            tree.replica = await asyncio.to_thread(spawn, tree, workdir)
            pool = await db.create_pool(tree.database_url, 2, 4)
            pools.append(pool)
            tree.bench = Bench(True)
            tree.bench.pool, tree.bench.ctx = pool, SimpleNamespace(pool=pool, row_turns=db.RowTurns())
            tree.user_id, tree.cookie = await tree.bench.login(tree.replica)
            sessions[tree.name] = await tree.bench.new_session(tree.user_id, status="completed")
            await fill(tree.bench, sessions[tree.name], events)
        for number in range(rounds):
            for tree in trees if number % 2 == 0 else list(reversed(trees)):
                assert tree.replica is not None
                url = f"/api/sessions/{sessions[tree.name]}/events"
                async with httpx.AsyncClient(
                    base_url=tree.replica.url, cookies={"auth_session": tree.cookie}, timeout=120
                ) as http:
                    (await http.get(url)).raise_for_status()  # warm-up
                    for _ in range(RUNS):
                        cpu_before = process_cpu_seconds(tree.replica.process.pid)
                        started = time.perf_counter()
                        async with http.stream("GET", url) as response:
                            response.raise_for_status()
                            async for _chunk in response.aiter_raw():
                                pass
                        timings[tree.name].append(1000 * (time.perf_counter() - started))
                        cpu[tree.name].append(1000 * (process_cpu_seconds(tree.replica.process.pid) - cpu_before))
            print(
                f"round {number + 1}: "
                + ", ".join(f"{n} {statistics.median(v[-RUNS:]):.0f} ms" for n, v in timings.items()),
                flush=True,
            )
    finally:
        for tree in trees:
            if tree.replica is not None:
                await asyncio.to_thread(tree.replica.stop)
        for pool in pools:
            with contextlib.suppress(Exception):
                await pool.close()
        with contextlib.suppress(Exception):
            database.server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    lines = [
        f"Whole history of a {events:,}-event session, GET → last byte, {rounds} rounds x {RUNS} fetches per tree,"
        " trees alternated round by round; median (range) over all fetches.",
        "",
        "| tree | time to last byte ms | server CPU ms per request |",
        "|---|---|---|",
    ]
    for tree in trees:
        t, c = timings[tree.name], cpu[tree.name]
        lines.append(
            f"| {tree.name} ({'this checkout' if tree.root == PROJECT_ROOT else tree.root}) |"
            f" {statistics.median(t):.0f} ({min(t):.0f}-{max(t):.0f}) |"
            f" {statistics.median(c):.0f} ({min(c):.0f}-{max(c):.0f}) |"
        )
    return "\n".join(lines)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10,000 events; prints results, writes nothing")
    parser.add_argument("--ab", action="append", default=[], help="NAME=PATH of another checkout to compare with")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the --ab comparison")
    args = parser.parse_args()
    if args.ab:
        print(await asyncio.wait_for(ab(args.ab, 10_000, args.rounds), 900))
        return 0
    bench = Bench(args.quick)
    try:
        await bench.setup()
        result = await asyncio.wait_for(measure(bench, 10_000 if args.quick else 100_000), 900)
    finally:
        await bench.teardown()
    section = render(result, bench.pg_version)
    print(section)
    if not args.quick:
        write_section("history", "Events list: the whole history of a long session", section)
        print("written to bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
