"""PyGithub plumbing: one client per call chain, run in `ctx.github_executor`, errors translated.

PyGithub is synchronous, so every chain of calls runs as one function in the dedicated, bounded
GitHub executor (ECOSYSTEM 6) and the event loop never waits. Its retries are switched off: a
retry sleeps inside an executor thread for up to a minute, which would starve other requests;
a rate limit is answered at once with a 429 and the reset time instead. Its request spacing
(0.25 s, 1 s between writes) follows GitHub's guidance for real GitHub and is switched off only
when NODE_ENV=test, where GitHub is a local fake.

GitHub's errors become answers a person can act on: a revoked token says to reconnect GitHub, a
rate limit is a 429 with Retry-After, GitHub being down is a 502. Route-specific messages for
404/409/422 are chosen by the callers with `translate(..., messages)`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import github
import requests
from github import Auth, Github, GithubException

from services.context import AppContext
from services.errors import ServiceError
from services.metrics import UPSTREAM_CALLS

log = logging.getLogger(__name__)

T = TypeVar("T")

NOT_CONNECTED = "GitHub not connected"
RECONNECT = "GitHub no longer accepts the stored authorization. Please reconnect GitHub in Settings."
UNAVAILABLE = "GitHub is not responding right now. Please try again in a few minutes."
UNREADABLE = "GitHub sent an answer this server could not read. Please try again in a few minutes."
REQUEST_TIMEOUT_SECONDS = 15
MAX_GITHUB_MESSAGE = 300

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_BAD_REF_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


# ---- clients and calls ----------------------------------------------------------------------


def make_client(ctx: AppContext, token: str, per_page: int = 100) -> Github:
    """A PyGithub client for one call chain (its thread-safety is undocumented, so never shared)."""
    spacing = ctx.config.node_env != "test"
    return Github(
        auth=Auth.Token(token),
        base_url=ctx.config.github_api_url,
        timeout=REQUEST_TIMEOUT_SECONDS,
        per_page=per_page,
        retry=None,
        seconds_between_requests=github.Consts.DEFAULT_SECONDS_BETWEEN_REQUESTS if spacing else None,
        seconds_between_writes=github.Consts.DEFAULT_SECONDS_BETWEEN_WRITES if spacing else None,
        lazy=True,
    )


async def run(ctx: AppContext, token: str, fn: Callable[[Github], T], per_page: int = 100) -> T:
    """Run `fn(client)` in the GitHub executor; GitHub failures come back as ServiceErrors."""

    def call() -> T:
        client = make_client(ctx, token, per_page)
        try:
            return fn(client)
        finally:
            client.close()

    try:
        result = await asyncio.get_running_loop().run_in_executor(ctx.github_executor, call)
    except (GithubException, requests.RequestException) as exc:
        UPSTREAM_CALLS.labels("github", "http" if isinstance(exc, GithubException) else "network").inc()
        raise translate(exc) from None
    except (KeyError, TypeError, ValueError, AttributeError, github.BadAttributeException):
        UPSTREAM_CALLS.labels("github", "malformed").inc()
        # An answer without the fields GitHub documents (a proxy's error page, a broken
        # deployment): GitHub's side failed, not the request. Logged in full in case it is ours.
        log.exception("unreadable answer from GitHub")
        raise ServiceError(502, UNREADABLE) from None
    UPSTREAM_CALLS.labels("github", "ok").inc()
    return result


# ---- errors ------------------------------------------------------------------------------------


def github_message(exc: GithubException) -> str:
    """GitHub's own `message` (it is GitHub's wording, never ours or a traceback), shortened."""
    data = exc.data if isinstance(exc.data, dict) else {}
    raw_message = data.get("message")
    message = raw_message if isinstance(raw_message, str) else ""
    errors = data.get("errors")
    if isinstance(errors, list):
        details = [str(e["message"]) for e in errors if isinstance(e, dict) and isinstance(e.get("message"), str)]
        if details:
            message = f"{message}: {'; '.join(details)}" if message else "; ".join(details)
    message = " ".join(message.split())
    return message[:MAX_GITHUB_MESSAGE] or f"GitHub answered {exc.status}"


def _rate_limit(exc: GithubException) -> ServiceError | None:
    headers = {k.lower(): v for k, v in (exc.headers or {}).items()}
    data = exc.data if isinstance(exc.data, dict) else {}
    text = str(data.get("message", "")).lower()
    limited = exc.status == 429 or (
        exc.status == 403 and (headers.get("x-ratelimit-remaining") == "0" or "rate limit" in text)
    )
    if not limited:
        return None
    now = time.time()
    retry_after = 60
    if str(headers.get("retry-after", "")).isdigit():
        retry_after = int(headers["retry-after"])
    elif str(headers.get("x-ratelimit-reset", "")).isdigit():
        retry_after = int(headers["x-ratelimit-reset"]) - int(now)
    retry_after = max(1, min(retry_after, 24 * 3600))
    reset = datetime.fromtimestamp(now + retry_after, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return ServiceError(
        429,
        f"GitHub rate limit exceeded. Try again after {reset} (in {retry_after} seconds).",
        {"Retry-After": str(retry_after)},
    )


def translate(exc: BaseException, messages: dict[int, str] | None = None) -> ServiceError:
    """A ServiceError for a GitHub failure: route messages for the statuses in `messages`, else
    reconnect (401), 429 (rate limit), 502 (GitHub down or unreachable), or GitHub's own message."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, requests.RequestException):
        log.warning("GitHub unreachable: %s", exc.__class__.__name__)
        return ServiceError(502, UNAVAILABLE)
    if not isinstance(exc, GithubException):
        raise exc
    if exc.status == 401:
        # 400 like "GitHub not connected", not 401: a 401 from us means "your login to this site
        # ended", and a client may log the person out for it.
        return ServiceError(400, RECONNECT)
    limited = _rate_limit(exc)
    if limited is not None:
        return limited
    if messages and exc.status in messages:
        return ServiceError(exc.status, messages[exc.status])
    if exc.status >= 500 or exc.status < 400:
        log.warning("GitHub answered %s", exc.status)
        return ServiceError(502, UNAVAILABLE)
    status = exc.status if exc.status in (400, 403, 404, 405, 409, 410, 422) else 400
    return ServiceError(status, github_message(exc))


