"""What each run costs, and a monthly budget per person (issue 24).

Recording. Upstream reports a remote session's usage cumulatively (`TurnUsage`: Claude Code's
`result`, the Managed Agents session's `usage`). The run driver hands each report here: at the
turn end that decides a run (`record_turn_end`, keyed by the end event's uuid, so a retry or a
second replica records it once) and, for a backend whose status read shows usage (Managed
Agents), at each status check of a running run (`check_running`). Each report is one row of
`usage_records` holding the report and its share: the difference to the session's previous
report, taken under a lock per remote session (a report smaller than the previous one means
upstream started counting again, and counts whole). Rows are attributed to the session's owner
(an impersonating admin is kept beside, from the run state).

Budgets. A person's monthly budget is their own (`usage_budgets`, set by an admin; NULL there
means none) or else `USAGE_MONTHLY_BUDGET_USD`. It counts the spend of the calendar month (UTC)
on the backends it applies to: those paid by the deployment (Managed Agents) and, with
`USAGE_BUDGET_REMOTE_SESSIONS`, Remote Sessions. A prompt is refused before anything goes
upstream once the month's spend has reached the budget (`check_before_run`); a running Managed
Agents run is interrupted at the status check that finds it so (`check_running`). How close
that is: README, "Spending and budgets".
"""

from __future__ import annotations

import calendar
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from services import locks
from services.agents import registry
from services.agents.backend import AgentProvider, RemoteSession, RemoteState, TurnUsage
from services.clock import iso
from services.context import AppContext
from services.db import queries
from services.errors import ServiceError
from services.metrics import USAGE_COST, USAGE_TOKENS
from services.pagination import Page

log = logging.getLogger(__name__)

# The status of a refused prompt: 402 Payment Required (a 4xx the website shows like any other).
OVER_BUDGET_STATUS = 402
# Fractions of a budget whose crossing is logged.
WARN_AT = (Decimal("0.8"), Decimal("1"))
TOKEN_KINDS = ("input", "output", "cache_read", "cache_creation")
SORTS = ("cost", "tokens", "turns", "email")
CENT = Decimal("0.01")
MICRO = Decimal("0.000001")


# ---- months --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Month:
    """A calendar month in UTC: [start, end)."""

    start: datetime
    end: datetime

    @classmethod
    def of(cls, moment: datetime) -> Month:
        start = moment.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        return cls(start, end)

    @classmethod
    def parse(cls, text: str | None) -> Month:
        """`YYYY-MM`, or the current month when absent; a 400 otherwise (an empty value too)."""
        if text is None:
            return cls.of(datetime.now(UTC))
        try:
            moment = datetime.strptime(text.strip(), "%Y-%m").replace(tzinfo=UTC)
        except ValueError:
            raise ServiceError(400, "month must be a month written YYYY-MM, such as 2026-12") from None
        return cls.of(moment)

    def previous(self) -> Month:
        return Month.of(self.start - timedelta(days=1))

    @property
    def key(self) -> str:
        return self.start.strftime("%Y-%m")

    @property
    def name(self) -> str:
        return calendar.month_name[self.start.month]

    @property
    def resets(self) -> str:
        return f"{calendar.month_name[self.end.month]} 1"


def dollars(value: Decimal) -> str:
    return f"${value.quantize(CENT):,}"


# ---- budgets -------------------------------------------------------------------------------------


def budgeted(ctx: AppContext, provider_name: str) -> bool:
    """Whether budgets apply to a backend's runs (and count its spend): a backend paid by the
    deployment always, one paid by each person's own subscription only when the operator says."""
    if ctx.config.usage_budget_remote_sessions:
        return True
    cls = registry.provider_class(provider_name)
    return cls is not None and not cls.personal_credentials


def budgeted_backends(ctx: AppContext) -> list[str]:
    return [name for name in registry.NAMES if budgeted(ctx, name)]


