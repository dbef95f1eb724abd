"""Fan-out A/B: append-to-delivery latency to 1,000 and 5,000 viewers of one session on one
replica, and the marginal memory of an idle stream, for this checkout and others, interleaved
round by round (the machine is shared: a round of each tree runs under the same load).

    .venv/bin/python bench/fanout.py --tree before=/tmp/before [--tree base=/tmp/base] [--rounds 3]
    .venv/bin/python bench/fanout.py --quick      # 200/500 viewers, one round; writes nothing
    .venv/bin/python bench/fanout.py --memory-only --tree before=/tmp/before   # idle streams only

One embedded PostgreSQL; each tree gets its own database (migrated by its own `server.py` at
start-up) and one `server.py` process of its own code; events are appended from this process with
this checkout's `services.event_log.append` (the events table and its NOTIFY are the same in every
tree compared). Servers are ended by their process ids. Loopback only, bounded (a few minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from bench.database import fresh_database  # noqa: E402
from bench.results import write_section  # noqa: E402
from bench.streams import Bench, close_streams, machine, open_streams, rss_kib, wait_subscribers  # noqa: E402
from services import db  # noqa: E402
from tests.helpers import Replica, free_port, test_env, wait_healthy  # noqa: E402


@dataclass
class Tree:
    name: str
    root: Path
    database_url: str = ""
    replica: Replica | None = None
    bench: Any = None
    user_id: str = ""
    cookie: str = ""
    fan: dict[int, list[dict]] = field(default_factory=dict)
    memory: list[float] = field(default_factory=list)


def spawn(tree: Tree, workdir: Path) -> Replica:
    """`server.py` of `tree` on a free loopback port (its own code: run from its folder)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "PORT"))}
    env.update(test_env(tree.database_url))
    env.update({"PORT": str(port), "HOST": "127.0.0.1"})
    log_path = workdir / f"{tree.name}-{port}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "server.py"], cwd=tree.root, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    replica = Replica(process, f"http://127.0.0.1:{port}", log_path)
    wait_healthy(replica)
    return replica


