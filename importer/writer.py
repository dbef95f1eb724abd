"""The writer: people, login sessions, chat sessions with their messages and events, from an
open connection to the original into an open connection to this server's database."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any, TextIO

import asyncpg
import orjson

from importer.report import REPORT_LIST_MAX, Progress, Report
from importer.source import (
    KNOWN_NOT_CARRIED,
    REQUIRED_COLUMNS,
    batches,
    first_line,
    import_queries,
    session_rows,
)
from services.auth import BCRYPT_MAX_COST, SESSION_LIFETIME, checkable_hash, email_key, hash_token, normalize_email
from services.chat_sessions import RESERVED_SESSION_IDS
from services.db import queries
from services.errors import ServiceError
from services.secrets import SecretBox

USER_BATCH = 500
LOGIN_SESSION_BATCH = 2000
CHAT_SESSION_BATCH = 200
MESSAGE_BATCH = 200  # messages may carry base64 images
EVENT_BATCH = 2000

USER_FIELDS = REQUIRED_COLUMNS["users"][1:]
# What a later run compares: the chat session as imported. `worker_last_activity` is left out
# because this server's run driver writes it as a lease heartbeat.
CHAT_FIELDS = tuple(c for c in REQUIRED_COLUMNS["chat_sessions"][1:] if c != "worker_last_activity")
STATUSES = ("pending", "running", "completed", "error")
MESSAGE_TYPES = ("user", "assistant", "system", "error")
# URL-safe without escaping, so the original's links keep working; as long as get_owned accepts.
SERVABLE_ID = re.compile(r"[A-Za-z0-9._~-]{1,300}")
# Stored instead of a password hash bcrypt cannot check (a plaintext or argon2 password): never
# a match, and no plaintext password lands here. An admin can set a new password.
NO_PASSWORD = "!"


def fingerprint(values: dict[str, Any]) -> str:
    """SHA-256 over a row's carried values (timestamps as UTC instants, JSON as values)."""
    return hashlib.sha256(orjson.dumps(values, option=orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z)).hexdigest()


