"""/api/user: Claude credentials (encrypted at rest) and every setting's validation."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.helpers import TestServer, register

CLAUDE_AUTH = {
    "accessToken": "sk-ant-oat01-access-SECRET-VALUE",
    "refreshToken": "sk-ant-ort01-refresh-SECRET-VALUE",
    "expiresAt": int(time.time() * 1000) + 3_600_000,
    "scopes": ["user:inference"],
    "subscriptionType": "max",
}


async def session_user(client: httpx.AsyncClient) -> dict[str, Any]:
    return (await client.get("/api/auth/session")).json()["data"]["user"]


@pytest.mark.parametrize(
    "body",
    [{"claudeAuth": CLAUDE_AUTH}, CLAUDE_AUTH, {"claudeAiOauth": CLAUDE_AUTH}],
    ids=["wrapped", "bare", "cli-file"],
)
async def test_claude_auth_is_stored_encrypted_and_never_returned(
    client: httpx.AsyncClient, server: TestServer, body: dict[str, Any]
) -> None:
    user = await register(client)
    response = await client.post("/api/user/claude-auth", json=body)
    assert response.json() == {"success": True, "data": {"message": "Claude authentication updated successfully"}}

    stored = await server.ctx.pool.fetchval("SELECT claude_auth FROM users WHERE id = $1", user["id"])
    assert stored and "SECRET-VALUE" not in stored and "sk-ant" not in stored

    session = await client.get("/api/auth/session")
    assert "SECRET-VALUE" not in session.text
    summary = session.json()["data"]["user"]["claudeAuth"]
    assert summary["connected"] is True and summary["subscriptionType"] == "max"

    # Only the owner's credentials route hands the tokens back (as the contract has it).
    credentials = await client.get("/api/user/claude-auth/credentials")
    data = credentials.json()["data"]
    assert data["claudeAuth"]["accessToken"] == CLAUDE_AUTH["accessToken"]
    assert data["refreshed"] is False and 0 < data["expiresIn"] <= 3_600_000

    removed = await client.delete("/api/user/claude-auth")
    assert removed.json()["data"]["message"] == "Claude authentication removed"
    assert (await session_user(client))["claudeAuth"] is None


async def test_claude_auth_validation(client: httpx.AsyncClient) -> None:
    await register(client)
    message = "Invalid Claude auth. Must include accessToken and refreshToken."
    for body in [{}, {"claudeAuth": {"accessToken": "a"}}, {"accessToken": "a", "refreshToken": ""}, {"x": 1}]:
        response = await client.post("/api/user/claude-auth", json=body)
        assert response.status_code == 400
        assert response.json() == {"success": False, "error": message}
    bad_expiry = await client.post(
        "/api/user/claude-auth", json={"accessToken": "a", "refreshToken": "b", "expiresAt": "tomorrow"}
    )
    assert bad_expiry.status_code == 400


async def test_credentials_without_claude_auth(client: httpx.AsyncClient) -> None:
    await register(client)
    for method, path in [("GET", "/api/user/claude-auth/credentials"), ("POST", "/api/user/claude-auth/refresh")]:
        response = await client.request(method, path)
        assert response.status_code == 400
        assert response.json()["error"] == "No Claude authentication found for user"


SETTINGS_CASES = [
    ("preferred-provider", {"provider": "gemini"}, "preferredProvider", "gemini"),
    ("image-resize-setting", {"maxDimension": 2048}, "imageResizeMaxDimension", 2048),
    ("display-name", {"displayName": "  Ada  "}, "displayName", "Ada"),
    ("display-name", {"displayName": ""}, "displayName", None),
    ("stop-listening-after-submit", {"stopAfterSubmit": True}, "stopListeningAfterSubmit", True),
    ("default-landing-page", {"landingPage": "sessions"}, "defaultLandingPage", "sessions"),
    ("preferred-model", {"preferredModel": "opus"}, "preferredModel", "opus"),
    ("preferred-model", {"preferredModel": ""}, "preferredModel", None),
    ("chat-verbosity", {"verbosityLevel": "minimal"}, "chatVerbosityLevel", "minimal"),
]


@pytest.mark.parametrize(("route", "body", "key", "expected"), SETTINGS_CASES)
async def test_each_setting_is_stored(
    client: httpx.AsyncClient, route: str, body: dict[str, Any], key: str, expected: Any
) -> None:
    await register(client)
    response = await client.post(f"/api/user/{route}", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True and "message" in response.json()["data"]
    assert (await session_user(client))[key] == expected


INVALID_CASES = [
    ("preferred-provider", {"provider": "openai"}, "Invalid provider. Must be one of: claude, codex, copilot, gemini"),
    ("preferred-provider", {}, "Invalid provider. Must be one of: claude, codex, copilot, gemini"),
    (
        "image-resize-setting",
        {"maxDimension": "1024"},
        "Invalid max dimension. Must be one of: 512, 1024, 2048, 4096, 8000",
    ),
    (
        "image-resize-setting",
        {"maxDimension": 1000},
        "Invalid max dimension. Must be one of: 512, 1024, 2048, 4096, 8000",
    ),
    ("display-name", {"displayName": 7}, "Display name must be a string"),
    ("display-name", {"displayName": "x" * 101}, "Display name must be 100 characters or less"),
    ("voice-command-keywords", {"keywords": "stop"}, "Keywords must be an array"),
    ("voice-command-keywords", {"keywords": [f"k{i}" for i in range(21)]}, "Maximum of 20 keywords allowed"),
    ("stop-listening-after-submit", {"stopAfterSubmit": "yes"}, "stopAfterSubmit must be a boolean"),
    (
        "default-landing-page",
        {"landingPage": "home"},
        "Invalid landing page. Must be one of: store, library, community, sessions",
    ),
    ("preferred-model", {"preferredModel": "haiku"}, "Invalid model. Must be one of: opus, sonnet, or empty"),
    ("chat-verbosity", {"verbosityLevel": 3}, "Invalid verbosity level. Must be one of: minimal, normal, verbose"),
]


@pytest.mark.parametrize(("route", "body", "message"), INVALID_CASES)
async def test_each_setting_rejects_bad_values(
    client: httpx.AsyncClient, route: str, body: dict[str, Any], message: str
) -> None:
    await register(client)
    before = await session_user(client)
    response = await client.post(f"/api/user/{route}", json=body)
    assert response.status_code == 400
    assert response.json() == {"success": False, "error": message}
    assert await session_user(client) == before


async def test_voice_keywords_are_normalized(client: httpx.AsyncClient) -> None:
    await register(client)
    response = await client.post(
        "/api/user/voice-command-keywords", json={"keywords": [" Stop ", "stop", "", 5, "SEND it"]}
    )
    assert response.json()["data"]["keywords"] == ["stop", "send it"]
    assert (await session_user(client))["voiceCommandKeywords"] == ["stop", "send it"]


async def test_settings_need_a_login(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/user/display-name", json={"displayName": "x"})
    assert response.status_code == 401
    assert response.json() == {"success": False, "error": "Unauthorized"}


async def test_a_setting_changes_only_its_own_column(client: httpx.AsyncClient) -> None:
    # All settings share one UPDATE (queries.users.update_user_setting): each route must write its
    # own column and keep every other one as the earlier routes left it.
    await register(client)
    changes = [
        ("preferred-provider", {"provider": "gemini"}),
        ("image-resize-setting", {"maxDimension": 4096}),
        ("display-name", {"displayName": "Ada"}),
        ("voice-command-keywords", {"keywords": ["over"]}),
        ("stop-listening-after-submit", {"stopAfterSubmit": True}),
        ("default-landing-page", {"landingPage": "library"}),
        ("preferred-model", {"preferredModel": "sonnet"}),
        ("chat-verbosity", {"verbosityLevel": "normal"}),
    ]
    for route, body in changes:
        response = await client.post(f"/api/user/{route}", json=body)
        assert response.status_code == 200, response.text
    user = await session_user(client)
    assert {key: user[key] for key in SETTING_KEYS} == {
        "preferredProvider": "gemini",
        "imageResizeMaxDimension": 4096,
        "displayName": "Ada",
        "voiceCommandKeywords": ["over"],
        "stopListeningAfterSubmit": True,
        "defaultLandingPage": "library",
        "preferredModel": "sonnet",
        "chatVerbosityLevel": "normal",
    }


SETTING_KEYS = (
    "preferredProvider",
    "imageResizeMaxDimension",
    "displayName",
    "voiceCommandKeywords",
    "stopListeningAfterSubmit",
    "defaultLandingPage",
    "preferredModel",
    "chatVerbosityLevel",
)


async def test_a_whole_number_written_as_a_float_is_that_number(client: httpx.AsyncClient) -> None:
    # JSON does not tell 1024 from 1024.0; both mean the allowed size (it used to answer a 5xx).
    await register(client)
    response = await client.post("/api/user/image-resize-setting", json={"maxDimension": 2048.0})
    assert response.status_code == 200, response.text
    assert (await session_user(client))["imageResizeMaxDimension"] == 2048