@dataclass(frozen=True)
class Budget:
    """A person's budget for a month and what they have spent of it on the backends it covers."""

    limit: Decimal | None
    used: Decimal
    # person (an admin set it), default (USAGE_MONTHLY_BUDGET_USD) or none
    source: str
    month: Month

    @property
    def exceeded(self) -> bool:
        return self.limit is not None and self.used >= self.limit

    def message(self) -> str:
        assert self.limit is not None
        return (
            f"You have used {dollars(self.used)} of your {dollars(self.limit)} budget for {self.month.name}; "
            f"it resets on {self.month.resets}. An admin can raise your budget."
        )

    def json(self, ctx: AppContext) -> dict[str, Any]:
        return {
            "monthlyBudgetUsd": float(self.limit) if self.limit is not None else None,
            "usedUsd": float(self.used),
            "remainingUsd": float(max(self.limit - self.used, Decimal(0))) if self.limit is not None else None,
            "source": self.source,
            "appliesTo": budgeted_backends(ctx),
            "month": self.month.key,
            "resetsAt": iso(self.month.end),
        }


async def _limit(ctx: AppContext, conn: Any, user_id: str) -> tuple[Decimal | None, str]:
    own = await queries.usage.get_usage_budget(conn, user_id=user_id)
    if own is not None:
        return own["monthly_budget_usd"], "person"
    default = ctx.config.usage_monthly_budget_usd
    if default is None:
        return None, "none"
    return Decimal(str(default)), "default"


async def budget_of(ctx: AppContext, user_id: str, month: Month | None = None) -> Budget:
    month = month or Month.of(datetime.now(UTC))
    limit, source = await _limit(ctx, ctx.pool, user_id)
    used = await queries.usage.sum_user_cost(
        ctx.pool, user_id=user_id, since=month.start, until=month.end, providers=budgeted_backends(ctx)
    )
    return Budget(limit, used, source, month)


async def check_before_run(ctx: AppContext, user_id: str, provider: AgentProvider) -> None:
    """Refuse a prompt (402, before anything goes upstream) once the person's spend this month has
    reached their budget, on a backend the budget applies to."""
    if not budgeted(ctx, provider.name):
        return
    budget = await budget_of(ctx, user_id)
    if budget.exceeded:
        raise ServiceError(OVER_BUDGET_STATUS, budget.message())


# ---- recording -----------------------------------------------------------------------------------


def _share(new: int, old: int) -> int:
    return new - old if new >= old else new


def _cost(value: float | None) -> Decimal | None:
    return Decimal(str(value)).quantize(MICRO) if value is not None else None


async def record(
    ctx: AppContext,
    *,
    session_id: str,
    user_id: str,
    provider_name: str,
    remote_id: str,
    report: TurnUsage,
    turn_uuid: str | None,
) -> bool:
    """Store one cumulative report of a remote session with its share; False when nothing was
    stored (this turn end was recorded already, or a mid-turn reading shows nothing new)."""
    total_cost = _cost(report.cost_usd)
    async with ctx.pool.acquire() as conn, conn.transaction():
        await queries.database.lock_transaction_named(conn, key=locks.USAGE_RECORDS, name=remote_id)
        if turn_uuid is not None and await queries.usage.has_turn_usage(
            conn, chat_session_id=session_id, turn_uuid=turn_uuid
        ):
            return False
        last = await queries.usage.get_last_usage_report(conn, chat_session_id=session_id, remote_session_id=remote_id)
        before_cost = (last["total_cost_usd"] if last is not None else None) or Decimal(0)
        if total_cost is None:
            cost = Decimal(0)
        else:
            cost = total_cost - before_cost if total_cost >= before_cost else total_cost
        totals = {
            "input": report.input_tokens,
            "output": report.output_tokens,
            "cache_read": report.cache_read_tokens,
            "cache_creation": report.cache_creation_tokens,
        }
        shares = {kind: _share(value, last[f"total_{kind}_tokens"] if last else 0) for kind, value in totals.items()}
        if turn_uuid is None and cost == 0 and not any(shares.values()):
            return False
        stored = await queries.usage.insert_usage_record(
            conn,
            user_id=user_id,
            chat_session_id=session_id,
            provider=provider_name,
            remote_session_id=remote_id,
            turn_uuid=turn_uuid,
            cost_usd=cost,
            **{f"{kind}_tokens": shares[kind] for kind in TOKEN_KINDS},
            total_cost_usd=total_cost if total_cost is not None else (last["total_cost_usd"] if last else None),
            **{f"total_{kind}_tokens": totals[kind] for kind in TOKEN_KINDS},
        )
    if stored is None:
        return False
    USAGE_COST.labels(provider_name).inc(float(cost))
    for kind in TOKEN_KINDS:
        USAGE_TOKENS.labels(provider_name, kind).inc(shares[kind])
    if cost > 0 and budgeted(ctx, provider_name):
        await _log_crossings(ctx, user_id, cost)
    return True


