"""The run state: what a run keeps in `chat_sessions.run_state` (jsonb) so that whichever replica
drives it can carry it on. One typed shape instead of bare string keys."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class RunState:
    # Events after this id belong to the run (None: adopted without a state, e.g. from the sync).
    baseline_event_id: int | None = None
    # The Claude Remote environment the run's session is created in (found when the run started).
    environment_id: str | None = None
    # A creation request went out: its reply may have been lost, so look for the session first.
    create_attempted: bool = False
    # The person interrupted the current turn: an idle remote session ends the run.
    interrupted: bool = False
    # Prompts delivered in this run.
    turns_delivered: int = 0
    # The person chose no base branch (execute-remote's new sessions show "main" as the contract
    # says): the remote session starts on the repository's own default branch.
    default_branch: bool = False
    # The admin who started the run while impersonating the session's owner (the usage audit).
    impersonator_id: str | None = None

    @classmethod
    def read(cls, value: Any) -> RunState:
        """The state stored in a row (missing or malformed keys take their defaults)."""
        stored = value if isinstance(value, dict) else {}
        baseline = stored.get("baseline_event_id")
        environment = stored.get("environment_id")
        turns = stored.get("turns_delivered")
        return cls(
            baseline_event_id=baseline if isinstance(baseline, int) and not isinstance(baseline, bool) else None,
            environment_id=environment if isinstance(environment, str) and environment else None,
            create_attempted=stored.get("create_attempted") is True,
            interrupted=stored.get("interrupted") is True,
            turns_delivered=turns if isinstance(turns, int) and not isinstance(turns, bool) else 0,
            default_branch=stored.get("default_branch") is True,
            impersonator_id=impersonator if isinstance(impersonator := stored.get("impersonator_id"), str) else None,
        )

    def to_json(self) -> dict[str, Any]:
        """The jsonb value of a new run's state."""
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}


_FIELDS = frozenset(field.name for field in dataclasses.fields(RunState))


def run_state_patch(**changes: Any) -> dict[str, Any]:
    """Keys to merge into a running session's state (`queries.chat_sessions.patch_run_state`)."""
    unknown = set(changes) - _FIELDS
    if unknown:
        raise TypeError(f"not run state fields: {', '.join(sorted(unknown))}")
    return changes
