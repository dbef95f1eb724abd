"""The end of a turn, decided from the stored log: the one rule that ends a run.

A run ends only when the stored log, after the run's baseline, holds a turn end that answers the
last prompt the run delivered. Answers are matched by upstream order, never by counting ends
against prompts: every prompt echo (`AgentProvider.prompt_echo`) opens a question, and each turn
end answers the questions open before it: one (Claude Code answers a prompt queued mid-turn as a
turn of its own) or all of them (Managed Agents may answer several queued messages in one turn),
as the backend says (`end_answers_every_queued_prompt`). An end that arrives while nothing is
open (the late end of an aborted turn, a turn of an earlier run) is stored but answers nothing.

The tracker is fed the stored log itself, read back by id after every write (whoever wrote:
the run, the last look of the run before it, a sync), so it sees each event once, in stored order,
which is upstream order (the run stores them one batch at a time under its store lock). The
caller backfills the upstream list to completeness before it takes a verdict, so `answered` sees
every event up to the end it names.
"""

from __future__ import annotations

from typing import Any

from services.agents.backend import AgentProvider


class TurnTracker:
    """The questions and answers of one run, from the events stored after its baseline."""

    def __init__(self, provider: AgentProvider) -> None:
        self.provider = provider
        self.echoes = 0
        self.open = 0
        self.last_end: dict[str, Any] | None = None

    def observe(self, event: dict[str, Any]) -> None:
        """One stored event, in stored order."""
        if self.provider.prompt_echo(event):
            self.echoes += 1
            self.open += 1
        elif event.get("type") in self.provider.end_event_types:
            self.last_end = event
            if self.provider.end_answers_every_queued_prompt:
                self.open = 0
            else:
                self.open = max(self.open - 1, 0)

    def answered(self, delivered: int) -> dict[str, Any] | None:
        """The turn end that answers the last of `delivered` prompts, once the log holds it."""
        if self.last_end is None or self.open or self.echoes < delivered:
            return None
        return self.last_end
