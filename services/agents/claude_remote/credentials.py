"""Claude OAuth credentials: reading them and refreshing them single-flight (CONTRACT.md 5.8).

Refresh tokens rotate on every refresh, so a refresh runs inside a transaction holding the
user's row lock (`SELECT ... FOR UPDATE`) and stores the new pair before the lock is released.
A second replica that wanted to refresh at the same moment waits, then sees the fresh token and
does not refresh again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx

from services.context import AppContext
from services.db import allow_slow_transaction, queries
from services.errors import ServiceError

log = logging.getLogger(__name__)

CLAUDE_CODE_CLIENT_ID = "9d1c250a-e61b-44d9-88ed-5944d1962f5e"
REFRESH_MARGIN_MS = 10 * 60 * 1000
# Kept beside the tokens, never shown: when the server obtained them (ms), which gives their lifetime.
OBTAINED_AT = "obtainedAt"
NOT_CONFIGURED = "Claude authentication not configured. Please connect your Claude account in settings."
EXPIRED = "Claude token expired. Please reconnect your Claude account."


class RefreshRefused(ServiceError):
    """The token endpoint refused the refresh token: the person must reconnect Claude."""

    def __init__(self) -> None:
        super().__init__(401, EXPIRED)


def needs_refresh(credentials: dict[str, Any]) -> bool:
    """Whether less than min(10 minutes, half the token's lifetime) remains. The half keeps a token
    that lives under the margin (5 minutes, say) from being refreshed again on every use; the
    lifetime is known only for tokens this server obtained itself."""
    expires_at = credentials.get("expiresAt")
    if not isinstance(expires_at, int | float):
        return False
    margin: float = REFRESH_MARGIN_MS
    obtained_at = credentials.get(OBTAINED_AT)
    if isinstance(obtained_at, int | float) and obtained_at < expires_at:
        margin = min(margin, (expires_at - obtained_at) / 2)
    return expires_at - time.time() * 1000 <= margin


def public(credentials: dict[str, Any]) -> dict[str, Any]:
    """The credentials as their owner sees them (without the server's own bookkeeping)."""
    return {key: value for key, value in credentials.items() if key != OBTAINED_AT}


async def _refresh_at_token_endpoint(ctx: AppContext, credentials: dict[str, Any]) -> dict[str, Any]:
    """The refreshed credentials; 401 when the refresh token is refused, 502/503 when the token
    endpoint is down or answers nonsense (the stored pair is still good then)."""
    refresh_token = credentials.get("refreshToken")
    if not isinstance(refresh_token, str) or not refresh_token:
        raise RefreshRefused()
    body = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": CLAUDE_CODE_CLIENT_ID}
    try:
        async with httpx.AsyncClient(timeout=ctx.config.claude_request_timeout_seconds) as client:
            response = await client.post(ctx.config.claude_oauth_token_url, json=body)
    except httpx.HTTPError as exc:
        log.warning("Claude token endpoint unreachable: %s", exc.__class__.__name__)
        raise ServiceError(502, "Could not reach Claude to refresh the token. Please try again shortly.") from None
    if response.status_code >= 500 or response.status_code == 429:
        # Not a verdict on the refresh token (which was not used up): try again later.
        raise ServiceError(502, "Claude could not refresh the token right now. Please try again shortly.")
    if response.status_code != 200:
        log.info("Claude token refresh refused with status %s", response.status_code)
        raise RefreshRefused()
    try:
        payload = response.json()
        access_token, new_refresh_token = payload["access_token"], payload.get("refresh_token")
        expires_in = float(payload.get("expires_in", 3600))
        if not isinstance(access_token, str) or not access_token:
            raise ValueError("no access token")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ServiceError(502, "Claude answered the token refresh with something unreadable.") from None
    refreshed = dict(credentials)
    refreshed["accessToken"] = access_token
    # Refresh tokens rotate; an endpoint that does not send a new one keeps the old one valid.
    refreshed["refreshToken"] = (
        new_refresh_token if isinstance(new_refresh_token, str) and new_refresh_token else refresh_token
    )
    now_ms = int(time.time() * 1000)
    refreshed["expiresAt"] = int(now_ms + expires_in * 1000)
    refreshed[OBTAINED_AT] = now_ms
    return refreshed


async def load(ctx: AppContext, user_id: str) -> dict[str, Any] | None:
    """The stored credentials, decrypted, or None."""
    row = await queries.users.get_user_by_id(ctx.pool, id=user_id)
    return ctx.secrets.decrypt_json(row["claude_auth"]) if row else None


async def valid_credentials(ctx: AppContext, user_id: str, force: bool = False) -> tuple[dict[str, Any], bool]:
    """Credentials good for at least ten more minutes, refreshing (and storing) them when needed.

    Returns (credentials, refreshed). Raises 400 when none are stored and 401 when the refresh
    token is refused.
    """
    credentials = await load(ctx, user_id)
    if credentials is None:
        raise ServiceError(400, NOT_CONFIGURED)
    if not force and not needs_refresh(credentials):
        return credentials, False
    async with ctx.pool.acquire() as conn, conn.transaction():
        # The row stays locked across the token endpoint's answer (refresh tokens rotate), and a
        # second refresher waits for it: both outlast the pool's short lock and idle timeouts.
        await allow_slow_transaction(conn, ctx.config.claude_request_timeout_seconds + 10)
        current = ctx.secrets.decrypt_json(await queries.users.lock_claude_auth(conn, id=user_id))
        if current is None:
            raise ServiceError(400, NOT_CONFIGURED)
        if current.get("refreshToken") != credentials.get("refreshToken") and not needs_refresh(current):
            # Another request or replica refreshed while this one waited for the lock.
            return current, True
        if not force and not needs_refresh(current):
            return current, False
        refreshed = await _refresh_at_token_endpoint(ctx, current)
        await queries.users.set_claude_auth(conn, id=user_id, claude_auth=ctx.secrets.encrypt_json(refreshed))
        return refreshed, True


async def refresh_route(ctx: AppContext, user_id: str) -> dict[str, Any]:
    """POST /api/user/claude-auth/refresh."""
    credentials = await load(ctx, user_id)
    if credentials is None:
        raise ServiceError(400, "No Claude authentication found for user")
    refreshed_credentials, refreshed = await valid_credentials(ctx, user_id)
    return {
        "message": "Token refreshed successfully" if refreshed else "Token is still valid",
        "claudeAuth": public(refreshed_credentials),
        "refreshed": refreshed,
    }


async def credentials_route(ctx: AppContext, user_id: str) -> dict[str, Any]:
    """GET /api/user/claude-auth/credentials: the owner's own tokens, refreshed when due."""
    credentials = await load(ctx, user_id)
    if credentials is None:
        raise ServiceError(400, "No Claude authentication found for user")
    refreshed = False
    try:
        credentials, refreshed = await valid_credentials(ctx, user_id)
    except ServiceError as exc:
        # As the contract has it: a failed refresh still returns the stored token.
        log.info("credential refresh failed (%s); returning stored token", exc.status)
    expires_at = credentials.get("expiresAt")
    expires_in = max(0, int(expires_at - time.time() * 1000)) if isinstance(expires_at, int | float) else None
    return {"claudeAuth": public(credentials), "refreshed": refreshed, "expiresAt": expires_at, "expiresIn": expires_in}
