"""A database of the ORIGINAL server (tests/original_schema.sql), filled like a live installation.

`create_original(conn)` builds the schema; `fill(conn)` writes a realistic data set and returns
what a test needs to check the import against (people with their passwords, cookies and tokens,
chat sessions in every status, one with 10,000 events); `add_more(conn, data)` adds the rows an
operator's second import should bring; `fill_bulk(conn, ...)` writes many events fast, for
bench/import.py.
"""

from __future__ import annotations

import secrets
import string
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import bcrypt
import orjson

SCHEMA = Path(__file__).resolve().parent / "original_schema.sql"
BIG_SESSION_EVENTS = 10_000
BIG_SESSION_REPEATS = 50  # events the re-poll defect stored twice (CONTRACT.md 9, item 10)
TINY_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
T0 = datetime(2025, 3, 1, 9, 0, 0)  # the original's timestamps are naive (UTC here)


@dataclass
class Person:
    id: str
    email: str
    password: str
    cookie: str | None = None  # a live auth_session cookie value
    expired_cookie: str | None = None
    claude_auth: dict[str, Any] | None = None
    github_token: str | None = None


@dataclass
class OriginalData:
    people: dict[str, Person] = field(default_factory=dict)
    sessions: dict[str, str] = field(default_factory=dict)  # label -> chat session id
    left_out_person: str = ""  # id of the younger case variant
    bad_session_id: str = ""
    secrets: list[str] = field(default_factory=list)  # every clear token and cookie


def lucia_id(length: int = 16) -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def bcrypt_hash(password: str, prefix: bytes) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(10, prefix=prefix)).decode()


async def create_original(conn: asyncpg.Connection) -> None:
    await conn.execute(SCHEMA.read_text())


async def insert_user(conn: asyncpg.Connection, person: Person, prefix: bytes, created: datetime, **extra: Any) -> None:
    await conn.execute(
        """INSERT INTO users (id, email, display_name, password_hash, github_id, github_access_token, claude_auth,
                              openrouter_api_key, voice_command_keywords, preferred_model, is_admin, created_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9::jsonb, $10, $11, $12)""",
        person.id,
        person.email,
        extra.get("display_name"),
        bcrypt_hash(person.password, prefix),
        extra.get("github_id"),
        person.github_token,
        orjson.dumps(person.claude_auth).decode() if person.claude_auth else None,
        extra.get("openrouter_api_key"),
        extra.get("voice_command_keywords", "[]"),
        extra.get("preferred_model"),
        extra.get("is_admin", False),
        created,
    )


async def insert_login_session(conn: asyncpg.Connection, user_id: str, expires_at: datetime) -> str:
    token = lucia_id(40)
    await conn.execute("INSERT INTO sessions (id, user_id, expires_at) VALUES ($1, $2, $3)", token, user_id, expires_at)
    return token


async def insert_chat_session(conn: asyncpg.Connection, user_id: str, created: datetime, **fields: Any) -> str:
    session_id = fields.pop("id", None) or str(uuid.uuid4())
    values = {
        "session_path": f"octo__hello__claude-{session_id[:8]}",
        "repository_owner": "octo",
        "repository_name": "hello",
        "repository_url": "https://github.com/octo/hello",
        "user_request": "Fix the login page",
        "status": "completed",
        "base_branch": "main",
        "branch": f"claude/fix-{session_id[:8]}",
        **fields,
    }
    columns = ["id", "user_id", "created_at", *values]
    placeholders = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
    await conn.execute(
        f"INSERT INTO chat_sessions ({', '.join(columns)}) VALUES ({placeholders})",
        session_id,
        user_id,
        created,
        *values.values(),
    )
    return session_id


async def insert_events(
    conn: asyncpg.Connection, session_id: str, events: list[dict[str, Any]], start: datetime
) -> None:
    await conn.execute(
        """INSERT INTO events (chat_session_id, event_data, timestamp)
           SELECT $1, e.data::jsonb, $3::timestamp + make_interval(secs => e.n / 10.0)
           FROM unnest($2::text[]) WITH ORDINALITY AS e (data, n) ORDER BY e.n""",
        session_id,
        [orjson.dumps(e).decode() for e in events],
        start,
    )


async def insert_messages(
    conn: asyncpg.Connection, session_id: str, messages: list[tuple[str, str, Any]], start: datetime = T0
) -> None:
    for n, (kind, content, images) in enumerate(messages):
        await conn.execute(
            """INSERT INTO messages (chat_session_id, type, content, images, timestamp)
               VALUES ($1, $2, $3, $4::jsonb, $5)""",
            session_id,
            kind,
            content,
            orjson.dumps(images).decode() if images is not None else None,
            start + timedelta(minutes=n),
        )


