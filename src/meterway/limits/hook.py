"""The limits stage on the request path: takes the request's units before the upstream call,
gives back its parallel slots after the response, whatever happened."""

from __future__ import annotations

from meterway.context import RequestContext
from meterway.errors import RateLimited
from meterway.limits import Ask, Grant, Limiter, Refusal


class LimitsHook:
    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter

    async def before(self, ctx: RequestContext) -> None:
        p = ctx.principal
        if p is None or (p.rpm_limit is None and p.max_parallel_requests is None):
            return
        asks: list[Ask] = []
        if p.rpm_limit is not None:
            asks.append(Ask(f"key:{p.key_id}:rpm", p.rpm_limit, "rpm", "rpm_limit"))
        if p.max_parallel_requests is not None:
            asks.append(Ask(f"key:{p.key_id}:parallel", p.max_parallel_requests, "parallel", "max_parallel_requests"))
        result = await self.limiter.reserve(asks, ctx.request_id)
        if isinstance(result, Refusal):
            ask = result.ask
            what = "requests per minute" if ask.kind == "rpm" else "requests in flight"
            raise RateLimited(
                f"Rate limit reached for this key: {ask.name} is {ask.limit} {what}. "
                f"Retry in {result.retry_after:.1f}s.",
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
