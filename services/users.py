"""User settings and the user payload that the auth routes return (CONTRACT.md 1.4, 1.5).

The payload keeps the original's keys but never carries a secret: `claudeAuth` says what is
connected (expiry, scopes, subscription) and `githubAccessToken` is always null; `githubId`
tells whether GitHub is connected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from services.clock import iso
from services.context import AppContext
from services.db import queries
from services.errors import ServiceError


def claude_auth_summary(claude_auth: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the browser may know about stored Claude credentials: that they exist, not the tokens."""
    if not claude_auth:
        return None
    return {
        "connected": True,
        "expiresAt": claude_auth.get("expiresAt"),
        "scopes": claude_auth.get("scopes"),
        "subscriptionType": claude_auth.get("subscriptionType"),
        "rateLimitTier": claude_auth.get("rateLimitTier"),
    }


def user_payload(ctx: AppContext, user: asyncpg.Record) -> dict[str, Any]:
    """The contract's UserPayload, without secrets, plus the settings the original left out."""
    return {
        "id": user["id"],
        "email": user["email"],
        "displayName": user["display_name"],
        "githubId": user["github_id"],
        "githubAccessToken": None,
        "githubConnected": bool(user["github_access_token"]),
        "claudeAuth": claude_auth_summary(ctx.secrets.decrypt_json(user["claude_auth"])),
        "codexAuth": None,
        "geminiAuth": None,
        "preferredProvider": user["preferred_provider"],
        "imageResizeMaxDimension": user["image_resize_max_dimension"],
        "voiceCommandKeywords": user["voice_command_keywords"],
        "stopListeningAfterSubmit": user["stop_listening_after_submit"],
        "defaultLandingPage": user["default_landing_page"],
        "preferredModel": user["preferred_model"],
        "chatVerbosityLevel": user["chat_verbosity_level"],
        "isAdmin": user["is_admin"],
        "createdAt": iso(user["created_at"]),
    }


def parse_claude_auth(body: Any) -> dict[str, Any]:
    """The Claude OAuth object from any of the accepted body shapes (CONTRACT.md 1.5)."""
    candidate = body
    if isinstance(candidate, dict) and isinstance(candidate.get("claudeAuth"), dict):
        candidate = candidate["claudeAuth"]
    if isinstance(candidate, dict) and isinstance(candidate.get("claudeAiOauth"), dict):
        candidate = candidate["claudeAiOauth"]
    if (
        not isinstance(candidate, dict)
        or not isinstance(candidate.get("accessToken"), str)
        or not candidate["accessToken"]
        or not isinstance(candidate.get("refreshToken"), str)
        or not candidate["refreshToken"]
    ):
        raise ServiceError(400, "Invalid Claude auth. Must include accessToken and refreshToken.")
    expires_at = candidate.get("expiresAt")
    if expires_at is not None and (isinstance(expires_at, bool) or not isinstance(expires_at, int | float)):
        raise ServiceError(400, "Invalid Claude auth. expiresAt must be a number of milliseconds since 1970.")
    allowed = ("accessToken", "refreshToken", "expiresAt", "scopes", "subscriptionType", "rateLimitTier")
    return {key: candidate[key] for key in allowed if key in candidate}


async def save_claude_auth(ctx: AppContext, user_id: str, claude_auth: dict[str, Any] | None) -> None:
    encrypted = ctx.secrets.encrypt_json(claude_auth) if claude_auth else None
    await queries.users.set_claude_auth(ctx.pool, id=user_id, claude_auth=encrypted)
    ctx.login_cache.forget_user(user_id)


def one_of(allowed: tuple[Any, ...], message: str) -> Callable[[Any], Any]:
    """A parser that accepts exactly one of `allowed` (never a boolean standing in for 0 or 1) and
    returns the allowed value itself (so 1024.0 is stored as the integer 1024)."""

    def parse(value: Any) -> Any:
        if isinstance(value, bool) or value not in allowed:
            raise ServiceError(400, message)
        return allowed[allowed.index(value)]

    return parse


