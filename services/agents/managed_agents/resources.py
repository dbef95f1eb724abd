"""The deployment's one Managed Agents agent and environment, created once for all replicas.

Agents have no uniqueness rule upstream, environment names are unique in a workspace (a second
`webedt` answers 409) and environment calls are rate-limited (60 a minute, 5 at once), so replicas
that start together must not each create their own: the first one to need them takes a
transaction-level advisory lock, looks in `managed_agents_resources`, creates what is missing and
stores its id in the same transaction; the others wait on the lock and read it. An environment
whose creation answers 409 already exists (a lost reply, a database reset, another deployment in
the same workspace): it is found by name and adopted, under the same lock.

The agent made here is kept in step with the configuration: when `CLAUDE_DEFAULT_MODEL` or the
system prompt below changed since, it is updated (upstream makes a new version, which new sessions
use). MANAGED_AGENTS_AGENT_ID / MANAGED_AGENTS_ENVIRONMENT_ID, when set, are used as they are,
except that an agent whose tools may stop to ask for a confirmation is refused (WebEDT gives none).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anthropic

from services import locks
from services.agents.backend import UpstreamError
from services.agents.managed_agents.client import FinalError, call_json
from services.context import AppContext
from services.db import allow_slow_transaction, queries

log = logging.getLogger(__name__)

AGENT_NAME = "WebEDT"
ENVIRONMENT_NAME = "webedt"
ENVIRONMENT_PAGES = 20
# Upstream mounts a repository at /workspace/<repository name> unless told otherwise (the SDK's
# BetaManagedAgentsGitHubRepositoryResourceParams.mount_path).
SYSTEM_PROMPT = (
    "You are WebEDT's coding agent. The person's GitHub repository is mounted in your container "
    "at /workspace/<repository name> (github.com/octo/widgets is at /workspace/widgets), already "
    "checked out on the branch to start from. Work on it as asked: create a branch whose name starts with claude/ "
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
    try:
        value = await call_json(
            "create environment",
            lambda: client.beta.environments.with_raw_response.create(
                name=ENVIRONMENT_NAME, config={"type": "cloud", "networking": {"type": "unrestricted"}}
            ),
        )
    except UpstreamError as exc:
        if exc.status != 409:
            raise
        # The name is taken in this workspace: ours from before (a lost reply, a database reset)
        # or another deployment's sharing the workspace. Either way it is the one to use.
        found = await _find_environment(client)
        if found is None:
            raise
        log.info("adopted the existing Managed Agents environment %s named %s", found, ENVIRONMENT_NAME)
        return found
    return _id("create environment", value)


async def _environments_page(client: anthropic.AsyncAnthropic, page: str | None) -> dict[str, Any]:
    if page:
        return await call_json("list environments", lambda: client.beta.environments.with_raw_response.list(page=page))
    return await call_json("list environments", lambda: client.beta.environments.with_raw_response.list())


async def _find_environment(client: anthropic.AsyncAnthropic) -> str | None:
    """The id of the workspace's environment named ENVIRONMENT_NAME (not archived), if any."""
    page: str | None = None
    for _ in range(ENVIRONMENT_PAGES):
        value = await _environments_page(client, page)
        for environment in value.get("data") or []:
            if (
                isinstance(environment, dict)
                and environment.get("name") == ENVIRONMENT_NAME
                and not environment.get("archived_at")
                and isinstance(environment.get("id"), str)
            ):
                return environment["id"]
        page = value.get("next_page")
        if not page:
            return None
    return None


def _model_id(model: Any) -> Any:
    return model.get("id") if isinstance(model, dict) else model


async def _keep_agent_current(ctx: AppContext, client: anthropic.AsyncAnthropic, agent_id: str) -> None:
    """Update the agent made here when the configured model or the system prompt changed."""
    agent = await call_json("get agent", lambda: client.beta.agents.with_raw_response.retrieve(agent_id))
    model = ctx.config.claude_default_model
    if _model_id(agent.get("model")) == model and agent.get("system") == SYSTEM_PROMPT:
        return
    version = agent.get("version")
    if not isinstance(version, int):
        raise UpstreamError("get agent", "reply has no version", kind="malformed")
    try:
        await call_json(
            "update agent",
            lambda: client.beta.agents.with_raw_response.update(
                agent_id, version=version, model=model, system=SYSTEM_PROMPT
            ),
        )
    except UpstreamError as exc:
        if exc.status != 409:  # 409: another replica updated it first, from the same settings
            raise
    log.info("updated the Managed Agents agent %s (model %s, system prompt) to a new version", agent_id, model)


def confirmation_risk(agent: dict[str, Any]) -> str | None:
    """Why sessions of this agent may stop for a confirmation or a custom tool's result
    (`requires_action`), which WebEDT never gives; None when they cannot."""
    for tool in agent.get("tools") or []:
        if not isinstance(tool, dict):
            continue
        kind = tool.get("type")
        if kind == "custom":
            return f"it has the custom tool {tool.get('name')!r}, whose results only the caller can give"
        default = tool.get("default_config") or {}
        policies = [
            (default.get("permission_policy") or {}).get(
                "type", "always_ask" if kind == "mcp_toolset" else "always_allow"
            )
        ]
        policies += [
            (c.get("permission_policy") or {}).get("type") for c in tool.get("configs") or [] if isinstance(c, dict)
        ]
        asking = [p for p in policies if p not in (None, "always_allow")]
        if asking:
            return f"its {kind} tools have the permission policy {asking[0]}, which asks for a confirmation"
    return None


async def _check_configured_agent(client: anthropic.AsyncAnthropic, agent_id: str) -> None:
    agent = await call_json("get agent", lambda: client.beta.agents.with_raw_response.retrieve(agent_id))
    risk = confirmation_risk(agent)
    if risk:
        raise FinalError(
            "use the configured agent",
            f"MANAGED_AGENTS_AGENT_ID names the agent {agent_id}, which WebEDT cannot use: {risk}; "
            "set every tool's permission policy to always_allow and remove custom tools, or unset "
            "MANAGED_AGENTS_AGENT_ID so that the server makes its own agent",
        )


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
    """The agent and environment new sessions use, created upstream (once) when missing; the
    agent made here brought up to date, a configured one checked."""
    config = ctx.config
    if config.managed_agents_agent_id:
        agent_id = config.managed_agents_agent_id
        await _check_configured_agent(client, agent_id)
    else:
        created: list[str] = []

        async def create_agent() -> str:
            created.append(await _create_agent(ctx, client))
            return created[-1]

        agent_id = await _ensure_one(ctx, "agent", create_agent)
        if not created:
            await _keep_agent_current(ctx, client, agent_id)
    environment_id = config.managed_agents_environment_id or await _ensure_one(
        ctx, "environment", lambda: _create_environment(client)
    )
    return Resources(agent_id, environment_id)
