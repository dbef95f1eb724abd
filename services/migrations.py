"""Schema migrations: numbered plain-SQL files in `migrations/`, applied once each, in order.

They run under a PostgreSQL advisory lock so that replicas starting together on an empty
database apply each file exactly once, and every applied file is recorded with a SHA-256
checksum: an applied file that was edited afterwards stops start-up.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from services import locks
from services.config import PROJECT_ROOT
from services.db import queries

MIGRATIONS_DIR = PROJECT_ROOT / "migrations"
FILE_PATTERN = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Comments and statement separators: a file holding only these has nothing to run.
_NOT_SQL = re.compile(r"--[^\n]*|/\*.*?\*/|;|\s+", re.DOTALL)

log = logging.getLogger(__name__)


class MigrationError(Exception):
    """The migrations on disk and in the database disagree."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    @property
    def empty(self) -> bool:
        """No statement yet (a fresh `db new` file): PostgreSQL answers such a script with an
        empty response, which asyncpg cannot read, so it is never sent."""
        return not _NOT_SQL.sub("", self.path.read_text())


@dataclass(frozen=True)
class MigrationState:
    migration: Migration
    applied: bool
    checksum_matches: bool


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files in version order; a malformed name or a repeated number is an error."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = FILE_PATTERN.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_lowercase_name.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{path.name}: version {version} is used by {found[version].path.name} too")
        found[version] = Migration(version, path.stem, path)
    return [found[v] for v in sorted(found)]


async def _applied(conn: asyncpg.Connection) -> dict[int, str]:
    # The bookkeeping table is created by queries/schema_migrations.sql, so it exists before any.
    await queries.schema_migrations.create_schema_migrations(conn)
    return {row["version"]: row["checksum"] async for row in queries.schema_migrations.list_applied_migrations(conn)}


def _check_applied(migrations: list[Migration], applied: dict[int, str]) -> None:
    known = {m.version for m in migrations}
    for migration in migrations:
        recorded = applied.get(migration.version)
        if recorded is not None and recorded != migration.checksum:
            raise MigrationError(
                f"migration {migration.path.name} was edited after it was applied "
                f"(checksum {migration.checksum[:12]} differs from the recorded {recorded[:12]}); "
                "restore the file and put the change in a new migration"
            )
    unknown = sorted(set(applied) - known)
    if unknown:
        raise MigrationError(f"the database has migrations this code does not know: {unknown}")


async def migrate(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every pending migration; return the names applied (empty when up to date)."""
    migrations = discover(directory)
    conn = await asyncpg.connect(dsn)
    try:
        await queries.database.wait_advisory_lock(conn, key=locks.MIGRATIONS)
        try:
            applied = await _applied(conn)
            _check_applied(migrations, applied)
            done = []
            for migration in migrations:
                if migration.version in applied:
                    continue
                if migration.empty:
                    # Later ones wait too, so that migrations are always applied in their order.
                    log.warning(
                        "migration %s holds no SQL yet: it and any later ones are not applied until it does",
                        migration.path.name,
                    )
                    break
                async with conn.transaction():
                    await conn.execute(migration.path.read_text())
                    await queries.schema_migrations.record_migration(
                        conn, version=migration.version, name=migration.name, checksum=migration.checksum
                    )
                done.append(migration.name)
            return done
        finally:
            await queries.database.release_advisory_lock(conn, key=locks.MIGRATIONS)
    finally:
        await conn.close()


async def status(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[MigrationState]:
    """Each migration on disk, whether it is applied and whether its checksum still matches."""
    migrations = discover(directory)
    conn = await asyncpg.connect(dsn)
    try:
        applied = await _applied(conn)
    finally:
        await conn.close()
    return [
        MigrationState(m, m.version in applied, applied.get(m.version, m.checksum) == m.checksum) for m in migrations
    ]


def new_file(name: str, directory: Path = MIGRATIONS_DIR) -> Path:
    """Create the next numbered, empty migration file called `name`."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    if not slug:
        raise MigrationError("a migration needs a name made of letters or digits")
    migrations = discover(directory)
    version = (migrations[-1].version + 1) if migrations else 1
    path = directory / f"{version:04d}_{slug}.sql"
    path.write_text(f"-- {name}\n")
    return path
