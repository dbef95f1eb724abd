"""Events-list benchmark: `GET /api/sessions/:id/events` without paging parameters (the whole
history, as the website's `getEvents` asks) for a 100,000-event session: time to the last byte and
the server process's peak memory while it answers. Loopback only, bounded, not part of `make test`.

    .venv/bin/python bench/history.py            # 100,000 events, writes bench/RESULTS.md
    .venv/bin/python bench/history.py --quick    # 10,000 events; prints, writes nothing

It starts its own embedded PostgreSQL and one `python server.py` (ended by its process id), stores
the events through `services.event_log.append`, and reads the answer with httpx, counting bytes
without keeping them.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import httpx
import orjson

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from bench.results import write_section  # noqa: E402
from bench.streams import Bench, machine  # noqa: E402
from services import event_log  # noqa: E402

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


async def measure(bench: Bench, events: int) -> dict[str, float]:
    replica = bench.spawn()
    user_id, cookie = await bench.login(replica)
    session_id = await bench.new_session(user_id, status="completed")
    for start in range(0, events, 2000):
        batch = [
            {"type": "assistant", "n": n, "message": {"content": "y" * 200}}
            for n in range(start, min(events, start + 2000))
        ]
        await event_log.append(bench.ctx, session_id, batch)
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


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10,000 events; prints results, writes nothing")
    args = parser.parse_args()
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
