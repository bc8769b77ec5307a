"""The alert outbox (mw_alerts): one row per alert and destination, inserted once per crossing.

Every replica that notices a crossing inserts the same `(dedupe, destination)`; the unique index
keeps the first and `ON CONFLICT DO NOTHING` makes the others a no-op, so a crossing is alerted
once however many replicas saw it. Rows are claimed as billing exports are (store/outbox.py):
`claimed_until` stamped in one statement over rows locked `FOR UPDATE SKIP LOCKED` on PostgreSQL
(SQLite has one writer at a time), so two senders never hold the same row; a claim runs out by
itself, so a sender that died mid-post leaves its rows to the next. Rows are kept after delivery:
a crossing already alerted stays alerted for its budget period.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from meterway.store.tables import alerts

_DUE = (
    "status = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= :now) "
    "AND (claimed_until IS NULL OR claimed_until < :now)"
)


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    destination: str
    event: str
    payload: dict[str, Any]
    attempts: int


class AlertOutbox:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._pg = engine.dialect.name == "postgresql"
        lock = " FOR UPDATE SKIP LOCKED" if self._pg else ""
        self._claim = (
            sa.text(
                "UPDATE mw_alerts SET claimed_until = :until WHERE id IN "
                f"(SELECT id FROM mw_alerts WHERE {_DUE} ORDER BY id LIMIT :n{lock}) "
                "RETURNING id, destination, event, payload, attempts"
            )
            .bindparams(
                sa.bindparam("now", type_=sa.DateTime(timezone=True)),
                sa.bindparam("until", type_=sa.DateTime(timezone=True)),
            )
            .columns(
                sa.column("id", sa.Integer),
                sa.column("destination", sa.String),
                sa.column("event", sa.String),
                sa.column("payload", sa.JSON),
                sa.column("attempts", sa.Integer),
            )
        )

    async def insert(self, rows: Sequence[tuple[str, str, str, dict[str, Any]]]) -> int:
        """(dedupe, destination, event, payload) rows; those already there are left as they are.
        Returns how many were new."""
        if not rows:
            return 0
        now = datetime.now(UTC)
        values = [
            {"dedupe": d, "destination": dest, "event": e, "payload": p, "created_at": now, "status": "pending"}
            for d, dest, e, p in rows
        ]
        # one multi-row statement, so its rowcount is the rows inserted (an executemany's is not)
        insert = (postgresql.insert(alerts) if self._pg else sqlite.insert(alerts)).values(values)
        async with self._engine.begin() as conn:
            done = await conn.execute(insert.on_conflict_do_nothing(index_elements=["dedupe", "destination"]))
        return max(int(done.rowcount), 0)

    async def known(self, dedupes: Sequence[str]) -> set[str]:
        """Which of `dedupes` are in the outbox already (any destination)."""
        if not dedupes:
            return set()
        query = sa.select(alerts.c.dedupe).where(alerts.c.dedupe.in_(list(dedupes))).distinct()
        async with self._engine.connect() as conn:
            return {str(r[0]) for r in await conn.execute(query)}

    async def claim(self, limit: int, hold_s: float) -> list[Claimed]:
        now = datetime.now(UTC)
        params = {"now": now, "until": now + timedelta(seconds=hold_s), "n": limit}
        async with self._engine.begin() as conn:
            found = (await conn.execute(self._claim, params)).all()
        return [Claimed(int(r[0]), str(r[1]), str(r[2]), _json(r[3]), int(r[4])) for r in found]

    async def sent(self, ident: int) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                alerts.update()
                .where(alerts.c.id == ident)
                .values(status="sent", sent_at=datetime.now(UTC), claimed_until=None, last_error=None)
            )

    async def retry(self, ident: int, delay_s: float, error: str) -> None:
        """Pending again after `delay_s`, one attempt more, with why it was not delivered."""
        async with self._engine.begin() as conn:
            await conn.execute(
                alerts.update()
                .where(alerts.c.id == ident)
                .values(
                    attempts=alerts.c.attempts + 1,
                    next_attempt_at=datetime.now(UTC) + timedelta(seconds=delay_s),
                    claimed_until=None,
                    last_error=error[:1000],
                )
            )

    async def wake(self) -> int:
        """Rows waiting out a backoff become due now (their receiver answers again)."""
        c = alerts.c
        query = alerts.update().where(c.status == "pending", c.next_attempt_at > datetime.now(UTC))
        async with self._engine.begin() as conn:
            done = await conn.execute(query.values(next_attempt_at=None))
        return int(done.rowcount)

    async def pending(self) -> int:
        query = sa.select(sa.func.count()).where(alerts.c.status == "pending")
        async with self._engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def rows(self) -> list[dict[str, Any]]:
        """Every alert row, oldest first (for tests and the status of alerting)."""
        async with self._engine.connect() as conn:
            found = (await conn.execute(sa.select(alerts).order_by(alerts.c.id))).mappings().all()
        return [dict(r) for r in found]


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, str):  # a raw text() column on SQLite comes back as the stored text
        import json

        loaded: dict[str, Any] = json.loads(value)
        return loaded
    return dict(value)
