"""Every benchmark in turn: the scripts named in `SCRIPTS` below (`make bench`).

    .venv/bin/python bench/run_all.py                 # all of them; each writes its bench/RESULTS.md section
    .venv/bin/python bench/run_all.py --only rest load
    .venv/bin/python bench/run_all.py --quick         # smoke run: small counts, writes nothing

Each script runs as its own process, one after the other (they would skew each other's figures
if run together), with a time limit; each starts and ends its own PostgreSQL and servers. A
script that fails or runs out of time does not stop the others; the exit status is non-zero if
any of them failed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent

# name -> (arguments of the full run, arguments of a smoke run or None to skip it, time limit in s)
SCRIPTS: dict[str, tuple[list[str], list[str] | None, float]] = {
    # rest.py always writes its section, so a smoke run leaves it out.
    "rest": ([], None, 600),
    "streams": ([], ["--quick"], 1800),
    "load": ([], ["--quick"], 900),
    "history": ([], ["--quick"], 900),
    "adoption": ([], ["--quick"], 900),
    "stream_cost": ([], ["--quick"], 600),
    "import": ([], ["--quick"], 900),
    "push": ([], ["--quick"], 900),
}


def stop(process: subprocess.Popen[bytes]) -> None:
    """End a script and what it started (its own process group, whose id is its pid): SIGINT
    first, so that it stops its servers and removes its PostgreSQL folder, SIGKILL if it hangs."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def run(name: str, arguments: list[str], limit: float) -> int:
    """Run one script; stop it if it exceeds `limit` seconds."""
    command = [sys.executable, str(BENCH_DIR / f"{name}.py"), *arguments]
    print(f"==> bench/{name}.py {' '.join(arguments)}", flush=True)
    started = time.monotonic()
    # A process group of its own, so that stopping it also reaches the servers it started.
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, start_new_session=True)
    try:
        status = process.wait(limit)
    except subprocess.TimeoutExpired:
        print(f"==> {name}: no result after {limit:.0f} s; stopping it", flush=True)
        stop(process)
        status = 124
    except KeyboardInterrupt:
        stop(process)
        raise
    print(f"==> {name}: exit status {status} after {time.monotonic() - started:.0f} s", flush=True)
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(SCRIPTS), help="run only these scripts")
    parser.add_argument("--quick", action="store_true", help="a smoke run with small counts; writes nothing")
    args = parser.parse_args()
    failed = []
    for name in args.only or list(SCRIPTS):
        full, quick, limit = SCRIPTS[name]
        arguments = quick if args.quick else full
        if arguments is None:
            print(f"==> {name}: skipped in a quick run", flush=True)
            continue
        if run(name, arguments, limit) != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print("every benchmark finished; figures in bench/RESULTS.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
