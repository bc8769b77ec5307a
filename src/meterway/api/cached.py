"""The response cache on the request path: the look-up before the upstream call, a hit served
(metered like any other request, after the same limits), and an answer stored once the client
has it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from meterway.api.relay import answer, deliver, end_stream
from meterway.cache import Entry as CacheEntry
from meterway.cache import control as cache_control_of
from meterway.cache import events as cache_events
from meterway.ledger import usage_checks
from meterway.ledger.tokens import DeliveredStream
from meterway.providers.base import Parsed

if TYPE_CHECKING:
    from meterway.api.asgi import Responder
    from meterway.cache import ResponseCache
    from meterway.context import Hook, RequestContext
    from meterway.providers.base import Api
    from meterway.routing import Group
    from meterway.services import Services

log = logging.getLogger("meterway.proxy")


async def look_up(
    cache: ResponseCache, api: Api, model: str, body: bytes, cache_control: bytes | None
) -> tuple[str | None, float | None, CacheEntry | None]:
    """The key to store the answer under (None: not stored), its time to live, and a hit."""
    asked = cache_control_of(body, cache_control)
    if not (asked.read or asked.write):
        return None, None, None
    key = cache.key(api, model, body)
    if key is None:
        return None, None, None
    hit = None
    if asked.read:
        try:
            hit = await cache.get(key)
        except Exception as e:  # the cache is an optimisation: without it the request goes upstream
            log.warning("response cache unreadable (%s); answering from upstream", e.__class__.__name__)
    return (key if asked.write else None), asked.ttl_s, hit


async def serve_hit(
    services: Services, ctx: RequestContext, group: Group, hit: CacheEntry, responder: Responder, ran: list[Hook]
) -> None:
    """A cached answer, metered like any other (the ledger marks it a hit, priced as configured),
    after the same limits; a stream is replayed event by event, its last one after the commit."""
    router = services.router
    deployment = router.deployment(hit.deployment_id) or group.deployments[0]
    ctx.deployment = deployment
    for hook in services.hooks:
        await hook.before(ctx)
        ran.append(hook)
    ctx.cache_hit, ctx.attempts, ctx.usage = True, 0, hit.usage  # only once the limits let it through
    responder.cache = b"hit"
    responder.extra = router.headers(deployment, 0)
    if not hit.stream:
        ctx.answer = hit.body
        return await answer(services, ctx, Parsed(hit.body, hit.usage, hit.content_type), responder)
    parts = cache_events(hit.body)
    last = parts.pop() if parts else b""
    await responder.start_stream()
    delivered = ctx.delivered = DeliveredStream(services.ledger.counter)
    for part in parts:
        deliver(ctx, delivered, part)
        await responder.chunk(part)
    await end_stream(services, ctx, hit.usage, last, responder)


async def store(cache: ResponseCache, ctx: RequestContext, key: str, ttl: float | None) -> None:
    """Keeps a whole answer, once the client has it. A stream longer than what is kept of it whole
    (`tokens.WINDOW`, 256 KiB) is not cached: its bytes were not kept."""
    if usage_checks.INVALID in ctx.flags:
        return  # its usage was not believed: a hit would replay it
    if ctx.stream:
        delivered = ctx.delivered.whole() if ctx.delivered is not None else b""
        if delivered is None:
            return
        entry = CacheEntry(delivered + ctx.closing, True, "text/event-stream", ctx.usage, None)
    else:
        entry = CacheEntry(ctx.answer, False, "application/json", ctx.usage, None)
    dep = ctx.deployment
    entry = CacheEntry(entry.body, entry.stream, entry.content_type, entry.usage, dep.id if dep else None)
    try:
        await cache.put(key, entry, ttl)
    except Exception as e:
        log.warning("response cache not written (%s)", e.__class__.__name__)
