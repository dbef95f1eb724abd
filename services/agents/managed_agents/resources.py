"""The deployment's one Managed Agents agent and environment, created once for all replicas.

Upstream has no uniqueness rule for agents or environments (and environment calls are
rate-limited), so replicas that start together must not each create their own: the first one to
need them takes a transaction-level advisory lock, looks in `managed_agents_resources`, creates
what is missing and stores its id in the same transaction; the others wait on the lock and read it.
MANAGED_AGENTS_AGENT_ID / MANAGED_AGENTS_ENVIRONMENT_ID, when set, are used as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anthropic

from services import locks
from services.agents.backend import UpstreamError
from services.agents.managed_agents.client import call_json
from services.context import AppContext
from services.db import allow_slow_transaction, queries

log = logging.getLogger(__name__)

AGENT_NAME = "WebEDT"
ENVIRONMENT_NAME = "webedt"
SYSTEM_PROMPT = (
    "You are WebEDT's coding agent. The person's GitHub repository is mounted in your container "
    "under /workspace. Work on it as asked: create a branch whose name starts with claude/ "
    "(git checkout -b claude/<short-name>), commit your changes there, and push that branch to "
    "origin. Never push to the base branch."
)


@dataclass(frozen=True)
class Resources:
    agent_id: str
    environment_id: str


async def _create_agent(ctx: AppContext, client: anthropic.AsyncAnthropic) -> str:
    value = await call_json(
        "create agent",
        lambda: client.beta.agents.with_raw_response.create(
            name=AGENT_NAME,
            model=ctx.config.claude_default_model,
            system=SYSTEM_PROMPT,
            tools=[
                {"type": "agent_toolset_20260401", "default_config": {"permission_policy": {"type": "always_allow"}}}
            ],
        ),
    )
    return _id("create agent", value)


async def _create_environment(client: anthropic.AsyncAnthropic) -> str:
    value = await call_json(
        "create environment",
        lambda: client.beta.environments.with_raw_response.create(
            name=ENVIRONMENT_NAME, config={"type": "cloud", "networking": {"type": "unrestricted"}}
        ),
    )
    return _id("create environment", value)


def _id(operation: str, value: dict[str, object]) -> str:
    upstream_id = value.get("id")
    if not isinstance(upstream_id, str) or not upstream_id:
        raise UpstreamError(operation, "reply has no id", kind="malformed")
    return upstream_id


async def _ensure_one(ctx: AppContext, kind: str, create: Callable[[], Awaitable[str]]) -> str:
    """The stored id of `kind`, created and stored under the lock when there is none. Each kind
    commits on its own, so an agent made before a failed environment call is kept and reused."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        # Held across the upstream create, which others wait for: longer than the pool's timeouts.
        await allow_slow_transaction(conn, ctx.config.claude_request_timeout_seconds + 10)
        await queries.database.lock_transaction(conn, key=locks.MANAGED_AGENTS_RESOURCES)
        upstream_id = await queries.managed_agents.get_agent_resource(conn, kind=kind)
        if not upstream_id:
            upstream_id = await create()
            await queries.managed_agents.insert_agent_resource(conn, kind=kind, upstream_id=upstream_id)
            log.info("created the Managed Agents %s %s", kind, upstream_id)
    return upstream_id


async def ensure(ctx: AppContext, client: anthropic.AsyncAnthropic) -> Resources:
    """The agent and environment new sessions use, created upstream (once) when missing."""
    config = ctx.config
    agent_id = config.managed_agents_agent_id or await _ensure_one(ctx, "agent", lambda: _create_agent(ctx, client))
    environment_id = config.managed_agents_environment_id or await _ensure_one(
        ctx, "environment", lambda: _create_environment(client)
    )
    return Resources(agent_id, environment_id)