def reraise(exc: BaseException, messages: dict[int, str]) -> NoReturn:
    """Raise `translate(exc, messages)` for a GitHub error; anything else propagates unchanged."""
    if isinstance(exc, GithubException | requests.RequestException | ServiceError):
        raise translate(exc, messages) from None
    raise exc


# ---- input checks ---------------------------------------------------------------------------------


def check_repo(owner: Any, repo: Any) -> tuple[str, str]:
    """Owner and repository names as GitHub allows them; 400 for anything else (`..`, `/`, ...)."""
    for value in (owner, repo):
        if not isinstance(value, str) or not _NAME.match(value) or value in (".", ".."):
            raise ServiceError(400, "Invalid repository owner or name")
    return owner, repo


def is_valid_branch(value: Any) -> bool:
    """git's ref-name rules (check-ref-format), which also rule out path traversal."""
    if not isinstance(value, str) or not value or len(value) > 255:
        return False
    if _BAD_REF_CHARS.search(value) or ".." in value or "@{" in value or value == "@":
        return False
    if value.startswith(("/", "-")) or value.endswith(("/", ".")) or "//" in value or value == "HEAD":
        # A leading "-" would read as an option to git; "HEAD" is not a branch name.
        return False
    return all(part and not part.startswith(".") and not part.endswith(".lock") for part in value.split("/"))


def check_branch(value: Any, message: str = "Invalid branch name") -> str:
    if not is_valid_branch(value):
        raise ServiceError(400, message)
    return value


def check_path(value: Any, allow_root: bool = False) -> str:
    """A repository-relative path: no `.`/`..` segments, no backslashes or control characters."""
    if not isinstance(value, str):
        raise ServiceError(400, "Invalid path")
    path = value.strip("/") if allow_root else value.rstrip("/")
    if path == "" and allow_root:
        return path
    if not path or len(path) > 1000 or path.startswith("/") or "\\" in path:
        raise ServiceError(400, "Invalid path")
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise ServiceError(400, "Invalid path")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise ServiceError(400, "Invalid path")
    return path


def optional_text(value: Any, name: str, limit: int = 65536) -> str | None:
    """An optional string field (commit messages, titles, bodies), length-limited."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ServiceError(400, f"{name} must be a string")
    if len(value) > limit:
        raise ServiceError(400, f"{name} must be at most {limit} characters")
    return value
