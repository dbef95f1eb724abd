"""Configuration: one frozen object built from the environment at start-up.

python-dotenv reads `.env` first (without overriding real environment variables). A variable
`NAME_FILE` may point at a file that holds the value of `NAME` (Docker secrets). A wrong value
stops start-up with a `ConfigError` that names the variable.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from services.addresses import DEFAULT_TRUSTED_PROXIES, Network, parse_networks

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# AGENT_BACKEND values and the `chat_sessions.provider` name each one gives new sessions.
AGENT_BACKENDS = {"remote-sessions": "claude", "managed-agents": "managed-agents"}


class ConfigError(Exception):
    """A configuration value is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Config:
    """Every setting the server reads. Field names follow the environment variables."""

    port: int = 3001
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
    # Which backend new chat sessions run on: "remote-sessions" (Claude Remote Sessions with each
    # person's Claude OAuth token) or "managed-agents" (Anthropic's Managed Agents API, paid by
    # the deployment's ANTHROPIC_API_KEY). A session keeps the backend it started on.
    agent_backend: str = "remote-sessions"
    anthropic_api_key: str = field(default="", repr=False)  # a secret: never in a repr or a log
    managed_agents_api_base_url: str = "https://api.anthropic.com"
    managed_agents_agent_id: str = ""
    managed_agents_environment_id: str = ""
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
    def new_session_provider(self) -> str:
        """The `chat_sessions.provider` of sessions created now (AGENT_BACKEND)."""
        return AGENT_BACKENDS[self.agent_backend]

    @property
    def uses_embedded_database(self) -> bool:
        return not self.database_url


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