def servable_session_id(session_id: str) -> bool:
    """Whether /api/sessions/<id> on this server reaches a session with this id, unescaped."""
    return bool(SERVABLE_ID.fullmatch(session_id)) and session_id not in RESERVED_SESSION_IDS


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class Importer:
    """One run of the import, from an open source connection into an open target connection."""

    def __init__(
        self,
        source: asyncpg.Connection,
        target: asyncpg.Connection,
        box: SecretBox,
        report: Report,
        progress_seconds: float,
        stream: TextIO,
    ) -> None:
        self.source, self.target, self.box, self.report = source, target, box, report
        self.progress_seconds, self.stream = progress_seconds, stream
        self.imported_users: set[str] = set()
        self.now = datetime.now(UTC)

    def progress(self, table: str) -> Progress:
        counts = self.report.tables[table]
        return Progress(table, counts.total, self.progress_seconds, self.stream)

    async def run(self, other_tables: list[str]) -> None:
        for table in REQUIRED_COLUMNS:
            self.report.tables[table].total = await getattr(import_queries.original, f"count_original_{table}")(
                self.source
            )
        known = [name for name in other_tables if name in KNOWN_NOT_CARRIED]
        self.report.not_carried = {
            name: await getattr(import_queries.original, f"count_original_{name}")(self.source) for name in known
        }
        async for empty in import_queries.original.count_original_empty_ids(self.source):
            # Keyset reading starts after '' and never sees these rows (nor can this server serve them).
            table, rows = empty["table_name"], empty["row_count"]
            if rows:
                self.report.tables[table].skipped += rows
                self.report.skip(table, "''", f"{rows} row(s) whose id is empty; not carried")
        unknown = [name for name in other_tables if name not in KNOWN_NOT_CARRIED]
        self.report.other_tables = {
            r["name"]: r["row_count"]
            async for r in import_queries.original.estimate_row_counts(self.source, names=unknown)
        }
        await self.import_users()
        await self.import_login_sessions()
        await self.import_chat_sessions()

    # ---- people -------------------------------------------------------------------------------

    def user_values(self, row: asyncpg.Record) -> dict[str, Any]:
        """The original's person as this server keeps it, credentials still in clear text."""
        claude_auth = row["claude_auth"]
        password_hash = row["password_hash"]
        return {
            "email": email_key(row["email"]),
            "display_name": row["display_name"],
            "password_hash": password_hash if checkable_hash(password_hash, BCRYPT_MAX_COST) else NO_PASSWORD,
            "github_id": row["github_id"],
            "github_access_token": row["github_access_token"] or None,
            "claude_auth": claude_auth if isinstance(claude_auth, dict) and claude_auth else None,
            "preferred_provider": row["preferred_provider"] or "claude",
            "image_resize_max_dimension": row["image_resize_max_dimension"] or 1024,
            "voice_command_keywords": row["voice_command_keywords"]
            if isinstance(row["voice_command_keywords"], list)
            else [],
            "stop_listening_after_submit": bool(row["stop_listening_after_submit"]),
            "default_landing_page": row["default_landing_page"] or "store",
            "preferred_model": row["preferred_model"],
            "chat_verbosity_level": row["chat_verbosity_level"] or "verbose",
            "is_admin": bool(row["is_admin"]),
            "created_at": _utc(row["created_at"]),
        }

    def our_user_values(self, row: asyncpg.Record) -> dict[str, Any]:
        values = {name: row[name] for name in USER_FIELDS}
        values["github_access_token"] = self.box.decrypt_text(row["github_access_token"])
        values["claude_auth"] = self.box.decrypt_json(row["claude_auth"])
        return values

    def encrypted(self, values: dict[str, Any]) -> dict[str, Any]:
        token, claude = values["github_access_token"], values["claude_auth"]
        return {
            **values,
            "github_access_token": self.box.encrypt_text(token) if token else None,
            "claude_auth": self.box.encrypt_json(claude) if claude else None,
        }

    def check_login(self, user_id: str, row: asyncpg.Record, values: dict[str, Any]) -> None:
        """Report a person who will not be able to log in with a password here."""
        if values["password_hash"] == NO_PASSWORD:
            self.report.no_login(
                user_id,
                "the original's password hash is not one this server checks (bcrypt, cost 4 to "
                f"{BCRYPT_MAX_COST}); carried without a password: an admin can set a new one",
            )
        try:
            normalize_email(row["email"])
        except ServiceError:
            self.report.no_login(user_id, f"the e-mail {values['email']!r} is not an address anyone can log in with")

    async def import_users(self) -> None:
        counts, report = self.report.tables["users"], self.report
        # Grouped by this server's e-mail key, computed here: PostgreSQL's lower() disagrees with
        # it on some letters. One id and e-mail per person of the original is held meanwhile.
        groups: dict[str, list[str]] = {}
        async for person in import_queries.original.list_original_user_emails(self.source):
            groups.setdefault(email_key(person["email"]), []).append(person["id"])
        left_out: dict[str, str] = {}
        for key, (kept, *others) in groups.items():
            if not others:
                continue
            left_out.update({other: kept for other in others})
            if len(report.email_variants) < REPORT_LIST_MAX:
                report.email_variants.append({"email": key, "kept": kept, "leftOut": others})
        del groups
        self.imported_users = {
            r["id"] async for r in import_queries.import_original.list_imported_user_ids(self.target)
        }
        progress = self.progress("users")
        async for rows in batches(import_queries.original.read_original_users, self.source, USER_BATCH, after_id=""):
            counts.read += len(rows)
            ids = [r["id"] for r in rows]
            stored = {
                r["original_id"]: r
                async for r in import_queries.import_original.get_import_progress(
                    self.target, kind="user", original_ids=ids
                )
            }
            ours_by_id: dict[str, asyncpg.Record] = {}
            ours_by_email: dict[str, asyncpg.Record] = {}
            async for r in import_queries.import_original.find_users_by_ids_or_emails(
                self.target, ids=ids, email_keys=[email_key(r["email"]) for r in rows]
            ):
                ours_by_id[r["id"]] = r
                ours_by_email[r["email_key"]] = r
            async with self.target.transaction():
                for row in rows:
                    try:
                        async with self.target.transaction():  # a savepoint: one refused row skips only itself
                            await self._import_user(row, stored.get(row["id"]), ours_by_id, ours_by_email, left_out)
                    except asyncpg.UniqueViolationError as exc:
                        counts.add("conflicts")
                        self.report.conflict("users", row["id"], _unique_reason(exc))
            progress.tick(len(rows))
        progress.finish()

    async def _import_user(
        self,
        row: asyncpg.Record,
        stored: asyncpg.Record | None,
        ours_by_id: dict[str, asyncpg.Record],
        ours_by_email: dict[str, asyncpg.Record],
        left_out: dict[str, str],
    ) -> None:
        counts, report, user_id = self.report.tables["users"], self.report, row["id"]
        if user_id in left_out:
            counts.skipped += 1
            report.skip("users", user_id, f"e-mail differs only in case from the older person {left_out[user_id]}")
            return
        values = self.user_values(row)
        self.check_login(user_id, row, values)
        new_print = fingerprint(values)
        ours = ours_by_id.get(user_id)
        if stored is not None:
            if ours is None:
                counts.skipped += 1
                report.skip("users", user_id, "deleted here since an earlier import; not brought back")
                return
            if stored["fingerprint"] == new_print:
                counts.unchanged += 1
                return
            if fingerprint(self.our_user_values(ours)) != stored["fingerprint"]:
                counts.add("conflicts")
                report.conflict("users", user_id, "changed here and in the original since the last import; kept")
                return
            holder = ours_by_email.get(values["email"])
            if holder is not None and holder["id"] != user_id:
                counts.add("conflicts")
                report.conflict("users", user_id, "its new e-mail already belongs to another person here")
                return
            await import_queries.import_original.update_original_user(self.target, id=user_id, **self.encrypted(values))
            counts.updated += 1
        else:
            if ours is not None:
                counts.add("conflicts")
                report.conflict("users", user_id, "a person with this id already exists here")
                return
            holder = ours_by_email.get(values["email"])
            if holder is not None:
                counts.add("conflicts")
                report.conflict("users", user_id, f"e-mail {values['email']} already belongs to another person here")
                return
            await import_queries.import_original.insert_original_user(self.target, id=user_id, **self.encrypted(values))
            counts.imported += 1
        await import_queries.import_original.save_import_progress(
            self.target, kind="user", original_id=user_id, fingerprint=new_print, last_message_id=0, last_event_id=0
        )
        self.imported_users.add(user_id)

    # ---- login sessions -----------------------------------------------------------------------

    async def import_login_sessions(self) -> None:
        counts = self.report.tables["sessions"]
        progress = self.progress("sessions")
        async for rows in batches(
            import_queries.original.read_original_login_sessions, self.source, LOGIN_SESSION_BATCH, after_id=""
        ):
            counts.read += len(rows)
            ids, user_ids, expiries = [], [], []
            for row in rows:
                expires_at = row["expires_at"]
                if expires_at.tzinfo is None:
                    # asyncpg reads 'infinity' and '-infinity' as naive datetime.max and .min. A
                    # session that never ends becomes one of this server's: it slides while used.
                    expires_at = self.now + SESSION_LIFETIME if expires_at == datetime.max else self.now
                    if expires_at > self.now:
                        counts.add("neverExpiringGivenSessionLifetime")
                if expires_at <= self.now:
                    counts.skipped += 1
                    counts.add("expired")
                elif row["user_id"] not in self.imported_users:
                    counts.skipped += 1
                    counts.add("ownerNotImported")
                else:
                    ids.append(hash_token(row["id"]))
                    user_ids.append(row["user_id"])
                    expiries.append(expires_at)
            if ids:
                await self._write_login_sessions(ids, user_ids, expiries)
            progress.tick(len(rows))
        progress.finish()

    async def _write_login_sessions(self, ids: list[str], user_ids: list[str], expiries: list[datetime]) -> None:
        counts = self.report.tables["sessions"]
        known = {
            r["original_id"]
            async for r in import_queries.import_original.get_import_progress(
                self.target, kind="login_session", original_ids=ids
            )
        }
        new = [(i, u, e) for i, u, e in zip(ids, user_ids, expiries, strict=True) if i not in known]
        seen = [(i, e) for i, _u, e in zip(ids, user_ids, expiries, strict=True) if i in known]
        async with self.target.transaction():
            if new:
                inserted = await import_queries.import_original.insert_original_login_sessions(
                    self.target, ids=[n[0] for n in new], user_ids=[n[1] for n in new], expires_ats=[n[2] for n in new]
                )
                counts.imported += inserted
                if len(new) > inserted:
                    counts.add("alreadyHere", len(new) - inserted)
            if seen:
                extended = await import_queries.import_original.extend_original_login_sessions(
                    self.target, ids=[s[0] for s in seen], expires_ats=[s[1] for s in seen]
                )
                counts.updated += extended
                counts.unchanged += len(seen) - extended

    # ---- chat sessions, messages, events ---------------------------------------------------------

    def chat_values(self, row: asyncpg.Record) -> dict[str, Any]:
        values = {name: row[name] for name in CHAT_FIELDS}
        values["provider"] = values["provider"] or "claude"
        values["auto_commit"] = bool(values["auto_commit"])
        values["locked"] = bool(values["locked"])
        for name in ("created_at", "completed_at", "deleted_at"):
            values[name] = _utc(values[name])
        return values

    async def import_chat_sessions(self) -> None:
        counts = self.report.tables["chat_sessions"]
        progress = self.progress("chat_sessions")
        self.message_progress, self.event_progress = self.progress("messages"), self.progress("events")
        async for rows in batches(
            import_queries.original.read_original_chat_sessions, self.source, CHAT_SESSION_BATCH, after_id=""
        ):
            counts.read += len(rows)
            stored = {
                r["original_id"]: r
                async for r in import_queries.import_original.get_import_progress(
                    self.target, kind="chat_session", original_ids=[r["id"] for r in rows]
                )
            }
            for row in rows:
                await self._import_chat_session(row, stored.get(row["id"]))
                progress.tick(1)
        progress.finish()
        self.message_progress.finish()
        self.event_progress.finish()

    async def _import_chat_session(self, row: asyncpg.Record, stored: asyncpg.Record | None) -> None:
        counts, report, session_id = self.report.tables["chat_sessions"], self.report, row["id"]
        if not servable_session_id(session_id):
            counts.skipped += 1
            report.skip("chat_sessions", session_id, "this server cannot serve this id (letters, digits, . _ ~ -)")
            return
        if row["user_id"] not in self.imported_users:
            counts.skipped += 1
            counts.add("ownerNotImported")
            report.skip("chat_sessions", session_id, f"its owner {row['user_id']} was not imported")
            return
        values = self.chat_values(row)
        if values["status"] not in STATUSES:
            counts.add("statusMappedToError")
            values["status"] = "error"
        new_print = fingerprint(values)
        tallies = {"messages": 0, "messagesMappedToSystem": 0, "events": 0, "repeats": 0}
        try:
            async with self.target.transaction():
                outcome = await self._write_chat_session(session_id, row, values, new_print, stored, tallies)
        except asyncpg.UniqueViolationError as exc:
            counts.skipped += 1
            report.skip("chat_sessions", session_id, _unique_reason(exc))
            return
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, asyncpg.ProgramLimitExceededError) as exc:
            counts.skipped += 1
            report.skip("chat_sessions", session_id, f"refused by this server's database: {first_line(exc)}")
            return
        if outcome == "conflict":
            return
        setattr(counts, outcome, getattr(counts, outcome) + 1)
        messages, events = self.report.tables["messages"], self.report.tables["events"]
        messages.read += tallies["messages"]
        messages.imported += tallies["messages"]
        if tallies["messagesMappedToSystem"]:
            messages.add("typeMappedToSystem", tallies["messagesMappedToSystem"])
        events.read += tallies["events"]
        events.imported += tallies["events"] - tallies["repeats"]
        if tallies["repeats"]:
            events.skipped += tallies["repeats"]
            events.add("repeatsLeftOut", tallies["repeats"])

    async def _write_chat_session(
        self,
        session_id: str,
        row: asyncpg.Record,
        values: dict[str, Any],
        new_print: str,
        stored: asyncpg.Record | None,
        tallies: dict[str, int],
    ) -> str:
        """Inside the session's transaction: the row, its new messages and events, its bookkeeping.
        Returns the TableCounts field to count it under, or "conflict"."""
        report = self.report
        ours = await queries.chat_sessions.lock_session(self.target, id=session_id)
        if stored is None:
            if ours is not None:
                report.tables["chat_sessions"].add("conflicts")
                report.conflict("chat_sessions", session_id, "a chat session with this id already exists here")
                return "conflict"
            await import_queries.import_original.insert_original_chat_session(
                self.target, id=session_id, worker_last_activity=_utc(row["worker_last_activity"]), **values
            )
            outcome = "imported"
        elif ours is None:
            report.tables["chat_sessions"].skipped += 1
            report.skip("chat_sessions", session_id, "deleted here since an earlier import; not brought back")
            return "conflict"
        elif stored["fingerprint"] == new_print:
            outcome = "unchanged"
        elif (
            fingerprint({name: _utc(ours[name]) if name.endswith("_at") else ours[name] for name in CHAT_FIELDS})
            != (stored["fingerprint"])
        ):
            report.tables["chat_sessions"].add("conflicts")
            report.conflict("chat_sessions", session_id, "changed here and in the original since the last import; kept")
            new_print = stored["fingerprint"]
            outcome = "unchanged"  # its new messages and events still come in
        else:
            await import_queries.import_original.update_original_chat_session(self.target, id=session_id, **values)
            outcome = "updated"
        last_message = stored["last_message_id"] if stored else 0
        last_event = stored["last_event_id"] if stored else 0
        last_message = await self._copy_messages(session_id, last_message, tallies)
        events_before = tallies["events"] - tallies["repeats"]
        last_event = await self._copy_events(session_id, last_event, tallies)
        if outcome == "updated":
            # Streams following a live run here end once it is no longer running (at commit).
            await queries.events.notify_session_status(self.target, chat_session_id=session_id)
        if tallies["events"] - tallies["repeats"] > events_before:
            await queries.events.notify_events(self.target, chat_session_id=session_id)
        await import_queries.import_original.save_import_progress(
            self.target,
            kind="chat_session",
            original_id=session_id,
            fingerprint=new_print,
            last_message_id=last_message,
            last_event_id=last_event,
        )
        return outcome

    async def _copy_messages(self, session_id: str, after: int, tallies: dict[str, int]) -> int:
        async for rows in session_rows(
            import_queries.original.read_original_messages_cursor, self.source, MESSAGE_BATCH, session_id, after
        ):
            types = []
            for r in rows:
                if r["type"] in MESSAGE_TYPES:
                    types.append(r["type"])
                else:
                    types.append("system")
                    tallies["messagesMappedToSystem"] += 1
            await import_queries.import_original.insert_original_messages(
                self.target,
                chat_session_id=session_id,
                types=types,
                contents=[r["content"] for r in rows],
                images=[r["images"] for r in rows],
                timestamps=[_utc(r["timestamp"]) for r in rows],
            )
            tallies["messages"] += len(rows)
            self.message_progress.tick(len(rows))
            after = rows[-1]["id"]
        return after

    async def _copy_events(self, session_id: str, after: int, tallies: dict[str, int]) -> int:
        async for rows in session_rows(
            import_queries.original.read_original_events_cursor, self.source, EVENT_BATCH, session_id, after
        ):
            stored = await import_queries.import_original.insert_original_events(
                self.target,
                chat_session_id=session_id,
                uuids=[r["uuid"] for r in rows],
                payloads=[r["event_data"] for r in rows],
                timestamps=[_utc(r["timestamp"]) for r in rows],
            )
            tallies["events"] += len(rows)
            tallies["repeats"] += len(rows) - stored
            self.event_progress.tick(len(rows))
            after = rows[-1]["id"]
        return after


def _unique_reason(exc: asyncpg.UniqueViolationError) -> str:
    constraint = getattr(exc, "constraint_name", None) or ""
    if "session_path" in constraint:
        return "its session path already belongs to another chat session here"
    if "github_id" in constraint:
        return "its GitHub account is already connected to another person here"
    if "remote_session" in constraint:
        return "its remote session is already linked to another chat session of the same person here"
    return f"refused by this server's database: {first_line(exc)}"
