"""The request path of every model endpoint, from the first header to the last byte.

    ledger.admit -> authenticate -> read body -> decode head -> route -> hooks.before (in order)
      -> provider.build_request -> upstream (or the in-process mock) -> parse / relay
      -> ledger.record (the row is committed) -> last bytes
      -> hooks.after (reverse order, always, with the final status, error and usage)

Every request, served or refused, gets one ledger row, committed before its last bytes go out: a
body is sent whole after it, a stream's final event (`[DONE]`, `message_stop`) is held back until
it (`sse.Finale`).

Errors raised anywhere on it reach `api.errors`: as a status and body while the response has not
started, as an error event in the stream's own format once it has.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, cast

import aiohttp
import msgspec

from meterway import bounds
from meterway.api import errors
from meterway.api.asgi import RESPONDER, Incoming, Message, Receive, Responder, Scope, Send, read_body, request_id
from meterway.auth import bearer_token
from meterway.cache import Entry as CacheEntry
from meterway.cache import control as cache_control_of
from meterway.cache import events as cache_events
from meterway.context import Hook, RequestContext
from meterway.errors import (
    BadRequest,
    MeterwayError,
    ModelNotFound,
    NoDeploymentAvailable,
    UnsupportedOperation,
    UpstreamError,
)
from meterway.ledger import usage_checks
from meterway.ledger.tokens import DeliveredStream
from meterway.providers import sse
from meterway.providers.base import (
    Api,
    Call,
    LocalProvider,
    Parsed,
    Provider,
    RequestHead,
    StreamRelay,
    UpstreamRequest,
    Usage,
)
from meterway.providers.openai import excerpt
from meterway.providers.transport import map_client_error
from meterway.routing import Group, Router, retry_kind
from meterway.telemetry import logs

if TYPE_CHECKING:
    from meterway.cache import ResponseCache
    from meterway.config.settings import Deployment
    from meterway.services import Services

log = logging.getLogger("meterway.proxy")

HeadDecoder = Callable[[bytes], RequestHead]


async def handle(services: Services, api: Api, decode: HeadDecoder, scope: Scope, receive: Receive, send: Send) -> None:
    incoming = Incoming(scope["headers"])
    rid = request_id(scope, incoming)
    responder = Responder(send, rid)
    ctx = RequestContext.start(rid, api)
    ran: list[Hook] = []
    ledger = services.ledger
    tracing = services.tracing
    if tracing is not None:
        ctx.span = tracing.start(ctx, incoming.traceparent, incoming.tracestate)
    current = logs.CURRENT.set(ctx)  # log lines of this request carry its ids
    try:
        ledger.admit(ctx)
        principal = await services.auth.authenticate(
            bearer_token(incoming.authorization, incoming.x_api_key, incoming.api_key)
        )
        ctx.principal = principal
        body = await read_body(receive, incoming, services.settings.max_body_bytes)
        head = decode(body)
        ctx.model_group, ctx.stream, ctx.end_user = head.model, head.stream, head.user
        ctx.user = principal.customer(head.user, services.settings.require_customer_binding)
        ctx.body, ctx.head = body, head
        if principal.models or principal.team_models:
            principal.check_model(head.model)
        try:
            group = services.router.group(head.model)
        except ModelNotFound as e:
            raise ModelNotFound(head.model, principal.visible(e.available)) from None
        cache = services.cache
        key: str | None = None
        ttl: float | None = None
        if cache is not None:
            key, ttl, hit = await _look_up(cache, api, head.model, body, incoming.cache_control)
            ctx.cache_looked = key is not None or hit is not None
            if hit is not None:
                return await _serve_hit(services, ctx, group, hit, responder, ran)
            responder.cache = b"miss"
        visited: set[str] | None = None  # groups tried: made only when routing can fall back
        if group.plain:
            deployment = group.deployments[0]
            responder.extra = group.headers
        else:
            visited = set()
            group, deployment = await _first(services.router, group, visited)
        ctx.deployment = deployment
        if not deployment.provider_for(api).supports(api):
            raise UnsupportedOperation(
                f"Model '{head.model}' (deployment '{deployment.id}', provider {deployment.family}) "
                f"does not serve the {api.value} endpoint.",
                param="model",
            )
        for hook in services.hooks:
            await hook.before(ctx)
            ran.append(hook)
        call = Call(api, ctx.body, ctx.head or head, rid)
        if visited is None:
            await forward(services, ctx, call, deployment, responder, receive)
        else:
            await _routed(services, ctx, call, group, deployment, visited, responder, receive)
        if key is not None and ctx.status_code == 200 and ctx.error is None and not ctx.client_aborted:
            await _store(cache, ctx, key, ttl)  # type: ignore[arg-type]  # a key is only made with a cache
    except Exception as exc:
        err = errors.as_meterway_error(_too_deep(exc, ctx.body), rid)
        ctx.error = err
        _flag(ctx, err)
        if not responder.started:  # its row is committed first; the boundary answers, through `responder`
            ctx.status_code = err.http_status()
            await ledger.record(ctx)
            scope[RESPONDER] = responder
            raise err from None
        log.error("request %s failed after its response started: %s", rid, err.message)  # a bug: streams end in-stream
    finally:
        ctx.status_code = ctx.status_code or responder.status
        if ctx.ended_ns is None:
            ctx.ended_ns = time.perf_counter_ns()
        await ledger.record(ctx)  # a client that left mid-stream (or a bug): recorded here, once
        services.metrics.observe(ctx)
        if tracing is not None and ctx.span is not None:
            tracing.end(ctx, ctx.span)
        logs.CURRENT.reset(current)
        for hook in reversed(ran):
            try:
                await hook.after(ctx)
            except Exception:  # one stage's failure must not skip the others' settling
                log.exception("hook %s failed after request %s", type(hook).__name__, rid)


def _too_deep(exc: Exception, body: bytes) -> Exception:
    """A body nested deeper than the JSON encoder goes (254 levels) passes the head decoder but
    fails wherever it is rewritten (model renamed, usage asked for, API translated). Such a failure
    is the client's (400), told apart from a fault of ours only then: the check costs too much to
    run on every body."""
    if not isinstance(exc, MeterwayError) and body and bounds.too_deep(body):
        return BadRequest(f"Request body is nested deeper than {bounds.DEPTH_MAX} levels.", code="nested_too_deep")
    return exc


async def _look_up(
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


async def _serve_hit(
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
        return await _answer(services, ctx, Parsed(hit.body, hit.usage, hit.content_type), responder)
    parts = cache_events(hit.body)
    last = parts.pop() if parts else b""
    await responder.start_stream()
    delivered = ctx.delivered = DeliveredStream(services.ledger.counter)
    for part in parts:
        _deliver(ctx, delivered, part)
        await responder.chunk(part)
    await _end_stream(services, ctx, hit.usage, last, responder)


async def _store(cache: ResponseCache, ctx: RequestContext, key: str, ttl: float | None) -> None:
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


async def _first(router: Router, group: Group, visited: set[str]) -> tuple[Group, Deployment]:
    """The first deployment to try: from the group, else (all cooling down or at their limits) from
    its fallbacks in order."""
    visited.add(group.name)
    deployment = await router.choose(group)
    if deployment is not None:
        return group, deployment
    found = await _fallback(router, group.name, "retry", visited)
    if found is None:
        raise NoDeploymentAvailable(group.name, router.retry_after(group))
    return found


async def _fallback(router: Router, model: str, kind: str, visited: set[str]) -> tuple[Group, Deployment] | None:
    for name in router.fallbacks_for(model, kind):
        if name in visited:
            continue
        visited.add(name)
        group = router.group(name)
        deployment = await router.choose(group)
        if deployment is not None:
            return group, deployment
    return None


async def _routed(
    services: Services,
    ctx: RequestContext,
    call: Call,
    group: Group,
    deployment: Deployment,
    visited: set[str],
    responder: Responder,
    receive: Receive,
) -> None:
    """Attempts until one answers: retries within the group (another deployment when there is one,
    else the same after a backoff), then the fallback groups in order. An attempt is retried only
    while nothing has reached the client; each gets its own client span and, when it fails, its
    upstream error metric and its count towards the deployment's cooldown."""
    router = services.router
    policy = router.policy
    model = ctx.model_group or group.name
    retries = policy.num_retries
    tried: list[str] = []
    attempts = 0
    while True:
        attempts += 1
        ctx.deployment, ctx.attempts = deployment, attempts
        responder.extra = router.headers(deployment, attempts)
        tried.append(deployment.id)
        current = deployment
        started = time.perf_counter_ns()
        ok = False
        if router.tracks:
            router.started(deployment)
        try:
            await forward(services, ctx, call, deployment, responder, receive)
            ok = True
            return
        except MeterwayError as err:
            kind = None if responder.started else retry_kind(err)
            if kind is None:
                raise
            if kind == "retry":  # a prompt too long or refused says nothing about the deployment
                await router.failed(group, deployment, err)
            following: Deployment | None = None
            if kind == "retry" and retries > 0:
                retries -= 1
                following = await router.choose(group, tried)
                if following is not None and following.id == deployment.id:
                    await asyncio.sleep(_backoff(policy.retry_backoff_s, len(tried), err.retry_after))
            if following is None:
                found = await _fallback(router, model, kind, visited)
                if found is None:
                    raise
                group, following = found
                retries, tried = policy.num_retries, []
            log.info(
                "request %s: attempt %d on %s failed (%s); trying %s",
                ctx.request_id,
                attempts,
                deployment.id,
                err.message,
                following.id,
            )
            services.metrics.attempt_failed(deployment.id, err)
            ctx.upstream_status = 0
            deployment = following
        finally:
            if router.tracks:
                end = ctx.first_byte_ns or time.perf_counter_ns()
                usage = ctx.usage
                await router.finished(
                    current,
                    (end - started) / 1e9 if ok else None,
                    max(usage.total_tokens, 0) if ok and usage is not None else 0,
                )