def run_events(count: int, repeats: int = 0, label: str = "run") -> list[dict[str, Any]]:
    """A run's events as the original stored them: an input preview (no uuid), upstream events
    with uuids, a result; plus `repeats` earlier events stored a second time further on (the
    re-poll defect), so the list holds count + repeats rows."""
    base: list[dict[str, Any]] = [{"type": "input_preview", "message": f"{label}: Fix the login page"}]
    for n in range(count - 2):
        base.append({"type": "assistant", "uuid": str(uuid.uuid4()), "n": n, "message": {"content": f"step {n}"}})
    base.append({"type": "result", "uuid": str(uuid.uuid4()), "total_cost_usd": 0.42})
    if not repeats:
        return base
    step = (count - 2) // repeats
    events: list[dict[str, Any]] = []
    added = 0
    for position, event in enumerate(base):
        events.append(event)
        if added < repeats and position > 5 and position % step == 0:
            events.append(dict(base[position - 5]))  # seen five events ago, stored again
            added += 1
    assert added == repeats
    return events


async def fill(conn: asyncpg.Connection) -> OriginalData:
    """Three people (one more as an e-mail case variant), live and expired login sessions, chat
    sessions in every status and in the trash, 10,000 events in one, images in messages."""
    data = OriginalData()
    now = datetime.now(UTC)
    future_ms = int((now + timedelta(days=30)).timestamp() * 1000)

    alice = Person(
        id=lucia_id(),
        email="alice@example.com",
        password="alice password 1",
        claude_auth={
            "accessToken": "sk-ant-oat01-" + secrets.token_urlsafe(24),
            "refreshToken": "sk-ant-ort01-" + secrets.token_urlsafe(24),
            "expiresAt": future_ms,
            "scopes": ["user:inference", "user:profile"],
            "subscriptionType": "max",
        },
        github_token="gho_" + secrets.token_urlsafe(20),
    )
    await insert_user(
        conn,
        alice,
        b"2a",
        T0 - timedelta(days=300),
        display_name="Alice",
        github_id="1001",
        openrouter_api_key="sk-or-" + secrets.token_urlsafe(16),
        voice_command_keywords='["submit", "send it"]',
        preferred_model="claude-sonnet-4-5",
    )
    alice.cookie = await insert_login_session(conn, alice.id, now + timedelta(days=20))
    alice.expired_cookie = await insert_login_session(conn, alice.id, now - timedelta(days=1))

    bob = Person(id=lucia_id(), email="Bob@Example.com", password="bob password 22")
    await insert_user(conn, bob, b"2b", T0 - timedelta(days=200))
    bob.cookie = await insert_login_session(conn, bob.id, now + timedelta(days=5))
    variant = Person(id=lucia_id(), email="bob@example.com", password="younger bob 333")
    await insert_user(conn, variant, b"2b", T0 - timedelta(days=100))
    variant.cookie = await insert_login_session(conn, variant.id, now + timedelta(days=5))
    data.left_out_person = variant.id

    carol = Person(id=str(uuid.uuid4()), email="Carol@Example.org", password="carol password 4444")
    await insert_user(conn, carol, b"2b", T0 - timedelta(days=50), is_admin=True, voice_command_keywords="null")
    data.people = {"alice": alice, "bob": bob, "variant": variant, "carol": carol}

    sessions = data.sessions
    sessions["big"] = await insert_chat_session(
        conn, alice.id, T0, total_cost="1.234", completed_at=T0 + timedelta(hours=1)
    )
    await insert_events(conn, sessions["big"], run_events(BIG_SESSION_EVENTS, BIG_SESSION_REPEATS, "big"), T0)
    await insert_messages(
        conn,
        sessions["big"],
        [
            (
                "user",
                "Fix the login page",
                [{"id": "img-1", "data": TINY_PNG, "mediaType": "image/png", "fileName": "a.png"}],
            ),
            ("assistant", "Done: the form validates now.", None),
            ("system", "Branch claude/fix pushed", None),
        ],
    )
    sessions["pending"] = await insert_chat_session(
        conn, alice.id, T0 + timedelta(hours=2), status="pending", branch=None
    )
    sessions["running"] = await insert_chat_session(
        conn,
        alice.id,
        T0 + timedelta(hours=3),
        status="running",
        remote_session_id="session_" + lucia_id(24),
        remote_web_url="https://claude.ai/code/session_x",
    )
    await insert_events(conn, sessions["running"], run_events(20, label="running")[:-1], T0 + timedelta(hours=3))
    sessions["error"] = await insert_chat_session(conn, alice.id, T0 + timedelta(hours=4), status="error")
    await insert_events(conn, sessions["error"], [{"type": "error", "error": "boom"}] * 2, T0 + timedelta(hours=4))
    sessions["trash"] = await insert_chat_session(
        conn, alice.id, T0 + timedelta(hours=5), deleted_at=T0 + timedelta(days=2), completed_at=T0 + timedelta(hours=6)
    )
    await insert_messages(conn, sessions["trash"], [("user", "An old idea", None)])
    data.bad_session_id = await insert_chat_session(conn, alice.id, T0 + timedelta(hours=6), id="not a/servable id")
    sessions["bob"] = await insert_chat_session(conn, bob.id, T0 + timedelta(days=1), session_path=None)
    await insert_events(conn, sessions["bob"], run_events(30, label="bob"), T0 + timedelta(days=1))
    sessions["variant"] = await insert_chat_session(conn, variant.id, T0 + timedelta(days=2))

    await conn.execute(
        """INSERT INTO live_chat_messages (id, user_id, owner, repo, branch, role, content)
           VALUES ($1, $2, 'octo', 'hello', 'main', 'user', 'hi')""",
        str(uuid.uuid4()),
        alice.id,
    )
    await conn.execute(
        "INSERT INTO workspace_presence (id, user_id, owner, repo, branch) VALUES ($1, $2, 'octo', 'hello', 'main')",
        f"{alice.id}_octo_hello_main",
        alice.id,
    )
    data.secrets = [
        alice.claude_auth["accessToken"],
        alice.claude_auth["refreshToken"],
        alice.github_token,
        alice.cookie,
        alice.expired_cookie,
        bob.cookie,
        variant.cookie,
    ]
    return data


