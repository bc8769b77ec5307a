"""The prepaid stage on the request path (installed when `billing.prepaid` is not off, after the
limits stage): a request of an entity with usable Lago wallets reserves the Lago price of its
most expensive outcome against the entity's funded credits, through the same limiter as budgets
(one atomic reserve across replicas), and settles to the Lago price of what it used.

    Ask(counter="prepaid:<Lago customer>:<period start>", limit=funded = B + min(U_L, ΣP_R),
        floor=ΣP_R, amount=<price of the most expensive outcome, at least 0>)

(ΣP_R: over every entity charged through that Lago customer, `Prepaid.pool`.)

The counter's spend starts at P_R (the Lago price of the period's rows at the reading) and grows
by what requests settle; so available = funded - spend - reserved, and the overdraft across
replicas is bounded by one request's estimation error (docs/billing.md, "Prepaid credits").
Entities whose Lago customer never had a wallet are never asked for anything; one whose wallets
are all spent, expired or terminated is held to what is left (nothing: 402). Every entity charged
through one Lago customer shares one counter (`Prepaid.pool`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from meterway.billing.prepaid import Pool, Prepaid, Priced, money, pool_of
from meterway.context import RequestContext
from meterway.errors import CreditsUnknown, InsufficientCredits
from meterway.ledger import pricing
from meterway.limits import Ask, Grant, Limiter
from meterway.limits.hook import LimitsHook
from meterway.providers.base import Units
from meterway.telemetry.metrics import Metrics

log = logging.getLogger("meterway.prepaid")

NAME = "prepaid credits"
ALERTS_IN_FLIGHT = 64  # credits alerts handed to the sink and not yet done, at most


@dataclass(frozen=True, slots=True)
class Held:
    """What the prepaid stage reserved for a request, to settle after it."""

    priced: Priced
    grant: Grant
    charged_as: str


def charged_entity(ctx: RequestContext, charge_by: str) -> str | None:
    """The entity the request is charged to in Lago, as the ledger row will name it."""
    p = ctx.principal
    if charge_by == "customer":
        return ctx.user
    if p is None:
        return None
    if charge_by == "user":
        return p.user_id
    if charge_by == "team":
        return p.team_id
    return p.key_id


def request_row(
    ctx: RequestContext,
    *,
    prompt: int,
    completion: int,
    cost_units: int,
    units: Units | None = None,
    cached: int = 0,
    cache_write: int = 0,
    reasoning: int = 0,
) -> dict[str, Any]:
    """A request as the ledger row it makes (or may make): what `billing.events` reads."""
    p = ctx.principal
    dep = ctx.deployment
    head = ctx.head
    return {
        "uid": ctx.ledger_uid or ctx.request_id,
        "ended_at": datetime.now(UTC),
        "model_group": ctx.model_group,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cached_tokens": cached,
        "cache_write_tokens": cache_write,
        "reasoning_tokens": reasoning,
        "cost": pricing.usd(cost_units),
        "customer_id": ctx.user,
        "end_user": ctx.end_user if ctx.end_user != ctx.user else None,
        "user_id": p.user_id if p is not None else None,
        "team_id": p.team_id if p is not None else None,
        "key_alias": p.key_alias if p is not None else None,
        "tags": head.tags if head is not None else (),
        "deployment_id": dep.id if dep is not None else None,
        "upstream_model": dep.upstream_model if dep is not None else None,
        "endpoint": ctx.api.value,
        "request_id": ctx.request_id,
        "queries": units.queries if units is not None else 0,
        "images": units.images if units is not None else 0,
        "audio_ms": units.audio_ms if units is not None else 0,
        "characters": units.characters if units is not None else 0,
        "metadata": dict(head.metadata) if head is not None and head.metadata is not None else {},
    }


class PrepaidHook:
    def __init__(self, prepaid: Prepaid, limiter: Limiter, limits: LimitsHook, metrics: Metrics) -> None:
        self.prepaid = prepaid
        self.limiter = limiter
        self.limits = limits
        self.metrics = metrics
        config = prepaid.config
        self.enforce = config.mode == "enforce"
        self.closed = config.when_stale == "closed"
        self.low = pricing.units(config.low_balance) if config.low_balance is not None else None
        self.charge_by = prepaid.billing.charge_by
        self._refused = {mode: metrics.prepaid_refusals.labels(mode) for mode in ("enforce", "observe")}
        self._alerting: set[asyncio.Task[None]] = set()  # alerts on their way to the sink

    async def before(self, ctx: RequestContext) -> None:
        entity = charged_entity(ctx, self.charge_by)
        if not entity:
            return
        try:
            priced = await self.prepaid.current(entity)
        except Exception as e:  # the store is away: no reading to go by, as when Lago is
            log.warning("prepaid: reading of %s not loaded: %s", entity, e.__class__.__name__)
            priced = None
        if priced is None:  # never read: Lago did not answer the first reading in time
            self._unknown(entity, None)
            return
        reading = priced.reading
        if not reading.has_wallets:
            return
        stale = self.prepaid.stale(reading)
        if stale:
            self._unknown(entity, reading.read_at)
        prompt, output, cost = self.limits.most(ctx, prepaid=True)
        most = ctx.head.units if ctx.head is not None else None
        # a volume tier can make a request's margin negative (crossing to a cheaper tier): a
        # reservation or a settled price below zero would give back other requests' holds
        amount = max(
            self.prepaid.price_of(
                priced, request_row(ctx, prompt=prompt, completion=output, cost_units=cost, units=most)
            ),
            0,
        )
        try:
            pool = await self.prepaid.pool(reading)  # every entity of the Lago customer: one counter
        except Exception as e:  # the store is away: the same counter, with this entity's own floor
            log.warning("prepaid: entities sharing %s not read: %s", reading.lago_customer_id, e.__class__.__name__)
            pool = pool_of([reading])
        end = reading.period_end
        ask = Ask(
            pool.counter,
            pool.funded,
            "budget",
            NAME,
            amount,
            floor=pool.floor,
            expires=end.timestamp() if end is not None else None,
            exact=True,
        )
        result = await self.limiter.reserve([ask], ctx.request_id)
        if isinstance(result, Grant):
            ctx.prepaid_grant = Held(priced, result, self.charge_by)
            left = result.remaining.get(NAME, 0)
            self.metrics.prepaid_seen(entity, float(pricing.usd(left)))
            if self.low is not None and left < self.low:
                self._alert("credits_low", priced, left, pool)
            return
        available = ask.limit - result.used - result.reserved
        self.metrics.prepaid_seen(entity, float(pricing.usd(max(available, 0))))
        self._alert("credits_exhausted", priced, available, pool)
        if not self.enforce or stale:
            self._refused["observe"].inc()
            return
        self._refused["enforce"].inc()
        currency = reading.currency or ""
        reserved = f" ({money(result.reserved)} {currency} held by requests in flight)" if result.reserved else ""
        raise InsufficientCredits(
            f"Insufficient prepaid credits: {self.charge_by} '{entity}' has {money(max(available, 0))} {currency} "
            f"available{reserved}, and this request may cost up to {money(amount)} {currency}. "
            "Top up the wallet in Lago (or lower max_tokens) to continue."
        )

    def _alert(self, event: str, priced: Priced, available: int, pool: Pool) -> None:
        """Hands the alert to the sink in the background: the request does not wait for the
        outbox, and a cancelled request cannot skip its settle for it. At most ALERTS_IN_FLIGHT
        at once; past that one is dropped (logged), and the next request asks again."""
        if len(self._alerting) >= ALERTS_IN_FLIGHT:
            log.warning(
                "prepaid: %s alert for %s dropped (%d in flight)", event, priced.reading.entity_id, ALERTS_IN_FLIGHT
            )
            return
        task = asyncio.get_running_loop().create_task(self.prepaid.warn(event, self.charge_by, priced, available, pool))
        self._alerting.add(task)
        task.add_done_callback(self._alerting.discard)

    def _unknown(self, entity: str, read_at: datetime | None) -> None:
        """No reading fresh enough: `when_stale` decides (closed refuses, open serves)."""
        if not self.closed:
            return
        since = f"since {read_at.isoformat()}" if read_at is not None else "yet"
        raise CreditsUnknown(
            f"The prepaid balance of {self.charge_by} '{entity}' could not be read from Lago {since}; retry shortly."
        )

    async def after(self, ctx: RequestContext) -> None:
        """Settles the reservation to the Lago price of what the ledger recorded."""
        held = ctx.prepaid_grant
        if not isinstance(held, Held):
            return
        ctx.prepaid_grant = None
        # settled whatever happens below: a price that cannot be computed settles at the reserved
        # most (never less than the request may have cost), and never leaves the hold in Redis
        price = max(held.grant.asks[0].amount, 0) if held.grant.asks else 0
        try:
            price = self._price(ctx, held)
        finally:
            await self.limiter.settle(held.grant, 0, max(price, 0))

    def _price(self, ctx: RequestContext, held: Held) -> int:
        """The Lago price of what the ledger recorded for the request (0 when the ledger does not
        export its row: nothing used, or not served)."""
        used = ctx.counted
        if not ctx.billable or used is None:
            return 0
        row = request_row(
            ctx,
            prompt=max(used.prompt_tokens, 0),
            completion=max(used.completion_tokens, 0),
            cost_units=ctx.cost_units or 0,
            units=Units(
                queries=max(used.queries, 0),
                images=max(used.images, 0),
                audio_ms=max(used.audio_ms, 0),
                characters=max(used.characters, 0),
            ),
            cached=max(used.cached_tokens, 0),
            cache_write=max(used.cache_write_tokens, 0),
            reasoning=max(used.reasoning_tokens, 0),
        )
        return self.prepaid.settled(held.priced, row)
