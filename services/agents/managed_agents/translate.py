"""Managed Agents events in the Claude Code vocabulary the website renders (CONTRACT.md 5.5, the
events that come back and the fields the website reads).

Each upstream event becomes one stored event whose `uuid` is the upstream event id and which keeps
the upstream event untouched under `managed`: `agent.message` and `agent.tool_use` become
`assistant` events with text / `tool_use` blocks, `agent.tool_result` a `user` event with a
`tool_result` block, `user.message` the `user` echo, and the end of a turn
(`session.status_idle`) the `result` that nothing upstream sends (its text from the turn's last
agent message, `num_turns`, `duration_ms`, `usage`, and `total_cost_usd` from the latest
`session.usage`). Everything else, including types this server has never heard of, becomes a
`system` event, stored and never dropped.

The translation of an event depends on the turn so far, so `Translator` carries that state; it is
a small JSON object (`state`) the provider keeps in its event cursor, and rebuilding it from the
whole history gives the same events again, which is what an adopting replica does.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Any

import orjson

# Upstream tool names are lower case; the website knows Claude Code's names.
TOOL_NAMES = {
    "bash": "Bash",
    "read": "Read",
    "write": "Write",
    "edit": "Edit",
    "glob": "Glob",
    "grep": "Grep",
    "web_fetch": "WebFetch",
    "web_search": "WebSearch",
}
BRANCH_CREATED = re.compile(r"\bgit\s+(?:checkout\s+-[bB]|switch\s+-[cC])\s+['\"]?([A-Za-z0-9._/-]+)")
BRANCH_PUSHED = re.compile(r"\bgit\s+push\b([^;&|\n]*)")
STOP_MESSAGES = {
    "requires_action": (
        "The agent stopped to wait for a tool confirmation or a custom tool result (requires_action), "
        "which WebEDT does not give"
    ),
    "retries_exhausted": "The agent stopped after repeated upstream errors (retries_exhausted)",
    "budget_reached": "The session reached its spending budget (budget_reached)",
    "refusal": "The model refused to continue (refusal)",
}
TERMINATED = "The Managed Agents session was terminated"


def _empty_turn() -> dict[str, Any]:
    return {
        "open": False,
        "started_at": None,
        "model_requests": 0,
        "messages": 0,
        "last_text": "",
        "usage": {
            "input_tokens": 0,
            "output_tokens": 0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
        "interrupted": False,
        "error": None,
    }


def upstream_key(event: dict[str, Any]) -> str:
    """The event's upstream id, or (an interrupt echo may carry an empty id) a digest of the whole
    event, `processed_at` included, so it is stored once and never confused with another."""
    event_id = event.get("id")
    if isinstance(event_id, str) and event_id:
        return event_id
    digest = hashlib.sha256(orjson.dumps(event, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]
    return f"managed-digest:{digest}"


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 time (`processed_at`), or None."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _text(content: Any) -> str:
    if not isinstance(content, list):
        return ""
    return "".join(b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str))


def _blocks(content: Any) -> list[Any]:
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def cost_usd(list_cost: Any) -> float | None:
    """A `list_cost` ({amount: minor units as a decimal string, currency}) in US dollars."""
    if not isinstance(list_cost, dict) or list_cost.get("currency", "USD") != "USD":
        return None
    amount = list_cost.get("amount")
    if not isinstance(amount, str) or not amount.isdigit():
        return None
    return int(amount) / 100


def error_text(error: Any) -> str:
    if isinstance(error, dict):
        message = error.get("message")
        kind = error.get("type")
        if isinstance(message, str) and message:
            return f"{message} ({kind})" if isinstance(kind, str) else message
        if isinstance(kind, str):
            return kind
    return "unknown error"


def retry_status(error: Any) -> str | None:
    status = error.get("retry_status") if isinstance(error, dict) else None
    return status.get("type") if isinstance(status, dict) else None


def branch_of(command: str) -> str | None:
    """The branch a shell command creates (`git checkout -b X`) or pushes (`git push origin X`)."""
    created = BRANCH_CREATED.search(command)
    if created:
        return created.group(1)
    pushed = BRANCH_PUSHED.search(command)
    if pushed:
        words = [w for w in pushed.group(1).split() if not w.startswith("-")]
        if len(words) >= 2:  # remote, then refspec
            ref = words[1].strip("'\"")
            ref = ref.split(":", 1)[1] if ":" in ref else ref
            if ref and ref != "HEAD":
                return ref
    return None


class Translator:
    """Translates one session's events in upstream order; `state` is its JSON-able memory."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.turn: dict[str, Any] = (
            dict(state["turn"]) if state and isinstance(state.get("turn"), dict) else _empty_turn()
        )
        self.cost: float | None = state.get("cost") if state else None
        # The last turn stopped for a confirmation (requires_action), which the provider answers
        # with an interrupt: the idle that interrupt brings ends no turn of the person's.
        self.waiting: bool = bool(state.get("waiting")) if state else False

    @property
    def state(self) -> dict[str, Any]:
        return {"turn": self.turn, "cost": self.cost, "waiting": self.waiting}

    def translate(self, event: dict[str, Any]) -> dict[str, Any]:
        kind = event.get("type")
        handler = getattr(self, "_" + kind.replace(".", "_"), None) if isinstance(kind, str) else None
        translated = handler(event) if handler is not None else None
        if translated is None:
            translated = {"type": "system", "subtype": "managed_event", "managed_type": kind}
        translated["uuid"] = upstream_key(event)
        translated["managed"] = event
        return translated

    # ---- the conversation ----------------------------------------------------------------------

    def _user_message(self, event: dict[str, Any]) -> dict[str, Any]:
        self.waiting = False
        if not self.turn["open"]:
            self.turn = _empty_turn()
            self.turn["open"] = True
            self.turn["started_at"] = event.get("processed_at")
        return {"type": "user", "message": {"role": "user", "content": _blocks(event.get("content"))}}

    def _user_interrupt(self, event: dict[str, Any]) -> dict[str, Any]:
        # An interrupted turn still ends with `end_turn`: the result says it was interrupted.
        self.turn["interrupted"] = True
        return {"type": "system", "subtype": "interrupt", "managed_type": event.get("type")}

    def _agent_message(self, event: dict[str, Any]) -> dict[str, Any]:
        content = _blocks(event.get("content"))
        text = _text(content)
        if text:
            self.turn["last_text"] = text
        self.turn["messages"] += 1
        return {"type": "assistant", "message": {"role": "assistant", "content": content}}

    def _tool_use(self, event: dict[str, Any]) -> dict[str, Any]:
        raw_name = event.get("name")
        name = raw_name if isinstance(raw_name, str) else "tool"
        block: dict[str, Any] = {
            "type": "tool_use",
            "id": event.get("id"),
            "name": TOOL_NAMES.get(name, name),
            "input": event.get("input") if isinstance(event.get("input"), dict) else {},
        }
        return {"type": "assistant", "message": {"role": "assistant", "content": [block]}}

    def _tool_result(self, event: dict[str, Any], use_id_field: str) -> dict[str, Any]:
        block = {
            "type": "tool_result",
            "tool_use_id": event.get(use_id_field),
            "content": _blocks(event.get("content")),
            "is_error": bool(event.get("is_error")),
        }
        return {"type": "user", "message": {"role": "user", "content": [block]}}

    def _agent_tool_use(self, event: dict[str, Any]) -> dict[str, Any]:
        return self._tool_use(event)

    def _agent_mcp_tool_use(self, event: dict[str, Any]) -> dict[str, Any]:
        return self._tool_use(event)

    def _agent_custom_tool_use(self, event: dict[str, Any]) -> dict[str, Any]:
        return self._tool_use(event)

    def _agent_tool_result(self, event: dict[str, Any]) -> dict[str, Any]:
        return self._tool_result(event, "tool_use_id")

    def _agent_mcp_tool_result(self, event: dict[str, Any]) -> dict[str, Any]:
        return self._tool_result(event, "mcp_tool_use_id")

    # ---- accounting ------------------------------------------------------------------------------

    def _span_model_request_end(self, event: dict[str, Any]) -> None:
        self.turn["model_requests"] += 1
        usage = event.get("model_usage")
        if isinstance(usage, dict):
            for key in self.turn["usage"]:
                value = usage.get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    self.turn["usage"][key] += value
        return None

    def _session_usage(self, event: dict[str, Any]) -> None:
        usage = event.get("usage")
        cost = cost_usd(usage.get("list_cost")) if isinstance(usage, dict) else None
        if cost is not None:
            self.cost = cost
        return None

    # ---- the end of a turn, errors ---------------------------------------------------------------

    def _session_error(self, event: dict[str, Any]) -> dict[str, Any] | None:
        error = event.get("error")
        message = error_text(error)
        self.turn["error"] = message
        # Only a terminal error ends the turn here. A `retrying` one (every `repository_*` error
        # is: the session goes on without the repository) is shown, and the turn ends with its
        # own `session.status_idle`, whose answer the person must see.
        if retry_status(error) == "terminal":
            return self._result(event, f"Managed Agents session error: {message}")
        return {"type": "system", "subtype": "managed_error", "error": message, "retry_status": retry_status(error)}

    def _session_status_idle(self, event: dict[str, Any]) -> dict[str, Any]:
        reason = event.get("stop_reason")
        reason_type = reason.get("type") if isinstance(reason, dict) else None
        if self.waiting and not self.turn["open"]:
            self.waiting = False
            return {"type": "system", "subtype": "status", "status": "idle"}
        self.waiting = reason_type == "requires_action"
        if reason_type in (None, "end_turn"):
            return self._result(event, None)
        message = STOP_MESSAGES.get(reason_type, f"The agent stopped ({reason_type})")
        if reason_type == "retries_exhausted" and self.turn["error"]:
            message += f": {self.turn['error']}"
        return self._result(event, message)

    def _session_status_terminated(self, event: dict[str, Any]) -> dict[str, Any] | None:
        if not self.turn["open"]:
            return {"type": "system", "subtype": "status", "status": "terminated"}
        message = TERMINATED + (f": {self.turn['error']}" if self.turn["error"] else "")
        return self._result(event, message)

    def _session_status_running(self, event: dict[str, Any]) -> dict[str, Any]:
        return {"type": "system", "subtype": "status", "status": "running"}

    def _result(self, event: dict[str, Any], error: str | None) -> dict[str, Any]:
        turn = self.turn
        started, ended = parse_time(turn["started_at"]), parse_time(event.get("processed_at"))
        duration_ms = int((ended - started).total_seconds() * 1000) if started and ended else 0
        result: dict[str, Any] = {
            "type": "result",
            "subtype": "success" if error is None else "error_during_execution",
            "is_error": error is not None,
            "result": turn["last_text"] if error is None else error,
            # Claude Code counts model round trips; without spans, the agent's messages.
            "num_turns": max(turn["model_requests"] or turn["messages"], 1),
            "duration_ms": max(duration_ms, 0),
            "usage": dict(turn["usage"]),
        }
        if error is not None:
            result["error"] = error
        if turn["interrupted"]:
            result["interrupted"] = True
        if self.cost is not None:
            result["total_cost_usd"] = self.cost
        self.turn = _empty_turn()
        return result
