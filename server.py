"""Entry point: config -> migrations -> app -> background services -> listen -> drain.

python server.py                      start the server
python server.py db migrate|status|shell
python server.py db new NAME
python server.py db import-original --from URL [--dry-run] [--json]
python server.py admin list-users|create-user|set-admin|delete-user ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import getpass
import logging
import resource
import signal
import sys
from collections.abc import Awaitable, Callable

import orjson
import uvloop

from handlers.app import make_app
from handlers.connection import make_http_server
from services import db, migrations
from services.agents.claude_remote.sync import session_sync
from services.agents.driver import RunDriver
from services.cleanup import orphan_cleanup
from services.config import Config, ConfigError, load_config
from services.context import AppContext
from services.hub import Hub
from services.logs import setup_logging

log = logging.getLogger("webedt.server")
# After the streams: how long requests still being answered may take before connections close.
CLOSE_CONNECTIONS_SECONDS = 10.0


def raise_open_files_limit() -> None:
    """Containers start with a 1024 soft limit; every SSE stream holds a descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))


async def open_context(config: Config) -> AppContext:
    """Database (embedded when DATABASE_URL is unset), migrations, pool and context."""
    dsn = await asyncio.get_running_loop().run_in_executor(None, db.database_url, config)
    applied = await migrations.migrate(dsn)
    for name in applied:
        log.info("applied migration %s", name)
    pool = await db.create_pool(
        dsn,
        config.db_pool_min,
        config.db_pool_max,
        lock_timeout=config.db_lock_timeout_seconds,
        idle_transaction_timeout=config.db_idle_transaction_timeout_seconds,
        acquire_timeout=config.db_acquire_timeout_seconds,
    )
    return AppContext.create(config, pool, dsn)


async def start_background(ctx: AppContext) -> None:
    """Start the long-lived services: the event hub, the run driver, the sync and the orphan cleanup."""
    ctx.gauges.register("webedt_db_pool_connections", "Connections open in the pool", ctx.pool.get_size)
    ctx.gauges.register("webedt_db_pool_idle_connections", "Idle connections in the pool", ctx.pool.get_idle_size)
    hub = ctx.hub = Hub(ctx)
    await hub.start()
    ctx.gauges.register("webedt_hub_subscribers", "Streams in the event hub", lambda: hub.stats()["subscribers"])
    runs = ctx.runs = RunDriver(ctx)
    ctx.gauges.register("webedt_active_runs", "Runs this process drives", lambda: len(runs.tasks))
    await runs.start()  # adopts running sessions whose driver is gone, then drives them
    cleanup = ctx.cleanup = orphan_cleanup(ctx)
    await cleanup.start()  # finishes or hands to the run driver sessions whose driver is long gone
    if ctx.config.claude_sync_enabled:
        sync = ctx.sync = session_sync(ctx)
        await sync.start()


async def hand_over(ctx: AppContext) -> None:
    """The first half of a drain: stop the background work and hand this replica's runs to the
    others at once (their leases released); the hub stays, so open streams keep being fed from the
    shared log while other replicas drive their runs. Session-list streams end (they reconnect)."""
    if ctx.sync is not None:
        await ctx.sync.stop()
    if ctx.cleanup is not None:
        await ctx.cleanup.stop()
    if ctx.runs is not None:
        await ctx.runs.stop()  # releases this replica's runs so another one adopts them at once
    if ctx.hub is not None:
        ctx.hub.end_list_streams()


async def wait_for_streams(ctx: AppContext, seconds: float) -> None:
    """Wait until no session stream is open any more (each ends with its run), at most `seconds`."""
    deadline = asyncio.get_running_loop().time() + seconds
    while ctx.hub is not None and ctx.hub.stats()["sessionSubscribers"] > 0:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            log.warning("grace period over; ending %d open streams", ctx.hub.stats()["sessionSubscribers"])
            return
        await asyncio.sleep(min(0.1, remaining))


async def stop_background(ctx: AppContext, grace_seconds: float = 0.0) -> None:
    """Stop what start_background started, in reverse order; with `grace_seconds`, the open
    streams are fed (by the hub) until their runs end, that long at most, before the hub stops."""
    await hand_over(ctx)
    if grace_seconds > 0:
        await wait_for_streams(ctx, grace_seconds)
    if ctx.hub is not None:
        await ctx.hub.stop()  # ends every stream still open ("draining")


# Collections of the youngest generation at most this often (allocations minus frees); the
# default 700 runs one every few requests, and a full collection walks every object.
GC_THRESHOLDS = (50_000, 20, 100)


