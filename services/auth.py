"""Accounts and login sessions: registration, login, logout, cookie tokens, rate limiting.

A login session is a random 32-byte token held only in the `auth_session` cookie; the database
keeps its SHA-256 as the row id. Sessions last 30 days and slide: when fewer than 15 days
remain, the expiry moves to 30 days from now and the cookie is sent again.

Failed logins are throttled per client address and per e-mail, without letting a stranger lock
the owner out (OWASP's device cookies): a browser that has logged in to an account before holds
a signed device token for it, and its guesses count against that token instead of the e-mail,
so others' failures on the e-mail never refuse it. Registration is limited per address.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import bcrypt
from tornado.web import create_signed_value, decode_signed_value

from services.context import AppContext
from services.db import queries
from services.errors import ServiceError

SESSION_LIFETIME = timedelta(days=30)
RENEW_WHEN_LESS_THAN = timedelta(days=15)
REMEMBER_ME_COOKIE_DAYS = 90
# The cookie naming a browser that has logged in to an account before, and how long it counts.
DEVICE_COOKIE = "login_device"
DEVICE_TOKEN_DAYS = 365
PASSWORD_MIN_CHARS = 8
PASSWORD_MAX_BYTES = 72
INVALID_LOGIN = "Invalid email or password"
# A bcrypt hash as the bcrypt package writes and checks it; any other stored value (a
# plaintext or argon2 password carried from elsewhere) can never log in.
BCRYPT_HASH = re.compile(r"\$2[abxy]\$(\d\d)\$[./A-Za-z0-9]{53}")
# Above this cost one check takes many seconds of a CPU: such a stored hash is not checked.
BCRYPT_MAX_COST = 16


def checkable_hash(hashed: str | None, rounds: int) -> bool:
    """Whether a login can be checked against `hashed`: bcrypt, at a cost from 4 (the least bcrypt
    accepts) to BCRYPT_MAX_COST or `rounds` when that is higher."""
    match = BCRYPT_HASH.fullmatch(hashed) if hashed else None
    return match is not None and 4 <= int(match.group(1)) <= max(BCRYPT_MAX_COST, rounds)


# Checked against when the e-mail is unknown, so both failures cost one bcrypt check.
_dummy_hashes: dict[int, bytes] = {}


@dataclass(frozen=True)
class CurrentUser:
    """The authenticated person behind a request: their user row and login session."""

    user: asyncpg.Record
    session_id: str
    expires_at: datetime
    renewed: bool

    @property
    def id(self) -> str:
        return self.user["id"]

    @property
    def is_admin(self) -> bool:
        return bool(self.user["is_admin"])

    @property
    def impersonator_id(self) -> str | None:
        """The admin behind this login session while they impersonate its person, else None."""
        return self.user["impersonator_id"]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_user_id() -> str:
    """16 lower-case base32 characters from 10 random bytes, like the original's ids."""
    import base64

    return base64.b32encode(secrets.token_bytes(10)).decode().lower()


def email_key(email: str) -> str:
    """The one form of an e-mail this server stores and looks up: trimmed, Python-lower-cased.

    Stored already in this form, an e-mail is matched whatever PostgreSQL's lower() makes of it
    (its lower() and Python's disagree on some letters, such as the dotted capital I)."""
    return email.strip().lower()