async def add_more(conn: asyncpg.Connection, data: OriginalData) -> dict[str, Any]:
    """What the original gains between two imports; returns what the second import should bring."""
    now = datetime.now(UTC)
    dave = Person(id=lucia_id(), email="dave@example.com", password="dave password 55555")
    await insert_user(conn, dave, b"2b", T0 + timedelta(days=10))
    dave.cookie = await insert_login_session(conn, dave.id, now + timedelta(days=29))
    data.people["dave"] = dave
    data.secrets.append(dave.cookie)
    alice = data.people["alice"]
    new_cookie = await insert_login_session(conn, alice.id, now + timedelta(days=29))
    data.secrets.append(new_cookie)
    alice.cookie = new_cookie
    data.sessions["dave"] = await insert_chat_session(conn, dave.id, T0 + timedelta(days=10))
    await insert_events(conn, data.sessions["dave"], run_events(5, label="dave"), T0 + timedelta(days=10))
    # The running session went on: five new events, one of them a repeat of an imported one.
    first_uuid = await conn.fetchval(
        """SELECT event_data ->> 'uuid' FROM events
           WHERE chat_session_id = $1 AND event_data ? 'uuid' ORDER BY id LIMIT 1""",
        data.sessions["running"],
    )
    repeat = orjson.loads(
        await conn.fetchval(
            "SELECT event_data::text FROM events WHERE chat_session_id = $1 AND event_data ->> 'uuid' = $2",
            data.sessions["running"],
            first_uuid,
        )
    )
    more = [{"type": "assistant", "uuid": str(uuid.uuid4()), "n": 100 + n} for n in range(3)]
    await insert_events(
        conn,
        data.sessions["running"],
        [*more, repeat, {"type": "result", "uuid": str(uuid.uuid4())}],
        T0 + timedelta(days=11),
    )
    await conn.execute(
        "UPDATE chat_sessions SET status = 'completed', completed_at = $2, total_cost = '0.5' WHERE id = $1",
        data.sessions["running"],
        T0 + timedelta(days=11),
    )
    await insert_messages(conn, data.sessions["big"], [("user", "One more thing", None)], T0 + timedelta(days=11))
    return {
        "users": 1,
        "sessions": 2,
        "chat_sessions": 1,
        "chat_updated": 1,
        "messages": 1,
        "events": 5 + 5,
        "repeats": 1,
    }


async def fill_bulk(conn: asyncpg.Connection, people: int, sessions: int, events_per_session: int) -> None:
    """Many people, sessions and events, written by PostgreSQL itself (for bench/import.py)."""
    password_hash = bcrypt_hash("bench password", b"2b")
    await conn.execute(
        """INSERT INTO users (id, email, password_hash, created_at)
           SELECT 'u' || n, 'person' || n || '@example.com', $1, $2::timestamp + make_interval(mins => n)
           FROM generate_series(1, $3) AS n""",
        password_hash,
        T0,
        people,
    )
    await conn.execute(
        """INSERT INTO sessions (id, user_id, expires_at)
           SELECT md5(n::text) || 'abcdefgh', 'u' || n, now() + interval '10 days' FROM generate_series(1, $1) AS n""",
        people,
    )
    await conn.execute(
        """INSERT INTO chat_sessions (id, user_id, user_request, status, created_at)
           SELECT md5('s' || n)::uuid::text, 'u' || (1 + n % $2), 'Task ' || n, 'completed',
                  $3::timestamp + make_interval(mins => n)
           FROM generate_series(1, $1) AS n""",
        sessions,
        people,
        T0,
    )
    await conn.execute(
        """INSERT INTO events (chat_session_id, event_data, timestamp)
           SELECT md5('s' || s)::uuid::text,
                  jsonb_build_object('type', 'assistant', 'uuid', md5(s || '-' || e)::uuid::text, 'n', e,
                                     'message', jsonb_build_object('content', repeat('word ', 30))),
                  $3::timestamp + make_interval(secs => e)
           FROM generate_series(1, $1) AS s, generate_series(1, $2) AS e
           ORDER BY s, e""",
        sessions,
        events_per_session,
        T0,
    )