MAX_BACKOFF_S = 5.0


def _backoff(base: float, attempt: int, retry_after: float | None) -> float:
    """Exponential from `base`, at least what the upstream asked for in Retry-After, at most 5 s."""
    return min(max(base * 2.0 ** (attempt - 1), retry_after or 0.0), MAX_BACKOFF_S)


async def forward(
    services: Services, ctx: RequestContext, call: Call, deployment: Deployment, responder: Responder, receive: Receive
) -> None:
    provider = deployment.provider_for(call.api)
    request = provider.build_request(call)
    if provider.local:
        ctx.forwarded = True
        return await _local(services, ctx, call, cast(LocalProvider, provider), request, responder)
    timeout = deployment.stream_timeout if request.stream else deployment.timeout
    ctx.forwarded = True
    tracing = services.tracing
    if tracing is None or ctx.span is None:
        return await _call(services, ctx, call, provider, request, request.headers, timeout, responder, receive)
    span, carrier = tracing.upstream(ctx, ctx.span, request.url)
    failed: BaseException | None = None
    try:
        headers = {**request.headers, **carrier}  # the trace goes on upstream
        await _call(services, ctx, call, provider, request, headers, timeout, responder, receive)
    except BaseException as e:
        failed = e
        raise
    finally:
        tracing.end_upstream(span, ctx.upstream_status, failed)


