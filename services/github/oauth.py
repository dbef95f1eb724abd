"""The GitHub OAuth web flow (CONTRACT.md 7.1, with defect 9.4 #25 fixed: the
original's `state` was unsigned and never checked).

`state` = a Tornado signed value (timestamped, HMAC-SHA256) of a JSON payload, under a key
derived from SESSION_SECRET, so every replica can verify a state minted by another. Only its nonce is stored,
once the callback takes it (`oauth_state_uses`), so that each state is used once.
The payload names the user, a fingerprint of their login session, the time it was issued (it
expires after 10 minutes), the return origin (always one of ALLOWED_ORIGINS) and the return page.

The callback accepts a state only from the same login session that asked for it. The
`auth_session` cookie is SameSite=Lax, so browsers send it on the top-level GET navigation back
from GitHub; a callback without it (logged out meanwhile, cookie blocked) is refused and sent to
the login page rather than trusting the user id inside the state — that trust is exactly what let
an attacker bind their GitHub account to someone else's login in the original.

PKCE (S256) is added: the verifier is derived from the state's nonce with the same key, so it
needs no storage either.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlparse

import httpx
import orjson
from github import Github
from tornado.web import create_signed_value, decode_signed_value

from services.auth import CurrentUser
from services.config import Config
from services.context import AppContext
from services.db import queries
from services.errors import ServiceError
from services.github import accounts, api

log = logging.getLogger(__name__)

SCOPES = "repo workflow user:email"
STATE_TTL_SECONDS = 600
CLOCK_SKEW_SECONDS = 60
# Signed-value name of the state, and how old a state may be and still be told "expired".
STATE_NAME = "github_oauth_state"
EXPIRED_STATE_READABLE_SECONDS = 86400
DEFAULT_RETURN_PATH = "/settings"
EXCHANGE_TIMEOUT_SECONDS = 15.0
CALLBACK_PATH = "/api/github/oauth/callback"
MAX_STATE_CHARS = 2048

_RETURN_PATH = re.compile(r"^/[A-Za-z0-9/_.~-]{0,200}$")
_ERROR_CODE = re.compile(r"[^a-z0-9_]")


class StateError(Exception):
    """The state is unusable; `code` is the error flag for the redirect."""

    def __init__(self, code: str, state: OAuthState | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.state = state


@dataclass(frozen=True)
class OAuthState:
    user_id: str
    login: str
    issued_at: int
    origin: str
    path: str
    nonce: str


# ---- keys and signatures -------------------------------------------------------------------------


def state_key(config: Config) -> bytes:
    """The HMAC key of states, login fingerprints and PKCE verifiers, derived from SESSION_SECRET."""
    return hmac.new(config.session_secret.encode(), b"webedt github oauth state v1", hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def login_fingerprint(config: Config, login_session_id: str) -> str:
    """Names a login session inside the state without revealing its database id."""
    return hmac.new(state_key(config), b"login:" + login_session_id.encode(), hashlib.sha256).hexdigest()[:32]


def code_verifier(config: Config, nonce: str) -> str:
    """The PKCE verifier for a state's nonce (43 characters, as RFC 7636 asks)."""
    return _b64(hmac.new(state_key(config), b"pkce:" + nonce.encode(), hashlib.sha256).digest())


def code_challenge(verifier: str) -> str:
    return _b64(hashlib.sha256(verifier.encode()).digest())


def sign_state(config: Config, state: OAuthState) -> str:
    """The state as a Tornado signed value, timestamped `state.issued_at`."""
    payload = orjson.dumps(
        {
            "u": state.user_id,
            "l": state.login,
            "t": state.issued_at,
            "o": state.origin,
            "p": state.path,
            "n": state.nonce,
        }
    )
    return create_signed_value(state_key(config), STATE_NAME, payload, clock=lambda: state.issued_at).decode()


def _decode_state(config: Config, raw: str, max_age_seconds: float, now: float) -> OAuthState | None:
    payload = decode_signed_value(
        state_key(config), STATE_NAME, raw, max_age_days=max_age_seconds / 86400, clock=lambda: now, min_version=2
    )
    if payload is None:
        return None
    try:
        data = orjson.loads(payload)
        return OAuthState(
            user_id=str(data["u"]),
            login=str(data["l"]),
            issued_at=int(data["t"]),
            origin=str(data["o"]),
            path=str(data["p"]),
            nonce=str(data["n"]),
        )
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        return None


def read_state(config: Config, raw: str, now: float | None = None) -> OAuthState:
    """The verified state; StateError("invalid_state") or StateError("state_expired", state).

    Tornado checks the signature and the age; a state past STATE_TTL_SECONDS but still signed by
    us is read once more, so that the browser returns to its page with "state_expired"."""
    if not raw or len(raw) > MAX_STATE_CHARS:
        raise StateError("invalid_state")
    current = time.time() if now is None else now
    state = _decode_state(config, raw, STATE_TTL_SECONDS, current)
    if state is not None:
        return state
    expired = _decode_state(config, raw, EXPIRED_STATE_READABLE_SECONDS, current)
    if expired is None:
        raise StateError("invalid_state")
    raise StateError("state_expired", expired)


# ---- where to return --------------------------------------------------------------------------


def return_target(config: Config, referer: str | None, origin: str | None) -> tuple[str, str]:
    """(origin, hash path) to come back to: the Referer's (else Origin's) origin when it is in
    ALLOWED_ORIGINS, else the first allowed origin; the path is the Referer's `#` fragment."""
    allowed = config.allowed_origins
    for header in (referer, origin):
        if not header:
            continue
        parsed = urlparse(header)
        candidate = f"{parsed.scheme}://{parsed.netloc}".lower()
        if candidate in allowed:
            path = DEFAULT_RETURN_PATH
            if header is referer and parsed.fragment:
                fragment = parsed.fragment.split("?", 1)[0]
                if _RETURN_PATH.match(fragment):
                    path = fragment
            return candidate, path
    return allowed[0], DEFAULT_RETURN_PATH


