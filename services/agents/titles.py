"""Session titles and `claude/...` branch prefixes derived locally from the prompt (CONTRACT.md 5.7).

This is the original's last-resort "local" method, used here always: it needs no extra model call,
no throw-away remote session and no third-party service, and it cannot fail.
"""

from __future__ import annotations

import re

# Words that say little about what a request is about: pronouns, auxiliaries, prepositions and
# the polite phrasing people put around a request.
_FILLER_TEXT = """
    a an the and or but nor so yet for of to in on at by with from into onto upon about above below
    over under after before between through during without within along across against among around
    i me my mine we us our ours you your yours he him his she her hers it its they them their theirs
    this that these those there here what which who whom whose when where why how
    is am are was were be been being do does did doing done have has had having
    can could would should will shall may might must need needs
    please help make sure want wants like just also then than some any all each every
    very really quite let lets get got use using thing things something
    not no yes okay ok now new
"""
FILLER_WORDS = frozenset(_FILLER_TEXT.split())

MAX_TITLE_WORDS = 5
DEFAULT_TITLE = "New Session"
DEFAULT_BRANCH = "claude/session"


def prompt_text(prompt: str | list[dict[str, object]]) -> str:
    """The text of a prompt that may be a list of content blocks."""
    if isinstance(prompt, str):
        return prompt
    return " ".join(str(block.get("text", "")) for block in prompt if block.get("type") == "text")


def local_title(prompt: str) -> str:
    """Up to five meaningful words of the prompt in Title Case."""
    cleaned = re.sub(r"[^a-z0-9]+", " ", prompt.lower()).split()
    words = [word for word in cleaned if len(word) > 2 and word not in FILLER_WORDS]
    if len(words) < 2:
        words = cleaned
    words = words[:MAX_TITLE_WORDS]
    if not words:
        return DEFAULT_TITLE
    return " ".join(word.capitalize() for word in words)


def branch_from_title(title: str) -> str:
    """`claude/` followed by the first four words of the title's first 40 characters, kebab-case."""
    cleaned = re.sub(r"[^a-z0-9\s]", "", title[:40].lower())
    words = cleaned.split()[:4]
    return "claude/" + "-".join(words) if words else DEFAULT_BRANCH


def derive(prompt: str | list[dict[str, object]]) -> tuple[str, str]:
    """(title, branch prefix) for a prompt."""
    title = local_title(prompt_text(prompt))
    return title, branch_from_title(title)