async def _call(
    services: Services,
    ctx: RequestContext,
    call: Call,
    provider: Provider,
    request: UpstreamRequest,
    headers: Mapping[str, str],
    limit: aiohttp.ClientTimeout,
    responder: Responder,
    receive: Receive,
) -> None:
    """One upstream call: the answer parsed and sent whole, or the stream relayed."""
    try:
        resp = await services.http.request(
            request.method, request.url, data=request.body, headers=headers, timeout=limit
        )
    except (aiohttp.ClientError, TimeoutError) as e:
        raise map_client_error(e, provider.label) from None
    ctx.upstream_status = resp.status
    try:
        if resp.status >= 400 or not request.stream:
            failed = resp.status >= 400
            bound = services.settings.max_upstream_body_bytes
            data = await _read(resp, provider.label, bound, min(bound, ERROR_BODY_MAX) if failed else None)
            if failed:
                err = provider.map_error(call, resp.status, data)
                err.retry_after = _retry_after(resp.headers.get("Retry-After"))
                raise err
            return await _answer(services, ctx, _parse(provider, call, data), responder)
        if not resp.content_type.startswith("text/event-stream"):
            raise UpstreamError(
                f"Upstream deployment '{provider.label}' answered a stream request with {resp.content_type}.",
                deployment=provider.label,
            )
        await _relay(services, ctx, call, provider, resp, responder, receive)
    finally:
        resp.release()


