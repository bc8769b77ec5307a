"""The sender: pending exports to Lago's batch endpoint, exactly once.

Each round claims up to 500 due rows, turns them into events (parking the rows that name nobody
to charge, or a subscription Lago does not have active: Lago would accept their events and never
bill them), posts them as batches of at most 100 events at once (a row's events always in one
batch) and marks the delivered rows sent in one statement. Two rounds run at once. Lago's answers,
as the contract describes them:

- 200: every event is stored; the rows are sent.
- 422 listing indexes: nothing of the batch was stored. An index whose `transaction_id` already
  exists was delivered before (a lost answer): its row counts as sent. An index with any other
  error is invalid: its row is parked with Lago's answer. Every other event is resent at once,
  without its bad neighbours.
- anything else (5xx, 429, a timeout, a dropped connection, 401/403/404): the rows stay pending
  and are tried again after an exponential backoff with jitter, for as long as it takes.

A claim lasts `billing.claim_timeout_s`; the round's calls to Lago share half of it. So Lago's
answer to a batch can only come while its rows are still claimed: no other sender can take and
resend them meanwhile, and rows are marked sent only on that answer.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from meterway.billing.events import CHARGED, Parked, events_for, subscription_for
from meterway.config.billing import Billing
from meterway.store.outbox import REPROCESSED, OutboxStore

if TYPE_CHECKING:
    from meterway.telemetry.metrics import Metrics

log = logging.getLogger("meterway.billing")

BATCH = 100  # Lago's default LAGO_EVENTS_BATCH_MAX_LENGTH
LAGO_TIMEOUT_S = 30.0  # one call to Lago, at most (less when the claim has less left)
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 60.0
DUPLICATE = {"transaction_id": ["value_already_exist"]}
SUBSCRIPTIONS_TTL_S = 30.0
MAPPING_TTL_S = 5.0  # a new billing_external_subscription_id is used within this long
# the park reason's hint: short, since the UI's "Reprocess these" sends the reason back as a filter
NOT_LISTED = "(create it in Lago, or set billing_external_subscription_id; then reprocess)"
CLAIM = 500  # rows per round: sent as batches of BATCH events at once, then marked sent together
LANES = 2  # rounds in flight: one waits on the database while the other waits on Lago


class Sender:
    def __init__(
        self, billing: Billing, outbox: OutboxStore, session: aiohttp.ClientSession, metrics: Metrics | None = None
    ) -> None:
        self.metrics = metrics
        self.billing = billing
        self.outbox = outbox
        self.session = session
        self.url = billing.api_base + "/api/v1/events/batch"
        self.delivered = 0  # events Lago stored (or already had)
        self.duplicates = 0  # of those, events Lago already had: an earlier answer was lost
        self.parked = 0
        self.failures = 0
        self._failing = False  # the last batch was not taken: rows wait in backoff
        self._stopping = False
        self._active: set[str] = set()  # subscriptions Lago has active, as last listed
        self._listed_at = float("-inf")
        self._mapping: Mapping[str, str] = {}  # charged entity -> its own Lago subscription id
        self._mapped_at = float("-inf")

    async def _subscriptions(self, deadline: float, ttl: float = SUBSCRIPTIONS_TTL_S) -> set[str] | None:
        """Lago's active subscription ids, listed at most every `ttl` seconds (None: Lago did not
        answer; the rows then wait rather than be parked for Lago's outage)."""
        now = time.monotonic()
        if now - self._listed_at < ttl:
            return self._active
        found = await active_subscriptions(self.billing, self.session, _timeout(deadline))
        if found is not None:
            self._active, self._listed_at = found, now
        return found

    def forget_subscriptions(self) -> None:
        """The next round lists them again (after a reprocess: the mapping may have changed)."""
        self._listed_at = float("-inf")
        self._mapped_at = float("-inf")

    async def run(self, idle_s: float = 0.2, lanes: int = LANES) -> None:
        """Sends until cancelled, `lanes` batches in flight at once (each lane claims its own rows,
        so none is sent by two); a lane waits `idle_s` when nothing is due."""
        async with asyncio.TaskGroup() as group:
            for _ in range(lanes):
                group.create_task(self._lane(idle_s))

    def stop(self) -> None:
        """Lanes finish the round they are in (its rows marked sent or put back), then return."""
        self._stopping = True

    async def _lane(self, idle_s: float) -> None:
        while not self._stopping:
            try:
                if await self.round() == 0:
                    await asyncio.sleep(idle_s)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("billing sender round failed; retrying")
                await asyncio.sleep(1.0)

    async def round(self) -> int:
        hold = self.billing.claim_timeout_s
        deadline = time.monotonic() + hold / 2  # every answer from Lago comes while the claim holds
        rows = await self.outbox.claim(CLAIM, hold)
        if not rows:
            return 0
        mapped = await self._mapped()
        active = await self._subscriptions(deadline)
        if active is None:  # Lago is not answering: try again later, park nothing for it
            await self.outbox.retry([r["uid"] for r in rows], BACKOFF_FIRST_S * 4, "Lago did not list subscriptions")
            return len(rows)
        charged = [subscription_for(row, self.billing, mapped) for row in rows]
        if any(
            not isinstance(sub, Parked) and sub not in active and row.get("export_reason") == REPROCESSED
            for row, sub in zip(rows, charged, strict=True)
        ):
            # a reprocessed row is never parked again on a cached listing: the subscription its
            # operator created in Lago a moment ago must be seen, whichever process reprocessed it
            again = await self._subscriptions(deadline, 0.0)
            active = active if again is None else again
        groups: list[list[tuple[str, dict[str, Any]]]] = []  # each row's events: (row uid, event)
        for row, sub in zip(rows, charged, strict=True):
            if not isinstance(sub, Parked) and sub not in active:
                # Lago would answer 200 and never bill it (contract section 4)
                sub = Parked(f"no active Lago subscription '{sub}' {NOT_LISTED}")
            if isinstance(sub, Parked):
                await self.outbox.park(row["uid"], sub.reason)
                self._count("parked", 1)
                continue
            groups.append([(row["uid"], e) for e in events_for(row, sub, self.billing)])
        outcomes = await asyncio.gather(*(self._send(batch, deadline) for batch in _pack(groups)))
        sent = sorted({uid for done, _, _ in outcomes for uid in done})
        await self.outbox.sent(sent)
        if sent and self._failing:  # Lago is back: rows waiting out a backoff go now, not in a minute
            self._failing = False
            await self.outbox.wake()
        retry = sorted({uid for _, again, _ in outcomes for uid in again})
        if retry:
            attempts = max((r.get("export_attempts", 0) for r in rows), default=0)
            delay = min(BACKOFF_FIRST_S * 2**attempts, BACKOFF_MAX_S) * random.uniform(0.5, 1.0)
            reason = next(why for _, again, why in outcomes if again)
            await self.outbox.retry(retry, delay, reason)
            log.warning("billing: %d rows not delivered (%s); retry in %.1fs", len(retry), reason, delay)
        return len(rows)

    async def _send(
        self, events: list[tuple[str, dict[str, Any]]], deadline: float
    ) -> tuple[list[str], list[str], str]:
        """One batch: the rows Lago now has (to mark sent), the rows to try again later and why.
        Invalid rows are parked here."""
        pending = events
        done: set[str] = set()
        for _ in range(3):  # a split batch is resent at once, at most twice more
            if not pending:
                return sorted(done), [], ""
            status, body = await self._post([e for _, e in pending], deadline)
            if status == 200:
                self._count("delivered", len(pending))
                return sorted(done | {uid for uid, _ in pending}), [], ""
            details = body.get("error_details") if isinstance(body, dict) else None
            if status != 422 or not isinstance(details, dict) or not all(k.isdigit() for k in details):
                self._count("failures", 1)
                self._failing = True
                return sorted(done), sorted({uid for uid, _ in pending}), f"Lago answered {status or 'nothing'}"
            bad: dict[str, Any] = {}
            duplicate: set[int] = set()
            for index, errors in details.items():
                uid = pending[int(index)][0]
                if errors == DUPLICATE:
                    duplicate.add(int(index))
                else:
                    bad[uid] = errors
            for uid, errors in bad.items():
                await self.outbox.park(
                    uid, "Lago rejected the event as invalid", {"status": 422, "error_details": errors}
                )
                self._count("parked", 1)
            self._count("delivered", len(duplicate))
            self.duplicates += len(duplicate)
            kept = [(uid, e) for i, (uid, e) in enumerate(pending) if i not in duplicate and uid not in bad]
            done |= {uid for i, (uid, _) in enumerate(pending) if i in duplicate} - {uid for uid, _ in kept} - set(bad)
            pending = kept
        return sorted(done), sorted({uid for uid, _ in pending}), "batch split too often"

    async def _mapped(self) -> Mapping[str, str]:
        """Entities with their own Lago subscription id, read at most every MAPPING_TTL_S."""
        now = time.monotonic()
        if now - self._mapped_at >= MAPPING_TTL_S:
            self._mapping = await self.outbox.mapped(self.billing.charge_by)
            self._mapped_at = now
        return self._mapping

    def _count(self, what: str, n: int) -> None:
        """This sender's own totals (shown by /billing/status) and the metrics."""
        setattr(self, what, getattr(self, what) + n)
        if self.metrics is not None and n:
            counter = {
                "delivered": self.metrics.billing_delivered,
                "parked": self.metrics.billing_parked,
                "failures": self.metrics.billing_failures,
            }[what]
            counter.inc(n)

    async def _post(self, events: list[dict[str, Any]], deadline: float) -> tuple[int, Any]:
        """Lago's status and parsed body; status 0 when there was no answer (in time)."""
        if deadline <= time.monotonic():
            return 0, None  # the claim is running out: no new call whose answer could come too late
        headers = {"Authorization": f"Bearer {self.billing.api_key.reveal()}", "Content-Type": "application/json"}
        try:
            async with self.session.post(
                self.url,
                data=orjson.dumps({"events": events}),
                headers=headers,
                timeout=_timeout(deadline),
            ) as resp:
                raw = await resp.read()
                try:
                    return resp.status, orjson.loads(raw) if raw else None
                except orjson.JSONDecodeError:
                    return resp.status, None
        except (aiohttp.ClientError, TimeoutError) as e:
            log.warning("billing: no answer from Lago (%s)", e.__class__.__name__)
            return 0, None


