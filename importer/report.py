"""What an import did: counts per table, the rows it reported, and its progress lines."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from importer.source import REQUIRED_COLUMNS

REPORT_LIST_MAX = 200  # entries listed per kind in the report; the totals count them all


@dataclass
class TableCounts:
    """What happened to the rows of one table of the original."""

    total: int = 0
    read: int = 0
    imported: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, amount: int = 1) -> None:
        self.extra[key] = self.extra.get(key, 0) + amount

    def as_json(self) -> dict[str, int]:
        return {
            "total": self.total,
            "read": self.read,
            "imported": self.imported,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "skipped": self.skipped,
            **self.extra,
        }


@dataclass
class Report:
    """The final report: counts per table, tables not carried, conflicts and skipped rows."""

    dry_run: bool
    tables: dict[str, TableCounts] = field(default_factory=lambda: {name: TableCounts() for name in REQUIRED_COLUMNS})
    not_carried: dict[str, int] = field(default_factory=dict)
    other_tables: dict[str, int] = field(default_factory=dict)  # unknown to the contract; estimated rows
    conflicts: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    conflict_count: int = 0
    skipped_count: int = 0
    email_variants: list[dict[str, Any]] = field(default_factory=list)
    cannot_log_in: list[dict[str, str]] = field(default_factory=list)
    cannot_log_in_count: int = 0
    seconds: float = 0.0

    def conflict(self, table: str, row_id: str, reason: str) -> None:
        self.conflict_count += 1
        if len(self.conflicts) < REPORT_LIST_MAX:
            self.conflicts.append({"table": table, "id": row_id, "reason": reason})

    def skip(self, table: str, row_id: str, reason: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < REPORT_LIST_MAX:
            self.skipped.append({"table": table, "id": row_id, "reason": reason})

    def no_login(self, user_id: str, reason: str) -> None:
        """A person carried who cannot log in with a password here."""
        self.cannot_log_in_count += 1
        if len(self.cannot_log_in) < REPORT_LIST_MAX:
            self.cannot_log_in.append({"id": user_id, "reason": reason})

    def as_json(self) -> dict[str, Any]:
        return {
            "dryRun": self.dry_run,
            "seconds": round(self.seconds, 3),
            "tables": {name: counts.as_json() for name, counts in self.tables.items()},
            "tablesNotCarried": self.not_carried,
            "otherTablesNotCarried": self.other_tables,
            "emailCaseVariants": self.email_variants,
            "cannotLogInCount": self.cannot_log_in_count,
            "cannotLogIn": self.cannot_log_in,
            "conflictCount": self.conflict_count,
            "conflicts": self.conflicts,
            "skippedCount": self.skipped_count,
            "skipped": self.skipped,
        }

    def as_text(self) -> str:
        lines = [
            "Import from the original" + (" (dry run: nothing was written)" if self.dry_run else ""),
            f"{'table':<15}{'total':>10}{'imported':>10}{'updated':>9}{'unchanged':>11}{'skipped':>9}  other",
        ]
        for name, c in self.tables.items():
            other = ", ".join(f"{key} {value}" for key, value in c.extra.items())
            lines.append(
                f"{name:<15}{c.total:>10}{c.imported:>10}{c.updated:>9}{c.unchanged:>11}{c.skipped:>9}  {other}"
            )
        if self.not_carried:
            lines.append(
                "tables not carried: " + ", ".join(f"{name} ({rows} rows)" for name, rows in self.not_carried.items())
            )
        if self.other_tables:
            lines.append(
                "other tables not carried: "
                + ", ".join(f"{name} (about {rows} rows)" for name, rows in self.other_tables.items())
            )
        for variant in self.email_variants:
            lines.append(
                f"e-mail case variants of {variant['email']}: kept {variant['kept']}, left out "
                + ", ".join(variant["leftOut"])
            )
        for title, entries, count in (
            ("conflicts", self.conflicts, self.conflict_count),
            ("skipped", self.skipped, self.skipped_count),
            ("people who cannot log in with a password", self.cannot_log_in, self.cannot_log_in_count),
        ):
            lines.append(f"{title}: {count}" + (f" (first {len(entries)} listed)" if count > len(entries) else ""))
            lines.extend(f"  {e.get('table', 'users')} {e['id']}: {e['reason']}" for e in entries)
        lines.append(f"took {self.seconds:.1f} s")
        return "\n".join(lines)


class Progress:
    """One progress line per table on stderr: rows done / total and rows per second."""

    def __init__(self, table: str, total: int, every_seconds: float, stream: TextIO) -> None:
        self.table, self.total, self.every, self.stream = table, total, every_seconds, stream
        self.done = 0
        self.started = self.last = time.monotonic()

    def tick(self, rows: int) -> None:
        self.done += rows
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._write(now)

    def finish(self) -> None:
        self._write(time.monotonic())

    def _write(self, now: float) -> None:
        rate = self.done / max(now - self.started, 1e-6)
        print(f"{self.table}: {self.done}/{self.total} rows ({rate:,.0f} rows/s)", file=self.stream, flush=True)
