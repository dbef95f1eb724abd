"""`server.py db import-original`: move a running WebEDT installation in from the original server.

Reads the original's PostgreSQL (its tables as CONTRACT.md section 3 "Database schema"
describes them) over a read-only connection, inside one REPEATABLE READ snapshot, and writes
people, login sessions, credentials, chat sessions, messages and events into this server's
database:

- People keep their id, e-mail (trimmed and lower-cased as registration stores it), bcrypt hash
  (the old password logs in; services/auth upgrades the hash on first login; any other hash is
  replaced by NO_PASSWORD and the person reported), settings, admin flag and creation time. Of
  e-mails equal in that form the oldest person is kept and the others are reported. Claude and
  GitHub tokens are encrypted on the way in (services/secrets), never logged or printed.
- Login sessions: the original's session id is the cookie token, stored as its SHA-256 like
  every token here, with its expiry (`infinity`: this server's session lifetime); expired ones
  are left out. Rows whose id is empty are never read, only counted and reported.
- Each chat session is imported with its new messages and events in ONE transaction together
  with its bookkeeping row (`import_original`), so a killed import never leaves a session half
  imported, and the next run continues after the last session committed. Events get new ids
  from this server's sequence in the original's order; the first of each upstream uuid within a
  session is kept, repeats are left out and counted.

A second run brings only what is new: people and sessions not seen before, and messages and
events after each session's watermarks. A row the original changed since the last import is
updated here only if nobody changed it here meanwhile (fingerprints); otherwise, like an id or
e-mail that already belongs to something else here, it is reported as a conflict and left alone.
Memory stays bounded: every table is read in keyset batches and written with batched inserts.

The package stands apart from the runtime services (tests/test_layers.py: nothing in `services/`
or `handlers/` imports it): `server.py db import-original` is its only caller. `source.py` reads
the original, `writer.py` writes here, `report.py` counts; the SQL of both sides lives beside
them (`original.sql`, `import_original.sql`).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import asyncpg

from importer.report import Report
from importer.source import CONNECTION_ERRORS, ImportRefused, check_source_schema, connect_source, first_line
from importer.writer import NO_PASSWORD, Importer, servable_session_id
from services import locks, migrations
from services.db import init_connection, queries
from services.secrets import SecretBox

__all__ = [
    "CONNECTION_ERRORS",
    "NO_PASSWORD",
    "ImportRefused",
    "Report",
    "connect_source",
    "first_line",
    "run",
    "servable_session_id",
]


async def run(
    target_dsn: str,
    source_url: str,
    box: SecretBox,
    *,
    dry_run: bool = False,
    progress_seconds: float = 1.0,
    stream: TextIO = sys.stderr,
) -> Report:
    """Import from `source_url` into `target_dsn` (migrated first) and return the report.

    ImportRefused before anything is written when the source cannot be read. A dry run does the
    whole import in one transaction and rolls it back.
    """
    started = time.monotonic()
    source = await connect_source(source_url)
    try:
        other_tables = await check_source_schema(source)
        await migrations.migrate(target_dsn)
        target = await asyncpg.connect(target_dsn, server_settings={"timezone": "UTC"})
        try:
            await init_connection(target)
            if not await queries.database.try_advisory_lock(target, key=locks.IMPORT_ORIGINAL):
                raise ImportRefused("another import into this database is running")
            try:
                report = Report(dry_run=dry_run)
                async with source.transaction(isolation="repeatable_read", readonly=True):
                    importer = Importer(source, target, box, report, progress_seconds, stream)
                    if dry_run:
                        transaction = target.transaction()
                        await transaction.start()
                        try:
                            await importer.run(other_tables)
                        finally:
                            await transaction.rollback()
                    else:
                        await importer.run(other_tables)
            finally:
                await queries.database.release_advisory_lock(target, key=locks.IMPORT_ORIGINAL)
        finally:
            await target.close()
    finally:
        await source.close()
    report.seconds = time.monotonic() - started
    return report
