"""The one error type services raise; the base handler renders it as a JSON error body."""

from __future__ import annotations


class ServiceError(Exception):
    """A failure a person can act on: an HTTP status and a message for the `error` field."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
