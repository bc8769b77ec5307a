"""Prepaid credits: each charged entity's readings of its Lago wallets, and the Lago price of its
ledger rows (docs/billing.md, "Prepaid credits").

A reading stores B (the usable wallets' ongoing balance), U_L (the usage Lago had counted in
them) and P_R (the Lago price of the entity's rows of the current billing period, as Lago will
price them). The gateway holds the entity to funded = B + min(U_L, P_R), counted from the
period's start by the limiter (`limits.prepaid`), whose spend starts at P_R and grows by the Lago
price of each request settled since. When Lago later counts those rows, B falls and U_L rises by
as much: funded minus spend does not move. A top-up raises B at once.

Readings are taken on first use (synchronously, bounded), on a schedule (claimed in the store,
so replicas do not all call Lago), and on Lago's webhooks; each process keeps them about a
second (`CACHE_TTL_S`), so every replica sees a top-up within a second or two and the request
path reads the database at most once a second per entity.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import aiohttp

from meterway.billing.events import CHARGED, Parked, events_for, grouping, subscription_for
from meterway.billing.wallets import LagoUnavailable, Plan, Wallets, usable_sorted, wallet_view
from meterway.config.billing import Billing
from meterway.errors import LagoPlanInvalid
from meterway.ledger import pricing
from meterway.store.prepaid import Reading

if TYPE_CHECKING:
    from meterway.billing.lago_price import PlanPrice, Tally
    from meterway.store.runtime import Store

log = logging.getLogger("meterway.prepaid")

CACHE_TTL_S = 1.0  # a process re-reads an entity's reading from the store at most this often
FIRST_USE_TIMEOUT = aiohttp.ClientTimeout(total=2.0)  # a first reading waits at most this for Lago
REFRESH_TIMEOUT = aiohttp.ClientTimeout(total=10.0)
FIRST_RETRY_S = 2.0  # a failed first reading is tried again on a request at most this often
WITHOUT_WALLETS_FACTOR = 10  # entities without wallets are re-read this many intervals apart
REASONS = ("first_use", "schedule", "webhook", "top_up")


@dataclass(frozen=True, slots=True)
class PrepaidAlert:
    """A prepaid balance running low or out, for the alerts outbox (`alerts`): `dedupe` carries
    the funded amount, so a top-up re-arms it."""

    event: str  # credits_low | credits_exhausted
    charged_as: str  # customer, user, team or key
    entity_id: str
    currency: str
    available: Decimal
    funded: Decimal
    dedupe: str


AlertSink = Callable[[PrepaidAlert], Awaitable[None]]


async def no_alerts(alert: PrepaidAlert) -> None:
    """The alert call-site's default: the integrator passes `alerts.Alerts.enqueue` (adapted)."""


@dataclass(slots=True)
class Priced:
    """A reading as this process uses it: the reading, the plan's price model and the tally of
    the period's rows (to price a request at the margin), kept while the reading is the same."""

    reading: Reading
    price: PlanPrice | None
    tally: Tally | None
    loaded: float  # monotonic time it was read from the store
    fallback: bool = False  # a charge Lago prices that we cannot: the ledger's cost stands in

    @property
    def period_counter(self) -> str:
        start = self.reading.period_start
        return f"prepaid:{self.reading.entity_id}:{int(start.timestamp()) if start else 0}"


@dataclass(frozen=True, slots=True)
class Pool:
    """What one Lago customer's wallets pay for, shared by every entity charged through it (two
    keys of one customer, users mapped to one Lago customer): one counter, whose floor is the sum
    of their P_R and whose limit is B + A_R + min(U_L, ΣP_R - ΣP_adv), B and U_L from the newest
    of their readings (docs/billing.md, "Prepaid credits", "Entities sharing a Lago customer")."""

    counter: str
    funded: int
    floor: int  # ΣP_R: the Lago price of all their rows of the period, at their readings
    credited: int  # Σ balance_cents of the usable wallets: moves with top-ups, not with Lago's refresh
    entities: tuple[str, ...]


def pool_of(readings: list[Reading]) -> Pool:
    """The pool of readings of one Lago customer (the first is the entity asking)."""
    newest = max(readings, key=lambda r: r.read_at or datetime.min.replace(tzinfo=UTC))
    priced = sum(r.priced for r in readings)
    advance = sum(r.advance for r in readings)
    paid = sum(r.advance_paid for r in readings)
    starts = [int(r.period_start.timestamp()) for r in readings if r.period_start is not None]
    first = readings[0]
    owner = first.lago_customer_id or first.entity_id
    return Pool(
        counter=f"prepaid:{owner}:{max(starts, default=0)}",
        funded=newest.balance + paid + min(newest.lago_usage, priced - advance),
        floor=priced,
        credited=sum(w.balance for w in newest.wallets if w.usable),
        entities=tuple(r.entity_id for r in readings),
    )


