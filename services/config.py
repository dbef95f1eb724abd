"""Configuration: one frozen object built from the environment at start-up.

python-dotenv reads `.env` first (without overriding real environment variables). A variable
`NAME_FILE` may point at a file that holds the value of `NAME` (Docker secrets). A wrong value
stops start-up with a `ConfigError` that names the variable.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from services.addresses import DEFAULT_TRUSTED_PROXIES, Network, parse_networks
from services.agents import registry

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# AGENT_BACKEND values and the `chat_sessions.provider` name each one gives new sessions.


# An IPv4 or IPv6 address (without brackets) or a host name, as Tornado's listen() takes it.
HOST_PATTERN = re.compile(r"[A-Za-z0-9.:-]+")


class ConfigError(Exception):
    """A configuration value is missing or malformed; the message names the variable."""


def _at_least(default: float, minimum: float) -> Any:
    """A number setting: its default, and the smallest value the variable may hold (else 0)."""
    return field(default=default, metadata={"minimum": minimum})


def _web_url(default: str) -> Any:
    """A setting that must be an http:// or https:// URL."""
    return field(default=default, metadata={"url": True})


@dataclass(frozen=True)
class Config:
    """Every setting the server reads, with its default. Field names follow the environment
    variables; load_config reads each by its type (bool, int, float, Path, text) unless it has
    rules of its own there."""

    port: int = 3001
    host: str = "0.0.0.0"
    node_env: str = "development"
    allowed_origins: tuple[str, ...] = ("http://localhost:5173", "http://localhost:3000")
    session_secret: str = ""
    encryption_key: str = ""
    database_url: str = ""
    embedded_postgres_dir: Path = PROJECT_ROOT / ".data" / "postgres"
    db_pool_min: int = _at_least(2, 1)
    db_pool_max: int = _at_least(10, 1)
    # Bounds on waiting for the database (services/db.create_pool): for a row another connection
    # holds, for a connection of the pool, and how long a connection of ours may sit in an open
    # transaction before PostgreSQL ends it (a frozen process then lets its rows go).
    db_lock_timeout_seconds: float = _at_least(2.0, 0.05)
    db_acquire_timeout_seconds: float = _at_least(5.0, 0.05)
    db_idle_transaction_timeout_seconds: float = _at_least(10.0, 1.0)
    claude_environment_id: str = ""
    claude_api_base_url: str = _web_url("https://api.anthropic.com")
    claude_default_model: str = "claude-opus-4-5-20251101"
    claude_oauth_token_url: str = _web_url("https://console.anthropic.com/v1/oauth/token")
    claude_poll_interval_ms: int = _at_least(2000, 10)
    claude_upstream_push: str = "auto"
    claude_organization_uuid: str = ""
    claude_request_timeout_seconds: float = _at_least(30.0, 0.1)
    claude_retry_window_seconds: float = _at_least(300.0, 0.1)
    run_adopt_interval_seconds: float = _at_least(1.0, 0.1)
    run_idle_grace_seconds: float = _at_least(60.0, 0.1)
    run_lease_seconds: float = _at_least(30.0, 1.0)
    claude_sync_enabled: bool = True
    # Which backend new chat sessions run on: "remote-sessions" (Claude Remote Sessions with each
    # person's Claude OAuth token) or "managed-agents" (Anthropic's Managed Agents API, paid by
    # the deployment's ANTHROPIC_API_KEY). A session keeps the backend it started on.
    agent_backend: str = "remote-sessions"
    anthropic_api_key: str = field(default="", repr=False)  # a secret: never in a repr or a log
    managed_agents_api_base_url: str = _web_url("https://api.anthropic.com")
    managed_agents_agent_id: str = ""
    managed_agents_environment_id: str = ""
    # Spending (services/usage.py): every person's monthly budget in US dollars unless an admin
    # set their own (None: no budget), and whether it also applies to Remote Sessions runs (paid
    # by each person's own Claude subscription; their usage is recorded either way).
    usage_monthly_budget_usd: float | None = None
    usage_budget_remote_sessions: bool = False
    claude_sync_interval_ms: int = _at_least(300_000, 1000)
    claude_sync_limit: int = _at_least(50, 1)
    orphan_session_timeout_minutes: int = _at_least(30, 1)
    orphan_cleanup_interval_minutes: int = _at_least(5, 1)
    github_client_id: str = ""
    github_client_secret: str = ""
    github_api_url: str = _web_url("https://api.github.com")
    github_oauth_url: str = _web_url("https://github.com")
    github_repos_max: int = _at_least(1000, 1)
    workspace_dir: Path = Path("/workspace")
    stream_lifetime_seconds: float = 0.0  # 0: no cap
    sse_heartbeat_seconds: float = _at_least(15.0, 0.05)
    shutdown_grace_seconds: float = 300.0
    bcrypt_rounds: int = _at_least(12, 4)
    login_max_failures_per_email: int = _at_least(5, 1)
    login_max_failures_per_ip: int = _at_least(20, 1)
    login_failure_window_seconds: int = _at_least(900, 1)
    register_max_per_ip: int = _at_least(10, 1)
    register_window_seconds: int = _at_least(3600, 1)
    # How long a process may answer from its remembered login-session lookup (services/login_cache.py); 0: never.
    login_cache_seconds: float = 5.0
    log_level: str = "INFO"
    # A request at least this slow has its access line at INFO even when it succeeded.
    access_log_slow_seconds: float = 1.0
    trusted_proxies: tuple[Network, ...] = parse_networks(DEFAULT_TRUSTED_PROXIES)
    header_timeout_seconds: float = _at_least(10.0, 0.1)
    keepalive_timeout_seconds: float = _at_least(120.0, 0.1)
    body_timeout_seconds: float = _at_least(30.0, 0.1)
    build_commit_sha: str = "unknown"
    build_timestamp: str = "unknown"
    build_image_tag: str = "unknown"

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
