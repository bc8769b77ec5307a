"""Settled spend, added to the key, user, team and customer rows.

Requests finishing together are written together: while one transaction is being committed the
next requests' amounts gather, summed per row, and go in the next one (a group commit), so the
store sees one write per batch, not one per request. A caller returns once its amount is
committed. A failed write keeps its amounts and tries again; they are never dropped.

A row whose budget has a duration carries the end of its current period in `budget_reset_at`. An
amount for a later period than the row's starts that period: the row's spend becomes the amount
and `budget_reset_at` moves to the new period's end. Every replica computes periods the same way
(`limits.Budget.period`), so this needs no coordination beyond the one UPDATE.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from meterway.limits import SpendTarget
from meterway.store.tables import customers, keys, teams, users

log = logging.getLogger("meterway.store")

_TABLES: dict[str, tuple[sa.Table, str]] = {
    "key": (keys, "token"),
    "user": (users, "user_id"),
    "team": (teams, "team_id"),
    "customer": (customers, "customer_id"),
}
_RETRY_S = 0.5

Row = tuple[str, str, float | None]  # scope, id, period end


class SpendWriter:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._pending: dict[Row, int] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None

    async def add(self, targets: Sequence[SpendTarget], amount: int) -> None:
        for t in targets:
            row = (t.scope, t.ident, t.period_end)
            self._pending[row] = self._pending.get(row, 0) + amount
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(done)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        await asyncio.shield(done)

    async def flush(self) -> None:
        """Waits until everything handed in so far is committed (or has failed once)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        while self._pending:
            batch, waiters = self._pending, self._waiters
            self._pending, self._waiters = {}, []
            try:
                await self._write(batch)
            except Exception as e:
                log.warning("spend write failed (%s); retrying in %.1fs", e.__class__.__name__, _RETRY_S)
                for row, amount in batch.items():  # put back, ahead of nothing: sums commute
                    self._pending[row] = self._pending.get(row, 0) + amount
                _release(waiters)  # the request is over; its amount waits here for the store
                await asyncio.sleep(_RETRY_S)
                continue
            _release(waiters)

    async def _write(self, batch: dict[Row, int]) -> None:
        async with self._engine.begin() as conn:
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
                        "spend": sa.case(
                            (sa.and_(later, table.c.budget_reset_at.is_not(None)), add), else_=spend + add
                        ),
                        "budget_reset_at": sa.case((later, end), else_=table.c.budget_reset_at),
                    }
                await conn.execute(sa.update(table).where(table.c[id_column] == ident).values(**values))


def _release(waiters: list[asyncio.Future[None]]) -> None:
    for w in waiters:
        if not w.done():
            w.set_result(None)
