"""Configuration: one frozen object built from the environment at start-up.

python-dotenv reads `.env` first (without overriding real environment variables). A variable
`NAME_FILE` may point at a file that holds the value of `NAME` (Docker secrets). A wrong value
stops start-up with a `ConfigError` that names the variable.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from services.addresses import DEFAULT_TRUSTED_PROXIES, Network, parse_networks

PROJECT_ROOT = Path(__file__).resolve().parent.parent


# An IPv4 or IPv6 address (without brackets) or a host name, as Tornado's listen() takes it.
HOST_PATTERN = re.compile(r"[A-Za-z0-9.:-]+")


class ConfigError(Exception):
    """A configuration value is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Config:
    """Every setting the server reads. Field names follow the environment variables."""

    port: int = 3001
    host: str = "0.0.0.0"
    node_env: str = "development"
    allowed_origins: tuple[str, ...] = ("http://localhost:5173", "http://localhost:3000")
    session_secret: str = ""
    encryption_key: str = ""
    database_url: str = ""
    embedded_postgres_dir: Path = PROJECT_ROOT / ".data" / "postgres"
    db_pool_min: int = 2
    db_pool_max: int = 10
    claude_environment_id: str = ""
    claude_api_base_url: str = "https://api.anthropic.com"
    claude_default_model: str = "claude-opus-4-5-20251101"
    claude_oauth_token_url: str = "https://console.anthropic.com/v1/oauth/token"
    claude_poll_interval_ms: int = 2000
    claude_upstream_push: str = "auto"
    claude_organization_uuid: str = ""
    claude_request_timeout_seconds: float = 30.0
    claude_retry_window_seconds: float = 300.0
    run_adopt_interval_seconds: float = 1.0
    run_lease_seconds: float = 30.0
    claude_sync_enabled: bool = True
    claude_sync_interval_ms: int = 300_000
    claude_sync_limit: int = 50
    orphan_session_timeout_minutes: int = 30
    orphan_cleanup_interval_minutes: int = 5
    github_client_id: str = ""
    github_client_secret: str = ""
    github_api_url: str = "https://api.github.com"
    github_oauth_url: str = "https://github.com"
    github_repos_max: int = 1000
    tmp_dir: Path = Path("/tmp")
    workspace_dir: Path = Path("/workspace")
    stream_lifetime_seconds: float = 0.0  # 0: no cap
    sse_heartbeat_seconds: float = 15.0
    shutdown_grace_seconds: float = 300.0
    bcrypt_rounds: int = 12
    login_max_failures_per_email: int = 5
    login_max_failures_per_ip: int = 20
    login_failure_window_seconds: int = 900
    register_max_per_ip: int = 10
    register_window_seconds: int = 3600
    log_level: str = "INFO"
    trusted_proxies: tuple[Network, ...] = parse_networks(DEFAULT_TRUSTED_PROXIES)
    header_timeout_seconds: float = 10.0
    keepalive_timeout_seconds: float = 120.0
    body_timeout_seconds: float = 30.0
    build_commit_sha: str = "unknown"
    build_timestamp: str = "unknown"
    build_image_tag: str = "unknown"

    @property
    def production(self) -> bool:
        return self.node_env == "production"

    @property
    def uses_embedded_database(self) -> bool:
        return not self.database_url


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


def _int(env: dict[str, str], name: str, minimum: int = 0) -> int:
    raw = _read(env, name)
    if raw is None:
        return _default(name)
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: dict[str, str], name: str, minimum: float = 0.0) -> float:
    raw = _read(env, name)
    if raw is None:
        return _default(name)
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
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