async def _log_crossings(ctx: AppContext, user_id: str, cost: Decimal) -> None:
    """One log line when this share took the person past 80 % or 100 % of their budget."""
    budget = await budget_of(ctx, user_id)
    if budget.limit is None or budget.limit <= 0:
        return
    before = budget.used - cost
    for fraction in WARN_AT:
        line = budget.limit * fraction
        if before < line <= budget.used:
            log.warning(
                "person %s crossed %d %% of their %s budget for %s: %s spent",
                user_id,
                int(fraction * 100),
                dollars(budget.limit),
                budget.month.key,
                dollars(budget.used),
            )


async def record_turn_end(
    ctx: AppContext,
    provider: AgentProvider,
    token: str,
    *,
    session_id: str,
    user_id: str,
    remote_id: str,
    end_event: dict[str, Any],
) -> None:
    """Record what the session had cost once the turn ending with `end_event` was over (once per
    end; an upstream failure reading it propagates, so the run driver tries again)."""
    turn_uuid = end_event.get("uuid")
    if not isinstance(turn_uuid, str) or not turn_uuid:
        return
    if await queries.usage.has_turn_usage(ctx.pool, chat_session_id=session_id, turn_uuid=turn_uuid):
        return
    report = await provider.turn_usage(token, remote_id, end_event)
    if report is None:
        return
    await record(
        ctx,
        session_id=session_id,
        user_id=user_id,
        provider_name=provider.name,
        remote_id=remote_id,
        report=report,
        turn_uuid=turn_uuid,
    )


async def check_running(
    ctx: AppContext, provider: AgentProvider, *, session_id: str, user_id: str, remote: RemoteSession
) -> str | None:
    """At a status check of a running run: record the session's usage so far, when the status
    read shows it, and say why the run must stop when the person's spend has now reached their
    budget while the agent is working (the message its run ends with), else None."""
    report = provider.session_usage(remote)
    if report is None:
        return None
    await record(
        ctx,
        session_id=session_id,
        user_id=user_id,
        provider_name=provider.name,
        remote_id=remote.id,
        report=report,
        turn_uuid=None,
    )
    if remote.state != RemoteState.RUNNING or not budgeted(ctx, provider.name):
        return None
    budget = await budget_of(ctx, user_id)
    if not budget.exceeded:
        return None
    log.warning("run of session %s is stopped: its owner %s reached their budget", session_id, user_id)
    return budget.message()


# ---- reading -------------------------------------------------------------------------------------


def _backend_totals(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "costUsd": float(row["cost_usd"]),
        "inputTokens": row["input_tokens"],
        "outputTokens": row["output_tokens"],
        "cacheReadTokens": row["cache_read_tokens"],
        "cacheCreationTokens": row["cache_creation_tokens"],
        "turns": row["turns"],
    }


async def month_totals(ctx: AppContext, user_id: str, month: Month) -> dict[str, Any]:
    rows = [
        r
        async for r in queries.usage.list_user_usage_by_provider(
            ctx.pool, user_id=user_id, since=month.start, until=month.end
        )
    ]
    return {
        "month": month.key,
        "costUsd": float(sum((r["cost_usd"] for r in rows), Decimal(0))),
        "backends": {r["provider"]: _backend_totals(r) for r in rows},
    }


async def user_usage(ctx: AppContext, user_id: str) -> dict[str, Any]:
    """GET /api/user/usage: this month's and last month's totals per backend, and the budget."""
    month = Month.of(datetime.now(UTC))
    return {
        "thisMonth": await month_totals(ctx, user_id, month),
        "lastMonth": await month_totals(ctx, user_id, month.previous()),
        "budget": (await budget_of(ctx, user_id, month)).json(ctx),
    }


