"""Every agent backend, one row each: the `AGENT_BACKEND` value that selects it for new sessions,
the name stored in `chat_sessions.provider`, and where its provider class lives.

The class is imported on first use: the Managed Agents backend brings the Anthropic SDK (and
pydantic), about 50 MiB per process, which a deployment that never uses it need not pay. Adding
a backend is one folder beside `claude_remote/` plus one row here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.agents.backend import AgentProvider


@dataclass(frozen=True)
class Backend:
    setting: str  # the AGENT_BACKEND value
    name: str  # chat_sessions.provider
    provider: str  # "module:Class" of its AgentProvider


BACKENDS = (
    Backend("remote-sessions", "claude", "services.agents.claude_remote.provider:ClaudeRemoteProvider"),
    Backend("managed-agents", "managed-agents", "services.agents.managed_agents.provider:ManagedAgentsProvider"),
)
# Sessions stored before `chat_sessions.provider` existed ran on the first backend.
DEFAULT_NAME = BACKENDS[0].name
SETTINGS = tuple(backend.setting for backend in BACKENDS)
NAMES = tuple(backend.name for backend in BACKENDS)


def by_setting(setting: str) -> Backend:
    """The backend an `AGENT_BACKEND` value selects (the value is checked when the config loads)."""
    return next(backend for backend in BACKENDS if backend.setting == setting)


@cache
def provider_class(name: str) -> type[AgentProvider] | None:
    """The provider class of a `chat_sessions.provider` name, imported now; None when unknown."""
    backend = next((b for b in BACKENDS if b.name == name), None)
    if backend is None:
        return None
    module, _, attribute = backend.provider.partition(":")
    cls: type[AgentProvider] = getattr(importlib.import_module(module), attribute)
    return cls
