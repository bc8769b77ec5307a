"""The limits stage on the request path.

Before the upstream call it reserves the request's share of every limit of its key, user, team
and customer: the tokens and the cost it may use at most (its prompt, estimated from the body,
plus its output cap at the deployment's prices). After the response, whatever happened, it
settles them to what the ledger recorded for the request (the ledger also adds the cost to the
spend of those entities, in the same transaction as the row). Concurrent requests therefore cannot spend past a budget by more than one request's
estimation error, and no path leaves anything reserved.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Protocol

import orjson

from meterway.auth import TTLCache
from meterway.context import RequestContext
from meterway.errors import BudgetExceeded, PermissionDenied, RateLimited
from meterway.ledger import pricing
from meterway.limits import Grant, Limiter, LimitSpec, Refusal
from meterway.providers.base import Api


class RefusalSink(Protocol):
    """Where a refused budget is noted for alerting (`alerts.Alerts`): at once, with no I/O. `used`
    is the budget's spend, `amount` the refused request's most cost and `limit` the budget (money
    units): the sink tells a budget that is broken from one only full of requests in flight."""

    def budget_refused(self, counter: str, *, used: int, amount: int, limit: int) -> None: ...


class LimitsHook:
    def __init__(
        self,
        limiter: Limiter,
        *,
        default_output_tokens: int = 4096,
        clamp_max_tokens: bool = False,
        require_customer_binding: bool = False,
        customers: TTLCache[LimitSpec] | None = None,
        alerts: RefusalSink | None = None,
    ) -> None:
        self.limiter = limiter
        self.default_output_tokens = default_output_tokens
        self.clamp_max_tokens = clamp_max_tokens
        self.require_customer_binding = require_customer_binding
        self.customers = customers  # a customer's id -> its limits (from the store); None: no customer limits
        self.alerts = alerts  # told of each budget refusal (a crossing if it cannot fit alone); None: off

    async def before(self, ctx: RequestContext) -> None:
        p = ctx.principal
        if p is None:
            return
        specs = list(p.limits)
        if ctx.end_user and ctx.user is None and self.require_customer_binding:
            await self._refuse_unbound(ctx.end_user)
        if ctx.user and self.customers is not None:
            customer = await self.customers.get(ctx.user)
            if customer is not None:
                if customer.blocked:
                    raise PermissionDenied(f"Customer '{ctx.user}' is blocked.", param="user", code="customer_blocked")
                specs.append(customer)
        ctx.charged = tuple(specs)
        limited = [s for s in specs if s.limited]
        if not limited:
            return
        now = time.time()
        tokens = cost = 0
        costed = any(s.costed for s in limited)
        for attempt in range(3):  # a clamped request asks again, with its lower cap
            if costed:
                tokens, cost = self._estimate(ctx)
            asks = [a for s in limited for a in s.asks(now, tokens, cost)]
            result = await self.limiter.reserve(asks, ctx.request_id)
            if isinstance(result, Grant):
                ctx.limit_grant = result
                return
            clamped = attempt < 2 and result.ask.kind == "budget" and self.clamp_max_tokens and self._clamp(ctx, result)
            if not clamped:
                if result.ask.kind == "budget" and self.alerts is not None:
                    ask = result.ask
                    self.alerts.budget_refused(ask.counter, used=result.used, amount=ask.amount, limit=ask.limit)
                raise _refused(result)

    async def _refuse_unbound(self, user: str) -> None:
        """With bindings required, an unbound key's `user` charges nobody; naming an existing
        customer is refused outright, so the client learns its key cannot charge that customer."""
        if self.customers is not None and await self.customers.get(user) is not None:
            raise PermissionDenied(
                f"This key is not bound to customer '{user}' and may not charge it: bind the key (or its "
                "team) with customer_id, or send a `user` that is not a customer.",
                param="user",
                code="customer_not_bound",
            )

    async def after(self, ctx: RequestContext) -> None:
        """Settles the reservation to what the ledger recorded (tokens reported or counted, cost)."""
        grant = ctx.limit_grant
        if isinstance(grant, Grant) and grant.unsettled:
            await self.limiter.settle(grant, ctx.tokens_used, ctx.cost_units or 0)

    def _prompt_tokens(self, ctx: RequestContext) -> int:
        if ctx.api in _UPLOADS and ctx.head is not None:
            return -(-ctx.head.units.audio_ms * AUDIO_TOKENS_PER_SECOND // 1000)
        if ctx.head is not None and ctx.head.prompt_tokens is not None:  # an image upload: its prompt, not its bytes
            return ctx.head.prompt_tokens
        return pricing.prompt_tokens_upper_estimate(ctx.body)

    def _output_cap(self, ctx: RequestContext, *, model_max: bool = False) -> int:
        """The most output tokens the request may be billed for: its own cap, else the model's
        known maximum (`model_info` max_output_tokens / max_tokens), bounded for budgets by
        `default_output_tokens`; `model_max`: not bounded (prepaid credits, where the upstream's
        own maximum is what it may really produce). No known maximum: `default_output_tokens`."""
        if ctx.api in _NO_OUTPUT:
            return 0
        if ctx.head is not None and ctx.head.max_tokens is not None:
            return ctx.head.max_tokens
        info = ctx.deployment.model_info if ctx.deployment is not None else {}
        cap = info.get("max_output_tokens") or info.get("max_tokens")
        if not isinstance(cap, int) or isinstance(cap, bool) or cap <= 0:
            return self.default_output_tokens
        return cap if model_max else min(cap, self.default_output_tokens)

    def most(self, ctx: RequestContext, *, prepaid: bool = False) -> tuple[int, int, int]:
        """The request's most expensive outcome: its prompt tokens, its output cap and their cost
        (money units), as a budget reserves them. `prepaid`: a request naming no cap is taken at
        the model's known maximum output, not at `default_output_tokens` (a wallet must not pay
        for more than one request beyond its balance)."""
        prompt = self._prompt_tokens(ctx)
        output = self._output_cap(ctx, model_max=prepaid)
        if ctx.deployment is None:
            return prompt, output, 0
        most = ctx.head.units if ctx.head is not None else None
        return prompt, output, pricing.units(pricing.estimate(ctx.deployment.prices, prompt, output, most))

    def _estimate(self, ctx: RequestContext) -> tuple[int, int]:
        """The most tokens and cost (money units) the request may use: its units (a rerank's search
        units, counted from its documents by its head) at their prices beside its tokens."""
        prompt = self._prompt_tokens(ctx)
        output = self._output_cap(ctx)
        if ctx.deployment is None:
            return prompt + output, 0
        most = ctx.head.units if ctx.head is not None else None
        return prompt + output, pricing.units(pricing.estimate(ctx.deployment.prices, prompt, output, most))

    def _clamp(self, ctx: RequestContext, refusal: Refusal) -> bool:
        """Lowers the request's output cap to what the refusing budget can still pay for; False
        when even one output token would not fit (then the request is refused)."""
        if ctx.deployment is None or ctx.api in _NO_OUTPUT or ctx.api in _NO_CAP or ctx.head is None:
            return False
        prices = ctx.deployment.prices
        out_price = pricing.units_exact(prices.output_per_token)
        left = refusal.ask.limit - refusal.used - refusal.reserved
        prompt_cost = pricing.units(pricing.estimate(prices, self._prompt_tokens(ctx), 0))
        if out_price <= 0 or left - prompt_cost <= 0:
            return False
        affordable = math.floor((left - prompt_cost) / out_price)
        if affordable < 1 or affordable >= self._output_cap(ctx):
            return False
        body = orjson.loads(ctx.body)
        field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        body[field] = affordable
        ctx.body = orjson.dumps(body)
        ctx.head = replace(ctx.head, max_tokens=affordable)
        return True


# no output tokens to cap or reserve; speech: billed per input character, its audio is no tokens
_NO_OUTPUT = frozenset({Api.EMBEDDINGS, Api.RERANK, Api.MODERATIONS, Api.SPEECH})
# output tokens reserved (an image's most) but no cap the upstream takes: never clamped, refused
_NO_CAP = frozenset({Api.IMAGES, Api.IMAGE_EDITS, Api.IMAGE_VARIATIONS})
# An audio upload's prompt, where a model bills it in tokens (gpt-4o-transcribe): at most this many
# a second of its most audio (OpenAI counts about 10), not its bytes, which would reserve thousands of times more.
AUDIO_TOKENS_PER_SECOND = 25
_UPLOADS = frozenset({Api.TRANSCRIPTIONS, Api.TRANSLATIONS})


def _refused(refusal: Refusal) -> Exception:
    ask = refusal.ask
    if ask.kind == "budget":
        message = f"Budget exceeded: {ask.name} is {pricing.usd(ask.limit)} USD, spent {pricing.usd(refusal.used)} USD"
        if refusal.reserved:
            message += f" ({pricing.usd(refusal.reserved)} USD reserved by requests in flight)"
        if refusal.used < ask.limit:
            message += f"; this request may cost up to {pricing.usd(ask.amount)} USD (lower max_tokens to fit)"
        if ask.expires is not None:
            message += f". The budget resets at {datetime.fromtimestamp(ask.expires, UTC).isoformat()}"
        return BudgetExceeded(message + ".")
    retry = refusal.retry_after or 1.0
    if ask.kind == "tpm":
        unit, text = "tokens", f"{ask.limit} tokens per minute, {refusal.used} used"
    else:
        unit = "requests"
        text = f"{ask.limit} {'requests per minute' if ask.kind == 'rpm' else 'requests in flight'}"
    return RateLimited(
        f"Rate limit reached: {ask.name} is {text}. Retry in {retry:.1f}s.",
        retry_after=retry,
        code="rate_limit_exceeded",
        limit=ask.kind,
        headers=(
            (f"x-ratelimit-limit-{unit}", str(ask.limit)),
            (f"x-ratelimit-remaining-{unit}", "0"),
            (f"x-ratelimit-reset-{unit}", f"{retry:.3f}s"),
        ),
    )
