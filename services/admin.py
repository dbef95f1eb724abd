"""Administration: users, statistics and audited impersonation (CONTRACT.md 1.8).

Unlike the original, no response carries a secret (GitHub token, Claude credentials, password
hash), e-mails are normalized like self-registration, passwords follow the same 8..72 rule, and
impersonation is recorded in `impersonations` and can be undone: the impersonation login session
remembers the admin, and stopping gives the admin a fresh session of their own.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from services import auth
from services.clock import iso
from services.context import AppContext
from services.db import queries
from services.errors import ServiceError
from services.pagination import Page
from services.users import claude_auth_summary, display_name

USER_NOT_FOUND = "User not found"
EMAIL_TAKEN = "User with this email already exists"
USERS_PAGE_DEFAULT = 100
USERS_PAGE_MAX = 500


def user_summary(row: asyncpg.Record) -> dict[str, Any]:
    """A user as the admin list shows it."""
    return {
        "id": row["id"],
        "email": row["email"],
        "displayName": row["display_name"],
        "githubId": row["github_id"],
        "isAdmin": row["is_admin"],
        "createdAt": iso(row["created_at"]),
    }


def user_detail(ctx: AppContext, row: asyncpg.Record) -> dict[str, Any]:
    """One user for an admin: what is connected, never the credentials themselves."""
    detail = user_summary(row)
    detail.update(
        {
            # Kept as keys for old clients; the token itself never leaves the server.
            "githubAccessToken": None,
            "githubConnected": bool(row["github_access_token"]),
            "claudeAuth": claude_auth_summary(ctx.secrets.decrypt_json(row["claude_auth"])),
            "imageResizeMaxDimension": row["image_resize_max_dimension"],
            "voiceCommandKeywords": row["voice_command_keywords"],
        }
    )
    return detail


async def list_users(ctx: AppContext, page: Page) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One page of users in creation order, and its pagination facts."""
    rows = [r async for r in queries.users.list_users_page(ctx.pool, limit=page.limit, offset=page.offset)]
    total = await queries.users.count_users(ctx.pool)
    return [user_summary(r) for r in rows], page.fields(total, len(rows))


async def get_user(ctx: AppContext, user_id: str) -> asyncpg.Record:
    row = await queries.users.get_user_by_id(ctx.pool, id=user_id) if user_id else None
    if row is None:
        raise ServiceError(404, USER_NOT_FOUND)
    return row


def _display_name(value: Any) -> str | None:
    return display_name(value, not_a_string="displayName must be a string")


def _is_admin_flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ServiceError(400, "isAdmin must be true or false")
    return value


async def create_user(ctx: AppContext, body: dict[str, Any]) -> dict[str, Any]:
    """POST /api/admin/users."""
    email, password = body.get("email"), body.get("password")
    if not email or not password:
        raise ServiceError(400, "Email and password are required")
    normalized = auth.normalize_email(email)
    encoded = auth.check_password_rules(password)
    display_name = _display_name(body.get("displayName"))
    is_admin = _is_admin_flag(body["isAdmin"]) if body.get("isAdmin") is not None else False
    if await queries.users.get_user_by_email(ctx.pool, email=normalized) is not None:
        raise ServiceError(400, EMAIL_TAKEN)
    password_hash = await auth.hash_password(ctx, encoded)
    row = await queries.users.insert_user(
        ctx.pool,
        id=auth.new_user_id(),
        email=normalized,
        display_name=display_name,
        password_hash=password_hash,
        is_admin=is_admin,
    )
    if row is None:
        raise ServiceError(400, EMAIL_TAKEN)
    return user_summary(row)


def _email(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ServiceError(400, "Please enter a valid email address")
    return auth.normalize_email(value)


# What PATCH /api/admin/users/:id may change besides the password: body key -> (column of
# queries.users.update_user, its parser), checked in this order.
USER_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "isAdmin": ("is_admin", _is_admin_flag),
    "email": ("email", _email),
    "displayName": ("display_name", _display_name),
}
# queries.users.update_user changes a column only when its set_<column> flag is true.
NO_CHANGES: dict[str, Any] = {
    "set_email": False,
    "email": None,
    "set_display_name": False,
    "display_name": None,
    "set_is_admin": False,
    "is_admin": None,
    "set_password": False,
    "password_hash": None,
}


