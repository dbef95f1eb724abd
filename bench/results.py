"""Writing figures into bench/RESULTS.md: one section per script, replaced on every run."""

from __future__ import annotations

import os
import platform
import re
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "# Benchmark results\n\nEach section is rewritten by the script named in it.\n"


def machine_note() -> str:
    """Date, CPU count, memory and processor of this machine, for the record."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{mem_kib / 1024 / 1024:.0f} GiB"
    except OSError:
        memory = "unknown memory"
    return f"{datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} cores ({cpu}), {memory}"


def write_section(key: str, title: str, body: str) -> None:
    """Replace (or append) the section between `<!-- key:start -->` and `<!-- key:end -->`."""
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    section = f"{start}\n## {title}\n\n{body}\n\n_Written by `bench/{key}.py`._\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    RESULTS.write_text(text)
