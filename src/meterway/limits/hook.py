"""The limits stage on the request path: takes the request's units before the upstream call,
gives back its parallel slots after the response, whatever happened."""

from __future__ import annotations

from meterway.auth import TTLCache
from meterway.context import RequestContext
from meterway.errors import RateLimited
from meterway.limits import Grant, Limiter, LimitSpec, Refusal


class LimitsHook:
    def __init__(self, limiter: Limiter, customers: TTLCache[LimitSpec] | None = None) -> None:
        self.limiter = limiter
        self.customers = customers  # the request's `user` -> that customer's limits, once the store is open

    async def before(self, ctx: RequestContext) -> None:
        p = ctx.principal
        if p is None:
            return
        asks = [ask for spec in p.limits for ask in spec.asks()]
        if ctx.user and self.customers is not None:
            customer = await self.customers.get(ctx.user)
            if customer is not None:
                asks += customer.asks()
        if not asks:
            return
        result = await self.limiter.reserve(asks, ctx.request_id)
        if isinstance(result, Refusal):
            ask = result.ask
            what = "requests per minute" if ask.kind == "rpm" else "requests in flight"
            raise RateLimited(
                f"Rate limit reached: {ask.name} is {ask.limit} {what}. Retry in {result.retry_after:.1f}s.",
                retry_after=result.retry_after,
                code="rate_limit_exceeded",
                headers=(
                    ("x-ratelimit-limit-requests", str(ask.limit)),
                    ("x-ratelimit-remaining-requests", "0"),
                    ("x-ratelimit-reset-requests", f"{result.retry_after:.3f}s"),
                ),
            )
        ctx.limit_grant = result

    async def after(self, ctx: RequestContext) -> None:
        grant = ctx.limit_grant
        if isinstance(grant, Grant) and grant.parallel:
            await self.limiter.release(grant)