def _trusted_origin(config: Config, origin: str) -> str:
    # A state signed earlier may name an origin since removed from ALLOWED_ORIGINS.
    return origin if origin in config.allowed_origins else config.allowed_origins[0]


def _flag(value: str) -> str:
    return _ERROR_CODE.sub("_", value.lower())[:64] or "oauth_failed"


# ---- the flow ----------------------------------------------------------------------------------


def authorize_url(ctx: AppContext, user: CurrentUser, referer: str | None, origin: str | None) -> str:
    """Where to send the browser: GitHub's authorize page, or back with an error flag."""
    config = ctx.config
    return_origin, return_path = return_target(config, referer, origin)
    if not config.github_client_id or not config.github_client_secret:
        return f"{return_origin}/#{return_path}?error=github_not_configured"
    state = OAuthState(
        user_id=user.id,
        login=login_fingerprint(config, user.session_id),
        issued_at=int(time.time()),
        origin=return_origin,
        path=return_path,
        nonce=secrets.token_urlsafe(12),
    )
    params = {
        "client_id": config.github_client_id,
        "redirect_uri": return_origin + CALLBACK_PATH,
        "scope": SCOPES,
        "state": sign_state(config, state),
        "code_challenge": code_challenge(code_verifier(config, state.nonce)),
        "code_challenge_method": "S256",
    }
    return f"{config.github_oauth_url}/login/oauth/authorize?{urlencode(params)}"


async def exchange_code(ctx: AppContext, code: str, state: OAuthState) -> str:
    """The access token for `code`; StateError(<GitHub's error code>) when GitHub refuses."""
    config = ctx.config
    async with httpx.AsyncClient(timeout=EXCHANGE_TIMEOUT_SECONDS, follow_redirects=False) as http:
        response = await http.post(
            f"{config.github_oauth_url}/login/oauth/access_token",
            headers={"Accept": "application/json"},
            data={
                "client_id": config.github_client_id,
                "client_secret": config.github_client_secret,
                "code": code,
                "redirect_uri": state.origin + CALLBACK_PATH,
                "code_verifier": code_verifier(config, state.nonce),
            },
        )
    if response.status_code != 200:
        log.warning("GitHub OAuth token exchange answered HTTP %s", response.status_code)
        raise StateError("oauth_failed")
    try:
        body: Any = response.json()
    except ValueError:
        raise StateError("oauth_failed") from None
    if not isinstance(body, dict):
        raise StateError("oauth_failed")
    token = body.get("access_token")
    if not isinstance(token, str) or not token:
        raw_error = body.get("error")
        error = raw_error if isinstance(raw_error, str) else "oauth_failed"
        log.warning("GitHub refused the OAuth code: %s", _flag(error))
        raise StateError(_flag(error))
    return token


async def fetch_github_id(ctx: AppContext, token: str) -> str:
    def get_id(client: Github) -> str:
        return str(client.get_user().id)

    return await api.run(ctx, token, get_id)


async def complete(
    ctx: AppContext, code: str | None, raw_state: str | None, error: str | None, user: CurrentUser | None
) -> str:
    """Finish the flow; returns where to redirect. Stores the token only for a valid, fresh state
    from the same login session and a code GitHub accepts."""
    config = ctx.config
    first = config.allowed_origins[0]
    if not raw_state or not (code or error):
        return f"{first}/#/login?error=missing_params"
    try:
        state = read_state(config, raw_state)
    except StateError as exc:
        if exc.state is not None:
            return f"{_trusted_origin(config, exc.state.origin)}/#/login?error={exc.code}"
        log.warning("GitHub OAuth callback with an invalid state")
        return f"{first}/#/login?error={exc.code}"
    origin = _trusted_origin(config, state.origin)
    path = state.path if _RETURN_PATH.match(state.path) else DEFAULT_RETURN_PATH
    if user is None:
        return f"{origin}/#/login?error=login_required"
    if user.id != state.user_id or not hmac.compare_digest(login_fingerprint(config, user.session_id), state.login):
        log.warning("GitHub OAuth callback refused: the state belongs to another login session")
        return f"{origin}/#/login?error=state_mismatch"
    # Single use, on every replica: a replayed state (with a fresh code for another GitHub
    # account) is refused even within its 10 minutes. Marked before the exchange, so a failed
    # or refused exchange spends it too.
    if not await queries.oauth_state_uses.use_oauth_state(
        ctx.pool, nonce=state.nonce, keep_seconds=STATE_TTL_SECONDS + CLOCK_SKEW_SECONDS
    ):
        log.warning("GitHub OAuth callback refused: the state was already used")
        return f"{origin}/#{path}?error=state_used"
    if error:
        return f"{origin}/#{path}?error={_flag(error)}"
    try:
        token = await exchange_code(ctx, code or "", state)
        github_id = await fetch_github_id(ctx, token)
    except StateError as exc:
        return f"{origin}/#{path}?error={exc.code}"
    except (httpx.HTTPError, ServiceError) as exc:
        log.warning("GitHub OAuth failed: %s", exc.__class__.__name__)
        return f"{origin}/#{path}?error=oauth_failed"
    if not await accounts.link(ctx, user.id, github_id, token):
        log.warning("GitHub account already linked to another user; link refused")
        return f"{origin}/#{path}?error=github_account_in_use"
    log.info("GitHub connected", extra={"user_id": user.id})
    return f"{origin}/#{path}?success=github_connected"
