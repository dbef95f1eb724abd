"""User settings and the user payload that the auth routes return (CONTRACT.md 1.4, 1.5).

The payload keeps the original's keys but never carries a secret: `claudeAuth` says what is
connected (expiry, scopes, subscription) and `githubAccessToken` is always null; `githubId`
tells whether GitHub is connected.
"""

from __future__ import annotations

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


def _one_of(value: Any, allowed: tuple[Any, ...], message: str) -> Any:
    if isinstance(value, bool) or value not in allowed:
        raise ServiceError(400, message)
    return value


def validate_setting(name: str, body: dict[str, Any]) -> tuple[str, Any, dict[str, Any]]:
    """Check one settings route's body; return (query name, value, extra success data)."""
    if name == "preferred-provider":
        value = _one_of(
            body.get("provider"),
            ("claude", "codex", "copilot", "gemini"),
            "Invalid provider. Must be one of: claude, codex, copilot, gemini",
        )
        return "set_preferred_provider", value, {"message": "Preferred provider updated successfully"}
    if name == "image-resize-setting":
        value = _one_of(
            body.get("maxDimension"),
            (512, 1024, 2048, 4096, 8000),
            "Invalid max dimension. Must be one of: 512, 1024, 2048, 4096, 8000",
        )
        return "set_image_resize_max_dimension", value, {"message": "Image resize setting updated successfully"}
    if name == "display-name":
        value = body.get("displayName")
        if value is None or value == "":
            value = None
        elif not isinstance(value, str):
            raise ServiceError(400, "Display name must be a string")
        else:
            value = value.strip() or None
            if value is not None and len(value) > 100:
                raise ServiceError(400, "Display name must be 100 characters or less")
        return "set_display_name", value, {"message": "Display name updated successfully"}
    if name == "voice-command-keywords":
        keywords = body.get("keywords")
        if not isinstance(keywords, list):
            raise ServiceError(400, "Keywords must be an array")
        normalized: list[str] = []
        for keyword in keywords:
            if isinstance(keyword, str) and keyword.strip():
                cleaned = keyword.strip().lower()
                if len(cleaned) > 100:
                    raise ServiceError(400, "Each keyword must be 100 characters or less")
                if cleaned not in normalized:
                    normalized.append(cleaned)
        if len(normalized) > 20:
            raise ServiceError(400, "Maximum of 20 keywords allowed")
        return (
            "set_voice_command_keywords",
            normalized,
            {"message": "Voice command keywords updated successfully", "keywords": normalized},
        )
    if name == "stop-listening-after-submit":
        value = body.get("stopAfterSubmit")
        if not isinstance(value, bool):
            raise ServiceError(400, "stopAfterSubmit must be a boolean")
        return "set_stop_listening_after_submit", value, {"message": "Stop listening setting updated successfully"}
    if name == "default-landing-page":
        value = _one_of(
            body.get("landingPage"),
            ("store", "library", "community", "sessions"),
            "Invalid landing page. Must be one of: store, library, community, sessions",
        )
        return "set_default_landing_page", value, {"message": "Default landing page updated successfully"}
    if name == "preferred-model":
        value = body.get("preferredModel")
        if value is not None:
            _one_of(value, ("", "opus", "sonnet"), "Invalid model. Must be one of: opus, sonnet, or empty")
        return "set_preferred_model", value or None, {"message": "Preferred model updated successfully"}
    if name == "chat-verbosity":
        value = _one_of(
            body.get("verbosityLevel"),
            ("minimal", "normal", "verbose"),
            "Invalid verbosity level. Must be one of: minimal, normal, verbose",
        )
        return "set_chat_verbosity_level", value, {"message": "Chat verbosity updated successfully"}
    raise ServiceError(404, "Not found")


SETTINGS_ROUTES = (
    "preferred-provider",
    "image-resize-setting",
    "display-name",
    "voice-command-keywords",
    "stop-listening-after-submit",
    "default-landing-page",
    "preferred-model",
    "chat-verbosity",
)


async def update_setting(ctx: AppContext, user_id: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """Validate and store one setting; return the success data."""
    query_name, value, data = validate_setting(name, body)
    await getattr(queries.users, query_name)(ctx.pool, id=user_id, value=value)
    return data
