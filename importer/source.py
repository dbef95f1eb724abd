"""The original server's database, read: its schema, a read-only connection, keyset reads.

The original's tables and columns are those of CONTRACT.md section 3.2 ("Tables": users,
sessions, chat_sessions, messages, events, and the live-chat, workspace and orchestrator tables
this server has no use for). Its reads are in `importer/original.sql`, this import's writes and
bookkeeping in `importer/import_original.sql`; both load here, apart from the runtime's `queries/`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg

from services.db import init_connection, load_queries

# `import_queries.original.*` reads the original; `import_queries.import_original.*` writes here.
import_queries = load_queries(Path(__file__).resolve().parent)

# The tables and columns of the original this import reads; anything else it does not carry.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "users": (
        "id", "email", "display_name", "password_hash", "github_id", "github_access_token", "claude_auth",
        "preferred_provider", "image_resize_max_dimension", "voice_command_keywords",
        "stop_listening_after_submit", "default_landing_page", "preferred_model", "chat_verbosity_level",
        "is_admin", "created_at",
    ),
    "sessions": ("id", "user_id", "expires_at"),
    "chat_sessions": (
        "id", "user_id", "session_path", "repository_owner", "repository_name", "user_request", "status",
        "repository_url", "base_branch", "branch", "provider", "provider_session_id", "remote_session_id",
        "remote_web_url", "total_cost", "issue_number", "auto_commit", "locked", "created_at", "completed_at",
        "deleted_at", "worker_last_activity",
    ),
    "messages": ("id", "chat_session_id", "type", "content", "images", "timestamp"),
    "events": ("id", "chat_session_id", "event_data", "timestamp"),
}  # fmt: skip
# The original's other tables (CONTRACT.md 3.2 lists them: live chat, workspace presence and
# events, the orchestrator), which this server does not have.
KNOWN_NOT_CARRIED = (
    "live_chat_messages",
    "workspace_presence",
    "workspace_events",
    "orchestrator_jobs",
    "orchestrator_cycles",
    "orchestrator_tasks",
)


# A database connection lost mid-way (the import stops; the next run continues).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
)


class ImportRefused(Exception):
    """Nothing can be imported: the --from database is unreachable or not the original's, or
    another import is running."""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else exc.__class__.__name__)[:300]


async def connect_source(url: str) -> asyncpg.Connection:
    """A read-only, UTC connection to the original; ImportRefused when it cannot be opened."""
    try:
        conn = await asyncpg.connect(
            url,
            timeout=10,
            server_settings={
                "default_transaction_read_only": "on",
                "timezone": "UTC",
                "application_name": "webedt-import-original",
            },
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        raise ImportRefused(f"cannot connect to the original database: {first_line(exc)}") from None
    await init_connection(conn)
    return conn


async def check_source_schema(source: asyncpg.Connection) -> list[str]:
    """The original's other tables; ImportRefused when a table or column this import reads is missing."""
    present: dict[str, set[str]] = {}
    async for row in import_queries.original.list_schema_columns(source):
        present.setdefault(row["table_name"], set()).add(row["column_name"])
    missing = [
        f"{table}.{column}"
        for table, columns in REQUIRED_COLUMNS.items()
        for column in columns
        if column not in present.get(table, set())
    ]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ImportRefused(f"the --from database does not have the original's schema (missing {shown})")
    if "uuid" in present.get("events", set()) and "schema_migrations" in present:
        raise ImportRefused("the --from database is one of this server's, not the original's")
    tables = [r["table_name"] async for r in import_queries.original.list_schema_tables(source)]
    return [t for t in tables if t not in REQUIRED_COLUMNS]


async def batches(
    read: Callable[..., AsyncIterator[asyncpg.Record]], conn: asyncpg.Connection, limit: int, **kwargs: Any
) -> AsyncIterator[list[asyncpg.Record]]:
    """Keyset batches of a read query ordered by `id`."""
    after: Any = kwargs.pop("after_id")
    while True:
        rows = [r async for r in read(conn, after_id=after, limit=limit, **kwargs)]
        if not rows:
            return
        yield rows
        if len(rows) < limit:
            return
        after = rows[-1]["id"]


async def session_rows(
    open_cursor: Callable[..., Any], conn: asyncpg.Connection, size: int, chat_session_id: str, after_id: int
) -> AsyncIterator[list[asyncpg.Record]]:
    """One chat session's rows after `after_id`, in id order, `size` at a time from a cursor."""
    async with open_cursor(conn, chat_session_id=chat_session_id, after_id=after_id) as factory:
        cursor = await factory
        while rows := await cursor.fetch(size):
            yield rows
