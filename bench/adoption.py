"""Adoption benchmark: how long a run waits for another replica after its driver dies (SIGKILL) or
stops (SIGTERM), 10 times each: median and max. Loopback only, bounded, not part of `make test`.

    .venv/bin/python bench/adoption.py            # 10 of each, writes bench/RESULTS.md
    .venv/bin/python bench/adoption.py --quick    # 3 of each; prints, writes nothing

Two `python server.py` replicas share an embedded PostgreSQL and the fake Claude server (run in
this process). Each round starts a run on the first replica, lets it stall upstream mid-turn,
signals that replica, and times from the signal to (a) the session row naming the survivor as its
driver and (b) the survivor's first read of the run's upstream events, that is the run carried on.
The signalled replica is replaced by a fresh one for the next round. Settings are the defaults
(`RUN_ADOPT_INTERVAL_SECONDS=1`), except a 100 ms poll of the fake upstream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import statistics
import sys
import time
from pathlib import Path

import httpx

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from bench.results import write_section  # noqa: E402
from bench.streams import Bench, machine  # noqa: E402
from tests.fakes.claude import REPO, FakeClaude, claude_env, connect_claude, post_sse  # noqa: E402
from tests.helpers import Replica, spawn_replica, test_env  # noqa: E402


async def wait_until(predicate, timeout: float = 60.0) -> float:  # type: ignore[no-untyped-def]
    """Poll `predicate()` every 10 ms; the monotonic time at which it first held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return time.monotonic()
        await asyncio.sleep(0.01)
    raise RuntimeError("timed out")


class AdoptionBench(Bench):
    async def start_fake(self) -> None:
        self.fake = FakeClaude()
        await self.fake.start()
        self.env = test_env(
            self.database_url,
            **claude_env(
                self.fake,
                CLAUDE_ENVIRONMENT_ID="env_bench",
                CLAUDE_POLL_INTERVAL_MS="100",
                RUN_ADOPT_INTERVAL_SECONDS="1",
                RUN_LEASE_SECONDS="30",
                SHUTDOWN_GRACE_SECONDS="5",
            ),
        )

    def spawn_claude(self) -> Replica:
        replica = spawn_replica(self.env, self.workdir)
        self.replicas.append(replica)
        return replica

    async def round(self, doomed: Replica, survivor: Replica, sig: int, cookies: httpx.Cookies) -> dict[str, float]:
        self.fake.hold_at = 4  # the turn stalls upstream after a few events: the run is mid-way
        async with httpx.AsyncClient(base_url=doomed.url, timeout=30, cookies=cookies) as http:
            async with post_sse(http, {"userRequest": f"Round on {doomed.url}", "github": REPO}) as stream:
                frames = await stream.until("assistant")
            session_id = frames[1].json()["websiteSessionId"]
        remote_id = await self.pool.fetchval("SELECT remote_session_id FROM chat_sessions WHERE id = $1", session_id)
        doomed_owner = await self.pool.fetchval("SELECT run_owner FROM chat_sessions WHERE id = $1", session_id)
        path = f"/v1/sessions/{remote_id}/events"
        reads_before = len(self.fake.api_requests("GET", path))
        signalled = time.monotonic()
        doomed.process.send_signal(sig)

        async def adopted() -> bool:
            owner = await self.pool.fetchval("SELECT run_owner FROM chat_sessions WHERE id = $1", session_id)
            return owner is not None and owner != doomed_owner

        async def carried_on() -> bool:
            reads = self.fake.api_requests("GET", path)
            return len(reads) > reads_before and await adopted()

        adopted_at = await wait_until(adopted)
        carried_at = await wait_until(carried_on)
        self.fake.hold_at = None

        async def done() -> bool:
            status = await self.pool.fetchval("SELECT status FROM chat_sessions WHERE id = $1", session_id)
            return status == "completed"

        await wait_until(done)
        await asyncio.to_thread(doomed.process.wait, 30)
        return {"adopted_s": adopted_at - signalled, "carried_on_s": carried_at - signalled}

    async def measure(self, rounds: int) -> dict[str, list[dict[str, float]]]:
        await self.start_fake()
        first, survivor = await asyncio.gather(
            asyncio.to_thread(self.spawn_claude), asyncio.to_thread(self.spawn_claude)
        )
        async with httpx.AsyncClient(base_url=survivor.url, timeout=30) as http:
            response = await http.post(
                "/api/auth/register", json={"email": "adoption@example.com", "password": "correct horse battery"}
            )
            response.raise_for_status()
            await connect_claude(http, self.fake)
            cookies = http.cookies
        results: dict[str, list[dict[str, float]]] = {"SIGKILL": [], "SIGTERM": []}
        doomed = first
        for name, sig in (("SIGKILL", signal.SIGKILL), ("SIGTERM", signal.SIGTERM)):
            for _ in range(rounds):
                result = await self.round(doomed, survivor, sig, cookies)
                print(name, {k: round(v, 3) for k, v in result.items()}, flush=True)
                results[name].append(result)
                doomed = await asyncio.to_thread(self.spawn_claude)
        return results

    async def teardown(self) -> None:
        await super().teardown()
        with contextlib.suppress(Exception):
            await self.fake.stop()


def render(results: dict[str, list[dict[str, float]]], pg_version: str) -> str:
    lines = [
        f"{machine()}; PostgreSQL {pg_version} (embedded). Command: `.venv/bin/python bench/adoption.py`.",
        "",
        "| Driver | Rounds | Signal → survivor named driver | Signal → run carried on (first upstream read) | Target |",
        "|---|---|---|---|---|",
    ]
    targets = {"SIGKILL": "< 10 s", "SIGTERM": "< 2 s"}
    for name, rows in results.items():
        adopted = [r["adopted_s"] for r in rows]
        carried = [r["carried_on_s"] for r in rows]
        lines.append(
            f"| {name} | {len(rows)} | median {statistics.median(adopted):.2f} s, max {max(adopted):.2f} s "
            f"| median {statistics.median(carried):.2f} s, max {max(carried):.2f} s | {targets[name]} |"
        )
    lines += [
        "",
        "Defaults (`RUN_ADOPT_INTERVAL_SECONDS=1`): each replica looks every second for runs whose "
        "driver's liveness lock PostgreSQL has released. A killed process's connection is closed by "
        "its kernel at once, so its lock goes with it; a stopping one releases its runs itself.",
    ]
    return "\n".join(lines)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 rounds of each; prints results, writes nothing")
    args = parser.parse_args()
    bench = AdoptionBench(args.quick)
    try:
        await bench.setup()
        results = await asyncio.wait_for(bench.measure(3 if args.quick else 10), 900)
    finally:
        await bench.teardown()
    section = render(results, bench.pg_version)
    print(section)
    if not args.quick:
        write_section("adoption", "Runs: adoption after a driver dies or stops", section)
        print("written to bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
