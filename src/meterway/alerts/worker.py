"""Detecting budget crossings and delivering alerts, off the request path.

Each replica runs two loops while alerting is on:

- the scanner, every `alerting_args.budget_alert_scan_interval` (1 s): reads the keys, users,
  teams and customers in a budget period that has not ended whose spend has reached a threshold,
  their soft budget or their max budget, plus the budgets the limits hook saw refuse a request
  that does not fit even with nothing in flight (meterway's reservations hold spend just under a
  max budget, so spend alone may never reach it: such a refusal is the crossing), and inserts one
  outbox row per alert and destination. The dedupe key (scope, entity, budget period, event,
  threshold, budget) is the same on every replica, so the outbox keeps one.
- the sender: claims due rows, POSTs them, marks them sent. A refusal for good (400, 401, 403,
  404, 410, 422) marks the row failed, for an operator to resend; anything else (another status,
  a timeout, a refused connection) puts the row back with a capped exponential backoff, for as
  long as it takes. A replica that dies mid-post leaves its claim to run out, and another sends the
  row again: the receiver may then see one alert twice, with the same `alert_id` (docs/alerts.md).
  A replica that stops scans once more, lets its posts in flight finish and releases its claims.

The limits hook only notes a refused budget in a bounded dict (no I/O on the request path); the
scanner reads the entity and enqueues. Other modules (prepaid credits) call `enqueue`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, Literal

import aiohttp
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from meterway.alerts.model import Alert, Event, Scope, budget_message
from meterway.alerts.outbox import AlertOutbox, Claimed
from meterway.config.alerting import Alerting
from meterway.config.secret import Secret
from meterway.store.tables import customers, keys, teams, users

if TYPE_CHECKING:
    from meterway.telemetry.metrics import Metrics

log = logging.getLogger("meterway.alerts")

CLAIM: Final = 20  # rows a sender round takes
HOLD_S: Final = 30.0  # how long a claim holds; a post is given at most a third of it
POST_TIMEOUT_S: Final = HOLD_S / 3
STOP_WAIT_S: Final = POST_TIMEOUT_S + 2.0  # at stop, the posts in flight finish within this
BACKOFF_FIRST_S: Final = 0.5
BACKOFF_MAX_S: Final = 180.0
ELSEWHERE_S: Final = 30.0  # a row for a destination this replica has no URL for waits this long for another
# answers that will not change by sending again: the row is failed, for an operator to resend
PERMANENT: Final = frozenset({400, 401, 403, 404, 410, 422})
IDLE_S: Final = 0.2  # the sender's pause when nothing is due
REFUSALS_MAX: Final = 4096  # refused budgets noted between two scans; more are dropped (logged)
SEEN_MAX: Final = 100_000  # dedupe keys this replica knows are in the outbox; forgotten past it
PENDING_EVERY_S: Final = 2.0  # the pending gauge is read at most this often

Outcome = Literal["sent", "retry", "failed", "elsewhere"]
# what a destination did last, logged when it changes: answering, failing (retried), refusing (failed)
State = Literal["ok", "failing", "refusing"]
_STATE: Final[dict[Outcome, State]] = {"sent": "ok", "retry": "failing", "failed": "refusing"}


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
        self.destinations: Mapping[str, Secret] = alerting.destinations if alerting is not None else {}
        self.outbox = AlertOutbox(engine)
        self._engine = engine
        self._session = session
        self._metrics = metrics
        self._token = uuid.uuid4().hex  # this replica's claims
        self._refused: dict[str, None] = {}  # budget counters refused since the last scan
        self._dropped = 0
        self._seen: set[str] = set()  # dedupe keys known to be in the outbox
        self._stopping = asyncio.Event()
        self._state: dict[str, State] = {}  # per destination; absent: not posted to yet
        self._pending_at = float("-inf")
        self.scans = 0  # completed scans (tests wait for one)

    @property
    def enabled(self) -> bool:
        return bool(self.destinations)

    # the request path
    def budget_refused(self, counter: str, *, used: int, amount: int, limit: int) -> None:
        """A request was refused because the budget counted by `counter` (`scope:id:budget:period`)
        could not pay for it: spent `used`, asked `amount`, of `limit` (money units). When it would
        not fit even with nothing in flight (`used + amount > limit`) the budget is broken: noted for
        the next scan, no I/O here. Refused only for requests in flight, it is not (yet) a crossing."""
        if used + amount <= limit:
            return
        self._remember(counter)

    def _remember(self, counter: str) -> None:
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
        """Scans and sends until stopped or cancelled; then scans once more, so the refusals noted
        last are queued, and releases the claims it still holds."""
        if not self.enabled:
            return
        assert self.alerting is not None
        async with asyncio.TaskGroup() as group:
            group.create_task(self._loop(self.scan, self.alerting.scan_interval_s, "scan"))
            group.create_task(self._loop(self.send_round, IDLE_S, "send", busy=True))
        await self.finish()

    def stop(self) -> None:
        """The loops end after the step they are in (a post in flight is answered and marked)."""
        self._stopping.set()

    async def finish(self) -> None:
        """The last scan, and this replica's unsent claims released (claimed_until NULL), so another
        replica sends them at once instead of after the claim runs out. Never raises."""
        try:
            await self.scan()
        except Exception as e:
            log.warning("alert scan at stop failed (%s)", e.__class__.__name__)
        try:
            await self.outbox.release(self._token)
        except Exception as e:
            log.warning("releasing alert claims at stop failed (%s); they run out by themselves", e.__class__.__name__)

    async def _loop(self, step: Callable[[], Awaitable[int]], pause_s: float, what: str, busy: bool = False) -> None:
        while not self._stopping.is_set():
            try:
                done = await step()
                pause = 0.0 if busy and done else pause_s
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("alert %s failed (%s); retrying", what, e.__class__.__name__)
                pause = 1.0
            if pause:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), pause)

    async def scan(self) -> int:
        """One pass: entities past a threshold, and budgets refused since the last pass. Returns
        how many outbox rows were new."""
        assert self.alerting is not None
        refused, self._refused = self._refused, {}
        try:
            return await self._scan(refused)
        except BaseException:
            for counter in refused:  # noted again for the next scan: a database hiccup loses no crossing
                self._remember(counter)
            raise

    async def _scan(self, refused: Mapping[str, None]) -> int:
        assert self.alerting is not None
        if self._dropped:
            log.warning("alert scan: %d refused budgets were not noted (more than %d)", self._dropped, REFUSALS_MAX)
            self._dropped = 0
        found: list[Alert] = []
        lowest = self.alerting.thresholds[0] if self.alerting.thresholds else 1.0
        now = datetime.now(UTC)
        async with self._engine.connect() as conn:
            for scope in ENTITIES:
                spend, max_budget, soft = (_money(scope, n) for n in ("spend", "max_budget", "soft_budget"))
                crossed = sa.or_(
                    sa.and_(max_budget.is_not(None), spend >= max_budget * sa.literal(lowest, sa.Float)),
                    sa.and_(soft.is_not(None), spend >= soft),
                )
                for row in (await conn.execute(_select(scope).where(crossed, _current(scope, now)))).mappings():
                    found += self._crossings(scope, row, forced=False)
            for counter in refused:
                parsed = _parse_counter(counter)
                if parsed is None:
                    continue
                scope, ident = parsed
                query = _select(scope).where(_ident(scope) == ident, _current(scope, now))
                row = (await conn.execute(query)).mappings().first()
                if row is not None:
                    found += self._crossings(scope, row, forced=True)
        new = await self._insert(found)
        self.scans += 1
        return new

    def _crossings(self, scope: Scope, row: Mapping[str, Any], *, forced: bool) -> list[Alert]:
        """The alerts `row` has crossed: a threshold of its max budget, its max budget (or a request
        it refused: `forced`), its soft budget. The dedupe key carries the budget (money units), so
        a raised or lowered budget alerts again when it is crossed."""
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
            units = row["max_units"]
            for t in self.alerting.thresholds:
                if spend >= max_budget * Decimal(str(t)):
                    events.append(("threshold_crossed", f"{t:g}:{units}", t))
            if forced or spend >= max_budget:
                events.append(("budget_crossed", f"1:{units}", 1.0))
        if soft is not None and spend >= soft:
            events.append(("soft_budget_crossed", f"soft:{row['soft_units']}", 0.0))
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
        claimed = await self.outbox.claim(CLAIM, HOLD_S, self._token)
        if claimed:
            outcomes = await asyncio.gather(*(self._deliver(c) for c in claimed))
            for destination in dict.fromkeys(c.destination for c in claimed):
                await self._note(
                    destination, [o for c, o in zip(claimed, outcomes, strict=True) if c.destination == destination]
                )
        await self._gauge()
        return len(claimed)

    async def _note(self, destination: str, outcomes: list[tuple[Outcome, str]]) -> None:
        """What `destination` did this round: logged when it changed, and when it answers again
        after failing, its rows in backoff go now. A row for another replica's destination says
        nothing of it."""
        said = [(_STATE[o], error) for o, error in outcomes if o != "elsewhere"]
        if not said:
            return
        state, error = next(((s, e) for s, e in said if s != "ok"), said[0])
        was = self._state.get(destination, "ok")
        if state == was:
            return
        self._state[destination] = state
        if state == "ok":
            log.info("alerts to %s are delivered again", destination)
            await self.outbox.wake(destination)
        elif state == "failing":
            log.warning("alerts to %s are not delivered (%s); retried with backoff", destination, error)
        else:
            log.warning("alerts to %s are refused (%s); marked failed, resend them once fixed", destination, error)

    async def _deliver(self, row: Claimed) -> tuple[Outcome, str]:
        secret = self.destinations.get(row.destination)
        if secret is None:  # a destination this replica is not configured for: another replica's
            why = f"{row.destination} is not configured on this replica"
            await self.outbox.retry(row.id, self._token, ELSEWHERE_S, why, attempt=False)
            return "elsewhere", why
        body = dict(row.payload)
        if row.destination == "webhook":
            body["alert_id"] = f"mw-alert-{row.id}"
        status = None
        try:
            async with self._session.post(
                secret.reveal(), json=body, timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT_S), allow_redirects=False
            ) as r:
                status = r.status
                if 200 <= status < 300:
                    await self.outbox.sent(row.id, self._token)
                    if self._metrics is not None:
                        self._metrics.alerts_sent.labels(row.event, row.destination).inc()
                    return "sent", ""
                answer = (await r.text(errors="replace"))[:300]
                error = f"{row.destination} answered HTTP {status}: {answer}"
        except (aiohttp.ClientError, TimeoutError) as e:
            error = f"{row.destination} not reached: {e.__class__.__name__}"
        if status in PERMANENT:
            await self.outbox.failed(row.id, self._token, error)
            if self._metrics is not None:
                self._metrics.alerts_failed.labels(row.event, row.destination).inc()
            return "failed", error
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** min(row.attempts, 16)) * random.uniform(0.5, 1.0)
        await self.outbox.retry(row.id, self._token, delay, error)
        return "retry", error

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


def _current(scope: Scope, now: datetime) -> sa.ColumnElement[bool]:
    """The entity's budget period has not ended: a period that has keeps its spend until the next
    request resets it, and that spend is no crossing of the new period."""
    reset = _TABLES[scope].c.budget_reset_at
    return sa.or_(reset.is_(None), reset > now)


def _select(scope: Scope) -> sa.Select[Any]:
    """An entity's budget and the fields its alert carries, as `ident`, `token`, `user_id`, ...;
    `max_units` and `soft_units` are its budgets as stored (money units), for the dedupe key."""
    t = _TABLES[scope]
    money = [
        t.c.spend,
        t.c.max_budget,
        t.c.soft_budget,
        t.c.budget_reset_at,
        _ident(scope).label("ident"),
        _money(scope, "max_budget").label("max_units"),
        _money(scope, "soft_budget").label("soft_units"),
    ]
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
