"""/api/admin: users, statistics and impersonation, for admins only (CONTRACT.md 1.8)."""

from __future__ import annotations

from handlers.base import APIHandler, admin_required, authenticated
from services import admin, auth, usage
from services.users import user_payload


class UsersHandler(APIHandler):
    @admin_required
    async def get(self) -> None:
        users, pagination = await admin.list_users(
            self.ctx, self.page(default=admin.USERS_PAGE_DEFAULT, maximum=admin.USERS_PAGE_MAX)
        )
        # `data` stays the plain array old clients read; the page facts sit beside it.
        self.write_json({"success": True, "data": users, "pagination": pagination})

    @admin_required
    async def post(self) -> None:
        self.ok(await admin.create_user(self.ctx, self.json_body()))


class UserHandler(APIHandler):
    @admin_required
    async def get(self, user_id: str) -> None:
        self.ok(admin.user_detail(self.ctx, await admin.get_user(self.ctx, user_id)))

    @admin_required
    async def patch(self, user_id: str) -> None:
        self.ok(await admin.update_user(self.ctx, self.user, user_id, self.json_body()))

    @admin_required
    async def delete(self, user_id: str) -> None:
        self.ok(await admin.delete_user(self.ctx, self.user, user_id))


class ImpersonateHandler(APIHandler):
    @admin_required
    async def post(self, user_id: str) -> None:
        token, target = await admin.impersonate(self.ctx, self.user, user_id, self.client_ip())
        self.set_auth_cookie(token, auth.SESSION_LIFETIME.days)
        self.ok({"message": "Now impersonating user", "userId": target["id"]})


class StopImpersonatingHandler(APIHandler):
    # Not admin_required: while impersonating, the request carries the (often non-admin) target.
    @authenticated
    async def post(self) -> None:
        token, admin_row = await admin.stop_impersonating(self.ctx, self.user)
        self.set_auth_cookie(token, auth.SESSION_LIFETIME.days)
        self.ok(
            {"message": "Stopped impersonating", "userId": admin_row["id"], "user": user_payload(self.ctx, admin_row)}
        )


class ImpersonationStatusHandler(APIHandler):
    @authenticated
    async def get(self) -> None:
        impersonation = await admin.impersonation_of(self.ctx, self.user)
        self.ok({"impersonating": impersonation is not None, "userId": self.user.id, **(impersonation or {})})


class ImpersonationsHandler(APIHandler):
    @admin_required
    async def get(self) -> None:
        self.ok(
            await admin.list_impersonations(
                self.ctx, self.page(default=admin.USERS_PAGE_DEFAULT, maximum=admin.USERS_PAGE_MAX)
            )
        )


class StatsHandler(APIHandler):
    @admin_required
    async def get(self) -> None:
        self.ok(await admin.stats(self.ctx))


class UsageHandler(APIHandler):
    @admin_required
    async def get(self) -> None:
        self.ok(
            await usage.admin_usage(
                self.ctx,
                self.get_query_argument("month", None),
                self.get_query_argument("sort", None),
                self.get_query_argument("order", None),
                self.page(default=admin.USERS_PAGE_DEFAULT, maximum=admin.USERS_PAGE_MAX),
            )
        )


class BudgetHandler(APIHandler):
    @admin_required
    async def get(self, user_id: str) -> None:
        self.ok(await usage.budget_json(self.ctx, user_id))

    @admin_required
    async def put(self, user_id: str) -> None:
        self.ok(await usage.set_budget(self.ctx, self.user.id, user_id, self.json_body()))

    @admin_required
    async def delete(self, user_id: str) -> None:
        self.ok(await usage.clear_budget(self.ctx, self.user.id, user_id))


ROUTES = [
    (r"/api/admin/users", UsersHandler),
    (r"/api/admin/users/([^/]+)", UserHandler),
    (r"/api/admin/users/([^/]+)/impersonate", ImpersonateHandler),
    (r"/api/admin/stop-impersonating", StopImpersonatingHandler),
    (r"/api/admin/impersonation", ImpersonationStatusHandler),
    (r"/api/admin/impersonations", ImpersonationsHandler),
    (r"/api/admin/stats", StatsHandler),
    (r"/api/admin/usage", UsageHandler),
    (r"/api/admin/users/([^/]+)/budget", BudgetHandler),
]