def load_config(env: dict[str, str] | None = None) -> Config:
    """Build the configuration from `env` (default: the process environment after `.env`)."""
    if env is None:
        from dotenv import load_dotenv

        load_dotenv(PROJECT_ROOT / ".env", override=False)
        env = dict(os.environ)

    node_env = _text(env, "NODE_ENV")
    if node_env not in ("development", "production", "test"):
        raise ConfigError(f"NODE_ENV must be development, production or test, got {node_env!r}")
    production = node_env == "production"

    port_raw = _read(env, "API_PORT") or _read(env, "PORT")
    port = Config.port
    if port_raw is not None:
        if not port_raw.isdigit() or not 0 <= int(port_raw) <= 65535:
            raise ConfigError(f"PORT must be a port number from 0 to 65535, got {port_raw!r}")
        port = int(port_raw)

    database_url = _read(env, "DATABASE_URL") or ""
    if database_url:
        parsed = urlparse(database_url)
        if parsed.scheme not in ("postgres", "postgresql"):
            raise ConfigError("DATABASE_URL must be a postgresql:// URL")
    elif production:
        raise ConfigError("DATABASE_URL is required when NODE_ENV=production")

    embedded_dir = Path(_read(env, "EMBEDDED_POSTGRES_DIR") or Config.embedded_postgres_dir)
    if not embedded_dir.is_absolute():
        embedded_dir = PROJECT_ROOT / embedded_dir

    session_secret = _read(env, "SESSION_SECRET")
    if session_secret is None:
        if production:
            raise ConfigError("SESSION_SECRET is required when NODE_ENV=production")
        session_secret = _development_secret(embedded_dir.parent)
    if len(session_secret) < 16:
        raise ConfigError("SESSION_SECRET must be at least 16 characters long")

    host = _text(env, "HOST")
    if not HOST_PATTERN.fullmatch(host):
        raise ConfigError(f"HOST must be an IP address or a host name, got {host!r}")

    pool_min = _int(env, "DB_POOL_MIN", minimum=1)
    pool_max = _int(env, "DB_POOL_MAX", minimum=1)
    if pool_max < pool_min:
        raise ConfigError("DB_POOL_MAX must not be smaller than DB_POOL_MIN")

    log_level = _text(env, "LOG_LEVEL").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {log_level!r}")

    upstream_push = _text(env, "CLAUDE_UPSTREAM_PUSH").lower()
    if upstream_push not in ("auto", "off"):
        raise ConfigError(f"CLAUDE_UPSTREAM_PUSH must be auto or off, got {upstream_push!r}")
    proxies = _read(env, "TRUSTED_PROXIES")
    try:
        trusted_proxies = parse_networks(proxies) if proxies is not None else Config.trusted_proxies
    except ValueError as exc:
        raise ConfigError(f"TRUSTED_PROXIES: {exc}") from None

    return Config(
        port=port,
        host=host,
        node_env=node_env,
        allowed_origins=_origins(env, production),
        session_secret=session_secret,
        encryption_key=_text(env, "ENCRYPTION_KEY"),
        database_url=database_url,
        embedded_postgres_dir=embedded_dir,
        db_pool_min=pool_min,
        db_pool_max=pool_max,
        claude_environment_id=_text(env, "CLAUDE_ENVIRONMENT_ID"),
        claude_api_base_url=_url(env, "CLAUDE_API_BASE_URL"),
        claude_default_model=_text(env, "CLAUDE_DEFAULT_MODEL"),
        claude_oauth_token_url=_url(env, "CLAUDE_OAUTH_TOKEN_URL"),
        claude_poll_interval_ms=_int(env, "CLAUDE_POLL_INTERVAL_MS", minimum=10),
        claude_upstream_push=upstream_push,
        claude_organization_uuid=_text(env, "CLAUDE_ORGANIZATION_UUID"),
        claude_request_timeout_seconds=_float(env, "CLAUDE_REQUEST_TIMEOUT_SECONDS", minimum=0.1),
        claude_retry_window_seconds=_float(env, "CLAUDE_RETRY_WINDOW_SECONDS", minimum=0.1),
        run_adopt_interval_seconds=_float(env, "RUN_ADOPT_INTERVAL_SECONDS", minimum=0.1),
        run_lease_seconds=_float(env, "RUN_LEASE_SECONDS", minimum=1.0),
        claude_sync_enabled=_bool(env, "CLAUDE_SYNC_ENABLED"),
        claude_sync_interval_ms=_int(env, "CLAUDE_SYNC_INTERVAL_MS", minimum=1000),
        claude_sync_limit=_int(env, "CLAUDE_SYNC_LIMIT", minimum=1),
        orphan_session_timeout_minutes=_int(env, "ORPHAN_SESSION_TIMEOUT_MINUTES", minimum=1),
        orphan_cleanup_interval_minutes=_int(env, "ORPHAN_CLEANUP_INTERVAL_MINUTES", minimum=1),
        github_client_id=_text(env, "GITHUB_CLIENT_ID"),
        github_client_secret=_text(env, "GITHUB_CLIENT_SECRET"),
        github_api_url=_url(env, "GITHUB_API_URL"),
        github_oauth_url=_url(env, "GITHUB_OAUTH_URL"),
        github_repos_max=_int(env, "GITHUB_REPOS_MAX", minimum=1),
        tmp_dir=Path(_read(env, "TMP_DIR") or Config.tmp_dir),
        workspace_dir=Path(_read(env, "WORKSPACE_DIR") or Config.workspace_dir),
        stream_lifetime_seconds=_float(env, "STREAM_LIFETIME_SECONDS", minimum=0.0),
        sse_heartbeat_seconds=_float(env, "SSE_HEARTBEAT_SECONDS", minimum=0.05),
        shutdown_grace_seconds=_float(env, "SHUTDOWN_GRACE_SECONDS", minimum=0.0),
        bcrypt_rounds=_int(env, "BCRYPT_ROUNDS", minimum=4),
        login_max_failures_per_email=_int(env, "LOGIN_MAX_FAILURES_PER_EMAIL", minimum=1),
        login_max_failures_per_ip=_int(env, "LOGIN_MAX_FAILURES_PER_IP", minimum=1),
        login_failure_window_seconds=_int(env, "LOGIN_FAILURE_WINDOW_SECONDS", minimum=1),
        register_max_per_ip=_int(env, "REGISTER_MAX_PER_IP", minimum=1),
        register_window_seconds=_int(env, "REGISTER_WINDOW_SECONDS", minimum=1),
        log_level=log_level,
        trusted_proxies=trusted_proxies,
        header_timeout_seconds=_float(env, "HEADER_TIMEOUT_SECONDS", minimum=0.1),
        keepalive_timeout_seconds=_float(env, "KEEPALIVE_TIMEOUT_SECONDS", minimum=0.1),
        body_timeout_seconds=_float(env, "BODY_TIMEOUT_SECONDS", minimum=0.1),
        build_commit_sha=_text(env, "BUILD_COMMIT_SHA"),
        build_timestamp=_text(env, "BUILD_TIMESTAMP"),
        build_image_tag=_text(env, "BUILD_IMAGE_TAG"),
    )