def _int(env: dict[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = _read(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: dict[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = _read(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _bool(env: dict[str, str], name: str, default: bool) -> bool:
    raw = _read(env, name)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _url(env: dict[str, str], name: str, default: str, schemes: tuple[str, ...]) -> str:
    raw = _read(env, name) or default
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

    node_env = _read(env, "NODE_ENV") or "development"
    if node_env not in ("development", "production", "test"):
        raise ConfigError(f"NODE_ENV must be development, production or test, got {node_env!r}")
    production = node_env == "production"

    port_raw = _read(env, "API_PORT") or _read(env, "PORT")
    port = 3001
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

    pool_min = _int(env, "DB_POOL_MIN", 2, minimum=1)
    pool_max = _int(env, "DB_POOL_MAX", 10, minimum=1)
    if pool_max < pool_min:
        raise ConfigError("DB_POOL_MAX must not be smaller than DB_POOL_MIN")

    log_level = (_read(env, "LOG_LEVEL") or "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {log_level!r}")

    upstream_push = (_read(env, "CLAUDE_UPSTREAM_PUSH") or "auto").lower()
    if upstream_push not in ("auto", "off"):
        raise ConfigError(f"CLAUDE_UPSTREAM_PUSH must be auto or off, got {upstream_push!r}")
    try:
        trusted_proxies = parse_networks(_read(env, "TRUSTED_PROXIES") or DEFAULT_TRUSTED_PROXIES)
    except ValueError as exc:
        raise ConfigError(f"TRUSTED_PROXIES: {exc}") from None
    agent_backend = _read(env, "AGENT_BACKEND") or Config.agent_backend
    if agent_backend not in AGENT_BACKENDS:
        raise ConfigError(f"AGENT_BACKEND must be remote-sessions or managed-agents, got {agent_backend!r}")
    anthropic_api_key = _read(env, "ANTHROPIC_API_KEY") or ""
    if agent_backend == "managed-agents" and not anthropic_api_key:
        raise ConfigError(
            "ANTHROPIC_API_KEY (or ANTHROPIC_API_KEY_FILE) is required when AGENT_BACKEND=managed-agents: "
            "Managed Agents runs are paid by the deployment's Anthropic API key"
        )

    return Config(
        port=port,
        node_env=node_env,
        allowed_origins=_origins(env, production),
        session_secret=session_secret,
        encryption_key=_read(env, "ENCRYPTION_KEY") or "",
        database_url=database_url,
        embedded_postgres_dir=embedded_dir,
        db_pool_min=pool_min,
        db_pool_max=pool_max,
        claude_environment_id=_read(env, "CLAUDE_ENVIRONMENT_ID") or "",
        claude_api_base_url=_url(env, "CLAUDE_API_BASE_URL", Config.claude_api_base_url, ("http", "https")),
        claude_default_model=_read(env, "CLAUDE_DEFAULT_MODEL") or Config.claude_default_model,
        claude_oauth_token_url=_url(env, "CLAUDE_OAUTH_TOKEN_URL", Config.claude_oauth_token_url, ("http", "https")),
        claude_poll_interval_ms=_int(env, "CLAUDE_POLL_INTERVAL_MS", 2000, minimum=10),
        claude_upstream_push=upstream_push,
        claude_organization_uuid=_read(env, "CLAUDE_ORGANIZATION_UUID") or "",
        claude_request_timeout_seconds=_float(env, "CLAUDE_REQUEST_TIMEOUT_SECONDS", 30.0, 0.1),
        claude_retry_window_seconds=_float(env, "CLAUDE_RETRY_WINDOW_SECONDS", 300.0, 0.1),
        run_adopt_interval_seconds=_float(env, "RUN_ADOPT_INTERVAL_SECONDS", 1.0, 0.1),
        run_lease_seconds=_float(env, "RUN_LEASE_SECONDS", 30.0, 1.0),
        claude_sync_enabled=_bool(env, "CLAUDE_SYNC_ENABLED", True),
        agent_backend=agent_backend,
        anthropic_api_key=anthropic_api_key,
        managed_agents_api_base_url=_url(
            env, "MANAGED_AGENTS_API_BASE_URL", Config.managed_agents_api_base_url, ("http", "https")
        ),
        managed_agents_agent_id=_read(env, "MANAGED_AGENTS_AGENT_ID") or "",
        managed_agents_environment_id=_read(env, "MANAGED_AGENTS_ENVIRONMENT_ID") or "",
        claude_sync_interval_ms=_int(env, "CLAUDE_SYNC_INTERVAL_MS", 300_000, minimum=1000),
        claude_sync_limit=_int(env, "CLAUDE_SYNC_LIMIT", 50, minimum=1),
        orphan_session_timeout_minutes=_int(env, "ORPHAN_SESSION_TIMEOUT_MINUTES", 30, minimum=1),
        orphan_cleanup_interval_minutes=_int(env, "ORPHAN_CLEANUP_INTERVAL_MINUTES", 5, minimum=1),
        github_client_id=_read(env, "GITHUB_CLIENT_ID") or "",
        github_client_secret=_read(env, "GITHUB_CLIENT_SECRET") or "",
        github_api_url=_url(env, "GITHUB_API_URL", Config.github_api_url, ("http", "https")),
        github_oauth_url=_url(env, "GITHUB_OAUTH_URL", Config.github_oauth_url, ("http", "https")),
        github_repos_max=_int(env, "GITHUB_REPOS_MAX", 1000, minimum=1),
        tmp_dir=Path(_read(env, "TMP_DIR") or "/tmp"),
        workspace_dir=Path(_read(env, "WORKSPACE_DIR") or "/workspace"),
        stream_lifetime_seconds=_float(env, "STREAM_LIFETIME_SECONDS", 0.0, 0.0),
        sse_heartbeat_seconds=_float(env, "SSE_HEARTBEAT_SECONDS", 15.0, 0.05),
        shutdown_grace_seconds=_float(env, "SHUTDOWN_GRACE_SECONDS", 300.0, 0.0),
        bcrypt_rounds=_int(env, "BCRYPT_ROUNDS", 12, minimum=4),
        login_max_failures_per_email=_int(env, "LOGIN_MAX_FAILURES_PER_EMAIL", 5, minimum=1),
        login_max_failures_per_ip=_int(env, "LOGIN_MAX_FAILURES_PER_IP", 20, minimum=1),
        login_failure_window_seconds=_int(env, "LOGIN_FAILURE_WINDOW_SECONDS", 900, minimum=1),
        register_max_per_ip=_int(env, "REGISTER_MAX_PER_IP", 10, minimum=1),
        register_window_seconds=_int(env, "REGISTER_WINDOW_SECONDS", 3600, minimum=1),
        log_level=log_level,
        trusted_proxies=trusted_proxies,
        header_timeout_seconds=_float(env, "HEADER_TIMEOUT_SECONDS", 10.0, 0.1),
        keepalive_timeout_seconds=_float(env, "KEEPALIVE_TIMEOUT_SECONDS", 120.0, 0.1),
        body_timeout_seconds=_float(env, "BODY_TIMEOUT_SECONDS", 30.0, 0.1),
        build_commit_sha=_read(env, "BUILD_COMMIT_SHA") or "unknown",
        build_timestamp=_read(env, "BUILD_TIMESTAMP") or "unknown",
        build_image_tag=_read(env, "BUILD_IMAGE_TAG") or "unknown",
    )
