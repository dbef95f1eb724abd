"""/api/user: Claude credentials and personal settings (CONTRACT.md 1.5)."""

from __future__ import annotations

from handlers.base import APIHandler, authenticated
from services import usage
from services.agents.claude_remote import credentials
from services.users import SETTINGS_ROUTES, parse_claude_auth, save_claude_auth, update_setting


class ClaudeAuthHandler(APIHandler):
    @authenticated
    async def post(self) -> None:
        credentials = parse_claude_auth(self.json_body())
        await save_claude_auth(self.ctx, self.user.id, credentials)
        self.ok({"message": "Claude authentication updated successfully"})

    @authenticated
    async def delete(self) -> None:
        await save_claude_auth(self.ctx, self.user.id, None)
        self.ok({"message": "Claude authentication removed"})


class ClaudeAuthRefreshHandler(APIHandler):
    @authenticated
    async def post(self) -> None:
        self.ok(await credentials.refresh_route(self.ctx, self.user.id))


class ClaudeAuthCredentialsHandler(APIHandler):
    @authenticated
    async def get(self) -> None:
        self.ok(await credentials.credentials_route(self.ctx, self.user.id))


class SettingHandler(APIHandler):
    @authenticated
    async def post(self, name: str) -> None:
        self.ok(await update_setting(self.ctx, self.user.id, name, self.json_body()))


class UsageHandler(APIHandler):
    @authenticated
    async def get(self) -> None:
        # Always the person's own (while an admin impersonates, the person's).
        self.ok(await usage.user_usage(self.ctx, self.user.id))


ROUTES = [
    (r"/api/user/usage", UsageHandler),
    (r"/api/user/claude-auth", ClaudeAuthHandler),
    (r"/api/user/claude-auth/refresh", ClaudeAuthRefreshHandler),
    (r"/api/user/claude-auth/credentials", ClaudeAuthCredentialsHandler),
    (r"/api/user/(" + "|".join(SETTINGS_ROUTES) + ")", SettingHandler),
]
