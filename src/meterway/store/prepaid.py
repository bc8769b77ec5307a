"""Prepaid readings (`mw_prepaid_balances`), their history, the Lago webhooks taken, and the one
aggregation over the ledger that prices an entity's period.

Every replica reads the same reading, so what one replica learnt from Lago (a top-up heard by
webhook) holds on all of them. Refreshes on a schedule are claimed with one UPDATE of
`attempt_at` (on PostgreSQL over rows locked with `SKIP LOCKED`), so replicas do not all call
Lago for the same entity at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from meterway.store.tables import billing_outbox, lago_webhooks, ledger, prepaid_balances, prepaid_history

HISTORY_KEPT = 200  # readings kept per entity
HISTORY_SHOWN = 50
# the ledger columns an event property may read that do not add up: rows are grouped by them
_GROUPABLE = (
    "model_group",
    "customer_id",
    "end_user",
    "user_id",
    "team_id",
    "key_alias",
    "deployment_id",
    "upstream_model",
    "endpoint",
    "request_id",
)
# the ledger columns an event's figures are summed from
_SUMMED = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost",
    "queries",
    "images",
    "audio_ms",
    "characters",
)
# the rows exported to Lago (store.ledger enqueues these): used and served
_BILLABLE = sa.and_(
    ledger.c.status.in_(("success", "client_aborted")),
    sa.or_(
        ledger.c.total_tokens > 0,
        ledger.c.queries > 0,
        ledger.c.images > 0,
        ledger.c.audio_ms > 0,
        ledger.c.characters > 0,
    ),
)


@dataclass(frozen=True, slots=True)
class WalletView:
    """One Lago wallet as a reading keeps it (amounts in money units of its currency)."""

    lago_id: str
    code: str | None
    name: str | None
    priority: int
    status: str
    currency: str
    rate_amount: str
    balance: int
    ongoing_balance: int
    ongoing_usage: int
    expiration_at: str | None
    created_at: str
    usable: bool
    why_not: str | None = None  # why it is not usable

    def as_json(self) -> dict[str, Any]:
        return {
            "lago_id": self.lago_id,
            "code": self.code,
            "name": self.name,
            "priority": self.priority,
            "status": self.status,
            "currency": self.currency,
            "rate_amount": self.rate_amount,
            "balance": self.balance,
            "ongoing_balance": self.ongoing_balance,
            "ongoing_usage": self.ongoing_usage,
            "expiration_at": self.expiration_at,
            "created_at": self.created_at,
            "usable": self.usable,
            "why_not": self.why_not,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WalletView:
        return cls(
            lago_id=str(data["lago_id"]),
            code=data.get("code"),
            name=data.get("name"),
            priority=int(data.get("priority") or 50),
            status=str(data.get("status")),
            currency=str(data.get("currency")),
            rate_amount=str(data.get("rate_amount")),
            balance=int(data.get("balance") or 0),
            ongoing_balance=int(data.get("ongoing_balance") or 0),
            ongoing_usage=int(data.get("ongoing_usage") or 0),
            expiration_at=data.get("expiration_at"),
            created_at=str(data.get("created_at") or ""),
            usable=bool(data.get("usable")),
            why_not=data.get("why_not"),
        )


@dataclass(frozen=True, slots=True)
class Reading:
    """What Lago said of an entity's wallets at `read_at`, and the Lago price of its period's
    ledger rows then (money units of `currency`): B, U_L and P_R of docs/billing.md."""

    entity_id: str
    lago_customer_id: str | None  # the Lago customer's external id
    subscription_id: str | None
    plan_code: str | None
    currency: str | None
    period_start: datetime | None
    period_end: datetime | None
    has_wallets: bool
    balance: int  # B
    lago_usage: int  # U_L
    priced: int  # P_R
    wallets: tuple[WalletView, ...]
    reason: str | None
    read_at: datetime | None
    attempt_at: datetime | None = None
    error: str | None = None
    advance: int = 0  # of P_R, the invoiceable pay-in-advance charges'
    advance_paid: int = 0  # of those, what Lago had already taken from the balance (rows it had received)
    last_used_at: datetime | None = None  # a request last asked for it (written at most hourly)

    @property
    def funded(self) -> int:
        """What the entity may spend in the period, counted as the limiter counts its spend
        (from the period's start): B + min(U_L, P_R), where pay-in-advance fees (which Lago
        takes from the balance when it receives the event, never as ongoing usage) count as
        counted once Lago has them: B + A_R + min(U_L, P_R - P_adv)."""
        return self.balance + self.advance_paid + min(self.lago_usage, self.priced - self.advance)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    at: datetime
    reason: str
    balance: int
    counted: int
    priced: int
    available: int


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class PrepaidStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._pg = engine.dialect.name == "postgresql"

    async def get(self, entity_id: str) -> Reading | None:
        query = sa.select(prepaid_balances).where(prepaid_balances.c.entity_id == entity_id)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return _reading(row) if row is not None else None

    async def save(self, reading: Reading, available: int, *, create: bool = True) -> bool:
        """The reading, only when it is newer than the stored one (a slow read begun before a
        top-up's must not undo it), and then a history entry when it differs from the last one
        (a reading that changed nothing is not history); the oldest entries past HISTORY_KEPT go.
        `create=False`: only an entity already stored is updated (ids with no Lago subscription
        are not kept). False when nothing was written."""
        values = {
            "lago_customer_id": reading.lago_customer_id,
            "subscription_id": reading.subscription_id,
            "plan_code": reading.plan_code,
            "currency": reading.currency,
            "period_start": reading.period_start,
            "period_end": reading.period_end,
            "has_wallets": reading.has_wallets,
            "balance_units": reading.balance,
            "lago_usage_units": reading.lago_usage,
            "priced_units": reading.priced,
            "advance_units": reading.advance,
            "advance_paid_units": reading.advance_paid,
            "wallets": [w.as_json() for w in reading.wallets],
            "reason": reading.reason,
            "read_at": reading.read_at,
            "attempt_at": reading.read_at,
            "error": None,
        }
        t = prepaid_balances.c
        async with self._engine.begin() as conn:
            before = (
                await conn.execute(
                    sa.select(t.balance_units, t.lago_usage_units, t.priced_units, t.has_wallets).where(
                        t.entity_id == reading.entity_id
                    )
                )
            ).first()
            written = 0
            if before is None and create:
                insert = self._insert(
                    entity_id=reading.entity_id, last_used_at=reading.last_used_at or reading.read_at, **values
                )
                written = (await conn.execute(insert)).rowcount
            if not written:
                newer = sa.or_(t.read_at.is_(None), t.read_at < reading.read_at) if reading.read_at else sa.true()
                update = sa.update(prepaid_balances).where(t.entity_id == reading.entity_id, newer).values(**values)
                written = (await conn.execute(update)).rowcount
            if not written:
                return False
            changed = before is None or tuple(before) != (
                reading.balance,
                reading.lago_usage,
                reading.priced,
                reading.has_wallets,
            )
            if changed and reading.has_wallets and reading.read_at is not None:
                await conn.execute(
                    sa.insert(prepaid_history).values(
                        entity_id=reading.entity_id,
                        at=reading.read_at,
                        reason=reading.reason or "schedule",
                        balance_units=reading.balance,
                        lago_usage_units=reading.lago_usage,
                        priced_units=reading.priced,
                        available_units=available,
                    )
                )
                cutoff = (
                    sa.select(prepaid_history.c.id)
                    .where(prepaid_history.c.entity_id == reading.entity_id)
                    .order_by(prepaid_history.c.id.desc())
                    .offset(HISTORY_KEPT)
                    .limit(1)
                    .scalar_subquery()
                )
                await conn.execute(
                    sa.delete(prepaid_history).where(
                        prepaid_history.c.entity_id == reading.entity_id, prepaid_history.c.id <= cutoff
                    )
                )
        return True

    def _insert(self, **values: Any) -> Any:
        """An INSERT of one balance row that does nothing when the row exists (another replica's)."""
        if self._pg:
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(prepaid_balances).values(**values).on_conflict_do_nothing()
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(prepaid_balances).values(**values).on_conflict_do_nothing()

    async def touch(self, entity_id: str, now: datetime) -> None:
        """The entity was asked for by a request: the schedule keeps reading it (`claim_due`)."""
        async with self._engine.begin() as conn:
            await conn.execute(
                sa.update(prepaid_balances).where(prepaid_balances.c.entity_id == entity_id).values(last_used_at=now)
            )

    async def failed(self, entity_id: str, error: str, now: datetime) -> None:
        """A reading that could not be taken: the last good one stays, with why this one failed.
        An entity never read is not stored (ids chosen by clients would fill the table): its
        failure is kept in the process (`billing.prepaid`)."""
        async with self._engine.begin() as conn:
            await conn.execute(
                sa.update(prepaid_balances)
                .where(prepaid_balances.c.entity_id == entity_id)
                .values(attempt_at=now, error=error[:1000])
            )

    async def claim_due(
        self, now: datetime, wallets_s: float, others_s: float, idle_s: float = 86_400.0, limit: int = 50
    ) -> list[str]:
        """Entities whose reading is older than `wallets_s` (with wallets) or `others_s` (without),
        and whose last attempt is too (so a failing Lago is not called in a loop), claimed by
        stamping `attempt_at`: another replica does not take them before the interval passes again.
        Entities no request asked for in `idle_s` are left alone (a request reads them again)."""
        fresh_w, fresh_o = now - timedelta(seconds=wallets_s), now - timedelta(seconds=others_s)
        t = prepaid_balances.c
        due = sa.or_(
            sa.and_(t.has_wallets, sa.or_(t.read_at.is_(None), t.read_at < fresh_w)),
            sa.and_(sa.not_(t.has_wallets), sa.or_(t.read_at.is_(None), t.read_at < fresh_o)),
        )
        attempted = sa.or_(t.attempt_at.is_(None), t.attempt_at < fresh_w)
        used = t.last_used_at >= now - timedelta(seconds=idle_s)
        pick = sa.select(t.entity_id).where(due, attempted, used).order_by(t.read_at).limit(limit)
        if self._pg:
            pick = pick.with_for_update(skip_locked=True)
        claim = (
            sa.update(prepaid_balances)
            .where(t.entity_id.in_(pick.scalar_subquery()), attempted)
            .values(attempt_at=now)
            .returning(t.entity_id)
        )
        async with self._engine.begin() as conn:
            return [str(r[0]) for r in await conn.execute(claim)]

    async def entities_of(self, lago_customer_id: str) -> list[str]:
        query = sa.select(prepaid_balances.c.entity_id).where(prepaid_balances.c.lago_customer_id == lago_customer_id)
        async with self._engine.connect() as conn:
            return [str(r[0]) for r in await conn.execute(query)]

    async def history(self, entity_id: str, n: int = HISTORY_SHOWN) -> list[HistoryEntry]:
        h = prepaid_history.c
        query = sa.select(prepaid_history).where(h.entity_id == entity_id).order_by(h.id.desc()).limit(n)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [
            HistoryEntry(
                at=_utc(r["at"]) or datetime.now(UTC),
                reason=str(r["reason"]),
                balance=int(r["balance_units"]),
                counted=int(r["lago_usage_units"]),
                priced=int(r["priced_units"]),
                available=int(r["available_units"]),
            )
            for r in rows
        ]

    async def webhook_taken(self, unique_key: str) -> bool:
        """Whether a webhook of this key was applied already (its reading stored)."""
        query = sa.select(lago_webhooks.c.unique_key).where(lago_webhooks.c.unique_key == unique_key[:255])
        async with self._engine.connect() as conn:
            return (await conn.execute(query)).first() is not None

    async def prune_webhooks(self, before: datetime) -> int:
        """Forgets the webhooks received before `before` (Lago redelivers for hours, not days)."""
        async with self._engine.begin() as conn:
            done = await conn.execute(sa.delete(lago_webhooks).where(lago_webhooks.c.received_at < before))
        return int(done.rowcount or 0)

    async def take_webhook(self, unique_key: str, webhook_type: str, customer: str | None, now: datetime) -> bool:
        """Records the webhook as applied (called once its reading is stored); False when it was."""
        values = {
            "unique_key": unique_key[:255],
            "webhook_type": webhook_type[:100],
            "lago_customer_id": customer[:255] if customer else None,
            "received_at": now,
        }
        if self._pg:
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt: Any = pg_insert(lago_webhooks).values(**values).on_conflict_do_nothing()
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(lago_webhooks).values(**values).on_conflict_do_nothing()
        async with self._engine.begin() as conn:
            return bool((await conn.execute(stmt)).rowcount)

    async def forget_webhook(self, unique_key: str) -> None:
        """A webhook whose effect could not be made durable: Lago's redelivery must be taken again."""
        async with self._engine.begin() as conn:
            await conn.execute(sa.delete(lago_webhooks).where(lago_webhooks.c.unique_key == unique_key[:255]))

    async def period_rows(
        self, column: str, entity_id: str, since: datetime, grouped: Sequence[str], by_metadata: bool
    ) -> list[dict[str, Any]]:
        """The entity's billable ledger rows since `since`, one summed row per distinct value of
        the non-additive columns the events read (`grouped`), with `count` the rows it stands for.
        One statement over the (entity, started_at) index, on SQLite and PostgreSQL alike."""
        keys = [ledger.c[name] for name in grouped if name in _GROUPABLE]
        extra: list[Any] = []
        if by_metadata:  # event properties read request metadata or tags: rows differ by them
            extra = [
                sa.cast(ledger.c.metadata, sa.Text).label("metadata_text"),
                sa.cast(ledger.c.tags, sa.Text).label("tags_text"),
            ]
        # whether Lago has the row (its export was sent): a pay-in-advance fee is then paid already
        sent = sa.case((billing_outbox.c.status == "sent", 1), else_=0).label("sent")
        sums = [sa.func.coalesce(sa.func.sum(ledger.c[name]), 0).label(name) for name in _SUMMED if name != "cost"]
        query = (
            sa.select(
                *keys,
                *extra,
                *sums,
                sa.func.sum(ledger.c.cost).label("cost"),
                sa.func.count().label("count"),
                sa.func.max(ledger.c.ended_at).label("ended_at"),
                sent,
            )
            .select_from(ledger.outerjoin(billing_outbox, billing_outbox.c.ledger_uid == ledger.c.uid))
            .where(ledger.c[column] == entity_id, ledger.c.started_at >= since, _BILLABLE)
            .group_by(*keys, *extra, sent)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [{str(k): v for k, v in r.items()} for r in rows]


def _reading(row: Any) -> Reading:
    wallets = row["wallets"] or []
    return Reading(
        entity_id=str(row["entity_id"]),
        lago_customer_id=row["lago_customer_id"],
        subscription_id=row["subscription_id"],
        plan_code=row["plan_code"],
        currency=row["currency"],
        period_start=_utc(row["period_start"]),
        period_end=_utc(row["period_end"]),
        has_wallets=bool(row["has_wallets"]),
        balance=int(row["balance_units"] or 0),
        lago_usage=int(row["lago_usage_units"] or 0),
        priced=int(row["priced_units"] or 0),
        wallets=tuple(WalletView.from_json(w) for w in wallets if isinstance(w, dict)),
        reason=row["reason"],
        read_at=_utc(row["read_at"]),
        attempt_at=_utc(row["attempt_at"]),
        error=row["error"],
        advance=int(row["advance_units"] or 0),
        advance_paid=int(row["advance_paid_units"] or 0),
        last_used_at=_utc(row["last_used_at"]),
    )
