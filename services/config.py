"""Configuration: one frozen object built from the environment at start-up.

python-dotenv reads `.env` first (without overriding real environment variables). A variable
`NAME_FILE` may point at a file that holds the value of `NAME` (Docker secrets). A wrong value
stops start-up with a `ConfigError` that names the variable.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import Field, dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from services.addresses import DEFAULT_TRUSTED_PROXIES, Network, parse_networks
from services.agents import registry
from services.settings import setting

PROJECT_ROOT = Path(__file__).resolve().parent.parent


# An IPv4 or IPv6 address (without brackets) or a host name, as Tornado's listen() takes it.
HOST_PATTERN = re.compile(r"[A-Za-z0-9.:-]+")


class ConfigError(Exception):
    """A configuration value is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Config:
    """Every setting the server reads, with its default and its help. Field names follow the
    environment variables; load_config reads each by its type (bool, int, float, Path, text)
    unless it has rules of its own there. To add a setting: add its field here with `setting()`
    and its help, then run `.venv/bin/python server.py config docs` (README table, `.env.example`)."""

    session_secret: str = setting(
        "",
        "Signs OAuth state and the `login_device` cookie, and derives the credential encryption key "
        "unless `ENCRYPTION_KEY` is set; 16 or more characters; required when `NODE_ENV=production` "
        "(development: generated once into `.data/session_secret`, so logins survive restarts).",
        section="Secrets",
        secret=True,
        fill_in=True,
        default_text="generated into `.data/session_secret` in development",
    )
    encryption_key: str = setting(
        "",
        "Key material for encrypting stored Claude and GitHub credentials; empty: derived from "
        "`SESSION_SECRET` (set it, so that rotating that one keeps stored tokens readable).",
        secret=True,
    )
    database_url: str = setting(
        "",
        "`postgresql://user:password@host:5432/db`; required in production; empty in development: "
        "an embedded PostgreSQL (`EMBEDDED_POSTGRES_DIR`).",
        secret=True,
        fill_in=True,
        default_text="embedded PostgreSQL",
    )
    github_client_secret: str = setting(
        "", "GitHub OAuth app client secret; empty: connecting GitHub is not configured.", secret=True
    )
    node_env: str = setting(
        "development",
        "`development`, `production` or `test`; `production` makes cookies `Secure`, logs JSON, and "
        "requires `DATABASE_URL` and `SESSION_SECRET`.",
        section="Server",
    )
    port: int = setting(
        3001,
        "Listen port (the Docker image sets 3001); `API_PORT`, when set, wins over `PORT` "
        "(compatibility with the server this one replaces).",
        also=("API_PORT",),
    )
    host: str = setting(
        "0.0.0.0", "Listen address: an IP address (`0.0.0.0` every IPv4 address, `::` every address) or a host name."
    )
    allowed_origins: tuple[str, ...] = setting(
        ("http://localhost:5173", "http://localhost:3000"),
        "Comma-separated origins for CORS (with credentials), the Origin check on state-changing "
        "requests, and OAuth return pages; the default in production is `https://webedt.etdofresh.com`.",
        default_text="`http://localhost:5173,http://localhost:3000` (production: `https://webedt.etdofresh.com`)",
    )
    log_level: str = setting("INFO", "`DEBUG`, `INFO`, `WARNING` or `ERROR`.")
    access_log_slow_seconds: float = setting(
        1.0,
        "A successful request at least this slow still gets its access line at INFO; quicker ones "
        "are DEBUG (see Architecture, Logs).",
    )
    shutdown_grace_seconds: float = setting(
        300.0,
        "After SIGTERM, how long open streams are still fed (from the shared log, while other "
        "replicas drive the runs) until their runs end; what is still open then is closed. The "
        "orchestrator's `stop_grace_period` must be longer.",
    )
    trusted_proxies: tuple[Network, ...] = setting(
        parse_networks(DEFAULT_TRUSTED_PROXIES),
        "Comma-separated addresses or CIDR ranges of the proxies (the website facade, Traefik) whose "
        "`X-Forwarded-For` / `X-Real-Ip` are believed (default: loopback and private ranges); the "
        "client is the address the nearest trusted proxy saw.",
    )
    header_timeout_seconds: float = setting(
        10.0,
        "Time a request has to send its line and headers, counted from a new connection or from the "
        "first byte of a kept-alive connection's next request; then the connection is closed.",
        minimum=0.1,
    )
    keepalive_timeout_seconds: float = setting(
        120.0,
        "How long an idle kept-alive connection stays open between requests; keep it above the "
        "proxy's own idle timeout for backend connections (Traefik: 90 s), or the proxy may reuse a "
        "connection just as it closes.",
        minimum=0.1,
    )
    body_timeout_seconds: float = setting(
        30.0,
        "Time a request has to send its body; then the connection is closed. Open streams are not affected.",
        minimum=0.1,
    )
    embedded_postgres_dir: Path = setting(
        PROJECT_ROOT / ".data" / "postgres",
        "Data folder of the embedded PostgreSQL used when `DATABASE_URL` is empty (relative: inside the project).",
        section="Database",
    )
    db_pool_min: int = setting(2, "Smallest number of pooled (asyncpg) connections per process.", minimum=1)
    db_pool_max: int = setting(
        10,
        "Largest number of pooled connections per process (times the replica count, it must stay "
        "under PostgreSQL's `max_connections`).",
        minimum=1,
    )
    # Bounds on waiting for the database (services/db.create_pool): for a row another connection
    # holds, for a connection of the pool, and how long a connection of ours may sit in an open
    # transaction before PostgreSQL ends it (a frozen process then lets its rows go).
    db_lock_timeout_seconds: float = setting(
        2.0,
        "Longest wait for a row or lock another connection holds (PostgreSQL `lock_timeout` of every "
        "pool connection, such as a stalled replica's transaction), and for a request's turn at a "
        'session row in this process; past it a 503 with `Retry-After` (see "Stalls and outages").',
        minimum=0.05,
    )
    db_acquire_timeout_seconds: float = setting(
        5.0, "Longest wait for a free pool connection; past it a 503.", minimum=0.05
    )
    db_idle_transaction_timeout_seconds: float = setting(
        10.0,
        "PostgreSQL ends a connection of this server that sits that long in an open transaction "
        "(`idle_in_transaction_session_timeout`), so a frozen replica lets its rows go; a Claude token "
        "refresh and the creation of the Managed Agents resources, which hold a row across an "
        "upstream call, get `CLAUDE_REQUEST_TIMEOUT_SECONDS` + 10 s instead.",
        minimum=1.0,
    )
    # Which backend new chat sessions run on; a session keeps the backend it started on.
    agent_backend: str = setting(
        "remote-sessions",
        "How new chat sessions run: `remote-sessions` (Claude Remote Sessions, each person's Claude "
        "login) or `managed-agents` (Anthropic's Managed Agents API, paid by the deployment's "
        '`ANTHROPIC_API_KEY`); see "Choosing the agent backend".',
        section="Agent backend",
    )
    anthropic_api_key: str = setting(
        "",
        "Anthropic API key that pays for Managed Agents runs; required with "
        "`AGENT_BACKEND=managed-agents`, and kept set while older Managed Agents sessions should still work.",
        secret=True,
    )
    managed_agents_api_base_url: str = setting("https://api.anthropic.com", "Managed Agents API base URL.", url=True)
    managed_agents_agent_id: str = setting(
        "",
        "An existing Managed Agents agent to use; empty: the server creates one, once for the "
        "deployment, and stores its id (table `managed_agents_resources`).",
    )
    managed_agents_environment_id: str = setting(
        "",
        "An existing Managed Agents environment to use; empty: created once for the deployment, like the agent.",
    )
    managed_agents_requests_per_minute: int = setting(
        300,
        "Upstream requests a minute one process may spend polling Managed Agents sessions (the "
        "organization's documented limit, 600, is shared by all replicas: give each replica its share).",
        minimum=1,
    )
    usage_monthly_budget_usd: float | None = setting(
        None,
        "Every person's monthly budget in US dollars (a month is a calendar month in UTC), unless an "
        "admin set their own (`PUT /api/admin/users/:id/budget`); empty: no budget. A run that would "
        "start over it is refused with a 402, and a Managed Agents run that crosses it mid-turn is "
        'interrupted (see "Usage and budgets").',
        section="Usage and budgets",
        default_text="empty (no budget)",
    )
    usage_budget_remote_sessions: bool = setting(
        False,
        "Whether budgets also apply to Remote Sessions runs (paid by each person's own Claude "
        "subscription; their usage is recorded either way): `true` or `false`.",
    )
    run_adopt_interval_seconds: float = setting(
        1.0,
        "How often each replica checks, with one query, for running sessions whose driver has died "
        "(its liveness lock in PostgreSQL is free) and carries them on.",
        section="Runs (every backend)",
        minimum=0.1,
    )
    run_idle_grace_seconds: float = setting(
        60.0,
        "How long a remote session may stay idle without the turn end that answers the run's last "
        "prompt before the run ends `completed` anyway (an upstream that never sends that end must "
        "not keep a run open for ever).",
        minimum=0.1,
    )
    run_lease_seconds: float = setting(
        30.0,
        "Heartbeat lease of a run; decides only for drivers without a liveness lock (a server of an "
        "older version during a rolling update, the orphan cleanup's brief claims).",
        minimum=1.0,
    )
    claude_request_timeout_seconds: float = setting(30.0, "Timeout of one upstream request.", minimum=0.1)
    claude_retry_window_seconds: float = setting(
        300.0, "How long a run retries upstream failures before it ends with an error.", minimum=0.1
    )
    orphan_session_timeout_minutes: int = setting(
        30, "When a run without a live driver counts as orphaned (minutes without its heartbeat).", minimum=1
    )
    orphan_cleanup_interval_minutes: int = setting(5, "How often the orphan cleanup looks, in minutes.", minimum=1)
    claude_environment_id: str = setting(
        "",
        "Claude environment of new remote sessions; empty: taken from the user's most recent remote session.",
        section="Claude Remote Sessions",
    )
    claude_api_base_url: str = setting("https://api.anthropic.com", "Claude Remote Sessions API base URL.", url=True)
    claude_default_model: str = setting("claude-opus-4-5-20251101", "Model of new remote sessions.")
    claude_oauth_token_url: str = setting(
        "https://console.anthropic.com/v1/oauth/token",
        "Claude OAuth token endpoint, where people's Claude credentials are refreshed.",
        url=True,
    )
    claude_poll_interval_ms: int = setting(
        2000, "How often a run polls upstream for events when it has no live event socket.", minimum=10
    )
    claude_upstream_push: str = setting(
        "auto",
        "`auto`: the driving replica follows each run over Claude's subscribe WebSocket, polling only "
        "while it is down; `off`: polling only.",
    )
    claude_organization_uuid: str = setting(
        "",
        "Claude organization, sent as `x-organization-uuid` and as `?organization_uuid=` on the event "
        "WebSocket; optional.",
    )
    claude_sync_enabled: bool = setting(
        True, "Background import of remote sessions started elsewhere (claude.ai): `true` or `false`."
    )
    claude_sync_interval_ms: int = setting(300_000, "Milliseconds between two sync cycles.", minimum=1000)
    claude_sync_limit: int = setting(50, "Remote sessions listed per user per sync cycle.", minimum=1)
    github_client_id: str = setting(
        "", "GitHub OAuth app client id (public; the secret is `GITHUB_CLIENT_SECRET`).", section="GitHub"
    )
    github_api_url: str = setting("https://api.github.com", "GitHub REST API base URL.", url=True)
    github_oauth_url: str = setting(
        "https://github.com", "GitHub web URL of the OAuth authorize and token pages.", url=True
    )
    github_repos_max: int = setting(1000, "Most repositories listed for one person.", minimum=1)
    workspace_dir: Path = setting(
        Path("/workspace"),
        "Git working copies, `<user id>/<session path>` (scratch: may vanish when a container is "
        "replaced; before migration 0005 `<session path>`, old folders can be deleted).",
        section="Files",
    )
    stream_lifetime_seconds: float = setting(
        0.0,
        "`0`: no cap (the website's chat page never reconnects a stream); a positive value closes "
        "every SSE stream after that long, for clients that reconnect with `Last-Event-ID`.",
        section="Streams",
    )
    sse_heartbeat_seconds: float = setting(15.0, "Heartbeat comment interval on every stream.", minimum=0.05)
    bcrypt_rounds: int = setting(
        12,
        "bcrypt cost factor of new password hashes (4 or more; tests use 4).",
        section="Passwords and logins",
        minimum=4,
    )
    login_max_failures_per_email: int = setting(
        5,
        "Failed logins per e-mail address within the window; past them login answers 429 with "
        "`Retry-After` (a browser that logged in to the account before is counted on its own, see Security notes).",
        minimum=1,
    )
    login_max_failures_per_ip: int = setting(
        20, "Failed logins per client address within the window; past them login answers 429.", minimum=1
    )
    login_failure_window_seconds: int = setting(900, "Length of the failed-login window, in seconds.", minimum=1)
    register_max_per_ip: int = setting(
        10,
        "Registration attempts per client address within the registration window; past them "
        "register answers 429 with `Retry-After`.",
        minimum=1,
    )
    register_window_seconds: int = setting(3600, "Length of the registration window, in seconds.", minimum=1)
    login_cache_seconds: float = setting(
        5.0,
        "How long a process answers from its remembered login-session lookup (login session and user "
        "row) without asking PostgreSQL; `0`: never remember. A logout, a password change, a deletion, "
        "an admin flag or any other change to a person or their login sessions drops their entries "
        "on every replica at once (see Security notes).",
    )
    build_commit_sha: str = setting(
        "unknown",
        "Commit the image was built from; reported by `/health`.",
        section="Build information (set by the Docker build arguments)",
    )
    build_timestamp: str = setting("unknown", "When the image was built (UTC, ISO 8601); reported by `/health`.")
    build_image_tag: str = setting("unknown", "Tag the image was pushed as; reported by `/health`.")

    @property
    def production(self) -> bool:
        return self.node_env == "production"

    @property
    def new_session_provider(self) -> str:
        """The `chat_sessions.provider` of sessions created now (AGENT_BACKEND)."""
        return registry.by_setting(self.agent_backend).name