async def idle_memory(tree: Tree, first: int, second: int) -> float:
    """KiB of RSS per idle live stream over `second` streams opened after `first`."""
    assert tree.replica is not None
    replica, bench = tree.replica, tree.bench
    port = int(replica.url.rsplit(":", 1)[1])
    sessions = [await bench.new_session(tree.user_id) for _ in range(700)]
    targets = [(port, f"/api/sessions/{sessions[n % 700]}/events/stream") for n in range(first + second)]
    held = await open_streams(targets[:first], tree.cookie, None)
    await wait_subscribers(replica.url, first)
    await asyncio.sleep(2)
    before = rss_kib(replica.process.pid)
    held += await open_streams(targets[first:], tree.cookie, None)
    await wait_subscribers(replica.url, first + second)
    await asyncio.sleep(2)
    after = rss_kib(replica.process.pid)
    await close_streams(held)
    await wait_subscribers(replica.url, 0)
    return (after - before) / second


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH of another checkout")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=30, help="events per fan-out measurement")
    parser.add_argument("--memory", action="store_true", help="also the idle-stream memory (3,000 + 4,000)")
    parser.add_argument("--quick", action="store_true", help="200/500 viewers, one round; writes nothing")
    parser.add_argument(
        "--memory-only", action="store_true", help="only the idle-stream memory, no fan-out; prints, writes nothing"
    )
    args = parser.parse_args()
    args.memory = args.memory or args.memory_only
    trees = [Tree("after", PROJECT_ROOT)] + [
        Tree(n, Path(p).resolve()) for n, p in (t.split("=", 1) for t in args.tree)
    ]
    viewers: tuple[int, ...] = () if args.memory_only else (200, 500) if args.quick else (1_000, 5_000)
    rounds = 1 if args.quick else args.rounds
    workdir = Path(tempfile.mkdtemp(prefix="webedt-bench-fanout-"))
    database = await fresh_database(workdir, "webedt_fanout_after")
    pg, pools = database.server, []
    try:
        trees[0].database_url = database.url
        admin = await asyncpg.connect(pg.get_uri())
        try:
            for tree in trees[1:]:
                name = f"webedt_fanout_{tree.name}_{secrets.token_hex(3)}"
                await admin.execute(f'CREATE DATABASE "{name}"')
                tree.database_url = pg.get_uri(database=name)
        finally:
            await admin.close()
        for tree in trees:
            tree.replica = await asyncio.to_thread(spawn, tree, workdir)
            pool = await db.create_pool(tree.database_url, 2, 4)
            pools.append(pool)
            tree.bench = Bench(args.quick)
            tree.bench.pool, tree.bench.ctx = pool, SimpleNamespace(pool=pool, row_turns=db.RowTurns())
            tree.user_id, tree.cookie = await tree.bench.login(tree.replica)
        for number in range(rounds):
            order = trees if number % 2 == 0 else list(reversed(trees))
            for count in viewers:
                for tree in order:
                    result = await tree.bench.fan_out([tree.replica], count, args.events, tree.user_id, tree.cookie)
                    tree.fan.setdefault(count, []).append(result)
                    print(
                        f"round {number + 1} {tree.name:<7} {count:>5} viewers  p50 {result['p50_ms']:6.1f} ms"
                        f"  p99 {result['p99_ms']:6.1f} ms  max {result['max_ms']:6.1f} ms"
                        f"  server CPU {result['server_cpu_ms_per_event']:6.1f} ms/event",
                        flush=True,
                    )
            if args.memory:
                for tree in order:
                    # A fresh process each time: one that held streams before (an earlier round, the
                    # fan-out) reuses their freed memory and would show next to no growth.
                    assert tree.replica is not None
                    await asyncio.to_thread(tree.replica.stop)
                    tree.replica = await asyncio.to_thread(spawn, tree, workdir)
                    kib = await idle_memory(tree, *((300, 700) if args.quick else (3000, 4000)))
                    tree.memory.append(kib)
                    print(f"round {number + 1} {tree.name:<7} idle stream {kib:.2f} KiB", flush=True)
    finally:
        for tree in trees:
            if tree.replica is not None:
                await asyncio.to_thread(tree.replica.stop)
        for pool in pools:
            with contextlib.suppress(Exception):
                await pool.close()
        with contextlib.suppress(Exception):
            pg.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"

    lines = [
        f"{machine()}; shared with other engineers' test runs (load moves between rounds), so the trees"
        f" ran interleaved, round by round, alternating which goes first. Command: `.venv/bin/python"
        f" bench/fanout.py {' '.join('--tree ' + t for t in args.tree)} --rounds {rounds}"
        f"{' --memory' if args.memory else ''}`. One replica per tree; {args.events} events per measurement,"
        " each to every viewer of one session; latency from just before `event_log.append` to the client"
        " reading the frame. Medians over the rounds (range in brackets).",
        "",
        "| tree | viewers | p50 ms | p99 ms | max ms | last viewer p50 ms | server CPU ms per event |",
        "|---|---|---|---|---|---|---|",
    ]
    for count in viewers:
        for tree in trees:
            runs = tree.fan[count]
            lines.append(
                f"| {tree.name} ({'this checkout' if tree.root == PROJECT_ROOT else tree.root}) | {count:,} |"
                f" {spread([r['p50_ms'] for r in runs])} | {spread([r['p99_ms'] for r in runs])} |"
                f" {spread([r['max_ms'] for r in runs])} | {spread([r['last_viewer_p50_ms'] for r in runs])} |"
                f" {spread([r['server_cpu_ms_per_event'] for r in runs])} |"
            )
    if args.memory:
        lines += ["", "| tree | memory of one more idle stream (3,000 + 4,000), KiB |", "|---|---|"]
        lines += [f"| {tree.name} | {spread(tree.memory)} |" for tree in trees]
    section = "\n".join(lines)
    print(section)
    if not args.quick and not args.memory_only:
        write_section("fanout", "Streams: fan-out A/B against earlier trees (bench/fanout.py)", section)
        print("written to bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
