"""APIHandler: the cross-cutting concerns of every route.

- JSON bodies of at most 1 MiB (counted while they stream in), parsed with orjson.
- Errors always as `{"success": false, "error": "..."}`; a ServiceError carries its status,
  an unreachable database is a 503, anything unexpected a logged 500 with no details.
- The person behind the `auth_session` cookie, with sliding renewal of the cookie.
- CORS for `ALLOWED_ORIGINS` with credentials, and a 403 for a state-changing request from an
  Origin outside that list, with or without the cookie (an absent Origin is allowed).
- A request id on every response and log line.
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import tornado.httputil
import tornado.netutil
import tornado.web
from tornado.httputil import HTTPServerRequest
from tornado.iostream import StreamClosedError

from handlers.connection import linger_after_answer
from services import addresses, auth, metrics
from services.chat_sessions import RESERVED_SESSION_IDS, get_owned
from services.context import AppContext
from services.db import BUSY_ERRORS, UNAVAILABLE_ERRORS, database_outage
from services.errors import ServiceError
from services.logs import REQUEST_CONTEXT
from services.pagination import Page, parse_page

log = logging.getLogger("webedt.http")

MAX_BODY_BYTES = 1024 * 1024
COOKIE_NAME = "auth_session"
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
STATUS_MESSAGES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    413: "Request body is larger than 1 MiB",
    429: "Too many requests",
    503: "Service temporarily unavailable, please retry shortly",
}
# A 503 for a row another server still holds (DB_LOCK_TIMEOUT_SECONDS ran out): the database is fine.
BUSY_MESSAGE = "This is being changed by another request right now; please retry in a few seconds"


NUL_MESSAGE = "Request must not contain NUL characters"
# The `:id` of every session route (/api/sessions/:id..., /api/resume/:id). The names of
# /api/sessions/'s own routes never match it, so no route depends on the order of the table.
SESSION_ID = rf"(?!(?:{'|'.join(sorted(RESERVED_SESSION_IDS))})$)([^/]+)"


def _contains_nul(value: Any) -> bool:
    """Whether a parsed JSON value holds a NUL in any string (keys too); iterative, as JSON may nest deeply."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


# ---- per-request work Tornado repeats that can be done once ------------------------------------
#
# Formatting the Date header is pure and gives the same text for a whole second; Tornado reaches
# it through a module attribute, so it is swapped for a remembering version once, here, with
# identical results.


def _date_once_a_second(format_timestamp: Callable[[Any], str]) -> Callable[[Any], str]:
    last: tuple[int, str] = (-1, "")

    @functools.wraps(format_timestamp)
    def cached(ts: Any) -> str:
        nonlocal last
        if type(ts) not in (int, float):
            return format_timestamp(ts)  # datetimes and tuples (cookie expiry dates): as before
        second = int(ts)  # the HTTP date has whole seconds
        if last[0] != second:
            last = (second, format_timestamp(second))  # one assignment: safe from other threads
        return last[1]

    return cached


if not hasattr(tornado.httputil.format_timestamp, "__wrapped__"):
    setattr(tornado.httputil, "format_timestamp", _date_once_a_second(tornado.httputil.format_timestamp))  # noqa: B010


_request_prefix = secrets.token_hex(4)
_request_counter = itertools.count(1)


def next_request_id() -> str:
    """Unique per process start and cheap: a random prefix and a counter."""
    return f"{_request_prefix}-{next(_request_counter):x}"