async def active_subscriptions(
    billing: Billing, session: aiohttp.ClientSession, within: aiohttp.ClientTimeout
) -> set[str] | None:
    """The ids of every subscription Lago lists as active (None: Lago did not answer)."""
    headers = {"Authorization": f"Bearer {billing.api_key.reveal()}"}
    found: set[str] = set()
    page = 1
    try:
        while page:
            async with session.get(
                billing.api_base + "/api/v1/subscriptions",
                params={"page": str(page), "per_page": "100", "status[]": "active"},
                headers=headers,
                timeout=within,
            ) as resp:
                if resp.status != 200:
                    return None
                body = await resp.json()
            found.update(str(sub["external_id"]) for sub in body.get("subscriptions", []))
            page = (body.get("meta") or {}).get("next_page") or 0
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    return found


async def parks_again(
    billing: Billing, session: aiohttp.ClientSession, groups: Mapping[str | None, int], mapped: Mapping[str, str]
) -> dict[str, int] | None:
    """What a sender would park of the rows just reprocessed (`groups`: how many each charged
    entity has), by reason, asking Lago now: so the operator learns at once that a fix did not
    take, and why (None: Lago did not answer)."""
    active = await active_subscriptions(billing, session, aiohttp.ClientTimeout(total=LAGO_TIMEOUT_S))
    if active is None:
        return None
    reasons: dict[str, int] = {}
    for entity, n in groups.items():
        sub = subscription_for({CHARGED[billing.charge_by]: entity}, billing, mapped)
        if not isinstance(sub, Parked) and sub not in active:
            sub = Parked(f"no active Lago subscription '{sub}' {NOT_LISTED}")
        if isinstance(sub, Parked):
            reasons[sub.reason] = reasons.get(sub.reason, 0) + n
    return reasons


def _timeout(deadline: float) -> aiohttp.ClientTimeout:
    """What is left of the round's time for Lago, at most LAGO_TIMEOUT_S."""
    return aiohttp.ClientTimeout(total=max(min(LAGO_TIMEOUT_S, deadline - time.monotonic()), 0.001))


def _pack(groups: list[list[tuple[str, dict[str, Any]]]]) -> list[list[tuple[str, dict[str, Any]]]]:
    """Batches of at most BATCH events, a row's events (one per token type) kept in one batch so a
    row is sent only when all of them are."""
    batches: list[list[tuple[str, dict[str, Any]]]] = []
    current: list[tuple[str, dict[str, Any]]] = []
    for group in groups:
        if current and len(current) + len(group) > BATCH:
            batches.append(current)
            current = []
        current += group
    if current:
        batches.append(current)
    return batches
