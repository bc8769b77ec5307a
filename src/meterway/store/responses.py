"""Stored Responses API responses (`mw_responses`), by id.

A row says whose a response is (the key that created it), which deployment served it and whether
that deployment speaks the Responses API itself (then the upstream holds the response, and the row
only routes later calls back to it), and, for a response bridged to a chat API, the Response object
and its input items, which nothing but this table holds. Rows expire: reads skip expired ones,
and `purge` deletes them (the gateway calls it now and then, never on a request's path).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from meterway.store.response_record import StoredResponse
from meterway.store.tables import responses


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)  # SQLite keeps no zone


def _record(row: sa.Row[Any]) -> StoredResponse:
    m = row._mapping
    return StoredResponse(
        response_id=m["response_id"],
        key_id=m["key_id"],
        team_id=m["team_id"],
        model_group=m["model_group"],
        deployment_id=m["deployment_id"],
        native=bool(m["native"]),
        status=m["status"],
        body=m["body"],
        input_items=m["input_items"],
        too_large=bool(m["too_large"]),
        metered=bool(m["metered"]),
        created_at=_aware(m["created_at"]),
        expires_at=_aware(m["expires_at"]),
    )


class ResponseStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def put(self, record: StoredResponse) -> bool:
        """Inserts a new response; False when its id is taken (an upstream's id met twice, or a
        bridged id made from a client's reused request id): the first owner keeps it."""
        values = {name: getattr(record, name) for name in StoredResponse.__slots__}
        try:
            async with self.engine.begin() as conn:
                await conn.execute(responses.insert().values(**values))
        except IntegrityError:
            return False
        return True

    async def get(self, response_id: str, now: datetime | None = None) -> StoredResponse | None:
        """The response, unless it has expired."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(responses.select().where(responses.c.response_id == response_id))).first()
        if row is None:
            return None
        record = _record(row)
        return None if record.expires_at <= (now or datetime.now(UTC)) else record

    async def update(
        self,
        response_id: str,
        *,
        status: str,
        body: str | None = None,
        too_large: bool | None = None,
        only_from: frozenset[str] | None = None,
    ) -> bool:
        """Sets a response's status (and its object); `only_from`: only while its status is one of
        these (a cancelled response is not completed afterwards). True when a row changed."""
        values: dict[str, Any] = {"status": status}
        if body is not None:
            values["body"] = body
        if too_large is not None:
            values["too_large"] = too_large
        query = responses.update().where(responses.c.response_id == response_id)
        if only_from is not None:
            query = query.where(responses.c.status.in_(sorted(only_from)))
        async with self.engine.begin() as conn:
            result = await conn.execute(query.values(**values))
        return bool(result.rowcount)

    async def mark_metered(self, response_id: str) -> bool:
        """Claims the metering of a response: True for the one caller that flips it, so a response
        seen ending twice (a poll and a client's retrieve) is metered once."""
        query = (
            responses.update()
            .where(responses.c.response_id == response_id, responses.c.metered == sa.false())
            .values(metered=True)
        )
        async with self.engine.begin() as conn:
            result = await conn.execute(query)
        return bool(result.rowcount)

    async def delete(self, response_id: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(responses.delete().where(responses.c.response_id == response_id))
        return bool(result.rowcount)

    async def purge(self, now: datetime | None = None, batch: int = 1000) -> int:
        """Deletes up to `batch` expired rows (oldest first); the count deleted."""
        now = now or datetime.now(UTC)
        expired = (
            sa.select(responses.c.response_id)
            .where(responses.c.expires_at <= now)
            .order_by(responses.c.expires_at)
            .limit(batch)
        )
        async with self.engine.begin() as conn:
            result = await conn.execute(responses.delete().where(responses.c.response_id.in_(expired)))
        return int(result.rowcount or 0)
