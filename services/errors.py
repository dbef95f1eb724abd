"""The one error type services raise; the base handler renders it as a JSON error body."""

from __future__ import annotations


class ServiceError(Exception):
    """A failure a person can act on: an HTTP status and a message for the `error` field."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def bad_request(message: str) -> ServiceError:
    return ServiceError(400, message)


def not_found(message: str = "Session not found") -> ServiceError:
    return ServiceError(404, message)
