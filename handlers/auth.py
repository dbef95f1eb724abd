"""/api/auth: register, login, logout and the current session (CONTRACT.md 1.4)."""

from __future__ import annotations

from handlers.base import APIHandler, authenticated
from services import auth
from services.clock import iso
from services.errors import ServiceError
from services.users import user_payload


class RegisterHandler(APIHandler):
    async def post(self) -> None:
        body = self.json_body()
        email, password = body.get("email"), body.get("password")
        if not email or not password:
            raise ServiceError(400, "Email and password are required")
        await auth.check_registration_rate(self.ctx, self.client_ip())
        user = await auth.create_user(self.ctx, email, password)
        token, _ = await auth.start_session(self.ctx, user["id"])
        self.set_auth_cookie(token, auth.SESSION_LIFETIME.days)
        self.ok({"user": user_payload(self.ctx, user)}, status=201)


class LoginHandler(APIHandler):
    async def post(self) -> None:
        body = self.json_body()
        email, password = body.get("email"), body.get("password")
        device = self.get_cookie(auth.DEVICE_COOKIE)
        user = await auth.login(self.ctx, email, password, self.client_ip(), device)
        if self.current_user is not None:
            # A new login replaces the session the browser had.
            await auth.end_session(self.ctx, self.current_user.session_id, self.current_user.id)
        token, _ = await auth.start_session(self.ctx, user["id"])
        days = auth.REMEMBER_ME_COOKIE_DAYS if body.get("rememberMe") is True else auth.SESSION_LIFETIME.days
        self.set_auth_cookie(token, days)
        # This browser is now known for this account: others' failures no longer lock it out.
        self.set_cookie(
            auth.DEVICE_COOKIE,
            auth.new_device_token(self.ctx, user["email"]),
            max_age=auth.DEVICE_TOKEN_DAYS * 86400,
            path="/api/auth",
            httponly=True,
            samesite="Strict",
            secure=self.ctx.config.production,
        )
        self.ok({"user": user_payload(self.ctx, user)})


class LogoutHandler(APIHandler):
    @authenticated
    async def post(self) -> None:
        await auth.end_session(self.ctx, self.user.session_id, self.user.id)
        self.clear_auth_cookie()
        self.ok({"message": "Logged out successfully"})


class SessionHandler(APIHandler):
    @authenticated
    async def get(self) -> None:
        current = self.user
        self.ok(
            {
                "user": user_payload(self.ctx, current.user),
                # The token is the cookie's secret and is never echoed; the session is described.
                "session": {
                    "userId": current.id,
                    "fresh": current.renewed,
                    "expiresAt": iso(current.expires_at),
                },
            }
        )


ROUTES = [
    (r"/api/auth/register", RegisterHandler),
    (r"/api/auth/login", LoginHandler),
    (r"/api/auth/logout", LogoutHandler),
    (r"/api/auth/session", SessionHandler),
]
