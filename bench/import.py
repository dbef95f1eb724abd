"""Import from the original: rows per second and peak memory of `server.py db import-original`.

    .venv/bin/python bench/import.py                     # 1,000,000 events in 1,000 chat sessions
    .venv/bin/python bench/import.py --events 200000     # a shorter run (still writes its section)
    .venv/bin/python bench/import.py --quick             # smoke run: 20,000 events, writes nothing

A throw-away embedded PostgreSQL holds both databases: an original (tests/original_schema.sql,
filled by PostgreSQL itself with tests/original_data.fill_bulk) and a fresh one of this server.
The import runs as the operator runs it, in its own process; its peak memory is that process's
maximum RSS (wait4), its time the wall clock of the whole command (connect, migrate, import).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import orjson

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from bench.database import fresh_database  # noqa: E402
from bench.results import machine_note, write_section  # noqa: E402
from tests import original_data  # noqa: E402
from tests.helpers import test_env  # noqa: E402

TIME_LIMIT_SECONDS = 900


def run_import(target_url: str, source_url: str) -> tuple[dict, float, int]:
    """The report, wall seconds and peak RSS (KiB) of one import run in its own process."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DATABASE_URL")}
    env.update(test_env(target_url))
    command = [sys.executable, "server.py", "db", "import-original", "--from", source_url, "--json"]
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.DEVNULL)
        deadline = started + TIME_LIMIT_SECONDS
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                process.kill()
                raise SystemExit("the import ran out of time")
            time.sleep(0.05)
        seconds = time.monotonic() - started
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"the import failed with status {status}")
        out.seek(0)
        report = orjson.loads(out.read())
    return report, seconds, usage.ru_maxrss


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--sessions", type=int, default=1_000)
    parser.add_argument("--people", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="20,000 events, nothing written to RESULTS.md")
    args = parser.parse_args()
    if args.quick:
        args.events, args.sessions, args.people = 20_000, 100, 10
    per_session = max(1, args.events // args.sessions)
    events = per_session * args.sessions

    with tempfile.TemporaryDirectory(prefix="webedt-bench-import-") as workdir:
        database = await fresh_database(Path(workdir), "bench_import")
        try:
            admin_url = database.server.get_uri()
            name = f"original_{secrets.token_hex(3)}"
            admin = await asyncpg.connect(admin_url)
            try:
                await admin.execute(f'CREATE DATABASE "{name}"')
            finally:
                await admin.close()
            source_url = admin_url.replace("/postgres?", f"/{name}?")
            filled = time.monotonic()
            conn = await asyncpg.connect(source_url)
            try:
                await original_data.create_original(conn)
                await original_data.fill_bulk(conn, args.people, args.sessions, per_session)
                await conn.execute("ANALYZE")
            finally:
                await conn.close()
            print(f"original filled: {events:,} events in {time.monotonic() - filled:.0f} s", file=sys.stderr)

            load = os.getloadavg()[0]
            report, seconds, peak_kib = await asyncio.get_running_loop().run_in_executor(
                None, run_import, database.url, source_url
            )
        finally:
            database.server.cleanup()

    tables = report["tables"]
    assert tables["events"]["imported"] == events, tables["events"]
    rows = sum(tables[t]["imported"] for t in ("users", "sessions", "chat_sessions", "messages", "events"))
    figures = {
        "events": events,
        "rows": rows,
        "seconds": seconds,
        "rows_per_second": rows / seconds,
        "events_per_second": events / seconds,
        "peak_rss_mib": peak_kib / 1024,
    }
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    if args.quick:
        return
    body = (
        f"{machine_note()}, Linux {platform.release()}, Python {platform.python_version()}; PostgreSQL "
        f"{database.version} (embedded) holds both the original and this server's database on the same machine. "
        f"Command: `.venv/bin/python bench/import.py"
        + (f" --events {args.events}" if args.events != 1_000_000 else "")
        + (f" --sessions {args.sessions}" if args.sessions != 1_000 else "")
        + "`.\n\n"
        "| Measure | Result |\n|---|---|\n"
        f"| Original | {args.people:,} people and login sessions, {args.sessions:,} chat sessions, "
        f"{events:,} events ({per_session:,} per session, about 230 bytes of JSON each) |\n"
        f"| Import, whole command (connect, migrate, import, report) | {seconds:.1f} s |\n"
        f"| Rows per second (all tables) | {rows / seconds:,.0f} ({rows:,} rows) |\n"
        f"| Events per second | {events / seconds:,.0f} |\n"
        f"| Peak memory of the import process (max RSS) | {peak_kib / 1024:.0f} MiB |\n\n"
        "How: the original is written by PostgreSQL itself (generate_series) before the clock starts; "
        "the import then runs as `server.py db import-original --from ... --json` in its own process, "
        "reading each chat session's events through a cursor 2,000 at a time and writing each 2,000 "
        "with one batched INSERT, one transaction per chat session. "
        f"Load average when the import started: {load:.1f} (the machine is shared, so figures vary)."
    )
    write_section("import", "Import from the original", body)


if __name__ == "__main__":
    asyncio.run(main())