def normalize_email(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ServiceError(400, "Email and password are required")
    email = email_key(value)
    if len(email) > 254 or "@" not in email or any(c.isspace() or ord(c) < 32 for c in email):
        raise ServiceError(400, "Please enter a valid email address")
    return email


def check_password_rules(password: Any) -> bytes:
    """The password as UTF-8 bytes, or a 400 saying which rule it breaks."""
    if not isinstance(password, str) or password == "":
        raise ServiceError(400, "Email and password are required")
    if len(password) < PASSWORD_MIN_CHARS:
        raise ServiceError(400, f"Password must be at least {PASSWORD_MIN_CHARS} characters")
    encoded = password.encode()
    if len(encoded) > PASSWORD_MAX_BYTES:
        raise ServiceError(400, f"Password must be at most {PASSWORD_MAX_BYTES} bytes long")
    return encoded


async def hash_password(ctx: AppContext, password: bytes) -> str:
    loop = asyncio.get_running_loop()
    salt = bcrypt.gensalt(ctx.config.bcrypt_rounds)
    hashed = await loop.run_in_executor(ctx.cpu_executor, bcrypt.hashpw, password, salt)
    return hashed.decode()


async def verify_password(ctx: AppContext, password: bytes, hashed: str | None) -> bool:
    """Whether `password` matches `hashed`; with no hash, spends the same time and says no."""
    loop = asyncio.get_running_loop()
    rounds = ctx.config.bcrypt_rounds
    # A hash bcrypt cannot check (not bcrypt at all) is treated like no hash: the same time
    # spent, the same 401, so nobody learns that the e-mail exists.
    checkable = checkable_hash(hashed, rounds)
    if not checkable and rounds not in _dummy_hashes:
        _dummy_hashes[rounds] = await loop.run_in_executor(
            ctx.cpu_executor, bcrypt.hashpw, b"no such user", bcrypt.gensalt(rounds)
        )
    target = hashed.encode() if hashed and checkable else _dummy_hashes[rounds]
    # bcrypt refuses input over 72 bytes; such a password can never have been registered.
    ok = await loop.run_in_executor(ctx.cpu_executor, bcrypt.checkpw, password[:PASSWORD_MAX_BYTES], target)
    return bool(ok) and checkable and len(password) <= PASSWORD_MAX_BYTES


async def create_user(ctx: AppContext, email: Any, password: Any, is_admin: bool = False) -> asyncpg.Record:
    """A new account; 400 "Email already in use" when the e-mail is taken (in any case)."""
    normalized = normalize_email(email)
    encoded = check_password_rules(password)
    password_hash = await hash_password(ctx, encoded)
    row = await queries.users.insert_user(
        ctx.pool,
        id=new_user_id(),
        email=normalized,
        display_name=None,
        password_hash=password_hash,
        is_admin=is_admin,
    )
    if row is None:
        raise ServiceError(400, "Email already in use")
    return row


async def start_session(ctx: AppContext, user_id: str) -> tuple[str, datetime]:
    """A new login session; returns the cookie token and its expiry."""
    token = secrets.token_urlsafe(32)
    expires_at = datetime.now(UTC) + SESSION_LIFETIME
    await queries.auth_sessions.insert_auth_session(
        ctx.pool, id=hash_token(token), user_id=user_id, expires_at=expires_at
    )
    return token, expires_at


async def end_session(ctx: AppContext, session_id: str, user_id: str) -> None:
    await queries.auth_sessions.delete_auth_session(ctx.pool, id=session_id)
    ctx.login_cache.forget_user(user_id)


async def resolve_token(ctx: AppContext, token: str) -> CurrentUser | None:
    """The person behind a cookie token, renewing a session past half its life; None if invalid."""
    if not token or len(token) > 200:
        return None
    session_id = hash_token(token)
    cache = ctx.login_cache
    row = cache.get(session_id)
    if row is None:
        generation = cache.generation
        row = await queries.auth_sessions.get_auth_session_with_user(ctx.pool, id=session_id)
        if row is None:
            return None
        cache.put(session_id, row, generation)
    now = datetime.now(UTC)
    expires_at: datetime = row["expires_at"]
    if expires_at <= now:
        await queries.auth_sessions.delete_auth_session(ctx.pool, id=session_id)
        cache.forget_user(row["id"])
        return None
    renewed = False
    if expires_at - now < RENEW_WHEN_LESS_THAN:
        expires_at = now + SESSION_LIFETIME
        await queries.auth_sessions.extend_auth_session(ctx.pool, id=session_id, expires_at=expires_at)
        cache.forget_user(row["id"])
        renewed = True
    return CurrentUser(user=row, session_id=session_id, expires_at=expires_at, renewed=renewed)


async def _check_rate_limit(ctx: AppContext, limits: dict[str, int], window_seconds: int, message: str) -> None:
    """429 with `Retry-After` when any key of `limits` has reached its limit inside the window."""
    rows = queries.login_failures.get_login_failures(ctx.pool, keys=list(limits), window_seconds=window_seconds)
    async for row in rows:
        if row["failures"] >= limits[row["key"]]:
            retry_after = max(1, row["retry_after"])
            raise ServiceError(429, message.format(retry_after=retry_after), {"Retry-After": str(retry_after)})


def new_device_token(ctx: AppContext, email: str) -> str:
    """A device token for a browser that just logged in as `email`: a random nonce and the
    SHA-256 of the e-mail (not the e-mail itself), signed with an expiry by Tornado."""
    value = f"{hash_token(email_key(email))}|{secrets.token_urlsafe(16)}"
    return create_signed_value(ctx.config.session_secret, DEVICE_COOKIE, value).decode()


def _device_nonce(ctx: AppContext, token: str | None, email: str) -> str | None:
    """The nonce of a device token issued for `email` within DEVICE_TOKEN_DAYS; None for no
    token, an expired or forged one, or anyone else's."""
    if not token or len(token) > 300:
        return None
    value = decode_signed_value(
        ctx.config.session_secret, DEVICE_COOKIE, token, max_age_days=DEVICE_TOKEN_DAYS, min_version=2
    )
    if value is None:
        return None
    email_hash, _, nonce = value.decode(errors="replace").partition("|")
    return nonce if nonce and hmac.compare_digest(email_hash, hash_token(email)) else None


async def login(
    ctx: AppContext, email: Any, password: Any, client_ip: str, device_token: str | None = None
) -> asyncpg.Record:
    """The user whose credentials these are; the same 401 for an unknown e-mail or a wrong password.

    Failures count per client address and, from a browser with a device token for this e-mail,
    against the token; from any other client, against the e-mail."""
    if not isinstance(email, str) or not email.strip() or not isinstance(password, str) or not password:
        raise ServiceError(400, "Email and password are required")
    config = ctx.config
    normalized = email_key(email)
    nonce = _device_nonce(ctx, device_token, normalized)
    # Bounded like a registered e-mail (254 characters): the key is a primary key, and an index
    # entry of 100 KB would fail in PostgreSQL (a 500). No account has a longer e-mail anyway.
    account_key = f"device:{nonce}" if nonce else f"email:{normalized[:254]}"
    limits = {
        account_key: config.login_max_failures_per_email,
        f"ip:{client_ip[:64]}": config.login_max_failures_per_ip,
    }
    window = config.login_failure_window_seconds
    await _check_rate_limit(ctx, limits, window, "Too many failed login attempts. Try again in {retry_after} seconds.")
    user = await queries.users.get_user_by_email(ctx.pool, email=normalized)
    ok = await verify_password(ctx, password.encode(), user["password_hash"] if user else None)
    if not ok or user is None:
        for key in limits:
            await queries.login_failures.record_login_failure(ctx.pool, key=key, window_seconds=window)
        raise ServiceError(401, INVALID_LOGIN)
    await queries.login_failures.clear_login_failures(ctx.pool, key=account_key)
    await _upgrade_weak_hash(ctx, user, password.encode())
    return user


async def check_registration_rate(ctx: AppContext, client_ip: str) -> None:
    """Count a registration attempt from `client_ip`; 429 past `REGISTER_MAX_PER_IP` in the window."""
    key = f"register:{client_ip[:64]}"
    window = ctx.config.register_window_seconds
    await _check_rate_limit(
        ctx,
        {key: ctx.config.register_max_per_ip},
        window,
        "Too many sign-ups from this address. Try again in {retry_after} seconds.",
    )
    await queries.login_failures.record_login_failure(ctx.pool, key=key, window_seconds=window)


def _hash_cost(hashed: str) -> int:
    """The cost of a bcrypt hash (`$2b$12$...`), 0 when it cannot be read."""
    parts = hashed.split("$")
    return int(parts[2]) if len(parts) > 3 and parts[2].isdigit() else 0


async def _upgrade_weak_hash(ctx: AppContext, user: asyncpg.Record, password: bytes) -> None:
    """Re-hash at BCRYPT_ROUNDS a hash of lower cost (the original's cost 10, `$2a$` or `$2b$`),
    now that the password is known to be right."""
    old_hash = user["password_hash"]
    if _hash_cost(old_hash) >= ctx.config.bcrypt_rounds:
        return
    new_hash = await hash_password(ctx, password)
    await queries.users.upgrade_password_hash(ctx.pool, id=user["id"], old_hash=old_hash, new_hash=new_hash)
    ctx.login_cache.forget_user(user["id"])
