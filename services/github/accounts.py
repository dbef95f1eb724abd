"""A user's GitHub connection: the token, stored encrypted, and the GitHub user id.

`token_from_user(ctx, user_row)` is how other services (session clean-up) get a decrypted token
from a user row they already hold; `token_for_user_id` reads the row first.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from services.context import AppContext
from services.db import queries
from services.errors import ServiceError
from services.github.api import NOT_CONNECTED


def token_from_user(ctx: AppContext, user: asyncpg.Record | dict[str, Any]) -> str | None:
    """The decrypted GitHub token of a user row, or None (not connected, or no longer decryptable)."""
    return ctx.secrets.decrypt_text(user["github_access_token"])


def require_token(ctx: AppContext, user: asyncpg.Record | dict[str, Any]) -> str:
    """The token, or 400 "GitHub not connected"."""
    token = token_from_user(ctx, user)
    if not token:
        raise ServiceError(400, NOT_CONNECTED)
    return token


async def token_for_user_id(ctx: AppContext, user_id: str) -> str | None:
    """The decrypted GitHub token of the user with this id, or None."""
    row = await queries.users.get_github_connection(ctx.pool, id=user_id)
    return token_from_user(ctx, row) if row else None


async def link(ctx: AppContext, user_id: str, github_id: str, token: str) -> bool:
    """Store the token (encrypted) and GitHub id on this user.

    False when another account already holds this GitHub id: that link is left alone (the
    original silently moved it, which let anyone strip someone else's link). The other account
    disconnects first, or an administrator clears it.
    """
    try:
        row = await queries.users.link_github_account(
            ctx.pool, id=user_id, github_id=github_id, github_access_token=ctx.secrets.encrypt_text(token)
        )
    except asyncpg.UniqueViolationError:
        return False
    ctx.login_cache.forget_user(user_id)
    return row is not None


async def disconnect(ctx: AppContext, user_id: str) -> None:
    """Forget the token and GitHub id (the token is not revoked at GitHub, as in the original)."""
    await queries.users.unlink_github_account(ctx.pool, id=user_id)
    ctx.login_cache.forget_user(user_id)