def display_name(value: Any, not_a_string: str = "Display name must be a string") -> str | None:
    """A display name as stored: trimmed, at most 100 characters; empty or missing is none."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ServiceError(400, not_a_string)
    cleaned = value.strip()
    if len(cleaned) > 100:
        raise ServiceError(400, "Display name must be 100 characters or less")
    return cleaned or None


def _voice_keywords(keywords: Any) -> list[str]:
    """Trimmed, lower-case, without repeats or blanks; at most 20 of at most 100 characters."""
    if not isinstance(keywords, list):
        raise ServiceError(400, "Keywords must be an array")
    normalized: list[str] = []
    for keyword in keywords:
        cleaned = keyword.strip().lower() if isinstance(keyword, str) else ""
        if len(cleaned) > 100:
            raise ServiceError(400, "Each keyword must be 100 characters or less")
        if cleaned and cleaned not in normalized:
            normalized.append(cleaned)
    if len(normalized) > 20:
        raise ServiceError(400, "Maximum of 20 keywords allowed")
    return normalized


def _boolean(message: str) -> Callable[[Any], bool]:
    def parse(value: Any) -> bool:
        if not isinstance(value, bool):
            raise ServiceError(400, message)
        return value

    return parse


_model = one_of((None, "", "opus", "sonnet"), "Invalid model. Must be one of: opus, sonnet, or empty")


def _preferred_model(value: Any) -> str | None:
    """A model name, or none (missing or empty) for the provider's default."""
    return _model(value) or None


@dataclass(frozen=True)
class Setting:
    """One personal setting, changed by `POST /api/user/<route>` (CONTRACT.md 1.5)."""

    body_key: str  # where the new value is in the request body
    parse: Callable[[Any], Any]  # the value to store, or ServiceError(400) naming what is wrong
    column: str  # its column of `users` (one of those queries.users.update_user_setting can set)
    message: str  # the success message
    echo: str | None = None  # a reply key that carries the stored value back, if any


# The route name of each setting: the table behind the routes, the checks and the one UPDATE.
SETTINGS: dict[str, Setting] = {
    "preferred-provider": Setting(
        "provider",
        one_of(
            ("claude", "codex", "copilot", "gemini"), "Invalid provider. Must be one of: claude, codex, copilot, gemini"
        ),
        "preferred_provider",
        "Preferred provider updated successfully",
    ),
    "image-resize-setting": Setting(
        "maxDimension",
        one_of((512, 1024, 2048, 4096, 8000), "Invalid max dimension. Must be one of: 512, 1024, 2048, 4096, 8000"),
        "image_resize_max_dimension",
        "Image resize setting updated successfully",
    ),
    "display-name": Setting("displayName", display_name, "display_name", "Display name updated successfully"),
    "voice-command-keywords": Setting(
        "keywords",
        _voice_keywords,
        "voice_command_keywords",
        "Voice command keywords updated successfully",
        echo="keywords",
    ),
    "stop-listening-after-submit": Setting(
        "stopAfterSubmit",
        _boolean("stopAfterSubmit must be a boolean"),
        "stop_listening_after_submit",
        "Stop listening setting updated successfully",
    ),
    "default-landing-page": Setting(
        "landingPage",
        one_of(
            ("store", "library", "community", "sessions"),
            "Invalid landing page. Must be one of: store, library, community, sessions",
        ),
        "default_landing_page",
        "Default landing page updated successfully",
    ),
    "preferred-model": Setting(
        "preferredModel",
        _preferred_model,
        "preferred_model",
        "Preferred model updated successfully",
    ),
    "chat-verbosity": Setting(
        "verbosityLevel",
        one_of(("minimal", "normal", "verbose"), "Invalid verbosity level. Must be one of: minimal, normal, verbose"),
        "chat_verbosity_level",
        "Chat verbosity updated successfully",
    ),
}

SETTINGS_ROUTES = tuple(SETTINGS)


def validate_setting(name: str, body: dict[str, Any]) -> tuple[str, Any, dict[str, Any]]:
    """Check one settings route's body; return (column, value to store, success data)."""
    setting = SETTINGS.get(name)
    if setting is None:
        raise ServiceError(404, "Not found")
    value = setting.parse(body.get(setting.body_key))
    data: dict[str, Any] = {"message": setting.message}
    if setting.echo:
        data[setting.echo] = value
    return setting.column, value, data


async def update_setting(ctx: AppContext, user_id: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """Validate and store one setting; return the success data."""
    column, value, data = validate_setting(name, body)
    await queries.users.update_user_setting(ctx.pool, id=user_id, setting={column: value})
    ctx.login_cache.forget_user(user_id)
    return data
