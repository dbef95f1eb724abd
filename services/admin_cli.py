"""The `python server.py admin ...` commands: user management from a shell."""

from __future__ import annotations

from datetime import UTC, datetime

from services import auth
from services.context import AppContext
from services.db import queries
from services.errors import ServiceError


async def create_user(ctx: AppContext, email: str, password: str, is_admin: bool) -> int:
    if not password:
        print("error: a password is required: type it at the prompt or pipe it on stdin")
        return 1
    try:
        user = await auth.create_user(ctx, email, password, is_admin=is_admin)
    except ServiceError as exc:
        print(f"error: {exc.message}")
        return 1
    print(f"created {user['email']} (id {user['id']}){' as admin' if is_admin else ''}")
    return 0


async def set_admin(ctx: AppContext, email: str, is_admin: bool) -> int:
    user_id = await queries.users.set_admin_by_email(ctx.pool, email=email.strip(), is_admin=is_admin)
    if user_id is None:
        print(f"error: no user with e-mail {email}")
        return 1
    print(f"{email}: admin {'granted' if is_admin else 'revoked'}")
    return 0


async def list_users(ctx: AppContext) -> int:
    after_created, after_id = datetime(1970, 1, 1, tzinfo=UTC), ""
    while True:
        rows = [
            r
            async for r in queries.users.list_users(
                ctx.pool, after_created_at=after_created, after_id=after_id, limit=500
            )
        ]
        for row in rows:
            flag = "admin" if row["is_admin"] else ""
            print(f"{row['id']}  {row['email']:<40} {row['created_at']:%Y-%m-%d}  {flag}")
        if not rows and not after_id:
            print("no users yet (admin create-user --email ... adds one)")
        if len(rows) < 500:
            return 0
        after_created, after_id = rows[-1]["created_at"], rows[-1]["id"]


async def delete_user(ctx: AppContext, email: str) -> int:
    user_id = await queries.users.delete_user_by_email(ctx.pool, email=email.strip())
    if user_id is None:
        print(f"error: no user with e-mail {email}")
        return 1
    print(f"deleted {email} (id {user_id})")
    return 0
