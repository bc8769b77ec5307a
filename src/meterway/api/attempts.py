"""Upstream attempts: one call (`forward`), and for a routed group the retries, fallbacks and
cooldowns around it (`routed`), while nothing has reached the client.

There is one call path whatever answers: the deployment's upstream (`providers.transport`) is the
shared HTTP session, or the in-process demo model, resolved when the deployment was built.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import msgspec

from meterway.api.relay import BYTE_STREAMS, answer, pipe, relay
from meterway.errors import MeterwayError, NoDeploymentAvailable, UpstreamUnavailable
from meterway.providers.common import unreadable
from meterway.routing import Group, Router, retry_kind

if TYPE_CHECKING:
    from meterway.api.asgi import Receive, Responder
    from meterway.config.settings import Deployment
    from meterway.context import RequestContext
    from meterway.providers.base import Call, Parsed, Provider, UpstreamRequest
    from meterway.providers.transport import Upstream
    from meterway.services import Services

log = logging.getLogger("meterway.proxy")

MAX_BACKOFF_S = 5.0
ERROR_BODY_MAX = 64 * 1024  # bytes of an upstream's error answer read: it is summarised, not relayed
# what a stream request may be answered with: server-sent events, or AWS's binary event stream (Bedrock)
STREAM_TYPES = ("text/event-stream", "application/vnd.amazon.eventstream")


# Whether the caller (its key, its team and its customer) may call a model group: a fallback group
# it may not call is skipped, never served, so failing the group asked for reaches no other.
Allowed = Callable[[str], bool]


async def first(router: Router, group: Group, visited: set[str], allowed: Allowed) -> tuple[Group, Deployment]:
    """The first deployment to try: from the group, else (all cooling down or at their limits) from
    its fallbacks in order that the caller may call."""
    visited.add(group.name)
    deployment = await router.choose(group)
    if deployment is not None:
        return group, deployment
    found = await _fallback(router, group.name, "retry", visited, allowed)
    if found is None:
        raise NoDeploymentAvailable(group.name, router.retry_after(group))
    return found


async def _fallback(
    router: Router, model: str, kind: str, visited: set[str], allowed: Allowed
) -> tuple[Group, Deployment] | None:
    for name in router.fallbacks_for(model, kind):
        if name in visited or not allowed(name):
            continue
        visited.add(name)
        group = router.group(name)
        deployment = await router.choose(group)
        if deployment is not None:
            return group, deployment
    return None


async def routed(
    services: Services,
    ctx: RequestContext,
    call: Call,
    group: Group,
    deployment: Deployment,
    visited: set[str],
    responder: Responder,
    receive: Receive,
    allowed: Allowed,
) -> None:
    """Attempts until one answers: retries within the group (another deployment when there is one,
    else the same after a backoff), then the fallback groups in order that the caller may call. An attempt is retried only
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
                found = await _fallback(router, model, kind, visited, allowed)
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


def _backoff(base: float, attempt: int, retry_after: float | None) -> float:
    """Exponential from `base`, at least what the upstream asked for in Retry-After, at most 5 s."""
    return min(max(base * 2.0 ** (attempt - 1), retry_after or 0.0), MAX_BACKOFF_S)


async def forward(
    services: Services, ctx: RequestContext, call: Call, deployment: Deployment, responder: Responder, receive: Receive
) -> None:
    """One attempt on one deployment, in a client span when traces are on (the in-process demo
    model gets none: nothing leaves the process)."""
    provider = deployment.provider_for(call.api)
    request = provider.build_request(call)
    ctx.forwarded = True
    tracing = services.tracing
    upstream = deployment.upstream
    if upstream is None:
        upstream = services.upstream
    elif tracing is not None:
        tracing = None
    if tracing is None or ctx.span is None:
        return await _call(
            services, ctx, call, deployment, provider, upstream, request, request.headers, responder, receive
        )
    span, carrier = tracing.upstream(ctx, ctx.span, request.url)
    failed: BaseException | None = None
    try:
        headers = {**request.headers, **carrier}  # the trace goes on upstream
        await _call(services, ctx, call, deployment, provider, upstream, request, headers, responder, receive)
    except BaseException as e:
        failed = e
        raise
    finally:
        tracing.end_upstream(span, ctx.upstream_status, failed)


async def _call(
    services: Services,
    ctx: RequestContext,
    call: Call,
    deployment: Deployment,
    provider: Provider,
    upstream: Upstream,
    request: UpstreamRequest,
    headers: Mapping[str, str],
    responder: Responder,
    receive: Receive,
) -> None:
    """One upstream call: the answer parsed and sent whole, or the stream relayed."""
    resp = await upstream.send(request, headers, deployment.timeout_for(request.stream), provider.label)
    ctx.upstream_status = resp.status
    try:
        if resp.status >= 400 or not request.stream:
            failed = resp.status >= 400
            bound = services.settings.max_upstream_body_bytes
            data = await resp.read(bound, min(bound, ERROR_BODY_MAX) if failed else None)
            if failed:
                err = provider.map_error(call, resp.status, data)
                err.retry_after = retry_after(resp.header("Retry-After"))
                raise err
            return await answer(services, ctx, _parse(provider, call, data), responder)
        if call.api in BYTE_STREAMS:
            return await pipe(services, ctx, call, resp, responder, receive)
        if not resp.content_type.startswith(STREAM_TYPES):
            raise UpstreamUnavailable(
                f"Upstream deployment '{provider.label}' answered a stream request with {resp.content_type}.",
                deployment=provider.label,
            )
        await relay(services, ctx, call, provider, resp, responder, receive)
    finally:
        resp.release()


async def fetch(
    services: Services, deployment: Deployment, provider: Provider, request: UpstreamRequest, call: Call
) -> bytes:
    """One upstream call beside the generations (a token count, a Responses resource): its whole
    answer, bounded; a failure read as every upstream error is (`map_error`, its Retry-After kept)."""
    resp = await services.upstream.send(request, request.headers, deployment.timeout_for(False), provider.label)
    try:
        bound = services.settings.max_upstream_body_bytes
        failed = resp.status >= 400
        data = await resp.read(bound, min(bound, ERROR_BODY_MAX) if failed else None)
    finally:
        resp.release()
    if failed:
        err = provider.map_error(call, resp.status, data)
        err.retry_after = retry_after(resp.header("Retry-After"))
        raise err
    return data


def _parse(provider: Provider, call: Call, data: bytes) -> Parsed:
    """The provider's reading of an answer; one it cannot read (not JSON, not the shape its API
    promises) is the upstream's failure, a 502, never relayed as a 200 nor raised as our own 500."""
    try:
        return provider.parse_response(call, data)
    except MeterwayError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, msgspec.DecodeError) as e:
        raise unreadable(provider.label, data, f"it could not read ({e.__class__.__name__})") from None


def retry_after(value: str | None) -> float | None:
    """An upstream's Retry-After in seconds, passed on so clients back off as the provider asked.
    The HTTP-date form is not passed on; no provider in use sends it."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
