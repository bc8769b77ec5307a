"""The request path of every model endpoint, from the first header to the last byte: the pipeline.

    ledger.admit -> authenticate -> read body -> decode head -> route -> cache look-up
      -> hooks.before (in order) -> attempts (one call, or retries and fallbacks) -> parse / relay
      -> ledger.record (the row is committed) -> last bytes
      -> hooks.after (reverse order, always, with the final status, error and usage)

Every request, served or refused, gets one ledger row, committed before its last bytes go out: a
body is sent whole after it, a stream's final event (`[DONE]`, `message_stop`) is held back until
it by the stream's relay. The stages live beside this module: `attempts` (the upstream call,
retries and fallbacks), `relay` (the answer or stream out), `cached` (the response cache).

Errors raised anywhere on it reach `api.errors`: as a status and body while the response has not
started, as an error event in the stream's own format once it has.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from meterway import bounds
from meterway.api import errors
from meterway.api.asgi import RESPONDER, Incoming, Receive, Responder, Scope, Send, read_body, request_id
from meterway.api.attempts import first, forward, routed
from meterway.api.cached import look_up, serve_hit, store
from meterway.api.heads import customer_from_headers
from meterway.api.relay import flag as _flag
from meterway.auth import allows, bearer_token, check_allowed
from meterway.context import Hook, RequestContext
from meterway.errors import ModelNotFound, UnsupportedOperation
from meterway.providers.base import Api, Call, RequestHead
from meterway.telemetry import logs

if TYPE_CHECKING:
    from meterway.auth import Principal
    from meterway.routing import Group
    from meterway.services import Services

log = logging.getLogger("meterway.proxy")

HeadDecoder = Callable[[bytes], RequestHead]
# audio uploads: their body (the file and its form fields) is bound by `max_audio_bytes` instead
UPLOADS = frozenset({Api.TRANSCRIPTIONS, Api.TRANSLATIONS})
# image uploads (edits, variations): bound by `max_image_upload_bytes`
IMAGE_UPLOADS = frozenset({Api.IMAGE_EDITS, Api.IMAGE_VARIATIONS})


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
        ctx.keep_delivered = tracing.capture_content  # the span shows what the stream delivered
    current = logs.CURRENT.set(ctx)  # log lines of this request carry its ids
    try:
        ledger.admit(ctx)
        principal = await services.auth.authenticate(
            bearer_token(incoming.authorization, incoming.x_api_key, incoming.api_key)
        )
        ctx.principal = principal
        limit = services.settings.max_body_bytes
        if api in UPLOADS:
            limit = services.settings.max_audio_bytes
        elif api in IMAGE_UPLOADS:
            limit = services.settings.max_image_upload_bytes
        body = await read_body(receive, incoming, limit)
        head = decode(body)
        settings = services.settings
        named = named_customer(services, scope["headers"], head.user)
        ctx.model_group, ctx.stream, ctx.end_user = head.model, head.stream, named
        ctx.user = principal.customer(named, settings.require_customer_binding)
        ctx.body, ctx.head = body, head
        group = group_for(services, principal, head.model)
        listed = await check_customer_model(services, ctx.user, head.model)  # before the cache: a hit is a call too
        cache = services.cache
        key: str | None = None
        ttl: float | None = None
        if cache is not None:
            key, ttl, hit = await look_up(cache, api, head.model, body, incoming.cache_control)
            ctx.cache_looked = key is not None or hit is not None
            if hit is not None:
                return await serve_hit(services, ctx, group, hit, responder, ran)
            responder.cache = b"miss"
            if key is not None:
                ctx.keep_delivered = True  # the stream is stored whole once the client has it
        visited: set[str] | None = None  # groups tried: made only when routing can fall back
        if group.plain:
            deployment = group.deployments[0]
            responder.extra = group.headers
        else:
            visited = set()
            group, deployment = await first(services.router, group, visited, may_call(principal, listed))
        ctx.deployment = deployment
        if api not in deployment.apis:
            raise UnsupportedOperation(
                f"Model '{head.model}' (deployment '{deployment.id}', provider {deployment.family}) "
                f"does not serve the {api.value} endpoint.",
                param="model",
            )
        for hook in services.hooks:
            await hook.before(ctx)
            ran.append(hook)
        deployment = ctx.deployment or deployment  # a hook may pin it (a Responses continuation held upstream)
        call = Call(api, ctx.body, ctx.head or head, rid)
        if visited is None:
            await forward(services, ctx, call, deployment, responder, receive)
        else:
            await routed(
                services, ctx, call, group, deployment, visited, responder, receive, may_call(principal, listed)
            )
        if key is not None and ctx.status_code == 200 and ctx.error is None and not ctx.client_aborted:
            await store(cache, ctx, key, ttl)  # type: ignore[arg-type]  # a key is only made with a cache
    except Exception as exc:
        err = errors.as_meterway_error(bounds.deep_error(exc, ctx.body), rid)
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


def group_for(services: Services, principal: Principal, model: str) -> Group:
    """The model's group, for a principal allowed it: a model outside the key's or its team's list
    is 403, an unknown one 404 naming only the models this principal may use."""
    if principal.models or principal.team_models:
        principal.check_model(model)
    try:
        return services.router.group(model)
    except ModelNotFound as e:
        raise ModelNotFound(model, principal.visible(e.available)) from None


async def check_customer_model(services: Services, customer: str | None, model: str) -> tuple[str, ...]:
    """A customer (end user) with a model list of its own may call only those model groups, by
    the rule keys and teams follow (`auth.allows`), refused as they are: 403 `model_not_allowed`.
    Its list comes through the customers' cache, which changes to it are announced to; returned
    (empty: every model) so that fallbacks are held to it too."""
    if customer is None or services.customers is None:
        return ()
    spec = await services.customers.get(customer)
    if spec is not None and spec.models:
        check_allowed(spec.models, model, f"Customer '{customer}'")
        return tuple(spec.models)
    return ()


def customer_of(
    services: Services, principal: Principal, headers: list[tuple[bytes, bytes]], user: str | None
) -> str | None:
    """The customer a request is charged to, as the model routes find it: a header, else the
    body's `user`, unless the key is bound to one (`Principal.customer`)."""
    return principal.customer(named_customer(services, headers, user), services.settings.require_customer_binding)


def named_customer(services: Services, headers: list[tuple[bytes, bytes]], user: str | None) -> str | None:
    """The customer the request names: a customer header (LiteLLM's, or the configured ones) wins
    over the body's fields (`user` and LiteLLM's others, already in `user`)."""
    return customer_from_headers(headers, services.settings.customer_header_names) or user


def may_call(principal: Principal, customer_models: tuple[str, ...]) -> Callable[[str], bool]:
    """Whether a fallback group is one the caller may call: the key's, its team's and its
    customer's lists each allow it (`auth.allows`)."""
    return lambda name: principal.may_use(name) and allows(customer_models, name)
