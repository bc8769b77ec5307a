"""The ledger's group write, on SQLite and real PostgreSQL: a group's rows are stored as they were
built, and its rollup, spend and exports are those of exactly these rows, in one transaction;
spend crossing a budget period inside one group lands in the newer period, as row by row; and on
PostgreSQL a connection the server dropped between two groups costs neither group."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import sqlalchemy as sa

from meterway.ledger import Entry
from meterway.ledger.pricing import usd
from meterway.ledger.row import FIELDS
from meterway.limits import SpendTarget
from meterway.store.runtime import Store
from meterway.store.tables import billing_outbox, customers, ledger, usage_daily
from tests.support.rows import ledger_entry

DAY = timedelta(days=1)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    url = f"sqlite:///{tmp_path / 'ledger.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    opened = await Store.open(url, wait_s=10, run_migrations=True, export=True)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def pg_store(pg_url: str) -> AsyncIterator[Store]:
    """PostgreSQL alone: what only a server can do (drop a connection) or only it keeps (NaN)."""
    opened = await Store.open(pg_url, wait_s=10, run_migrations=True, export=True)
    try:
        yield opened
    finally:
        await opened.close()


async def _customer(store: Store, ident: str, **values: Any) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(sa.insert(customers).values(customer_id=ident, metadata={}, **values))


async def _select(store: Store, query: sa.Select[Any]) -> list[dict[str, Any]]:
    async with store.engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(query)).mappings().all()]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value  # SQLite keeps no zone


def _charged(cost: int | None, customer: str, period_end: datetime | None = None, **values: Any) -> Entry:
    entry = ledger_entry(cost=cost, customer_id=customer, **values)
    end = period_end.timestamp() if period_end is not None else None
    return replace(entry, spend=(SpendTarget("customer", customer, end),) if cost else ())


async def test_a_group_stores_its_rows_as_built_with_the_rollup_spend_and_exports_of_exactly_them(
    store: Store,
) -> None:
    await _customer(store, "cust-a", spend=Decimal(0))
    await _customer(store, "cust-b", spend=Decimal(0))
    group = [
        _charged(100, "cust-a", tags=("nightly", "eval"), metadata={"n": 1, "s": "é"}, stream=True),
        _charged(200, "cust-a", cached_tokens=4, reasoning_tokens=2, ttft_ms=12.5, flags="usage_absurd"),
        _charged(300, "cust-b", end_user="someone", attempts=2, cache_hit=True),
        _charged(None, "cust-b", model_group="unpriced", price_input=None, price_output=None),  # no known price
        _charged(0, "cust-b", status="upstream_error", http_status=502, error_type="upstream_error", total_tokens=0),
    ]
    await store.ledger.write(group)

    stored = {r["uid"]: r for r in await _select(store, sa.select(ledger))}
    assert set(stored) == {e.row.uid for e in group}
    for e in group:
        got = stored[e.row.uid]
        for name in FIELDS:
            want, have = getattr(e.row, name), got[name]
            if name in ("started_at", "ended_at"):
                assert _utc(have) == want, name
            elif name == "tags":
                assert have == list(want), name
            elif name == "cost":  # read back as USD
                assert have == (usd(want) if want is not None else None), name
            else:
                assert have == want, name

    rollup = await _select(store, sa.select(usage_daily).order_by(usage_daily.c.customer_id, usage_daily.c.model_group))
    by_group = {(r["customer_id"], r["model_group"]): r for r in rollup}
    assert by_group[("cust-a", "priced")]["requests"] == 2 and by_group[("cust-a", "priced")]["cost"] == usd(300)
    assert by_group[("cust-a", "priced")]["cached_tokens"] == 4
    priced_b = by_group[("cust-b", "priced")]
    assert (priced_b["requests"], priced_b["errors"], priced_b["cost"]) == (2, 1, usd(300))
    assert (by_group[("cust-b", "unpriced")]["unpriced"], by_group[("cust-b", "unpriced")]["price_input"]) == (1, -1)

    spend = {r["customer_id"]: r["spend"] for r in await _select(store, sa.select(customers))}
    assert spend == {"cust-a": usd(300), "cust-b": usd(300)}
    exported = {r["ledger_uid"] for r in await _select(store, sa.select(billing_outbox))}
    assert exported == {e.row.uid for e in group if e.row.billable}

    if store.engine.dialect.name == "postgresql":  # JSON columns keep the text they were sent as
        async with store.engine.connect() as conn:
            text = (
                await conn.execute(
                    sa.text("SELECT metadata::text FROM mw_ledger WHERE uid = :u"), {"u": group[0].row.uid}
                )
            ).scalar_one()
        assert text == orjson.dumps(group[0].row.metadata).decode()


async def test_spend_crossing_a_budget_period_inside_one_group_lands_in_the_newer_period(store: Store) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    await _customer(store, "cust-p", spend=Decimal(0), budget_duration="1d", budget_reset_at=now - DAY)
    await _customer(store, "cust-q", spend=Decimal(0))
    first, second = now, now + DAY  # the ends of two successive periods, both after the stored one
    await store.ledger.write(
        [
            _charged(1_000, "cust-p", first),
            _charged(5_000, "cust-q"),
            _charged(70, "cust-p", second),
            _charged(30, "cust-p", second),
        ]
    )
    rows = {r["customer_id"]: r for r in await _select(store, sa.select(customers))}
    assert rows["cust-p"]["spend"] == usd(100), "the older period's amount is not carried into the newer one"
    assert _utc(rows["cust-p"]["budget_reset_at"]) == second
    assert rows["cust-q"]["spend"] == usd(5_000)
    assert len(await _select(store, sa.select(ledger.c.uid))) == 4


async def test_a_connection_the_server_dropped_between_two_groups_fails_neither(pg_store: Store) -> None:
    store = pg_store
    await _customer(store, "cust-a", spend=Decimal(0))
    await store.ledger.write([_charged(100, "cust-a")])
    database = store.engine.url.database
    admin = await asyncpg.connect(store.engine.url.set(drivername="postgresql").render_as_string(hide_password=False))
    try:  # every connection of the store, the one held between groups too: as a server restart does
        dropped = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
    finally:
        await admin.close()
    assert dropped >= 1
    await store.ledger.write([_charged(200, "cust-a")])
    spend = (await _select(store, sa.select(customers.c.spend)))[0]["spend"]
    assert spend == usd(300) and len(await _select(store, sa.select(ledger.c.uid))) == 2


async def test_a_float_json_cannot_carry_is_stored_as_given_on_postgresql(pg_store: Store) -> None:
    store = pg_store
    entry = ledger_entry(ttft_ms=math.nan, latency_ms=math.inf)
    await store.ledger.write([entry, ledger_entry()])
    stored = (await _select(store, sa.select(ledger).where(ledger.c.uid == entry.row.uid)))[0]
    assert math.isnan(stored["ttft_ms"]) and stored["latency_ms"] == math.inf and stored["flags"] is None