ERROR_BODY_MAX = 64 * 1024  # bytes of an upstream's error answer read: it is summarised, not relayed


async def _read(resp: aiohttp.ClientResponse, label: str, bound: int, keep: int | None) -> bytes:
    """An upstream's whole answer, read with a bound: past `bound` bytes the call fails as an
    upstream error (`UpstreamTooLarge`), the connection is closed and nothing more is read. With
    `keep` (an error answer), only that many bytes are kept and the rest is not read at all."""
    length = resp.content_length
    if keep is None and length is not None and length > bound:
        resp.close()
        raise _too_large(label, f"an answer of {length} bytes", bound)
    parts: list[bytes] = []
    size = 0
    try:
        async for data in resp.content.iter_any():
            size += len(data)
            parts.append(data)
            if keep is not None and size >= keep:
                resp.close()
                return b"".join(parts)[:keep]
            if size > bound:
                resp.close()
                raise _too_large(label, "an answer", bound)
    except (aiohttp.ClientError, TimeoutError) as e:
        raise map_client_error(e, label) from None
    return b"".join(parts)


def _too_large(label: str, what: str, bound: int) -> UpstreamError:
    return UpstreamError(
        f"Upstream deployment '{label}' sent {what} of more than {bound} bytes, the gateway's bound; "
        "the answer was cut.",
        deployment=label,
        code=UPSTREAM_TOO_LARGE,
    )


UPSTREAM_TOO_LARGE = "upstream_too_large"  # the error's code and the row's flag: an answer or event was cut


def _flag(ctx: RequestContext, err: MeterwayError) -> None:
    """Marks the row of a request that ended on an upstream answer past its bound."""
    if err.code == UPSTREAM_TOO_LARGE and UPSTREAM_TOO_LARGE not in ctx.flags:
        ctx.flags.append(UPSTREAM_TOO_LARGE)


def _parse(provider: Provider, call: Call, data: bytes) -> Parsed:
    """The provider's reading of an answer; one it cannot read (not JSON, not the shape its API
    promises) is the upstream's failure, a 502, never relayed as a 200 nor raised as our own 500."""
    try:
        return provider.parse_response(call, data)
    except MeterwayError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, msgspec.DecodeError) as e:
        raise UpstreamError(
            f"Upstream deployment '{provider.label}' answered with a body it could not read "
            f"({e.__class__.__name__}): {excerpt(data) or 'empty'}",
            deployment=provider.label,
            upstream_status=200,
        ) from None