def json_bytes(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


@tornado.web.stream_request_body
class APIHandler(tornado.web.RequestHandler):
    """Base class of every route handler."""

    current_user: auth.CurrentUser | None

    def initialize(self) -> None:
        self.ctx: AppContext = self.application.settings["ctx"]
        self._body_chunks: list[bytes] = []
        self._body_size = 0
        self._body_too_large = False

    # ---- headers, CORS and CSRF -------------------------------------------------------------

    def set_default_headers(self) -> None:
        # Runs before initialize() and again whenever an error clears the headers.
        if not hasattr(self, "request_id"):
            supplied = self.request.headers.get("X-Request-ID", "")
            self.request_id = supplied if REQUEST_ID_PATTERN.fullmatch(supplied) else next_request_id()
        self.set_header("X-Request-ID", self.request_id)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")
        origin = self.request.headers.get("Origin")
        if origin and origin in self.application.settings["ctx"].config.allowed_origins:
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Access-Control-Allow-Credentials", "true")
            self.set_header("Vary", "Origin")

    def options(self, *args: Any) -> None:
        """CORS preflight."""
        if "Access-Control-Allow-Origin" in self._headers:
            self.set_header("Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE, OPTIONS")
            self.set_header(
                "Access-Control-Allow-Headers",
                self.request.headers.get("Access-Control-Request-Headers", "Content-Type"),
            )
            self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)
        self.finish()

    async def prepare(self) -> None:
        length = self.request.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise ServiceError(413, STATUS_MESSAGES[413])
        token = self.get_cookie(COOKIE_NAME)
        self.current_user = None
        # With or without the cookie: a cookie-less login or register from another site would
        # log the browser into the attacker's account (login CSRF). No Origin: not a browser,
        # unless the browser says the request is cross-site (browsers send Origin today; this
        # is defence in depth should one not).
        if self.request.method not in SAFE_METHODS:
            origin = self.request.headers.get("Origin")
            if origin is None:
                if self.request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
                    raise ServiceError(403, "Request origin is not allowed")
            elif origin not in self.ctx.config.allowed_origins:
                raise ServiceError(403, "Request origin is not allowed")
        if token:
            self.current_user = await auth.resolve_token(self.ctx, token)
            if self.current_user is None:
                self.clear_auth_cookie()
            elif self.current_user.renewed:
                self.set_auth_cookie(token, auth.SESSION_LIFETIME.days)
        REQUEST_CONTEXT.set(self.log_extra())

    @property
    def user(self) -> auth.CurrentUser:
        """The person logged in (behind `@authenticated` or `@admin_required`); 401 otherwise."""
        if self.current_user is None:
            raise ServiceError(401, "Unauthorized")
        return self.current_user

    async def owned_session(self, session_id: str) -> asyncpg.Record:
        """The caller's own session row; 404 "Session not found" for anyone else's."""
        return await get_owned(self.ctx, session_id, self.user.id)

    def data_received(self, chunk: bytes) -> None:
        self._body_size += len(chunk)
        if self._body_size > MAX_BODY_BYTES:
            self._body_too_large = True
            self._body_chunks.clear()
        elif not self._body_too_large:
            self._body_chunks.append(chunk)

    # ---- cookies -------------------------------------------------------------------------------

    def set_auth_cookie(self, token: str, days: int) -> None:
        self.set_cookie(
            COOKIE_NAME,
            token,
            max_age=days * 86400,
            path="/",
            httponly=True,
            samesite="Lax",
            secure=self.ctx.config.production,
        )

    def clear_auth_cookie(self) -> None:
        # An expiry in the past (Tornado drops Max-Age=0) makes the browser forget the cookie.
        self.clear_cookie(COOKIE_NAME, path="/", httponly=True, samesite="Lax", secure=self.ctx.config.production)

    # ---- input -----------------------------------------------------------------------------------

    def json_body(self) -> dict[str, Any]:
        """The request body as a JSON object ({} when empty); a 4xx for anything else."""
        if self._body_too_large:
            raise ServiceError(413, STATUS_MESSAGES[413])
        raw = b"".join(self._body_chunks) if self._body_chunks else self.request.body
        if not raw.strip():
            return {}
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ServiceError(400, "Request body must be valid JSON") from None
        if not isinstance(value, dict):
            raise ServiceError(400, "Request body must be a JSON object")
        # JSON can carry a NUL only as the escape \u0000; PostgreSQL stores NUL in neither text
        # nor jsonb, so such a body is refused here instead of failing in the database (a 500).
        if b"\\u0000" in raw and _contains_nul(value):
            raise ServiceError(400, NUL_MESSAGE)
        return value

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        """Path and query arguments as text; one holding a NUL (%00) is a 400, for the same reason."""
        text = super().decode_argument(value, name)
        # An optional path group that did not match arrives as None.
        if text is not None and "\x00" in text:
            raise ServiceError(400, NUL_MESSAGE)
        return text

    def page(self, *, default: int, maximum: int) -> Page:
        """The `limit` and `offset` this request asks for (services/pagination.py has the rule)."""
        return parse_page(
            self.get_query_argument("limit", None),
            self.get_query_argument("offset", None),
            default=default,
            maximum=maximum,
        )

    def client_ip(self) -> str:
        """The client's address: forwarded headers count only from `TRUSTED_PROXIES`."""
        headers = self.request.headers
        return addresses.client_address(
            self.request.remote_ip or "unknown",
            headers.get("X-Forwarded-For"),
            headers.get("X-Real-Ip"),
            self.ctx.config.trusted_proxies,
        )

    # ---- output ----------------------------------------------------------------------------------

    def write_json(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json_bytes(value))

    async def write_json_chunks(self, data: AsyncIterator[bytes]) -> None:
        """`{"success": true, "data": <the chunks>}`, each chunk flushed as it comes (chunked
        transfer), for answers too long to build in memory."""
        self.set_status(200)
        self.write(b'{"success":true,"data":')
        try:
            async for chunk in data:
                self.write(chunk)
                await self.flush()
        except StreamClosedError:
            return  # the client went away; nothing is left to answer
        self.finish(b"}")

    def ok(self, data: Any = None, status: int = 200) -> None:
        """`{"success": true, "data": data}` (no `data` key when data is None)."""
        body: dict[str, Any] = {"success": True}
        if data is not None:
            body["data"] = data
        self.write_json(body, status)

    def compute_etag(self) -> str | None:
        # Answers are `Cache-Control: no-store`, so an ETag is never used; it would cost a SHA-1 of
        # every body (50 KB for a session list).
        return None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        message = STATUS_MESSAGES.get(status_code, "Internal server error")
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ServiceError):
            status_code, message = exc.status, exc.message
            for name, value in exc.headers.items():
                self.set_header(name, value)
        elif isinstance(exc, tornado.web.HTTPError):
            message = STATUS_MESSAGES.get(exc.status_code, message)
            if exc.status_code == 405:
                # RFC 9110: a 405 names the methods the resource does support.
                self.set_header("Allow", ", ".join(self.allowed_methods()))
        elif isinstance(exc, UNAVAILABLE_ERRORS):
            status_code = 503
            message = BUSY_MESSAGE if isinstance(exc, BUSY_ERRORS) else STATUS_MESSAGES[503]
            self.set_header("Retry-After", "2")
        self.clear_header("Content-Disposition")
        self.set_header("Content-Type", "application/json; charset=utf-8")
        prepared = getattr(self, "_prepared_future", None)
        if prepared is not None and not prepared.done():
            # The error came before the request body was read (from prepare() or the path
            # arguments: a 503 while the database is away, an unknown path's 404, a 403, a 413).
            # Tornado then closes the connection after this answer but does not say so, and a
            # client (or proxy) reusing the kept-alive connection gets a reset instead of its
            # next answer. Saying it makes the client open a new connection; closing lingering
            # lets a client still sending its body read this answer instead of a reset.
            self.set_header("Connection", "close")
            linger_after_answer(self.request)
        self.set_status(status_code)
        self.finish(json_bytes({"success": False, "error": message}))

    def allowed_methods(self) -> list[str]:
        """The methods this resource answers (for `Allow`): one class serves each path."""
        unimplemented = tornado.web.RequestHandler._unimplemented_method
        return [m for m in self.SUPPORTED_METHODS if getattr(type(self), m.lower()) is not unimplemented]

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, ServiceError | tornado.web.HTTPError):
            return
        if isinstance(value, UNAVAILABLE_ERRORS):
            database_outage.failed(f"{self.request.method} {self.request.path}", value)
            return
        log.error(
            "unhandled error in %s %s",
            self.request.method,
            self.request.path,
            exc_info=(typ, value, tb),
            extra=self.log_extra(),
        )

    def log_extra(self) -> dict[str, Any]:
        user = getattr(self, "current_user", None)
        if user is None:
            return {"request_id": self.request_id, "user_id": None}
        # While an admin impersonates someone, every line names the admin too (None is left out).
        return {"request_id": self.request_id, "user_id": user.id, "impersonator_id": user.impersonator_id}