def money(units: int) -> str:
    """Money units as a decimal string of the currency."""
    return format(pricing.usd(units), "f")


class Prepaid:
    """Readings of every charged entity's wallets, shared by the admission stage, the webhook
    receiver, the schedule and `/customer/info`."""

    def __init__(
        self,
        billing: Billing,
        store: Store,
        session: aiohttp.ClientSession,
        alert: AlertSink = no_alerts,
        budget: Callable[[str], Awaitable[tuple[int, int]]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`alert`: where credits_low / credits_exhausted go (the alerts outbox, wired by the
        integrator); `budget`: the limiter's read of a counter (spend, reserved) for `status`."""
        self.billing = billing
        self.budget = budget
        self.config = billing.prepaid
        self.store = store
        self.wallets = Wallets(billing, session)
        self.alert = alert
        self._clock = clock
        self._cache: dict[str, Priced] = {}
        self._pending: dict[str, asyncio.Future[Priced | None]] = {}
        self._alerted: set[str] = set()  # dedupe keys this process has handed to `alert`
        self._members: dict[str, tuple[float, list[str]]] = {}  # Lago customer -> (read at, entities)
        self.tax = Decimal(1) + self.config.tax_rate

    # ------------------------------------------------------------------ readings

    async def current(self, entity: str) -> Priced | None:
        """The entity's reading, from this process (at most CACHE_TTL_S old), else the store, else
        Lago at once (first use, bounded). None: it was never read successfully."""
        cached = self._cache.get(entity)
        now = self._clock()
        if cached is not None and now - cached.loaded < CACHE_TTL_S:
            return cached
        pending = self._pending.get(entity)
        if pending is not None:
            return await pending
        future: asyncio.Future[Priced | None] = asyncio.get_running_loop().create_future()
        self._pending[entity] = future
        try:
            found = await self._load(entity, cached)
        except BaseException as e:
            future.set_exception(e)
            future.exception()
            raise
        finally:
            del self._pending[entity]
        future.set_result(found)
        return found

    async def _load(self, entity: str, cached: Priced | None) -> Priced | None:
        reading = await self.store.prepaid.get(entity)
        if reading is None or (reading.read_at is None and self._retry_first(reading)):
            reading = await self.refresh(entity, "first_use", FIRST_USE_TIMEOUT)
        elif reading.period_end is not None and reading.period_end <= datetime.now(UTC) and self._retry_first(reading):
            # the billing period the reading belongs to is over: the new one is read now, bounded
            reading = await self.refresh(entity, "schedule", FIRST_USE_TIMEOUT) or reading
        if reading is None or reading.read_at is None:
            self._cache.pop(entity, None)
            return None
        if cached is not None and cached.reading.read_at == reading.read_at and cached.reading.priced == reading.priced:
            cached.reading = reading
            cached.loaded = self._clock()
            return cached
        priced = Priced(reading, None, None, self._clock())
        if reading.has_wallets:
            try:
                priced = await self._with_tally(reading, REFRESH_TIMEOUT)
            except (
                LagoUnavailable,
                LagoPlanInvalid,
            ) as e:  # the plan cannot be read: prices fall back to the ledger's cost
                log.warning("prepaid: plan of %s not read (%s); pricing at the ledger's cost", entity, e)
                priced.fallback = True
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[entity] = priced
        return priced

    @staticmethod
    def _retry_first(reading: Reading) -> bool:
        """A first reading that failed is tried again on the request path, at most every
        FIRST_RETRY_S (each try may hold a request up to FIRST_USE_TIMEOUT while Lago is away)."""
        attempt = reading.attempt_at
        return attempt is None or (datetime.now(UTC) - attempt).total_seconds() >= FIRST_RETRY_S

    async def _with_tally(self, reading: Reading, within: aiohttp.ClientTimeout) -> Priced:
        plan = await self.wallets.plan(reading.plan_code or "", within)
        price, tally, fallback, _ = await self._tally(reading.entity_id, reading.subscription_id or "", plan, reading)
        return Priced(reading, price, tally, self._clock(), fallback is not None)

    def forget(self, entity: str | None = None) -> None:
        """Drops this process's copies (all of them with no entity): the next request re-reads."""
        if entity is None:
            self._cache.clear()
        else:
            self._cache.pop(entity, None)

    async def subscription_of(self, entity: str) -> str | None:
        mapped = await self.store.outbox.subscriptions(self.billing.charge_by, [entity])
        sub = subscription_for({CHARGED[self.billing.charge_by]: entity}, self.billing, mapped)
        return None if isinstance(sub, Parked) else sub

    async def refresh(
        self, entity: str, reason: str, within: aiohttp.ClientTimeout = REFRESH_TIMEOUT
    ) -> Reading | None:
        """Reads the entity's subscription, plan and wallets from Lago and prices its period's
        rows; stores the reading (or, when Lago fails, why) and returns it (None on failure)."""
        now = datetime.now(UTC)
        try:
            reading, priced = await self._read(entity, reason, now, within)
        except (LagoUnavailable, LagoPlanInvalid, TimeoutError, aiohttp.ClientError) as e:
            why = str(e) or e.__class__.__name__
            log.warning("prepaid: %s not read from Lago: %s", entity, why)
            await self.store.prepaid.failed(entity, why, now)
            return None
        await self.store.prepaid.save(reading, reading.funded - reading.priced)
        if priced is not None:
            self._cache[entity] = priced
        else:
            self._cache.pop(entity, None)
        return reading

    async def _read(
        self, entity: str, reason: str, now: datetime, within: aiohttp.ClientTimeout
    ) -> tuple[Reading, Priced | None]:
        sub_id = await self.subscription_of(entity)
        sub = await self.wallets.subscription(sub_id, within) if sub_id else None
        if sub is None or sub.status not in ("active", "") or not sub.external_customer_id:
            empty = Reading(
                entity, None, sub_id, None, None, None, None, False, 0, 0, 0, (), reason, now
            )  # charged through no Lago subscription: nothing to hold it to
            return empty, None
        plan = await self.wallets.plan(sub.plan_code, within)
        raw = await self.wallets.wallets(sub.external_customer_id, within)
        views = usable_sorted([wallet_view(w, plan.currency, self.billing.event_code, now) for w in raw])
        usable = [w for w in views if w.usable]
        reading = Reading(
            entity_id=entity,
            lago_customer_id=sub.external_customer_id,
            subscription_id=sub.external_id,
            plan_code=sub.plan_code,
            currency=plan.currency,
            period_start=sub.period_start,
            period_end=sub.period_end,
            has_wallets=bool(views),  # any wallet, usable or not: held (to 0 when none is usable)
            balance=sum(w.ongoing_balance for w in usable),
            lago_usage=sum(w.ongoing_usage for w in usable),
            priced=0,
            wallets=tuple(views),
            reason=reason,
            read_at=now,
        )
        if not usable:
            return reading, None
        price, tally, fallback, (advance, paid) = await self._tally(entity, sub.external_id, plan, reading)
        priced_units = self.units(tally.amount()) + (fallback or 0)
        reading = replace(reading, priced=priced_units, advance=min(advance, priced_units), advance_paid=paid)
        return reading, Priced(reading, price, tally, self._clock(), fallback is not None)

    def units(self, amount: Decimal) -> int:
        """A price in the plan's currency, with Lago's taxes, as money units (rounded up)."""
        return pricing.units(amount * self.tax)

    async def _tally(
        self, entity: str, subscription: str, plan: Plan, reading: Reading
    ) -> tuple[PlanPrice, Tally, int | None, tuple[int, int]]:
        """The plan's price model, the tally of the period's rows (one aggregation over the
        ledger, grouped by what the events read that does not add up) and, when the plan has
        charges the model cannot price (`PlanPrice.unpriced`), the ledger's own cost of those
        rows, which stands in for them (said in the log); and, of the period's price, the part of
        invoiceable pay-in-advance charges and what of it Lago had already taken from the
        balance (the rows whose export was sent), in money units."""
        from meterway.billing.lago_price import PlanPrice

        price = PlanPrice.parse(plan.body, plan.metrics)
        tally = price.tally()
        fallback = 0 if price.unpriced else None
        if price.unpriced:
            log.warning(
                "prepaid: plan '%s' has charges meterway cannot price (%s): its rows' meterway cost stands in",
                plan.code,
                ", ".join(price.unpriced),
            )
        charges = [c for c in plan.body.get("charges") or [] if isinstance(c, dict)]
        in_advance = [c for c in charges if c.get("pay_in_advance") and c.get("invoiceable", True) is not False]
        advance = PlanPrice.parse({**plan.body, "charges": in_advance}, plan.metrics) if in_advance else None
        advance_all = advance.tally() if advance is not None else None
        advance_sent = advance.tally() if advance is not None else None
        if reading.period_start is None:
            return price, tally, fallback, (0, 0)
        grouped, by_metadata = grouping(self.billing)
        rows = await self.store.prepaid.period_rows(
            CHARGED[self.billing.charge_by], entity, reading.period_start, grouped, by_metadata
        )
        for row in rows:
            count = int(row.pop("count"))
            summed = _summed_row(row)
            if fallback is not None:
                fallback += pricing.units(summed.get("cost") or 0)
            sent = bool(summed.pop("sent", 0))
            for event in events_for(summed, subscription, self.billing):
                tally.add(event, count)
                if advance_all is not None and advance_sent is not None:
                    advance_all.add(event, count)
                    if sent:
                        advance_sent.add(event, count)
        paid = (
            (self.units(advance_all.amount()), self.units(advance_sent.amount()))
            if advance_all is not None and advance_sent is not None
            else (0, 0)
        )
        return price, tally, fallback, paid

    # ------------------------------------------------------------------ one Lago customer, one pool

    async def pool(self, reading: Reading, *, fresh: bool = False) -> Pool:
        """The pool the entity's requests are held to: its own reading and those of every other
        entity read as charged through the same Lago customer (with wallets, in the same
        currency), so that together they never spend more than the customer's wallets. They
        share one counter at once; which entities belong is re-read from the store at most every
        CACHE_TTL_S (`fresh`: now), so a newcomer's earlier rows join the floor within that."""
        customer = reading.lago_customer_id
        if not customer:
            return pool_of([reading])
        now = self._clock()
        known = self._members.get(customer)
        if fresh or known is None or now - known[0] >= CACHE_TTL_S:
            if len(self._members) > 100_000:
                self._members.clear()
            known = (now, await self.store.prepaid.entities_of(customer))
            self._members[customer] = known
        readings = [reading]
        for other in known[1]:
            if other == reading.entity_id:
                continue
            cached = self._cache.get(other)
            peer = cached.reading if cached is not None and now - cached.loaded < CACHE_TTL_S else None
            if peer is None:
                peer = await self.store.prepaid.get(other)
            if (
                peer is not None
                and peer.read_at is not None
                and peer.has_wallets
                and peer.lago_customer_id == customer
                and peer.currency == reading.currency
            ):
                readings.append(peer)
        return pool_of(readings)

    # ------------------------------------------------------------------ prices of requests

    def price_of(self, priced: Priced, row: Mapping[str, Any]) -> int:
        """The Lago price (money units, with taxes) a ledger row, or what a request may become,
        adds to the entity's period: at the margin of the period's tally."""
        if priced.tally is None:
            return pricing.units(row.get("cost") or 0)
        events = events_for(row, priced.reading.subscription_id or "", self.billing)
        extra = priced.tally.extra(events)
        units = self.units(extra)
        if priced.fallback:
            units += pricing.units(row.get("cost") or 0)  # the charges priced by Lago alone
        return units

    def settled(self, priced: Priced, row: Mapping[str, Any]) -> int:
        """As `price_of`, and the row joins this process's tally (so the next margin follows it)."""
        units = self.price_of(priced, row)
        if priced.tally is not None:
            for event in events_for(row, priced.reading.subscription_id or "", self.billing):
                priced.tally.add(event, 1)
        return units

    # ------------------------------------------------------------------ alerts

    async def warn(self, event: str, charged_as: str, priced: Priced, available: int, pool: Pool | None = None) -> None:
        """Hands a credits_low / credits_exhausted alert to the sink once per amount credited to
        the usable wallets (Σ balance_cents, which Lago's refresh of the ongoing balance does not
        move): only a top-up (or a new wallet) re-arms it."""
        reading = priced.reading
        pool = pool or pool_of([reading])
        dedupe = f"{event}:{charged_as}:{reading.entity_id}:{pool.counter}:{pool.credited}"
        if dedupe in self._alerted:
            return
        if len(self._alerted) > 10_000:
            self._alerted.clear()
        self._alerted.add(dedupe)
        alert = PrepaidAlert(
            event,
            charged_as,
            reading.entity_id,
            reading.currency or "",
            pricing.usd(available),
            pricing.usd(pool.funded),
            dedupe,
        )
        try:
            await self.alert(alert)
        except Exception:
            log.exception("prepaid: %s alert for %s not enqueued", event, reading.entity_id)
            self._alerted.discard(dedupe)

    # ------------------------------------------------------------------ schedule and webhooks

    async def run(self) -> None:
        """Re-reads, every refresh interval, the entities whose reading is due (claimed in the
        store, so each is read by one replica)."""
        interval = self.config.refresh_interval_s
        while True:
            await asyncio.sleep(min(max(interval / 4, 0.5), 15.0))
            try:
                due = await self.store.prepaid.claim_due(datetime.now(UTC), interval, interval * WITHOUT_WALLETS_FACTOR)
                for entity in due:
                    await self.refresh(entity, "schedule")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("prepaid: scheduled refresh failed; retrying")

    async def customer_changed(self, lago_customer: str, reason: str) -> list[str]:
        """A webhook about a Lago customer's wallets: every entity charged through that customer
        is read again now (raises LagoUnavailable when one cannot be)."""
        entities = await self.store.prepaid.entities_of(lago_customer)
        if not entities:  # never read, or charged by its own id: the customer id may be the entity's
            entities = [lago_customer]
        failed = []
        for entity in entities:
            if await self.refresh(entity, reason) is None:
                failed.append(entity)
        if failed:
            raise LagoUnavailable(f"Lago did not answer for {', '.join(failed)}")
        return entities

    # ------------------------------------------------------------------ what /customer/info shows

    def stale(self, reading: Reading) -> bool:
        if reading.read_at is None:
            return True
        age = (datetime.now(UTC) - reading.read_at).total_seconds()
        return age > self.config.stale_after_s and reading.error is not None

    async def status(self, entity: str) -> dict[str, Any] | None:
        """The `prepaid` object of `/customer/info` and `/key/info` (None: never read)."""
        reading = await self.store.prepaid.get(entity)
        if reading is None:
            return None
        charged_as = self.billing.charge_by
        spent, reserved = 0, 0
        pool = await self.pool(reading, fresh=True) if reading.has_wallets else pool_of([reading])
        if self.budget is not None and reading.has_wallets:
            spent, reserved = await self.budget(pool.counter)
        used = max(spent, pool.floor)
        available = pool.funded - used - reserved
        history = await self.store.prepaid.history(entity)
        now = datetime.now(UTC)
        return {
            "mode": self.config.mode,
            "charged_as": charged_as,
            "entity_id": entity,
            "lago_customer_id": reading.lago_customer_id,
            "currency": reading.currency,
            "wallets": [
                {
                    "lago_id": w.lago_id,
                    "code": w.code,
                    "name": w.name,
                    "priority": w.priority,
                    "status": w.status,
                    "currency": w.currency,
                    "rate_amount": w.rate_amount,
                    "balance": money(w.balance),
                    "ongoing_balance": money(w.ongoing_balance),
                    "ongoing_usage": money(w.ongoing_usage),
                    "expiration_at": w.expiration_at,
                    "usable": w.usable,
                }
                for w in reading.wallets
            ],
            "lago_balance": money(reading.balance),
            "lago_counted_usage": money(reading.lago_usage),
            "priced_usage": money(used),
            "uncounted": money(used - min(reading.lago_usage, pool.floor)),
            "reserved": money(reserved),
            "available": money(available),
            "funded": money(pool.funded),
            "shared_with": [e for e in pool.entities if e != entity],
            "period_start": reading.period_start.isoformat() if reading.period_start else None,
            "read_at": reading.read_at.isoformat() if reading.read_at else None,
            "reading_age_s": round((now - reading.read_at).total_seconds(), 3) if reading.read_at else None,
            "stale": self.stale(reading),
            "last_error": reading.error,
            "history": [
                {
                    "at": h.at.isoformat(),
                    "reason": h.reason,
                    "balance": money(h.balance),
                    "counted": money(h.counted),
                    "priced": money(h.priced),
                    "available": money(h.available),
                }
                for h in history
            ],
        }


def _summed_row(row: dict[str, Any]) -> dict[str, Any]:
    """A group of ledger rows as one row `events_for` can read: its sums as the row's figures."""
    import orjson

    out = dict(row)
    for name in (
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cached_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "queries",
        "images",
        "audio_ms",
        "characters",
    ):
        out[name] = int(out.get(name) or 0)
    meta = out.pop("metadata_text", None)
    tags = out.pop("tags_text", None)
    out["metadata"] = _json(orjson, meta, {})
    out["tags"] = _json(orjson, tags, [])
    out.setdefault("uid", "period")
    for name in ("customer_id", "end_user", "user_id", "team_id", "key_alias", "deployment_id"):
        out.setdefault(name, None)
    for name in ("model_group", "upstream_model", "endpoint", "request_id"):
        out.setdefault(name, None)
    ended = out.get("ended_at")
    if not isinstance(ended, datetime):
        out["ended_at"] = datetime.now(UTC)
    return out


def _json(orjson: Any, text: Any, default: Any) -> Any:
    if not isinstance(text, str):
        return default
    with contextlib.suppress(orjson.JSONDecodeError):
        return orjson.loads(text)
    return default
