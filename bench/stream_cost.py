"""Marginal memory of an idle SSE stream: one `python server.py` holds 3,000 live streams, then
4,000 more; the RSS growth over the second batch, per stream, is a stream's own cost (the first
batch also grows the allocator's pools, which `bench/streams.py`'s figure includes). Loopback
only, bounded, not part of `make test`.

    .venv/bin/python bench/stream_cost.py          # writes bench/RESULTS.md
    .venv/bin/python bench/stream_cost.py --quick  # 500 + 1,000 streams; prints, writes nothing
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from bench.results import write_section  # noqa: E402
from bench.streams import Bench, close_streams, machine, open_streams, rss_kib, wait_subscribers  # noqa: E402

SESSIONS = 700


async def measure(bench: Bench, first: int, second: int) -> dict[str, float]:
    replica = bench.spawn()
    user_id, cookie = await bench.login(replica)
    port = int(replica.url.rsplit(":", 1)[1])
    sessions = [await bench.new_session(user_id) for _ in range(SESSIONS)]

    def targets(start: int, count: int) -> list[tuple[int, str]]:
        return [(port, f"/api/sessions/{sessions[n % SESSIONS]}/events/stream") for n in range(start, start + count)]

    held = await open_streams(targets(0, first), cookie, None)
    await wait_subscribers(replica.url, first)
    await asyncio.sleep(2)
    before = rss_kib(replica.process.pid)
    held += await open_streams(targets(first, second), cookie, None)
    await wait_subscribers(replica.url, first + second)
    await asyncio.sleep(2)
    after = rss_kib(replica.process.pid)
    await close_streams(held)
    return {"first": first, "second": second, "kib_per_stream": (after - before) / second, "rss_mib": after / 1024}


def render(result: dict[str, float], pg_version: str) -> str:
    return "\n".join(
        [
            f"{machine()}; PostgreSQL {pg_version} (embedded). Command: `.venv/bin/python bench/stream_cost.py`.",
            "",
            "| Measure | Result | Target |",
            "|---|---|---|",
            f"| Memory of one more idle stream ({result['second']:,} opened after {result['first']:,}) | "
            f"{result['kib_per_stream']:.2f} KiB (process RSS {result['rss_mib']:.0f} MiB) | < 18 KiB |",
        ]
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="500 + 1,000 streams; prints results, writes nothing")
    args = parser.parse_args()
    bench = Bench(args.quick)
    try:
        await bench.setup()
        result = await asyncio.wait_for(measure(bench, *((500, 1000) if args.quick else (3000, 4000))), 600)
    finally:
        await bench.teardown()
    section = render(result, bench.pg_version)
    print(section)
    if not args.quick:
        write_section("stream_cost", "Streams: the marginal memory of an idle stream", section)
        print("written to bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