def authenticated(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """401 "Unauthorized" unless a person is logged in."""

    @functools.wraps(method)
    async def wrapper(self: APIHandler, *args: Any, **kwargs: Any) -> Any:
        if self.current_user is None:
            raise ServiceError(401, "Unauthorized")
        return await method(self, *args, **kwargs)

    return wrapper


def admin_required(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """401 when logged out, 403 when logged in without the admin flag."""

    @functools.wraps(method)
    async def wrapper(self: APIHandler, *args: Any, **kwargs: Any) -> Any:
        if self.current_user is None:
            raise ServiceError(401, "Unauthorized")
        if not self.current_user.is_admin:
            raise ServiceError(403, "Forbidden: Admin access required")
        return await method(self, *args, **kwargs)

    return wrapper


class NotFoundHandler(APIHandler):
    """Every unknown path: a JSON 404 whatever the method."""

    async def prepare(self) -> None:
        raise ServiceError(404, "Not found")


ACCESS_LOG = logging.getLogger("webedt.access")
# The metric children of each (handler, method, status): `labels()` takes a lock and hashes its
# arguments on every call, a noticeable share of a /health answer.
_request_counters: dict[tuple[str, str, int], Any] = {}
_latency_histograms: dict[str, Any] = {}


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access-log hook: every request counted in Prometheus; a line, with its id and user,
    for an error (4xx INFO, 5xx WARNING) or one slower than ACCESS_LOG_SLOW_SECONDS (INFO). A
    quick success is DEBUG: its line cost about a quarter of a `/api/auth/session` answer."""
    request: HTTPServerRequest = handler.request
    status = handler.get_status()
    name = handler.__class__.__name__
    method = request.method or ""
    seconds = request.request_time()
    counter = _request_counters.get((name, method, status))
    if counter is None:
        counter = _request_counters[(name, method, status)] = metrics.HTTP_REQUESTS.labels(name, method, str(status))
    counter.inc()
    histogram = _latency_histograms.get(name)
    if histogram is None:
        histogram = _latency_histograms[name] = metrics.HTTP_LATENCY.labels(name)
    histogram.observe(seconds)
    if status >= 500:
        level = logging.WARNING
    elif status >= 400 or seconds >= handler.application.settings["ctx"].config.access_log_slow_seconds:
        level = logging.INFO
    else:
        level = logging.DEBUG
    if not ACCESS_LOG.isEnabledFor(level):
        return  # no line will be written: skip building its fields
    extra = handler.log_extra() if isinstance(handler, APIHandler) else {}
    extra.update(status=status, method=method, path=request.path, duration_ms=round(seconds * 1000, 1))
    ACCESS_LOG.log(level, "%s %s %s", method, request.path, status, extra=extra)
