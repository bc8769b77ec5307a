"""Prepaid credits: each charged entity's readings of its Lago wallets, and the Lago price of its
ledger rows (docs/billing.md, "Prepaid credits").

A reading stores B (the usable wallets' ongoing balance), U_L (the usage Lago had counted in
them) and P_R (the Lago price of the entity's rows of the current billing period, as Lago will
price them). The gateway holds the entity to funded = B + min(U_L, P_R), counted from the
period's start by the limiter (`limits.prepaid`), whose spend starts at P_R and grows by the Lago
price of each request settled since. When Lago later counts those rows, B falls and U_L rises by
as much: funded minus spend does not move. A top-up raises B at once.

Readings are taken on first use (synchronously, `REQUEST_PATH_S` in all), on a schedule
(claimed in the store, so replicas do not all call Lago; a few at once), and on Lago's webhooks
(coalesced per customer); each process keeps them about a second (`CACHE_TTL_S`, least recently
used evicted first), so every replica sees a top-up within a second or two and the request path
reads the database at most once a second per entity. A reading is stored only when it is newer
than the stored one (taken when Lago answered the wallets call). The request path makes no Lago
call past the first reading: the plan is the last one read (fetched again in the background).
Ids with no Lago subscription are kept only in the process (`NO_SUBSCRIPTION_TTL_S`), never
stored; a failed first reading is retried at most every `NEGATIVE_RETRY_S`, in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from meterway.billing.events import CHARGED, Parked, events_for, grouping, subscription_for
from meterway.billing.wallets import LagoUnavailable, Plan, Wallets, usable_sorted, wallet_view
from meterway.config.billing import Billing
from meterway.errors import LagoPlanInvalid
from meterway.ledger import pricing
from meterway.ledger.row import UNITS
from meterway.store.prepaid import Reading

if TYPE_CHECKING:
    from meterway.billing.lago_price import PlanPrice, Tally
    from meterway.store.runtime import Store

log = logging.getLogger("meterway.prepaid")

CACHE_TTL_S = 1.0  # a process re-reads an entity's reading from the store at most this often
FIRST_USE_TIMEOUT = aiohttp.ClientTimeout(total=2.0)  # a first reading waits at most this for Lago
REFRESH_TIMEOUT = aiohttp.ClientTimeout(total=10.0)
FIRST_RETRY_S = 2.0  # a reading of an ended period is tried again on a request at most this often
REQUEST_PATH_S = 2.0  # all of a reading made for a request (every Lago call of it) within this
REFRESH_S = 20.0  # all of a reading made by the schedule or a webhook within this
NEGATIVE_RETRY_S = 5.0  # a failed first reading is tried again (in the background) at most this often
NO_SUBSCRIPTION_TTL_S = 300.0  # an id Lago has no subscription for is asked about again after this
CACHE_MAX = 100_000  # readings kept in the process (least recently used go first)
NEGATIVE_MAX = 10_000  # ids without a subscription, or whose first reading failed, kept in the process
IDLE_S = 86_400.0  # entities no request asked for in this long are not read on the schedule
TOUCH_S = 3_600.0  # a request's use of an entity is written at most this often
SCHEDULE_CONCURRENCY = 8  # scheduled readings at once, per replica
SCHEDULE_BATCH = 200  # readings claimed at a time (another batch at once when it was full)
WEBHOOK_SPACING_S = 1.0  # re-reads of one Lago customer on webhooks at most this often
WEBHOOKS_KEPT_S = 7 * 86_400.0  # webhook keys are forgotten after this long
PRUNE_EVERY_S = 3_600.0
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


@dataclass(slots=True)
class _Gate:
    """Webhook re-reads of one Lago customer: tickets in order of arrival, the last one a
    finished re-read covered, and when the last re-read began."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    arrived: int = 0
    covered: int = 0
    started: float = float("-inf")
    entities: list[str] = field(default_factory=list)


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
        self._cache: OrderedDict[str, Priced] = OrderedDict()
        self._pending: dict[str, asyncio.Task[Priced | None]] = {}
        self._unbilled: OrderedDict[str, Priced] = OrderedDict()  # ids Lago has no subscription for
        self._failed: OrderedDict[str, float] = OrderedDict()  # first readings that failed: when
        self._tasks: set[asyncio.Task[Any]] = set()  # background reads, held until done
        self._plan_reads: dict[str, asyncio.Task[Plan | None]] = {}  # plans being read, by code
        self._plan_failed: dict[str, float] = {}  # plans whose last read failed: when
        self._gates: dict[str, _Gate] = {}  # webhook re-reads per Lago customer
        self._pruned = float("-inf")
        self._alerted: set[str] = set()  # dedupe keys this process has handed to `alert`
        self._members: dict[str, tuple[float, list[str]]] = {}  # Lago customer -> (read at, entities)
        self.tax = Decimal(1) + self.config.tax_rate

    # ------------------------------------------------------------------ readings

    async def current(self, entity: str) -> Priced | None:
        """The entity's reading, from this process (at most CACHE_TTL_S old), else the store, else
        Lago at once (first use, REQUEST_PATH_S in all). None: it was never read successfully.

        The load runs in its own task, shared by the entity's concurrent requests and shielded
        from each: a client that leaves cancels its own wait, never the others' reading."""
        now = self._clock()
        cached = self._cache.get(entity)
        if cached is not None and now - cached.loaded < CACHE_TTL_S:
            self._cache.move_to_end(entity)
            return cached
        unbilled = self._unbilled.get(entity)
        if unbilled is not None:
            if now - unbilled.loaded < NO_SUBSCRIPTION_TTL_S:
                return unbilled
            del self._unbilled[entity]
        task = self._pending.get(entity)
        if task is None:
            task = asyncio.create_task(self._load(entity, cached))
            self._pending[entity] = task
            task.add_done_callback(lambda done: self._done_loading(entity, done))
        return await asyncio.shield(task)

    def _done_loading(self, entity: str, task: asyncio.Task[Priced | None]) -> None:
        if self._pending.get(entity) is task:
            del self._pending[entity]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter got it already

    def _remember(self, entity: str, priced: Priced) -> None:
        self._cache[entity] = priced
        self._cache.move_to_end(entity)
        while len(self._cache) > CACHE_MAX:
            self._cache.popitem(last=False)

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load(self, entity: str, cached: Priced | None) -> Priced | None:
        reading = await self.store.prepaid.get(entity)
        now = datetime.now(UTC)
        reason = None
        if reading is None or reading.read_at is None:
            reason = "first_use"
        elif reading.period_end is not None and reading.period_end <= now and self._retry_first(reading):
            reason = "schedule"  # the billing period the reading belongs to is over: the new one is read now
        elif reading.has_wallets and self.stale(reading) and self._retry_first(reading):
            reason = "first_use"  # idle for long (no longer on the schedule), or Lago was away
        if reason is not None:
            failed = self._failed.get(entity)
            if failed is not None and self._clock() - failed < NEGATIVE_RETRY_S:
                pass  # tried a moment ago: the request goes by what there is
            elif failed is not None:  # tried again, in the background: no request waits for it
                self._failed[entity] = self._clock()
                self._spawn(self._first_read(entity, reason))
            else:
                fresh = await self._first_read(entity, reason)
                if fresh is not None and fresh.entity_id in self._unbilled:
                    return self._unbilled[entity]
                reading = fresh or reading
        if reading is None or reading.read_at is None:
            self._cache.pop(entity, None)
            if entity in self._unbilled:
                return self._unbilled[entity]
            return None
        if reading.last_used_at is None or (now - reading.last_used_at).total_seconds() >= TOUCH_S:
            await self.store.prepaid.touch(entity, now)
        if (
            cached is not None
            and cached.reading.read_at == reading.read_at
            and cached.reading.priced == reading.priced
            and (cached.price is not None or not reading.has_wallets)  # not a stand-in for an unread plan
        ):
            cached.reading = reading
            cached.loaded = self._clock()
            self._remember(entity, cached)
            return cached
        priced = Priced(reading, None, None, self._clock())
        if reading.has_wallets:
            priced = await self._with_tally(reading)
        self._remember(entity, priced)
        return priced

    async def _first_read(self, entity: str, reason: str) -> Reading | None:
        """A reading for a request: bounded, and its failure remembered in the process."""
        fresh = await self.refresh(entity, reason, FIRST_USE_TIMEOUT, REQUEST_PATH_S)
        if fresh is None:
            self._failed[entity] = self._clock()
            self._failed.move_to_end(entity)
            while len(self._failed) > NEGATIVE_MAX:
                self._failed.popitem(last=False)
        else:
            self._failed.pop(entity, None)
        return fresh

    def _retry_first(self, reading: Reading) -> bool:
        """A reading tried again on the request path, at most every FIRST_RETRY_S."""
        attempt = reading.attempt_at
        return attempt is None or (datetime.now(UTC) - attempt).total_seconds() >= FIRST_RETRY_S

    async def _with_tally(self, reading: Reading) -> Priced:
        """The reading with its price model, from the plan this process last read (no Lago call
        when it knows one, however old: an old one is read again in the background). A plan this
        process never read is read once for all its entities, within REQUEST_PATH_S; failing
        that, prices fall back to the ledger's cost until it is read (retried in the background
        at most every NEGATIVE_RETRY_S)."""
        plan = await self._plan(reading.plan_code or "")
        if plan is None:
            return Priced(reading, None, None, self._clock(), True)
        try:
            price, tally, fallback, _ = await self._tally(
                reading.entity_id, reading.subscription_id or "", plan, reading
            )
        except LagoPlanInvalid as e:  # the plan cannot be priced: prices fall back to the ledger's cost
            log.warning("prepaid: plan of %s not priced (%s); pricing at the ledger's cost", reading.entity_id, e)
            return Priced(reading, None, None, self._clock(), True)
        return Priced(reading, price, tally, self._clock(), fallback is not None)

    async def _plan(self, code: str) -> Plan | None:
        plan, due = self.wallets.known_plan(code)
        task = self._plan_reads.get(code)
        failed = self._plan_failed.get(code)
        if due and task is None and (failed is None or self._clock() - failed >= NEGATIVE_RETRY_S):
            task = self._plan_reads[code] = asyncio.create_task(self._read_plan(code))
            task.add_done_callback(lambda _: self._plan_reads.pop(code, None))
        if plan is not None or task is None:
            return plan
        try:
            async with asyncio.timeout(REQUEST_PATH_S):
                return await asyncio.shield(task)
        except TimeoutError:
            return None

    async def _read_plan(self, code: str) -> Plan | None:
        try:
            async with asyncio.timeout(REFRESH_S):
                plan = await self.wallets.plan(code, REFRESH_TIMEOUT)
        except (LagoUnavailable, LagoPlanInvalid, TimeoutError, aiohttp.ClientError) as e:
            log.warning("prepaid: plan '%s' not read from Lago: %s", code, str(e) or e.__class__.__name__)
            self._plan_failed[code] = self._clock()
            return None
        self._plan_failed.pop(code, None)
        return plan

    def forget(self, entity: str | None = None) -> None:
        """Drops this process's copies (all of them with no entity): the next request re-reads."""
        if entity is None:
            self._cache.clear()
            self._unbilled.clear()
            self._failed.clear()
        else:
            self._cache.pop(entity, None)
            self._unbilled.pop(entity, None)
            self._failed.pop(entity, None)

    async def subscription_of(self, entity: str) -> str | None:
        mapped = await self.store.outbox.subscriptions(self.billing.charge_by, [entity])
        sub = subscription_for({CHARGED[self.billing.charge_by]: entity}, self.billing, mapped)
        return None if isinstance(sub, Parked) else sub

    async def refresh(
        self,
        entity: str,
        reason: str,
        within: aiohttp.ClientTimeout = REFRESH_TIMEOUT,
        bound: float = REFRESH_S,
    ) -> Reading | None:
        """Reads the entity's subscription, plan and wallets from Lago (all of it within `bound`
        seconds) and prices its period's rows; stores the reading unless a newer one is stored
        already (or, when Lago fails, why) and returns what is stored (None on failure). An id
        Lago has no subscription for is not stored (unless it was before): kept in the process."""
        try:
            async with asyncio.timeout(bound):
                reading, priced = await self._read(entity, reason, within)
        except (LagoUnavailable, LagoPlanInvalid, TimeoutError, aiohttp.ClientError) as e:
            why = str(e) or e.__class__.__name__
            log.warning("prepaid: %s not read from Lago: %s", entity, why)
            await self.store.prepaid.failed(entity, why, datetime.now(UTC))
            return None
        bare = reading.lago_customer_id is None
        if not await self.store.prepaid.save(reading, reading.funded - reading.priced, create=not bare):
            if bare:  # never stored: no subscription in Lago, remembered here only
                self._unbilled[entity] = Priced(reading, None, None, self._clock())
                self._unbilled.move_to_end(entity)
                while len(self._unbilled) > NEGATIVE_MAX:
                    self._unbilled.popitem(last=False)
                self._cache.pop(entity, None)
                return reading
            self._cache.pop(entity, None)  # a newer reading is stored: the next request loads it
            return await self.store.prepaid.get(entity)
        self._unbilled.pop(entity, None)
        if priced is not None:
            self._remember(entity, priced)
        else:
            self._cache.pop(entity, None)
        return reading

    async def _read(self, entity: str, reason: str, within: aiohttp.ClientTimeout) -> tuple[Reading, Priced | None]:
        sub_id = await self.subscription_of(entity)
        sub = await self.wallets.subscription(sub_id, within) if sub_id else None
        if sub is None or sub.status not in ("active", "") or not sub.external_customer_id:
            empty = Reading(
                entity, None, sub_id, None, None, None, None, False, 0, 0, 0, (), reason, datetime.now(UTC)
            )  # charged through no Lago subscription: nothing to hold it to
            return empty, None
        plan = await self.wallets.plan(sub.plan_code, within)
        raw = await self.wallets.wallets(sub.external_customer_id, within)
        now = datetime.now(UTC)  # the reading's time: when Lago answered for the wallets
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
        store, so each is read by one replica), SCHEDULE_CONCURRENCY at once; prunes old webhook
        keys hourly."""
        try:
            await self._schedule()
        finally:  # stopping: the background readings end with it
            others = [*self._tasks, *self._plan_reads.values(), *self._pending.values()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

    async def _schedule(self) -> None:
        interval = self.config.refresh_interval_s
        full = False
        while True:
            if not full:  # a full batch: more are due, claimed at once
                await asyncio.sleep(min(max(interval / 4, 0.5), 15.0))
            full = False
            try:
                now = datetime.now(UTC)
                due = await self.store.prepaid.claim_due(
                    now, interval, interval * WITHOUT_WALLETS_FACTOR, IDLE_S, SCHEDULE_BATCH
                )
                full = len(due) >= SCHEDULE_BATCH
                gate = asyncio.Semaphore(SCHEDULE_CONCURRENCY)

                async def one(entity: str, gate: asyncio.Semaphore = gate) -> None:
                    async with gate:
                        await self.refresh(entity, "schedule")

                for failed in await asyncio.gather(*(one(e) for e in due), return_exceptions=True):
                    if isinstance(failed, Exception):
                        log.warning("prepaid: scheduled reading failed: %s", failed.__class__.__name__)
                if self._clock() - self._pruned >= PRUNE_EVERY_S:
                    self._pruned = self._clock()
                    await self.store.prepaid.prune_webhooks(now - timedelta(seconds=WEBHOOKS_KEPT_S))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("prepaid: scheduled refresh failed; retrying")

    async def customer_changed(self, lago_customer: str, reason: str) -> list[str]:
        """A webhook about a Lago customer's wallets: every entity charged through that customer
        is read again (raises LagoUnavailable when one cannot be). Coalesced per customer: one
        re-read at a time, at most one per WEBHOOK_SPACING_S, and a webhook whose change a re-read
        begun after it arrived has already seen returns that re-read's answer."""
        gate = self._gates.get(lago_customer)
        if gate is None:
            if len(self._gates) > NEGATIVE_MAX:
                self._gates = {k: g for k, g in self._gates.items() if g.lock.locked()}
            gate = self._gates[lago_customer] = _Gate()
        gate.arrived += 1
        ticket = gate.arrived
        async with gate.lock:
            if gate.covered >= ticket:
                return gate.entities
            wait = gate.started + WEBHOOK_SPACING_S - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
            covers = gate.arrived  # every webhook arrived before this re-read begins
            gate.started = self._clock()
            entities = await self._reread(lago_customer, reason)
            gate.covered, gate.entities = covers, entities
            return entities

    async def _reread(self, lago_customer: str, reason: str) -> list[str]:
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
        return age > self.config.stale_after_s  # by age alone: a reading not retried is as old

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


# the token figures a group of ledger rows sums (its units beside them: `ledger.row.UNITS`)
_TOKEN_SUMS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


def _summed_row(row: dict[str, Any]) -> dict[str, Any]:
    """A group of ledger rows as one row `events_for` can read: its sums as the row's figures."""
    out = dict(row)
    for name in (*_TOKEN_SUMS, *UNITS):
        out[name] = int(out.get(name) or 0)
    meta = out.pop("metadata_text", None)
    tags = out.pop("tags_text", None)
    out["metadata"] = _json(meta, {})
    out["tags"] = _json(tags, [])
    out.setdefault("uid", "period")
    for name in ("customer_id", "end_user", "user_id", "team_id", "key_alias", "deployment_id"):
        out.setdefault(name, None)
    for name in ("model_group", "upstream_model", "endpoint", "request_id"):
        out.setdefault(name, None)
    ended = out.get("ended_at")
    if not isinstance(ended, datetime):
        out["ended_at"] = datetime.now(UTC)
    return out


def _json(text: Any, default: Any) -> Any:
    if not isinstance(text, str):
        return default
    with contextlib.suppress(orjson.JSONDecodeError):
        return orjson.loads(text)
    return default
