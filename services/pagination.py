"""Pagination: one rule for `limit`/`offset` query parameters and one shape of the reply.

The rule (as JupyterHub's `get_api_pagination`): a missing `limit` is the route's default, one
above the route's maximum is capped at it, and one that is not a whole number from 1 up is a 400
naming the parameter and its range; `offset` is a whole number from 0 (default 0). The reply's
paging facts are `{total, limit, offset, hasMore}` (`Page.fields`, as JupyterHub's
`paginated_model`), beside whatever the route lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.errors import ServiceError

# Larger numbers are not ids or positions this server could have (bigint).
_MAX_NUMBER = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Page:
    """Which slice of a list was asked for."""

    limit: int
    offset: int = 0

    def fields(self, total: int, returned: int) -> dict[str, Any]:
        """The paging facts of a reply that holds `returned` items of `total`."""
        return {"total": total, "limit": self.limit, "offset": self.offset, "hasMore": self.offset + returned < total}


def whole_number(name: str, raw: str | None, *, minimum: int, range_text: str) -> int | None:
    """A query parameter that must be a whole number >= `minimum`; None when absent or empty."""
    if raw is None or raw.strip() == "":
        return None
    text = raw.strip()
    if not text.isdigit() or int(text) > _MAX_NUMBER or int(text) < minimum:
        raise ServiceError(400, f"{name} must be a whole number {range_text}")
    return int(text)


def parse_page(limit: str | None, offset: str | None, *, default: int, maximum: int) -> Page:
    """The `Page` a route's `limit` and `offset` ask for (see the module docstring)."""
    size = whole_number("limit", limit, minimum=1, range_text=f"from 1 to {maximum}")
    start = whole_number("offset", offset, minimum=0, range_text="from 0")
    return Page(min(size, maximum) if size is not None else default, start or 0)