def _sort(sort: str | None, order: str | None) -> tuple[str, bool]:
    sort = (sort or "cost").strip()
    if sort not in SORTS:
        raise ServiceError(400, f"sort must be one of {', '.join(SORTS)}")
    order = (order or ("asc" if sort == "email" else "desc")).strip()
    if order not in ("asc", "desc"):
        raise ServiceError(400, "order must be asc or desc")
    return sort, order == "desc"


async def admin_usage(
    ctx: AppContext, month_text: str | None, sort_text: str | None, order_text: str | None, page: Page
) -> dict[str, Any]:
    """GET /api/admin/usage: one page of the people who spent anything in a month."""
    month = Month.parse(month_text)
    sort, descending = _sort(sort_text, order_text)
    rows = [
        r
        async for r in queries.usage.list_monthly_usage(
            ctx.pool,
            since=month.start,
            until=month.end,
            sort=sort,
            descending=descending,
            limit=page.limit,
            offset=page.offset,
        )
    ]
    total = await queries.usage.count_monthly_usage_people(ctx.pool, since=month.start, until=month.end)
    default = ctx.config.usage_monthly_budget_usd
    people = []
    for r in rows:
        limit = r["monthly_budget_usd"] if r["has_own_budget"] else default
        people.append(
            {
                "userId": r["user_id"],
                "email": r["email"],
                "displayName": r["display_name"],
                "month": month.key,
                "costUsd": float(r["cost_usd"]),
                "tokens": r["tokens"],
                "turns": r["turns"],
                "backends": r["backends"],
                "monthlyBudgetUsd": float(limit) if limit is not None else None,
                "budgetSource": ("person" if r["has_own_budget"] else "default" if default is not None else "none"),
            }
        )
    order = "desc" if descending else "asc"
    return {"month": month.key, "sort": sort, "order": order, "users": people, **page.fields(total, len(rows))}


def _budget_amount(body: dict[str, Any]) -> Decimal | None:
    if "monthlyBudgetUsd" not in body:
        raise ServiceError(400, "monthlyBudgetUsd is required: an amount of US dollars, or null for no budget")
    value = body["monthlyBudgetUsd"]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 10**12:
        raise ServiceError(400, "monthlyBudgetUsd must be an amount of US dollars from 0 up, or null for no budget")
    return Decimal(str(value)).quantize(CENT)


async def set_budget(ctx: AppContext, admin_id: str, user_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """PUT /api/admin/users/:id/budget: the person's own monthly budget (null: none at all)."""
    amount = _budget_amount(body)
    if await queries.users.get_user_by_id(ctx.pool, id=user_id) is None:
        raise ServiceError(404, "User not found")
    try:
        await queries.usage.set_usage_budget(ctx.pool, user_id=user_id, monthly_budget_usd=amount, updated_by=admin_id)
    except asyncpg.ForeignKeyViolationError:
        raise ServiceError(404, "User not found") from None
    log.info("admin %s set the monthly budget of %s to %s", admin_id, user_id, amount)
    return {"userId": user_id, "budget": (await budget_of(ctx, user_id)).json(ctx)}


async def clear_budget(ctx: AppContext, admin_id: str, user_id: str) -> dict[str, Any]:
    """DELETE /api/admin/users/:id/budget: back to the deployment default."""
    if await queries.users.get_user_by_id(ctx.pool, id=user_id) is None:
        raise ServiceError(404, "User not found")
    await queries.usage.delete_usage_budget(ctx.pool, user_id=user_id)
    log.info("admin %s gave %s the deployment's default budget again", admin_id, user_id)
    return {"userId": user_id, "budget": (await budget_of(ctx, user_id)).json(ctx)}


async def budget_json(ctx: AppContext, user_id: str) -> dict[str, Any]:
    """GET /api/admin/users/:id/budget."""
    if await queries.users.get_user_by_id(ctx.pool, id=user_id) is None:
        raise ServiceError(404, "User not found")
    return {"userId": user_id, "budget": (await budget_of(ctx, user_id)).json(ctx)}