def _retry_after(value: str | None) -> float | None:
    """An upstream's Retry-After in seconds, passed on so clients back off as the provider asked.
    The HTTP-date form is not passed on; no provider in use sends it."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


class _Watch:
    """Watches for the client leaving mid-stream and then stops reading the upstream at once."""

    __slots__ = ("finished", "left", "resp", "task")

    def __init__(self, resp: aiohttp.ClientResponse, receive: Receive) -> None:
        self.resp = resp
        self.finished = False
        self.left = False
        self.task = asyncio.ensure_future(receive())
        self.task.add_done_callback(self._on_message)

    def _on_message(self, task: asyncio.Task[Message]) -> None:
        if self.finished or task.cancelled():
            return
        self.left = True
        self.resp.close()

    def stop(self) -> None:
        self.finished = True
        if not self.task.done():
            self.task.cancel()


async def _answer(services: Services, ctx: RequestContext, parsed: Parsed, responder: Responder) -> None:
    ctx.usage, ctx.answer, ctx.status_code = parsed.usage, parsed.body, 200
    await services.ledger.record(ctx)
    await responder.whole(200, parsed.body, parsed.content_type.encode())


def _deliver(ctx: RequestContext, delivered: DeliveredStream, out: bytes) -> None:
    if ctx.first_byte_ns is None:
        ctx.first_byte_ns = time.perf_counter_ns()
    delivered.add(out)  # kept while short, counted as it passes once long (bounded either way)


async def _end_stream(
    services: Services, ctx: RequestContext, usage: Usage | None, final: bytes, responder: Responder
) -> None:
    ctx.usage, ctx.status_code, ctx.closing = usage, 200, final
    await services.ledger.record(ctx)
    if not responder.started:  # an upstream stream that produced nothing before its end
        await responder.start_stream()
    await responder.end(final)


async def _relay(
    services: Services,
    ctx: RequestContext,
    call: Call,
    provider: Provider,
    resp: aiohttp.ClientResponse,
    responder: Responder,
    receive: Receive,
) -> None:
    relay = provider.open_stream(call)
    finale = sse.Finale(anthropic=call.api is Api.MESSAGES)
    content = resp.content
    bound = services.settings.max_upstream_event_bytes
    events = sse.EventBound(bound)  # an event that never ends is cut here, not buffered by a relay
    delivered = ctx.delivered = DeliveredStream(services.ledger.counter)
    # The watcher costs a task; a stream the upstream has already delivered whole (a short answer,
    # a cache) ends before a departed client could matter, so only a stream still arriving gets one.
    watch: _Watch | None = None
    try:
        async for data in content.iter_any():
            if finale.done:  # bytes after the final event: not for the client, and no more are read
                resp.close()
                break
            if events.over(data):
                resp.close()
                raise _too_large(provider.label, "an event", bound)
            out = finale.feed(relay.feed(data))
            if out:
                if not responder.started:  # the status goes out with the first bytes: until then a retry may
                    await responder.start_stream()
                _deliver(ctx, delivered, out)
                await responder.chunk(out)
            if watch is None and not content.is_eof():
                watch = _Watch(resp, receive)
        if watch is not None:
            if watch.left:
                ctx.client_aborted = True
                ctx.usage = relay.usage
                return
            watch.finished = True
        closing = relay.finish()
        await _end_stream(services, ctx, relay.usage, finale.finish(closing), responder)
    except (aiohttp.ClientError, TimeoutError) as e:
        if watch is not None and watch.left:
            ctx.client_aborted = True
            ctx.usage = relay.usage
            return
        if not responder.started:  # nothing reached the client: a status error, which may be retried
            raise map_client_error(e, provider.label) from None
        await _fail_stream(services, ctx, call, relay, map_client_error(e, provider.label), responder)
    except MeterwayError as e:
        if not responder.started:
            raise
        await _fail_stream(services, ctx, call, relay, e, responder)
    finally:
        if watch is not None:
            watch.stop()


async def _fail_stream(
    services: Services, ctx: RequestContext, call: Call, relay: StreamRelay, err: MeterwayError, responder: Responder
) -> None:
    ctx.error = err
    _flag(ctx, err)
    ctx.usage = relay.usage
    ctx.status_code = responder.status
    log.warning("stream %s ended by an upstream failure: %s", ctx.request_id, err.message)
    await services.ledger.record(ctx)
    await responder.end(errors.stream_error_event(err, call.api))


async def _local(
    services: Services,
    ctx: RequestContext,
    call: Call,
    provider: LocalProvider,
    request: UpstreamRequest,
    responder: Responder,
) -> None:
    answer = provider.answer(call, request)
    if answer.status >= 400:
        raise provider.map_error(call, answer.status, answer.body)
    if not call.head.stream:
        return await _answer(services, ctx, provider.parse_response(call, answer.body), responder)
    relay = provider.open_stream(call)
    finale = sse.Finale(anthropic=call.api is Api.MESSAGES)
    await responder.start_stream()
    delivered = ctx.delivered = DeliveredStream(services.ledger.counter)
    for data in answer.chunks:
        out = finale.feed(relay.feed(data))
        if out:
            _deliver(ctx, delivered, out)
            await responder.chunk(out)
    await _end_stream(services, ctx, relay.usage, finale.finish(relay.finish()), responder)
