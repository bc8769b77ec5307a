"""Ledger rows, their daily rollup and the spend they add, written in one transaction.

`meterway.ledger.Ledger` groups the rows of requests finishing together and hands each group
here; one transaction inserts the rows, adds them to `mw_usage_daily` (an upsert per distinct
group) and adds their cost to the key, user, team and customer rows, so reports, rollups and
budgets can never disagree with the ledger.

A row whose budget has a duration carries the end of its current period in `budget_reset_at`. An
amount for a later period than the row's starts that period: the row's spend becomes the amount
and `budget_reset_at` moves to the new period's end. Every replica computes periods the same way
(`limits.Budget.period`), so this needs no coordination beyond the one UPDATE.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from meterway.ledger import Entry
from meterway.ledger.pricing import usd
from meterway.store.tables import customers, keys, ledger, teams, usage_daily, users

_TABLES: dict[str, tuple[sa.Table, str]] = {
    "key": (keys, "token"),
    "user": (users, "user_id"),
    "team": (teams, "team_id"),
    "customer": (customers, "customer_id"),
}
_DIMENSIONS = ("customer_id", "key_id", "user_id", "team_id", "model_group")
_PRICES = ("price_input", "price_output", "price_cache_read", "price_cache_write")
_TOKENS = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens")
_MEASURES = ("requests", "errors", "unpriced", *_TOKENS, "cost")

SpendRow = tuple[str, str, float | None]  # scope, id, period end


class LedgerStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        from sqlalchemy.dialects import postgresql, sqlite

        self._insert: Any = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    async def write(self, entries: Sequence[Entry]) -> None:
        rollup: dict[tuple[Any, ...], dict[str, Any]] = {}
        spend: dict[SpendRow, int] = {}
        for e in entries:
            row = e.row
            day = row["started_at"].astimezone(UTC).strftime("%Y-%m-%d")
            dims = (row[d] or "" for d in _DIMENSIONS)
            group = (day, *dims, *(-1 if row[p] is None else row[p] for p in _PRICES))
            sums = rollup.get(group)
            if sums is None:
                sums = rollup[group] = dict.fromkeys(_MEASURES, 0)
            sums["requests"] += 1
            sums["errors"] += row["status"] != "success"
            sums["unpriced"] += row["cost"] is None
            for t in _TOKENS:
                sums[t] += row[t]
            sums["cost"] += e.cost_units or 0
            if e.cost_units:
                for target in e.spend:
                    key = (target.scope, target.ident, target.period_end)
                    spend[key] = spend.get(key, 0) + e.cost_units
        async with self._engine.begin() as conn:
            await conn.execute(ledger.insert(), [e.row for e in entries])
            await self._upsert_rollup(conn, rollup)
            await _add_spend(conn, spend)

    async def _upsert_rollup(self, conn: AsyncConnection, rollup: dict[tuple[Any, ...], dict[str, Any]]) -> None:
        if not rollup:
            return
        names = ("day", *_DIMENSIONS, *_PRICES)
        values = []
        for group, sums in rollup.items():
            v = dict(zip(names, group, strict=True))
            v.update(sums)
            v["cost"] = usd(sums["cost"])
            values.append(v)
        stmt = self._insert(usage_daily).values(values)
        measure = {m: sa.type_coerce(usage_daily.c[m], sa.BigInteger) for m in _MEASURES}
        excluded = {m: sa.type_coerce(stmt.excluded[m], sa.BigInteger) for m in _MEASURES}
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=list(names), set_={m: measure[m] + excluded[m] for m in _MEASURES}
            )
        )


async def _add_spend(conn: AsyncConnection, batch: dict[SpendRow, int]) -> None:
    for (scope, ident, period_end), amount in sorted(batch.items(), key=lambda i: (i[0][0], i[0][1])):
        table, id_column = _TABLES[scope]
        spend = sa.type_coerce(table.c.spend, sa.BigInteger)
        add = sa.bindparam("amount", amount, type_=sa.BigInteger)
        values: dict[str, object] = {"spend": spend + add}
        if period_end is not None:
            end = datetime.fromtimestamp(period_end, UTC)
            later = sa.or_(table.c.budget_reset_at.is_(None), table.c.budget_reset_at < end)
            values = {
                # a NULL reset time belongs to rows whose duration was set before periods were kept
                "spend": sa.case((sa.and_(later, table.c.budget_reset_at.is_not(None)), add), else_=spend + add),
                "budget_reset_at": sa.case((later, end), else_=table.c.budget_reset_at),
            }
        await conn.execute(sa.update(table).where(table.c[id_column] == ident).values(**values))