def _user_changes(admin: auth.CurrentUser, user_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """The arguments of queries.users.update_user for a valid body (the password aside)."""
    if user_id == admin.id and body.get("isAdmin") is False:
        raise ServiceError(400, "Cannot remove your own admin status")
    changes = dict(NO_CHANGES)
    for key, (column, parse) in USER_FIELDS.items():
        if key in body:
            changes[f"set_{column}"], changes[column] = True, parse(body[key])
    return changes


async def _store_user_changes(
    ctx: AppContext, admin: auth.CurrentUser, user_id: str, changes: dict[str, Any]
) -> asyncpg.Record:
    try:
        async with ctx.pool.acquire() as conn, conn.transaction():
            row = await queries.users.update_user(conn, id=user_id, **changes)
            if row is not None and changes["set_password"]:
                # A reset password signs the person out everywhere (but not the admin doing it).
                await queries.auth_sessions.delete_auth_sessions_except(conn, user_id=user_id, keep_id=admin.session_id)
    except asyncpg.UniqueViolationError:
        raise ServiceError(400, EMAIL_TAKEN) from None
    ctx.login_cache.forget_user(user_id)
    if row is None:
        raise ServiceError(404, USER_NOT_FOUND)
    return row


async def update_user(ctx: AppContext, admin: auth.CurrentUser, user_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """PATCH /api/admin/users/:id: any of email, displayName, isAdmin, password."""
    if not any(key in body for key in (*USER_FIELDS, "password")):
        raise ServiceError(400, "No fields to update")
    changes = _user_changes(admin, user_id, body)
    encoded = auth.check_password_rules(body["password"]) if "password" in body else None
    await get_user(ctx, user_id)
    if changes["set_email"]:
        holder = await queries.users.get_user_by_email(ctx.pool, email=changes["email"])
        if holder is not None and holder["id"] != user_id:
            raise ServiceError(400, EMAIL_TAKEN)
    if encoded is not None:
        changes["set_password"], changes["password_hash"] = True, await auth.hash_password(ctx, encoded)
    return user_summary(await _store_user_changes(ctx, admin, user_id, changes))


async def delete_user(ctx: AppContext, admin: auth.CurrentUser, user_id: str) -> dict[str, Any]:
    """DELETE /api/admin/users/:id: the user and everything they own."""
    if user_id == admin.id:
        raise ServiceError(400, "Cannot delete your own account")
    deleted = await queries.users.delete_user(ctx.pool, id=user_id) if user_id else None
    if deleted is None:
        raise ServiceError(404, USER_NOT_FOUND)
    ctx.login_cache.forget_user(user_id)
    return {"id": deleted}


async def stats(ctx: AppContext) -> dict[str, Any]:
    """GET /api/admin/stats."""
    row = await queries.admin.get_admin_stats(ctx.pool)
    return {
        "totalUsers": row["total_users"],
        "totalAdmins": row["total_admins"],
        "activeSessions": row["active_sessions"],
        "totalChatSessions": row["total_chat_sessions"],
        "runningChatSessions": row["running_chat_sessions"],
    }


# ---- impersonation ----------------------------------------------------------------------------


async def impersonate(
    ctx: AppContext, admin: auth.CurrentUser, target_id: str, client_ip: str
) -> tuple[str, asyncpg.Record]:
    """Switch the admin's login to `target_id`; returns the new cookie token and the target row.

    Records the start in `impersonations`; the admin's own login session is closed, and a new
    one is opened by `stop_impersonating`.
    """
    if target_id == admin.id:
        raise ServiceError(400, "Cannot impersonate yourself")
    if await queries.auth_sessions.get_impersonation_of_session(ctx.pool, id=admin.session_id) is not None:
        raise ServiceError(400, "Stop impersonating before impersonating someone else")
    target = await get_user(ctx, target_id)
    token = secrets.token_urlsafe(32)
    async with ctx.pool.acquire() as conn, conn.transaction():
        audit_id = await queries.impersonations.insert_impersonation(
            conn,
            admin_id=admin.id,
            admin_email=admin.user["email"],
            target_user_id=target["id"],
            target_email=target["email"],
            client_ip=client_ip,
        )
        await queries.auth_sessions.insert_impersonation_session(
            conn,
            id=auth.hash_token(token),
            user_id=target["id"],
            expires_at=datetime.now(UTC) + auth.SESSION_LIFETIME,
            impersonator_id=admin.id,
            impersonation_id=audit_id,
        )
        await queries.auth_sessions.delete_auth_session(conn, id=admin.session_id)
    ctx.login_cache.forget_user(admin.id)
    return token, target


async def stop_impersonating(ctx: AppContext, current: auth.CurrentUser) -> tuple[str, asyncpg.Record]:
    """Back to the admin's own account: a fresh login session for them, the end recorded."""
    link = await queries.auth_sessions.get_impersonation_of_session(ctx.pool, id=current.session_id)
    if link is None:
        raise ServiceError(400, "You are not impersonating anyone")
    admin = await queries.users.get_user_by_id(ctx.pool, id=link["impersonator_id"])
    if admin is None:
        raise ServiceError(400, "You are not impersonating anyone")
    token, _ = await auth.start_session(ctx, admin["id"])
    async with ctx.pool.acquire() as conn, conn.transaction():
        await queries.auth_sessions.delete_auth_session(conn, id=current.session_id)
        if link["impersonation_id"] is not None:
            await queries.impersonations.end_impersonation(conn, id=link["impersonation_id"])
    ctx.login_cache.forget_user(current.id)
    return token, admin


async def impersonation_of(ctx: AppContext, current: auth.CurrentUser) -> dict[str, Any] | None:
    """Who is impersonating behind this login session, or None."""
    link = await queries.auth_sessions.get_impersonation_of_session(ctx.pool, id=current.session_id)
    if link is None:
        return None
    return {"impersonatorId": link["impersonator_id"], "impersonatorEmail": link["impersonator_email"]}


async def list_impersonations(ctx: AppContext, page: Page) -> dict[str, Any]:
    """GET /api/admin/impersonations: the audit trail, newest first."""
    rows = [r async for r in queries.impersonations.list_impersonations(ctx.pool, limit=page.limit, offset=page.offset)]
    total = await queries.impersonations.count_impersonations(ctx.pool)
    return {
        "impersonations": [
            {
                "id": r["id"],
                "adminId": r["admin_id"],
                "adminEmail": r["admin_email"],
                "targetUserId": r["target_user_id"],
                "targetEmail": r["target_email"],
                "clientIp": r["client_ip"],
                "startedAt": iso(r["started_at"]),
                "endedAt": iso(r["ended_at"]),
            }
            for r in rows
        ],
        **page.fields(total, len(rows)),
    }
