"""services/clock.py: the one way timestamps are written."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

from services.clock import iso, now_iso


def test_iso_writes_utc_with_milliseconds_and_z() -> None:
    assert iso(datetime(2026, 3, 4, 5, 6, 7, 891234, tzinfo=UTC)) == "2026-03-04T05:06:07.891Z"
    # Another zone is converted, and a value without a zone (PyGithub's) is read as UTC.
    assert iso(datetime(2026, 3, 4, 7, 6, 7, tzinfo=timezone(timedelta(hours=2)))) == "2026-03-04T05:06:07.000Z"
    assert iso(datetime(2026, 3, 4, 5, 6, 7)) == "2026-03-04T05:06:07.000Z"
    assert iso(None) is None


def test_iso_with_whole_seconds_for_github_shapes() -> None:
    assert iso(datetime(2026, 3, 4, 5, 6, 7, 891234, tzinfo=UTC), "seconds") == "2026-03-04T05:06:07Z"


def test_now_iso_is_the_current_time_in_that_form() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    stamp = now_iso()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)
    assert before <= datetime.fromisoformat(stamp.replace("Z", "+00:00")) <= datetime.now(UTC)
