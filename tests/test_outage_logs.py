"""Log noise (issue 15.4): while PostgreSQL is down a replica writes one WARNING when the outage
starts and one INFO when it ends, no traceback, and counts the outage in /metrics; the probes
of /health, /ready, /live and /metrics write their access lines at DEBUG, failures excepted."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import Replica, spawn_replica, test_env
from tests.test_faults import new_database, own_postgres, start_postgres, stop_postgres, wait_until

__all__ = ["own_postgres"]  # the fixture, used by name

LINE = re.compile(r"^\d\d:\d\d:\d\d (?P<level>[A-Z]+)\s+(?P<logger>[\w.]+): (?P<message>.*)$")


def log_lines(replica: Replica, start: int = 0) -> list[dict[str, str]]:
    lines = replica.log().splitlines()[start:]
    return [m.groupdict() for m in map(LINE.match, lines) if m]


async def test_an_outage_logs_once_when_it_starts_and_once_when_it_ends(own_postgres: Any, tmp_path: Path) -> None:
    database_url = await new_database(own_postgres.get_uri(), "webedt_outage_logs")
    # The run maintenance loops every 0.4 s, so a 4 s outage would give it ten chances to be noisy.
    env = test_env(database_url, LOG_LEVEL="INFO", RUN_ADOPT_INTERVAL_SECONDS="0.5")
    replica = await asyncio.to_thread(spawn_replica, env, tmp_path)
    try:
        async with httpx.AsyncClient(base_url=replica.url, timeout=15) as client:
            for path in ("/health", "/ready", "/live", "/metrics"):
                assert (await client.get(path)).status_code == 200
            await asyncio.sleep(0.5)
            probes = [line for line in log_lines(replica) if line["logger"] == "webedt.access"]
            assert probes == [], probes  # successful probes: DEBUG only

            before = len(replica.log().splitlines())
            await asyncio.to_thread(stop_postgres, own_postgres)

            async def health(status: int) -> bool:
                return (await client.get("/health")).status_code == status

            await wait_until(lambda: health(503), 10, "/health to say 503")
            await asyncio.sleep(4)
            await asyncio.to_thread(start_postgres, own_postgres)
            await wait_until(lambda: health(200), 30, "/health to say 200 again")
            await asyncio.sleep(2)
            metrics = (await client.get("/metrics")).text
    finally:
        replica.stop()
    during = log_lines(replica, before)
    text = "\n".join(replica.log().splitlines()[before:])
    assert "Traceback" not in text, text
    # Access lines are per request (a failed probe is logged, as it should be); the rest is not.
    service_lines = [line for line in during if line["logger"] != "webedt.access"]
    warnings = [line for line in service_lines if line["level"] in ("WARNING", "ERROR", "CRITICAL")]
    assert len(warnings) == 1, text
    assert warnings[0]["message"].startswith("database unavailable"), warnings
    ended = [line for line in service_lines if line["message"].startswith("database available again")]
    assert len(ended) == 1 and ended[0]["level"] == "INFO", text
    assert any(line["logger"] == "webedt.access" and " 503" in line["message"] for line in during)
    assert re.search(r"^webedt_db_outages_total 1\.0$", metrics, re.M), metrics
    assert re.search(r"^webedt_db_unavailable_errors_total [1-9]", metrics, re.M), metrics