def settle_memory() -> None:
    """After start-up: move everything allocated so far (modules, config, pool, app) out of the
    collector's sight for good, and collect less often. A full collection then walks only what
    requests and streams allocated, which cut the fan-out p99 at 1,000 viewers from about 127 to
    45 ms (issue 23); the few short cycles requests make are still collected."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def serve(config: Config) -> None:
    ctx = await open_context(config)
    await start_background(ctx)
    app = make_app(ctx)
    server = make_http_server(app, config)
    settle_memory()
    server.listen(config.port, address=config.host)
    log.info("listening on port %s (%s)", config.port, config.node_env)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    log.info("shutting down: streams fed until their runs end, for up to %.0f s", config.shutdown_grace_seconds)
    ctx.draining = True
    server.stop()
    await stop_background(ctx, config.shutdown_grace_seconds)
    try:
        # What is left is idle keep-alive connections and requests finishing their answers.
        await asyncio.wait_for(server.close_all_connections(), timeout=CLOSE_CONNECTIONS_SECONDS)
    except TimeoutError:
        log.warning("closing the remaining connections")
    await ctx.pool.close()
    ctx.close_executors()
    log.info("stopped")


# ---- command line -----------------------------------------------------------------------------


async def _with_pool(config: Config, action: Callable[[AppContext], Awaitable[int]]) -> int:
    ctx = await open_context(config)
    try:
        return await action(ctx)
    finally:
        await ctx.pool.close()
        ctx.close_executors()


def command_db(config: Config, args: argparse.Namespace) -> int:
    if args.db_command == "new":
        path = migrations.new_file(" ".join(args.name))
        print(f"created {path.relative_to(migrations.PROJECT_ROOT)}")
        return 0
    dsn = db.database_url(config)
    if args.db_command == "import-original":
        return command_import_original(config, dsn, args)
    if args.db_command == "migrate":
        applied = asyncio.run(migrations.migrate(dsn))
        print("\n".join(f"applied {name}" for name in applied) or "database is up to date")
        return 0
    if args.db_command == "status":
        for state in asyncio.run(migrations.status(dsn)):
            mark = "applied" if state.applied else "pending"
            if not state.applied and state.migration.empty:
                mark = "pending, empty (holds no SQL yet)"
            if state.applied and not state.checksum_matches:
                mark = "EDITED AFTER APPLYING"
            print(f"{state.migration.path.name:<40} {mark}")
        return 0
    if args.db_command == "shell":
        return db.run_psql(dsn)
    return 2


def command_import_original(config: Config, dsn: str, args: argparse.Namespace) -> int:
    """Import the original server's database; the report on stdout, progress on stderr."""
    import importer
    from services.secrets import SecretBox

    box = SecretBox(config.encryption_key or config.session_secret)
    try:
        report = asyncio.run(
            importer.run(dsn, args.source, box, dry_run=args.dry_run, progress_seconds=args.progress_seconds)
        )
    except importer.ImportRefused as exc:
        print(f"import-original: {exc}", file=sys.stderr)
        return 2
    except importer.CONNECTION_ERRORS as exc:
        # A database went away mid-way: every chat session committed so far is complete.
        print(
            f"import-original: stopped, a database connection failed ({importer.first_line(exc)}); "
            "what was imported is kept, run the command again to continue",
            file=sys.stderr,
        )
        return 1
    if args.json:
        print(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(report.as_text())
    return 0


def command_config_docs() -> int:
    """Regenerate the settings' documentation from the Config fields (needs no configuration)."""
    from services import config_docs

    changed = config_docs.write()
    print(f"rewrote {', '.join(changed)}" if changed else "README.md and .env.example are up to date")
    return 0


def command_admin(config: Config, args: argparse.Namespace) -> int:
    from services import admin_cli

    if args.admin_command == "create-user":
        password = sys.stdin.readline().rstrip("\n") if not sys.stdin.isatty() else getpass.getpass("Password: ")
        return asyncio.run(_with_pool(config, lambda ctx: admin_cli.create_user(ctx, args.email, password, args.admin)))
    if args.admin_command == "set-admin":
        return asyncio.run(_with_pool(config, lambda ctx: admin_cli.set_admin(ctx, args.email, not args.revoke)))
    if args.admin_command == "list-users":
        return asyncio.run(_with_pool(config, admin_cli.list_users))
    if args.admin_command == "delete-user":
        return asyncio.run(_with_pool(config, lambda ctx: admin_cli.delete_user(ctx, args.email)))
    return 2


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="server.py", description="WebEDT internal API server")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="start the server (the default)")

    db_parser = commands.add_parser("db", help="database migrations and shell")
    db_commands = db_parser.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("migrate", help="apply pending migrations")
    db_commands.add_parser("status", help="list migrations and whether they are applied")
    db_commands.add_parser("shell", help="psql onto the configured database")
    imp = db_commands.add_parser("import-original", help="import a running WebEDT database of the original server")
    imp.add_argument("--from", dest="source", required=True, metavar="URL", help="postgresql:// URL of the original")
    imp.add_argument("--dry-run", action="store_true", help="do everything, then roll back: report only")
    imp.add_argument("--json", action="store_true", help="print the report as JSON")
    imp.add_argument(
        "--progress-seconds", type=float, default=1.0, help="seconds between progress lines on stderr (default 1)"
    )
    new = db_commands.add_parser("new", help="create the next numbered migration file")
    new.add_argument("name", nargs="+")

    config_parser = commands.add_parser("config", help="the settings' documentation")
    config_commands = config_parser.add_subparsers(dest="config_command", required=True)
    config_commands.add_parser("docs", help="rewrite the README's configuration table and .env.example")

    admin = commands.add_parser("admin", help="manage users")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True)
    create = admin_commands.add_parser("create-user", help="create a user; the password is read from stdin")
    create.add_argument("--email", required=True)
    create.add_argument("--admin", action="store_true")
    set_admin = admin_commands.add_parser("set-admin", help="give (or with --revoke take) the admin flag")
    set_admin.add_argument("email")
    set_admin.add_argument("--revoke", action="store_true")
    admin_commands.add_parser("list-users", help="list every user")
    delete = admin_commands.add_parser("delete-user", help="delete a user and everything they own")
    delete.add_argument("email")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "config":
        return command_config_docs()
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.production)
    try:
        if args.command == "db":
            return command_db(config, args)
        if args.command == "admin":
            return command_admin(config, args)
        raise_open_files_limit()
        uvloop.run(serve(config))
        return 0
    except migrations.MigrationError as exc:
        print(f"migration error: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
