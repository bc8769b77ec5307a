"""Reads of the ledger: request logs, usage totals by any grouping, invoice lines.

Totals over days and months read the daily rollup (`mw_usage_daily`), which the row's own
transaction keeps, so a month of one customer is a few hundred rows whatever the traffic. Totals
by hour, and the request logs, read the ledger itself through its (dimension, started_at) indexes.
Money comes back as integer units (1e-10 USD) and is turned into decimals by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine

from meterway.ledger import DIMENSIONS, TAG, TIMES, Filters
from meterway.ledger.row import UNITS
from meterway.store.tables import ledger, usage_daily

TOKEN_SUMS = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens")


def conditions(filters: Filters, table: sa.Table, *, rollup: bool) -> list[sa.ColumnElement[bool]]:
    out: list[sa.ColumnElement[bool]] = []
    if rollup:
        out += [table.c.day >= filters.start.isoformat(), table.c.day <= filters.end.isoformat()]
    else:
        start = datetime.combine(filters.start, datetime.min.time(), UTC)
        end = start + timedelta(days=(filters.end - filters.start).days + 1)
        out += [table.c.started_at >= start, table.c.started_at < end]
    for column, value in (
        ("customer_id", filters.customer_id),
        ("key_id", filters.key_id),
        ("user_id", filters.user_id),
        ("team_id", filters.team_id),
        ("model_group", filters.model),
    ):
        if value is not None:
            out.append(table.c[column] == value)
    if filters.request_id is not None and not rollup:
        out.append(table.c.request_id == filters.request_id)
    if filters.status is not None and not rollup:
        out.append(table.c.status == filters.status)
    return out


class Reports:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._sqlite = engine.dialect.name == "sqlite"

    async def logs(self, filters: Filters, *, limit: int, offset: int) -> tuple[int, list[dict[str, Any]]]:
        where = conditions(filters, ledger, rollup=False)
        query = ledger.select().where(*where).order_by(ledger.c.started_at.desc(), ledger.c.id.desc())
        async with self._engine.connect() as conn:
            total = (await conn.execute(sa.select(sa.func.count()).select_from(ledger).where(*where))).scalar_one()
            rows = (await conn.execute(query.limit(limit).offset(offset))).mappings().all()
        return int(total), [{str(k): v for k, v in r.items()} for r in rows]

    async def usage(self, group_by: Sequence[str], filters: Filters) -> list[dict[str, Any]]:
        """Totals per group: `group_by` names dimensions of DIMENSIONS, TAG, and at most one of
        TIMES. By hour or by tag the ledger's rows are read (the rollup has neither)."""
        raw = "hour" in group_by or TAG in group_by
        table = ledger if raw else usage_daily
        source: Any = table
        keys: list[sa.ColumnElement[Any]] = []
        for name in group_by:
            if name in DIMENSIONS:
                keys.append(sa.func.coalesce(table.c[DIMENSIONS[name]], "").label(name))
            elif name == TAG:
                tags, first = self._tags()
                source = ledger.outerjoin(tags, first)  # a row without tags is kept, under ""
                keys.append(sa.func.coalesce(tags.c.value, "").label(TAG))
            elif name == "hour":
                keys.append(self._hour(ledger.c.started_at).label("hour"))
            elif name == "day":
                keys.append((table.c.day if not raw else self._day(ledger.c.started_at)).label("day"))
            elif name == "month":
                day = table.c.day if not raw else self._day(ledger.c.started_at)
                keys.append(sa.func.substr(day, 1, 7).label("month"))
        if raw:
            measures = [
                sa.func.count().label("requests"),
                sa.func.sum(sa.case((ledger.c.status != "success", 1), else_=0)).label("errors"),
                sa.func.sum(sa.case((ledger.c.cost.is_(None), 1), else_=0)).label("unpriced"),
                *(sa.func.sum(ledger.c[t]).label(t) for t in TOKEN_SUMS),
                sa.func.sum(sa.type_coerce(ledger.c.cost, sa.BigInteger)).label("cost"),
                *(sa.func.sum(ledger.c[u]).label(u) for u in UNITS),
            ]
        else:
            measures = [
                sa.func.sum(usage_daily.c.requests).label("requests"),
                sa.func.sum(usage_daily.c.errors).label("errors"),
                sa.func.sum(usage_daily.c.unpriced).label("unpriced"),
                *(sa.func.sum(usage_daily.c[t]).label(t) for t in TOKEN_SUMS),
                sa.func.sum(sa.type_coerce(usage_daily.c.cost, sa.BigInteger)).label("cost"),
                *(sa.func.sum(usage_daily.c[u]).label(u) for u in UNITS),
            ]
        query = sa.select(*keys, *measures).select_from(source).where(*conditions(filters, table, rollup=not raw))
        if keys:
            query = query.group_by(*keys).order_by(*keys)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_numbers(dict(r)) for r in rows if r["requests"]]

    def _tags(self) -> tuple[Any, sa.ColumnElement[bool]]:
        """Each of a ledger row's tags as a row of its own (`value`), joined laterally, and the
        join's condition: a tag's first place in the row, so a row that names a tag twice (kept
        before tags were de-duplicated) is counted once in its group."""

        def elements(name: str) -> Any:
            if self._sqlite:
                return sa.func.json_each(ledger.c.tags).table_valued("value", "key").alias(name)
            as_jsonb = sa.cast(ledger.c.tags, postgresql.JSONB)
            numbered = sa.func.jsonb_array_elements_text(as_jsonb).table_valued("value", with_ordinality="key")
            return numbered.render_derived(name=name)  # `AS name(value, key)`: the ordinality column named

        tag, earlier = elements("tag"), elements("earlier")
        again = sa.exists().where(earlier.c.value == tag.c.value, earlier.c.key < tag.c.key)
        return tag, sa.not_(again)

    async def invoice_groups(self, customer_id: str, first: date, last: date) -> list[dict[str, Any]]:
        """A customer's token and unit sums per model and unit prices over the days [first, last], with
        their cost (the units' part of an invoice is the cost beyond the tokens' lines)."""
        filters = Filters(first, last, customer_id=customer_id)
        prices = [usage_daily.c[p] for p in ("price_input", "price_output", "price_cache_read", "price_cache_write")]
        query = (
            sa.select(
                usage_daily.c.model_group,
                *prices,
                sa.func.sum(usage_daily.c.requests).label("requests"),
                *(sa.func.sum(usage_daily.c[t]).label(t) for t in TOKEN_SUMS),
                *(sa.func.sum(usage_daily.c[u]).label(u) for u in UNITS),
                sa.func.sum(sa.type_coerce(usage_daily.c.cost, sa.BigInteger)).label("cost"),
            )
            .where(*conditions(filters, usage_daily, rollup=True))
            .group_by(usage_daily.c.model_group, *prices)
            .order_by(usage_daily.c.model_group, *prices)
        )
        async with self._engine.connect() as conn:
            return [_numbers(dict(r)) for r in (await conn.execute(query)).mappings().all()]

    def _hour(self, column: Any) -> Any:
        if self._sqlite:
            return sa.func.strftime("%Y-%m-%dT%H:00", column)
        return sa.func.to_char(sa.func.timezone("UTC", column), 'YYYY-MM-DD"T"HH24:00')

    def _day(self, column: Any) -> Any:
        if self._sqlite:
            return sa.func.strftime("%Y-%m-%d", column)
        return sa.func.to_char(sa.func.timezone("UTC", column), "YYYY-MM-DD")


def _numbers(row: dict[str, Any]) -> dict[str, Any]:
    """SUM() comes back as Decimal on PostgreSQL and int on SQLite: ints here, for both."""
    return {
        k: int(v)
        if k not in DIMENSIONS
        and k not in TIMES
        and k not in (TAG, "model_group")
        and v is not None
        and not isinstance(v, str)
        else v
        for k, v in row.items()
    }
