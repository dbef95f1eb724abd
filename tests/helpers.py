"""Test helpers: start the app in-process or as a separate server process, sign people up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import tornado.netutil

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ORIGIN = "http://localhost:5173"
PASSWORD = "correct horse battery"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_env(database_url: str, **overrides: Any) -> dict[str, str]:
    """Environment for a server under test: fast bcrypt, loopback fakes, short timers."""
    env = {
        "NODE_ENV": "test",
        "DATABASE_URL": database_url,
        "SESSION_SECRET": "test-session-secret-0123456789abcdef",
        "ALLOWED_ORIGINS": ORIGIN,
        "BCRYPT_ROUNDS": "4",
        "CLAUDE_API_BASE_URL": "http://127.0.0.1:9",
        "CLAUDE_OAUTH_TOKEN_URL": "http://127.0.0.1:9/v1/oauth/token",
        "GITHUB_API_URL": "http://127.0.0.1:9",
        "GITHUB_OAUTH_URL": "http://127.0.0.1:9",
        "CLAUDE_SYNC_ENABLED": "false",
        # A server not pointed at a fake upstream never adopts another test's runs (it would drive
        # them against nothing); claude_env and managed_env set the short interval their tests need.
        "RUN_ADOPT_INTERVAL_SECONDS": "3600",
        "LOG_LEVEL": "WARNING",
        # The suite signs hundreds of people up from 127.0.0.1; tests of the limit set their own.
        "REGISTER_MAX_PER_IP": "1000000",
    }
    env.update({key: str(value) for key, value in overrides.items()})
    return env


test_env.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@dataclass
class TestServer:
    __test__ = False  # a fixture value, not a test class
    url: str
    ctx: Any
    port: int


@contextlib.asynccontextmanager
async def start_app(env: dict[str, str]) -> AsyncIterator[TestServer]:
    """The app in this process on a loopback port, with its own pool and background services."""
    import server as server_module
    from handlers.app import make_app
    from handlers.connection import make_http_server
    from services.config import load_config

    config = load_config(env)
    ctx = await server_module.open_context(config)
    await server_module.start_background(ctx)
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]
    http_server = make_http_server(make_app(ctx), config)
    http_server.add_sockets(sockets)
    try:
        yield TestServer(url=f"http://127.0.0.1:{port}", ctx=ctx, port=port)
    finally:
        ctx.draining = True
        http_server.stop()
        await server_module.stop_background(ctx)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(http_server.close_all_connections(), 5)
        await ctx.pool.close()
        ctx.close_executors()


@dataclass
class Replica:
    """A server started as its own process (`python server.py`), as in production."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)


def spawn_replica(env: dict[str, str], log_dir: Path, wait: bool = True) -> Replica:
    """Start `server.py` with `env` on a free loopback port; wait until /health answers."""
    port = free_port()
    full_env = {key: value for key, value in os.environ.items() if not key.startswith(("DATABASE_URL", "PORT"))}
    full_env.update(env)
    full_env.update({"PORT": str(port), "HOST": "127.0.0.1"})
    log_path = log_dir / f"replica-{port}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "server.py"],
            cwd=PROJECT_ROOT,
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    replica = Replica(process, f"http://127.0.0.1:{port}", log_path)
    if wait:
        wait_healthy(replica)
    return replica


@contextlib.asynccontextmanager
async def running_replicas(env: dict[str, str], log_dir: Path, count: int = 2) -> AsyncIterator[list[Replica]]:
    """`count` replicas (`python server.py`) on `env`, stopped with SIGTERM afterwards. Started in
    threads: waiting for them must not block the fakes, which run on this loop."""
    started = list(await asyncio.gather(*(asyncio.to_thread(spawn_replica, env, log_dir) for _ in range(count))))
    try:
        yield started
    finally:
        for replica in started:
            await asyncio.to_thread(replica.stop, signal.SIGTERM, 15)


def wait_healthy(replica: Replica, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if replica.process.poll() is not None:
            raise AssertionError(f"server exited with {replica.process.returncode}:\n{replica.log()}")
        try:
            if httpx.get(f"{replica.url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    replica.stop(signal.SIGKILL)
    raise AssertionError(f"server did not become healthy:\n{replica.log()}")


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{secrets.token_hex(6)}@example.com"


async def register(client: httpx.AsyncClient, email: str | None = None, password: str = PASSWORD) -> dict[str, Any]:
    """Register (and so log in) a new person with `client`; returns the user payload."""
    response = await client.post("/api/auth/register", json={"email": email or unique_email(), "password": password})
    assert response.status_code == 201, response.text
    return response.json()["data"]["user"]
