"""Detecting budget crossings and delivering alerts, off the request path.

Each replica runs two loops while alerting is on:

- the scanner, every `alerting_args.budget_alert_scan_interval` (1 s): reads the keys, users,
  teams and customers whose spend has reached a threshold, their soft budget or their max budget,
  plus the budgets the limits hook saw refuse a request since the last scan (meterway's
  reservations hold spend just under a max budget, so spend alone may never reach it: a refusal
  is the crossing), and inserts one outbox row per alert and destination. The dedupe key (scope,
  entity, budget period, event, threshold) is the same on every replica, so the outbox keeps one.
- the sender: claims due rows, POSTs them, marks them sent; a failure (an answer other than 2xx,
  a timeout, a refused connection) puts the row back with a capped exponential backoff, for as
  long as it takes. A replica that dies mid-post leaves its claim to run out, and another sends the
  row again: the receiver may then see one alert twice, with the same `alert_id` (docs/alerts.md).

The limits hook only notes a refused budget in a bounded dict (no I/O on the request path); the
scanner reads the entity and enqueues. Other modules (prepaid credits) call `enqueue`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from meterway.alerts.model import Alert, Event, Scope, budget_message
from meterway.alerts.outbox import AlertOutbox, Claimed
from meterway.config.alerting import Alerting
from meterway.store.tables import customers, keys, teams, users

if TYPE_CHECKING:
    from meterway.telemetry.metrics import Metrics

log = logging.getLogger("meterway.alerts")

CLAIM: Final = 20  # rows a sender round takes
HOLD_S: Final = 30.0  # how long a claim holds; a post is given at most a third of it
POST_TIMEOUT_S: Final = HOLD_S / 3
BACKOFF_FIRST_S: Final = 0.5
BACKOFF_MAX_S: Final = 30.0
IDLE_S: Final = 0.2  # the sender's pause when nothing is due
REFUSALS_MAX: Final = 4096  # refused budgets noted between two scans; more are dropped (logged)
SEEN_MAX: Final = 100_000  # dedupe keys this replica knows are in the outbox; forgotten past it
PENDING_EVERY_S: Final = 2.0  # the pending gauge is read at most this often


class Alerts:
    """The alert worker of one replica, and the API other modules enqueue alerts through. With
    alerting off (`alerting` None) it enqueues nothing and runs no loop."""

    def __init__(
        self,
        alerting: Alerting | None,
        engine: AsyncEngine,
        session: aiohttp.ClientSession,
        metrics: Metrics | None = None,
    ) -> None:
        self.alerting = alerting
        self.destinations: Mapping[str, str] = alerting.destinations if alerting is not None else {}
        self.outbox = AlertOutbox(engine)
        self._engine = engine
        self._session = session
        self._metrics = metrics
        self._refused: dict[str, None] = {}  # budget counters refused since the last scan
        self._dropped = 0
        self._seen: set[str] = set()  # dedupe keys known to be in the outbox
        self._stopping = False
        self._failing = False
        self._pending_at = float("-inf")
        self.scans = 0  # completed scans (tests wait for one)

    @property
    def enabled(self) -> bool:
        return bool(self.destinations)

    # the request path
    def budget_refused(self, counter: str) -> None:
        """A request was refused because the budget counted by `counter` (`scope:id:budget:period`)
        could not pay for it. Notes it for the next scan: no I/O here."""
        if counter in self._refused:
            return
        if len(self._refused) >= REFUSALS_MAX:
            self._dropped += 1
            return
        self._refused[counter] = None

    # the API for other modules
    async def enqueue(self, alert: Alert) -> int:
        """Queues `alert` for every destination, unless its dedupe key is there already. Returns
        how many rows were new (0: alerting off, or alerted before)."""
        return await self._insert([alert])

    async def _insert(self, found: Sequence[Alert]) -> int:
        fresh = [a for a in found if a.dedupe not in self._seen]
        if not fresh or not self.destinations:
            return 0
        rows: list[tuple[str, str, str, dict[str, Any]]] = []
        for alert in fresh:
            for name in self.destinations:
                body = alert.webhook_body() if name == "webhook" else alert.slack_body()
                rows.append((alert.dedupe, name, alert.event, body))
        new = await self.outbox.insert(rows)
        if len(self._seen) + len(fresh) > SEEN_MAX:
            self._seen.clear()  # the outbox's unique index still refuses them; this only saves inserts
        self._seen.update(a.dedupe for a in fresh)
        if new:
            log.info("alerts queued: %s", ", ".join(sorted({f"{a.event} {a.scope}" for a in fresh})))
        return new

    # the loops
    async def run(self) -> None:
        """Scans and sends until stopped or cancelled."""
        if not self.enabled:
            return
        assert self.alerting is not None
        async with asyncio.TaskGroup() as group:
            group.create_task(self._loop(self.scan, self.alerting.scan_interval_s, "scan"))
            group.create_task(self._loop(self.send_round, IDLE_S, "send", busy=True))

    def stop(self) -> None:
        self._stopping = True

    async def _loop(self, step: Any, pause_s: float, what: str, busy: bool = False) -> None:
        while not self._stopping:
            try:
                done = await step()
                if not (busy and done):
                    await asyncio.sleep(pause_s)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("alert %s failed (%s); retrying", what, e.__class__.__name__)
                await asyncio.sleep(1.0)

    async def scan(self) -> int:
        """One pass: entities past a threshold, and budgets refused since the last pass. Returns
        how many outbox rows were new."""
        assert self.alerting is not None
        refused, self._refused = self._refused, {}
        try:
            return await self._scan(refused)
        except BaseException:
            for counter in refused:  # noted again for the next scan: a database hiccup loses no crossing
                self.budget_refused(counter)
            raise

    async def _scan(self, refused: Mapping[str, None]) -> int:
        assert self.alerting is not None
        if self._dropped:
            log.warning("alert scan: %d refused budgets were not noted (more than %d)", self._dropped, REFUSALS_MAX)
            self._dropped = 0
        found: list[Alert] = []
        lowest = self.alerting.thresholds[0] if self.alerting.thresholds else 1.0
        async with self._engine.connect() as conn:
            for scope in ENTITIES:
                spend, max_budget, soft = (_money(scope, n) for n in ("spend", "max_budget", "soft_budget"))
                crossed = sa.or_(
                    sa.and_(max_budget.is_not(None), spend >= max_budget * sa.literal(lowest, sa.Float)),
                    sa.and_(soft.is_not(None), spend >= soft),
                )
                for row in (await conn.execute(_select(scope).where(crossed))).mappings():
                    found += self._crossings(scope, row, forced=False)
            for counter in refused:
                parsed = _parse_counter(counter)
                if parsed is None:
                    continue
                scope, ident = parsed
                row = (await conn.execute(_select(scope).where(_ident(scope) == ident))).mappings().first()
                if row is not None:
                    found += self._crossings(scope, row, forced=True)
        self.scans += 1
        return await self._insert(found)

    def _crossings(self, scope: Scope, row: Mapping[str, Any], *, forced: bool) -> list[Alert]:
        """The alerts `row` has crossed: a threshold of its max budget, its max budget (or a request
        it refused: `forced`), its soft budget."""
        assert self.alerting is not None
        spend = _usd(row["spend"]) or Decimal(0)
        max_budget, soft = _usd(row["max_budget"]), _usd(row["soft_budget"])
        reset = row["budget_reset_at"]
        if isinstance(reset, datetime) and reset.tzinfo is None:
            reset = reset.replace(tzinfo=UTC)  # SQLite keeps no zone; the store writes UTC
        period = reset.isoformat() if isinstance(reset, datetime) else "all"
        ident = str(row["ident"])
        events: list[tuple[Event, str, float]] = []
        if max_budget is not None:
            for t in self.alerting.thresholds:
                if spend >= max_budget * Decimal(str(t)):
                    events.append(("threshold_crossed", f"{t:g}", t))
            if forced or spend >= max_budget:
                events.append(("budget_crossed", "1", 1.0))
        if soft is not None and spend >= soft:
            events.append(("soft_budget_crossed", "soft", 0.0))
        out = []
        for event, tag, t in events:
            out.append(
                Alert(
                    event=event,
                    scope=scope,
                    dedupe=f"{scope}:{ident}:{period}:{event}:{tag}",
                    event_message=budget_message(scope, event, _float(max_budget), _float(soft), t),
                    spend=float(spend),
                    max_budget=_float(max_budget),
                    soft_budget=_float(soft),
                    token=row.get("token"),
                    customer_id=row.get("customer_id"),
                    user_id=row.get("user_id"),
                    team_id=row.get("team_id"),
                    team_alias=row.get("team_alias"),
                    user_email=row.get("user_email"),
                    key_alias=row.get("key_alias"),
                )
            )
        return out

    async def send_round(self) -> int:
        """Posts up to CLAIM due rows; returns how many it took."""
        claimed = await self.outbox.claim(CLAIM, HOLD_S)
        if claimed:
            results = await asyncio.gather(*(self._deliver(c) for c in claimed))
            if any(results) and self._failing:
                self._failing = False  # the receiver answers again: rows in backoff go now
                await self.outbox.wake()
            self._failing = self._failing or not all(results)
        await self._gauge()
        return len(claimed)

    async def _deliver(self, row: Claimed) -> bool:
        url = self.destinations.get(row.destination)
        if url is None:  # a destination this replica is not configured for: another replica's
            await self.outbox.retry(row.id, BACKOFF_MAX_S, f"{row.destination} is not configured on this replica")
            return True
        body = dict(row.payload)
        if row.destination == "webhook":
            body["alert_id"] = f"mw-alert-{row.id}"
        try:
            async with self._session.post(
                url, json=body, timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT_S), allow_redirects=False
            ) as r:
                if 200 <= r.status < 300:
                    await self.outbox.sent(row.id)
                    if self._metrics is not None:
                        self._metrics.alerts_sent.labels(row.event, row.destination).inc()
                    return True
                error = f"{row.destination} answered HTTP {r.status}"
        except (aiohttp.ClientError, TimeoutError) as e:
            error = f"{row.destination} not reached: {e.__class__.__name__}"
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** min(row.attempts, 16)) * random.uniform(0.5, 1.0)
        log.warning("alert %s not delivered (%s); again in %.1fs", row.id, error, delay)
        await self.outbox.retry(row.id, delay, error)
        return False

    async def _gauge(self) -> None:
        now = time.monotonic()
        if self._metrics is None or now - self._pending_at < PENDING_EVERY_S:
            return
        self._pending_at = now
        with contextlib.suppress(Exception):
            self._metrics.alerts_pending.set(await self.outbox.pending())


ENTITIES: Final[tuple[Scope, ...]] = ("key", "user", "team", "customer")
_TABLES: Final = {"key": keys, "user": users, "team": teams, "customer": customers}
_IDENT: Final = {"key": "token", "user": "user_id", "team": "team_id", "customer": "customer_id"}


def _ident(scope: Scope) -> sa.ColumnElement[Any]:
    return _TABLES[scope].c[_IDENT[scope]]


def _money(scope: Scope, name: str) -> sa.ColumnElement[Any]:
    """An entity table's money column as the integer it is stored as (not Money's Decimal), so SQL
    can compare spend with a fraction of the budget."""
    return sa.type_coerce(_TABLES[scope].c[name], sa.BigInteger)


def _select(scope: Scope) -> sa.Select[Any]:
    """An entity's budget and the fields its alert carries, as `ident`, `token`, `user_id`, ..."""
    t = _TABLES[scope]
    money = [t.c.spend, t.c.max_budget, t.c.soft_budget, t.c.budget_reset_at, _ident(scope).label("ident")]
    if scope == "key":
        return sa.select(
            *money,
            t.c.token,
            t.c.key_alias,
            t.c.user_id,
            t.c.team_id,
            sa.func.coalesce(t.c.customer_id, teams.c.customer_id).label("customer_id"),
            users.c.user_email,
            teams.c.team_alias,
        ).select_from(
            t.outerjoin(users, users.c.user_id == t.c.user_id).outerjoin(teams, teams.c.team_id == t.c.team_id)
        )
    if scope == "user":
        return sa.select(*money, t.c.user_id, t.c.user_email)
    if scope == "team":
        return sa.select(*money, t.c.team_id, t.c.team_alias, t.c.customer_id)
    return sa.select(*money, t.c.customer_id)


def _parse_counter(counter: str) -> tuple[Scope, str] | None:
    """`key:<digest>:budget:<period>` -> ("key", digest)."""
    head, sep, _ = counter.rpartition(":budget:")
    scope, _, ident = head.partition(":")
    if not sep or scope not in _TABLES or not ident:
        return None
    return scope, ident  # type: ignore[return-value]


def _usd(value: Any) -> Decimal | None:
    return None if value is None else Decimal(value)


def _float(value: Decimal | None) -> float | None:
    return None if value is None else float(value)