def _default(name: str) -> Any:
    """The default of variable `name`: its Config field's (the one place defaults are written)."""
    return getattr(Config, name.lower())


def _read(env: dict[str, str], name: str) -> str | None:
    """The value of `name`, or the content of the file named by `name_FILE`."""
    file_name = env.get(f"{name}_FILE")
    if file_name:
        try:
            return Path(file_name).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE: cannot read {file_name}: {exc.strerror}") from exc
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def _text(env: dict[str, str], name: str) -> str:
    return _read(env, name) or _default(name)


def _number(env: dict[str, str], name: str, parse: type[int] | type[float], minimum: float) -> Any:
    raw = _read(env, name)
    if raw is None:
        return _default(name)
    try:
        value = parse(raw)
    except ValueError:
        kind = "a whole number" if parse is int else "a number"
        raise ConfigError(f"{name} must be {kind}, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _bool(env: dict[str, str], name: str) -> bool:
    raw = _read(env, name)
    if raw is None:
        return _default(name)
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _url(env: dict[str, str], name: str, schemes: tuple[str, ...] = ("http", "https")) -> str:
    raw = _text(env, name)
    parsed = urlparse(raw)
    if parsed.scheme not in schemes or not (parsed.netloc or parsed.query):
        raise ConfigError(f"{name} must be a URL starting with {' or '.join(schemes)}://, got {raw!r}")
    return raw.rstrip("/")


def _plain(env: dict[str, str], spec: Field[Any]) -> Any:
    """A setting read as its field's type says (the annotations are strings here)."""
    name = spec.name.upper()
    if spec.type == "bool":
        return _bool(env, name)
    if spec.type in ("int", "float"):
        return _number(env, name, int if spec.type == "int" else float, spec.metadata.get("minimum", 0))
    if spec.type == "Path":
        return Path(_read(env, name) or str(spec.default))
    if spec.metadata.get("url"):
        return _url(env, name)
    return _text(env, name)


def _origins(env: dict[str, str], production: bool) -> tuple[str, ...]:
    raw = _read(env, "ALLOWED_ORIGINS")
    if raw is None:
        return ("https://webedt.etdofresh.com",) if production else Config.allowed_origins
    origins = tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    for origin in origins:
        parsed = urlparse(origin)
        if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.path:
            raise ConfigError(f"ALLOWED_ORIGINS must list origins like https://example.com, got {origin!r}")
    return origins


def _development_secret(directory: Path) -> str:
    """A random secret generated once and kept beside the embedded data, so logins survive restarts."""
    path = directory / "session_secret"
    if path.exists():
        return path.read_text().strip()
    directory.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


def _choice(env: dict[str, str], name: str, allowed: tuple[str, ...], normal: Any = str.lower) -> str:
    """A setting that must be one of `allowed` (compared after `normal`)."""
    value = normal(_text(env, name))
    if value not in allowed:
        raise ConfigError(f"{name} must be {', '.join(allowed[:-1])} or {allowed[-1]}, got {value!r}")
    return value


def _port(env: dict[str, str]) -> int:
    raw = _read(env, "API_PORT") or _read(env, "PORT")
    if raw is None:
        return Config.port
    if not raw.isdigit() or not 0 <= int(raw) <= 65535:
        raise ConfigError(f"PORT must be a port number from 0 to 65535, got {raw!r}")
    return int(raw)


def _database_url(env: dict[str, str], production: bool) -> str:
    database_url = _read(env, "DATABASE_URL") or ""
    if database_url and urlparse(database_url).scheme not in ("postgres", "postgresql"):
        raise ConfigError("DATABASE_URL must be a postgresql:// URL")
    if not database_url and production:
        raise ConfigError("DATABASE_URL is required when NODE_ENV=production")
    return database_url


def _embedded_dir(env: dict[str, str]) -> Path:
    directory = Path(_read(env, "EMBEDDED_POSTGRES_DIR") or Config.embedded_postgres_dir)
    return directory if directory.is_absolute() else PROJECT_ROOT / directory


def _session_secret(env: dict[str, str], production: bool, embedded_dir: Path) -> str:
    session_secret = _read(env, "SESSION_SECRET")
    if session_secret is None:
        if production:
            raise ConfigError("SESSION_SECRET is required when NODE_ENV=production")
        session_secret = _development_secret(embedded_dir.parent)
    if len(session_secret) < 16:
        raise ConfigError("SESSION_SECRET must be at least 16 characters long")
    return session_secret


def _host(env: dict[str, str]) -> str:
    host = _text(env, "HOST")
    if not HOST_PATTERN.fullmatch(host):
        raise ConfigError(f"HOST must be an IP address or a host name, got {host!r}")
    return host


def _trusted_proxies(env: dict[str, str]) -> Any:
    proxies = _read(env, "TRUSTED_PROXIES")
    try:
        return parse_networks(proxies) if proxies is not None else Config.trusted_proxies
    except ValueError as exc:
        raise ConfigError(f"TRUSTED_PROXIES: {exc}") from None


def _anthropic_api_key(env: dict[str, str], agent_backend: str) -> str:
    anthropic_api_key = _read(env, "ANTHROPIC_API_KEY") or ""
    if agent_backend == "managed-agents" and not anthropic_api_key:
        raise ConfigError(
            "ANTHROPIC_API_KEY (or ANTHROPIC_API_KEY_FILE) is required when AGENT_BACKEND=managed-agents: "
            "Managed Agents runs are paid by the deployment's Anthropic API key"
        )
    return anthropic_api_key


def _budget(env: dict[str, str]) -> float | None:
    raw = _read(env, "USAGE_MONTHLY_BUDGET_USD")
    if raw is None:
        return None
    try:
        value = float(raw.removeprefix("$"))
    except ValueError:
        raise ConfigError(f"USAGE_MONTHLY_BUDGET_USD must be an amount of US dollars such as 50, got {raw!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ConfigError(f"USAGE_MONTHLY_BUDGET_USD must be an amount from 0 up, got {raw!r}")
    return value


def load_config(env: dict[str, str] | None = None) -> Config:
    """Build the configuration from `env` (default: the process environment after `.env`)."""
    if env is None:
        from dotenv import load_dotenv

        load_dotenv(PROJECT_ROOT / ".env", override=False)
        env = dict(os.environ)

    node_env = _choice(env, "NODE_ENV", ("development", "production", "test"), str)
    production = node_env == "production"
    embedded_dir = _embedded_dir(env)
    agent_backend = _choice(env, "AGENT_BACKEND", registry.SETTINGS, str)
    # The settings with rules of their own; every other one is read as its Config field says.
    own_rules = {
        "port": _port(env),
        "host": _host(env),
        "node_env": node_env,
        "allowed_origins": _origins(env, production),
        "session_secret": _session_secret(env, production, embedded_dir),
        "database_url": _database_url(env, production),
        "embedded_postgres_dir": embedded_dir,
        "log_level": _choice(env, "LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR"), str.upper),
        "claude_upstream_push": _choice(env, "CLAUDE_UPSTREAM_PUSH", ("auto", "off")),
        "trusted_proxies": _trusted_proxies(env),
        "agent_backend": agent_backend,
        "anthropic_api_key": _anthropic_api_key(env, agent_backend),
        "usage_monthly_budget_usd": _budget(env),
    }
    plain = {spec.name: _plain(env, spec) for spec in fields(Config) if spec.name not in own_rules}
    config = Config(**own_rules, **plain)
    if config.db_pool_max < config.db_pool_min:
        raise ConfigError("DB_POOL_MAX must not be smaller than DB_POOL_MIN")
    return config
