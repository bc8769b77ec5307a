"""The billing outbox: claiming pending exports, and recording how each ended.

A sender claims a batch by stamping `claimed_until` on it in one statement; on PostgreSQL the
candidate rows are locked with `FOR UPDATE SKIP LOCKED`, so senders on several replicas never
claim the same row. SQLite has one writer at a time, which gives the same guarantee. A claim
runs out by itself: a sender killed mid-batch leaves its rows to the next one after `hold_s`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from meterway.store.tables import billing_outbox, customers, keys, ledger, teams, usage_daily, users

# the table of the entity charged, by `billing.charge_by`
_CHARGED: Final = MappingProxyType({"customer": customers, "user": users, "team": teams, "key": keys})
_DUE = (
    "status = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= :now) "
    "AND (claimed_until IS NULL OR claimed_until < :now)"
)


# the reason a reprocessed row waits with: its sender lists Lago's subscriptions again before it
# would park the row, whichever process reprocessed it (a subscription created a moment ago counts)
REPROCESSED = "reprocessed"
_AGAIN: Final = MappingProxyType(
    {"status": "pending", "next_attempt_at": None, "claimed_until": None, "reason": REPROCESSED}
)


class OutboxStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._pg = engine.dialect.name == "postgresql"
        lock = " FOR UPDATE SKIP LOCKED" if self._pg else ""
        update = (
            "UPDATE mw_billing_outbox SET claimed_until = :until WHERE ledger_uid IN "
            f"(SELECT ledger_uid FROM mw_billing_outbox WHERE {_DUE} ORDER BY created_at LIMIT :n{lock}) "
            "RETURNING ledger_uid, attempts, reason"
        )
        times = (
            sa.bindparam("now", type_=sa.DateTime(timezone=True)),
            sa.bindparam("until", type_=sa.DateTime(timezone=True)),
        )
        self._claim = sa.text(update).bindparams(*times)
        # PostgreSQL claims and reads the ledger rows in one statement (one round trip, not four)
        names = ", ".join(f"l.{c.name}" for c in ledger.c)
        self._claim_rows = (
            sa.text(
                f"WITH claimed AS ({update}) SELECT {names}, claimed.attempts AS export_attempts, "
                "claimed.reason AS export_reason FROM claimed "
                "JOIN mw_ledger l ON l.uid = claimed.ledger_uid"
            )
            .bindparams(*times)
            .columns(*ledger.c, sa.column("export_attempts", sa.Integer), sa.column("export_reason", sa.Text))
        )

    async def claim(self, limit: int, hold_s: float) -> list[dict[str, Any]]:
        """Up to `limit` due rows, claimed for `hold_s` seconds, with their ledger rows; the export's
        own attempts are `export_attempts` (the ledger's `attempts` are upstream attempts)."""
        now = datetime.now(UTC)
        params = {"now": now, "until": now + timedelta(seconds=hold_s), "n": limit}
        if self._pg:
            async with self._engine.begin() as conn:
                found = (await conn.execute(self._claim_rows, params)).mappings().all()
            return [{str(k): v for k, v in r.items()} for r in found]
        async with self._engine.begin() as conn:
            uids = [r[0] for r in await conn.execute(self._claim, params)]
            if not uids:
                return []
            query = (
                sa.select(
                    ledger,
                    billing_outbox.c.attempts.label("export_attempts"),
                    billing_outbox.c.reason.label("export_reason"),
                )
                .join(billing_outbox, billing_outbox.c.ledger_uid == ledger.c.uid)
                .where(ledger.c.uid.in_(uids))
            )
            rows = (await conn.execute(query)).mappings().all()
        return [{str(k): v for k, v in r.items()} for r in rows]

    async def rows_between(self, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """Ledger rows with an export, ended in [start, end), with their export's status."""
        query = (
            sa.select(ledger, billing_outbox.c.status.label("outbox_status"))
            .join(billing_outbox, billing_outbox.c.ledger_uid == ledger.c.uid)
            .where(ledger.c.ended_at >= start, ledger.c.ended_at < end)
        )
        async with self._engine.connect() as conn:
            return [{str(k): v for k, v in r.items()} for r in (await conn.execute(query)).mappings().all()]

    async def mapped(self, charge_by: str) -> dict[str, str]:
        """Every charged entity (customers, users, teams or keys, by `charge_by`) that carries its
        own Lago subscription id: few, read whole and cached by the sender."""
        table = _CHARGED[charge_by]
        column = table.primary_key.columns.values()[0]
        query = sa.select(column, table.c.billing_external_subscription_id).where(
            table.c.billing_external_subscription_id.is_not(None)
        )
        async with self._engine.connect() as conn:
            return {str(r[0]): str(r[1]) for r in await conn.execute(query)}

    async def subscriptions(self, charge_by: str, ids: Sequence[str]) -> dict[str, str]:
        """The charged entities (customers, users, teams or keys, by `charge_by`) among `ids` that
        carry their own Lago subscription id."""
        if not ids:
            return {}
        table = _CHARGED[charge_by]
        column = table.primary_key.columns.values()[0]
        query = sa.select(column, table.c.billing_external_subscription_id).where(
            column.in_(list(ids)), table.c.billing_external_subscription_id.is_not(None)
        )
        async with self._engine.connect() as conn:
            return {str(r[0]): str(r[1]) for r in await conn.execute(query)}

    async def models(self) -> list[str]:
        """Every model (group) the ledger has rows for, read from the daily rollup (small at any
        ledger size): their names must be on the billable metric's `model` filter for Lago to
        price their events."""
        query = sa.select(usage_daily.c.model_group).where(usage_daily.c.model_group != "").distinct()
        async with self._engine.connect() as conn:
            return sorted(str(r[0]) for r in await conn.execute(query))

    async def planned_customers(self) -> list[dict[str, Any]]:
        """Customers that name the Lago plan `billing setup` subscribes them to."""
        query = sa.select(customers).where(customers.c.billing_plan_code.is_not(None)).order_by(customers.c.customer_id)
        async with self._engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings().all()]

    async def sent(self, uids: Sequence[str]) -> None:
        await self._update(uids, status="sent", sent_at=datetime.now(UTC), claimed_until=None)

    async def park(self, uid: str, reason: str, error: Any = None) -> None:
        await self._update([uid], status="parked", reason=reason, lago_error=error, claimed_until=None)

    async def retry(self, uids: Sequence[str], delay_s: float, reason: str) -> None:
        """Back to pending after `delay_s`, one attempt more."""
        if not uids:
            return
        async with self._engine.begin() as conn:
            await conn.execute(
                billing_outbox.update()
                .where(billing_outbox.c.ledger_uid.in_(list(uids)))
                .values(
                    attempts=billing_outbox.c.attempts + 1,
                    next_attempt_at=datetime.now(UTC) + timedelta(seconds=delay_s),
                    claimed_until=None,
                    reason=reason,
                )
            )

    async def reprocess(
        self, *, reason: str | None = None, since: datetime | None = None, source: str | None = None
    ) -> int:
        """Parked rows back to pending (keeping their transaction ids): after a mapping is fixed.
        `source` narrows it to the exports of ledger rows from there (e.g. `webhook`)."""
        query = billing_outbox.update().where(*self._parked(reason, since, source))
        async with self._engine.begin() as conn:
            done = await conn.execute(query.values(**_AGAIN))
        return int(done.rowcount)

    async def reprocess_counted(
        self, *, charged: str, reason: str | None = None, since: datetime | None = None, limit: int = 10_000
    ) -> tuple[int, dict[str | None, int]]:
        """`reprocess`, also returning how many of the rows it queued again each entity charged
        (the ledger column `charged`, e.g. `customer_id`) has, for up to `limit` entities: counted
        in SQL, in the same transaction (a sender may take and settle them the moment it commits),
        so a forecast over many rows reads one number per entity, not the rows."""
        where = self._parked(reason, since, None)
        column = ledger.c[charged]
        counted = (
            sa.select(column, sa.func.count())
            .select_from(billing_outbox.join(ledger, billing_outbox.c.ledger_uid == ledger.c.uid))
            .where(*where)
            .group_by(column)
            .limit(limit)
        )
        async with self._engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                # the write lock first: SQLite fails a transaction that read and then writes at once
                # ("database is locked") when a sender wrote in between, where a first write waits
                await conn.execute(billing_outbox.update().where(sa.false()).values(status=billing_outbox.c.status))
            groups = {(str(k) if k is not None else None): int(n) for k, n in (await conn.execute(counted)).all()}
            done = await conn.execute(billing_outbox.update().where(*where).values(**_AGAIN))
        return int(done.rowcount), groups

    @staticmethod
    def _parked(reason: str | None, since: datetime | None, source: str | None) -> list[sa.ColumnElement[bool]]:
        """Parked exports, narrowed by reason (contained), day recorded and ledger source."""
        where: list[sa.ColumnElement[bool]] = [billing_outbox.c.status == "parked"]
        if reason:
            where.append(billing_outbox.c.reason.contains(reason))
        if since is not None:
            where.append(billing_outbox.c.created_at >= since)
        if source is not None:
            where.append(billing_outbox.c.ledger_uid.in_(sa.select(ledger.c.uid).where(ledger.c.source == source)))
        return where

    async def status(self) -> dict[str, Any]:
        """Counts by status, parked rows by reason, and the export lag."""
        async with self._engine.connect() as conn:
            counts: dict[str, int] = dict(
                (
                    await conn.execute(
                        sa.select(billing_outbox.c.status, sa.func.count()).group_by(billing_outbox.c.status)
                    )
                ).all()
            )
            parked = (
                await conn.execute(
                    sa.select(billing_outbox.c.reason, sa.func.count())
                    .where(billing_outbox.c.status == "parked")
                    .group_by(billing_outbox.c.reason)
                )
            ).all()
            oldest = (
                await conn.execute(
                    sa.select(sa.func.min(billing_outbox.c.created_at)).where(billing_outbox.c.status == "pending")
                )
            ).scalar()
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)  # SQLite keeps no zone; rows are stamped in UTC
        return {
            "pending": int(counts.get("pending", 0)),
            "sent": int(counts.get("sent", 0)),
            "parked": int(counts.get("parked", 0)),
            "parked_by_reason": {str(r): int(n) for r, n in parked},
            "oldest_pending": oldest.isoformat() if oldest is not None else None,
            # the export lag: how long the oldest row still to send has waited (0 when none waits)
            "oldest_pending_age_seconds": (
                round(max((datetime.now(UTC) - oldest).total_seconds(), 0.0), 3) if oldest is not None else 0.0
            ),
        }

    async def wake(self) -> int:
        """Pending rows waiting out a backoff become due now (Lago answers again)."""
        c = billing_outbox.c
        query = billing_outbox.update().where(c.status == "pending", c.next_attempt_at > datetime.now(UTC))
        async with self._engine.begin() as conn:
            done = await conn.execute(query.values(next_attempt_at=None))
        return int(done.rowcount)

    async def backlog(self) -> tuple[int, int, float | None]:
        """Pending and parked counts and the age in seconds of the oldest pending export, read
        through the indexes (cheap whatever the outbox's size): for metrics."""
        c = billing_outbox.c
        async with self._engine.connect() as conn:
            pending = (await conn.execute(sa.select(sa.func.count()).where(c.status == "pending"))).scalar_one()
            parked = (await conn.execute(sa.select(sa.func.count()).where(c.status == "parked"))).scalar_one()
            oldest = (await conn.execute(sa.select(sa.func.min(c.created_at)).where(c.status == "pending"))).scalar()
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)  # SQLite keeps no zone; the outbox is written in UTC
        age = (datetime.now(UTC) - oldest).total_seconds() if oldest is not None else None
        return int(pending), int(parked), age

    async def source_counts(self, source: str) -> dict[str, int]:
        """Ledger rows from `source`, and their exports by status (rows not billable, or recorded
        while billing was off, have none)."""
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(sa.select(sa.func.count()).select_from(ledger).where(ledger.c.source == source))
            ).scalar_one()
            by_status = (
                await conn.execute(
                    sa.select(billing_outbox.c.status, sa.func.count())
                    .join(ledger, ledger.c.uid == billing_outbox.c.ledger_uid)
                    .where(ledger.c.source == source)
                    .group_by(billing_outbox.c.status)
                )
            ).all()
        counts = {str(status): int(n) for status, n in by_status}
        return {"rows": int(rows), **{s: counts.get(s, 0) for s in ("pending", "sent", "parked")}}

    async def _update(self, uids: Sequence[str], **values: Any) -> None:
        if not uids:
            return
        async with self._engine.begin() as conn:
            await conn.execute(
                billing_outbox.update().where(billing_outbox.c.ledger_uid.in_(list(uids))).values(**values)
            )
