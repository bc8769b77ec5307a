"""The alert outbox (mw_alerts): one row per alert and destination, inserted once per crossing.

Every replica that notices a crossing inserts the same `(dedupe, destination)`; the unique index
keeps the first and `ON CONFLICT DO NOTHING` makes the others a no-op, so a crossing is alerted
once however many replicas saw it. Rows are claimed as billing exports are (store/outbox.py):
`claimed_until` stamped in one statement over rows locked `FOR UPDATE SKIP LOCKED` on PostgreSQL
(SQLite has one writer at a time), so two senders never hold the same row; a claim runs out by
itself, so a sender that died mid-post leaves its rows to the next. A claim carries the sender's
token (`claimed_by`), and a row is marked sent, retried or failed only by the sender that still
holds it: one whose claim ran out and was taken by another marks nothing. Rows are kept after
delivery: a crossing already alerted stays alerted for its budget period.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from meterway.store.tables import alerts

INSERT_CHUNK: Final = 500  # rows a statement: 6 parameters a row, far under asyncpg's 32,767
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
                "UPDATE mw_alerts SET claimed_until = :until, claimed_by = :token WHERE id IN "
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
        Returns how many were new. Inserted INSERT_CHUNK rows a statement, in one transaction, so
        any number of alerts fits PostgreSQL's limit on a statement's parameters."""
        if not rows:
            return 0
        now = datetime.now(UTC)
        values = [
            {"dedupe": d, "destination": dest, "event": e, "payload": p, "created_at": now, "status": "pending"}
            for d, dest, e, p in rows
        ]
        new = 0
        async with self._engine.begin() as conn:
            for start in range(0, len(values), INSERT_CHUNK):
                # a multi-row statement, so its rowcount is the rows inserted (an executemany's is not)
                insert = (postgresql.insert(alerts) if self._pg else sqlite.insert(alerts)).values(
                    values[start : start + INSERT_CHUNK]
                )
                done = await conn.execute(insert.on_conflict_do_nothing(index_elements=["dedupe", "destination"]))
                new += max(int(done.rowcount), 0)
        return new

    async def claim(self, limit: int, hold_s: float, token: str) -> list[Claimed]:
        now = datetime.now(UTC)
        params = {"now": now, "until": now + timedelta(seconds=hold_s), "n": limit, "token": token}
        async with self._engine.begin() as conn:
            found = (await conn.execute(self._claim, params)).all()
        return [Claimed(int(r[0]), str(r[1]), str(r[2]), _json(r[3]), int(r[4])) for r in found]

    async def _mark(self, ident: int, token: str, **values: Any) -> bool:
        """Updates row `ident` if `token` still holds its claim; False when it does not."""
        c = alerts.c
        query = alerts.update().where(c.id == ident, c.claimed_by == token, c.status == "pending")
        async with self._engine.begin() as conn:
            done = await conn.execute(query.values(claimed_until=None, claimed_by=None, **values))
        return int(done.rowcount) == 1

    async def sent(self, ident: int, token: str) -> bool:
        return await self._mark(ident, token, status="sent", sent_at=datetime.now(UTC), last_error=None)

    async def retry(self, ident: int, token: str, delay_s: float, error: str, *, attempt: bool = True) -> bool:
        """Pending again after `delay_s`, one attempt more (unless `attempt` is False), with why it
        was not delivered."""
        return await self._mark(
            ident,
            token,
            attempts=alerts.c.attempts + (1 if attempt else 0),
            next_attempt_at=datetime.now(UTC) + timedelta(seconds=delay_s),
            last_error=error[:1000],
        )

    async def failed(self, ident: int, token: str, error: str) -> bool:
        """Given up: the receiver refused it for good. An operator resends it (docs/alerts.md)."""
        return await self._mark(ident, token, status="failed", attempts=alerts.c.attempts + 1, last_error=error[:1000])

    async def release(self, token: str) -> int:
        """Every claim `token` holds ends now, so another sender need not wait for them to run out."""
        c = alerts.c
        query = alerts.update().where(c.claimed_by == token, c.status == "pending")
        async with self._engine.begin() as conn:
            done = await conn.execute(query.values(claimed_until=None, claimed_by=None))
        return int(done.rowcount)

    async def wake(self, destination: str) -> int:
        """`destination`'s rows waiting out a backoff become due now (it answers again)."""
        c = alerts.c
        query = alerts.update().where(
            c.status == "pending", c.destination == destination, c.next_attempt_at > datetime.now(UTC)
        )
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
        loaded: dict[str, Any] = json.loads(value)
        return loaded
    return dict(value)
