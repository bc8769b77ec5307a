"""OpenAI's Responses API endpoints: `POST /v1/responses` through the one pipeline, and those that
work on a response once it exists (retrieve, delete, cancel, input items) or count its input.

A generation goes through `api.proxy.handle` like a chat (auth, model access, limits, routing and
fallbacks, the ledger row committed before the last byte), in a task of its own, so that a
background request can be answered and go on (`api.response_runs`, which also stores each
response). A response made on a native deployment is kept by the upstream: the calls on it are
passed to the deployment, and with the credentials, that made it (its provider's
`resource_request`). A bridged one is served from the store: its Response object and input items,
bounded by the body limit (bigger: the row says so, and retrieval is 404).

Nothing here but the generation adds a ledger row: retrieving, listing, deleting, cancelling and
counting input tokens are reads and bookkeeping, not usage (`count_tokens` does the same).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

from meterway import bounds
from meterway.api import heads, proxy
from meterway.api.asgi import REQUEST_ID, Incoming, Receive, Responder, Scope, Send, read_body, request_id
from meterway.api.attempts import ERROR_BODY_MAX, fetch, retry_after
from meterway.api.count_tokens import count_locally
from meterway.api.errors import Endpoint, boundary
from meterway.api.response_runs import (
    CANCEL_WAIT_S,
    RUNNING,
    ResponseNotFound,
    Responses,
    Run,
    storable,
    visible,
)
from meterway.api.response_shapes import final_response, list_items, replay_events
from meterway.auth import bearer_token
from meterway.errors import BadRequest, UnsupportedOperation
from meterway.providers import responses_format as fmt
from meterway.providers.base import Api, Call, RequestHead
from meterway.providers.responses_adapter import ResponsesAdapter

if TYPE_CHECKING:
    from meterway.auth import Principal
    from meterway.config.settings import Deployment
    from meterway.providers.base import Provider
    from meterway.services import Services
    from meterway.store.response_record import StoredResponse

log = logging.getLogger("meterway.responses")

_PREFIX = "/responses/"


# ---------------------------------------------------------------------- POST /v1/responses


async def create(services: Services, scope: Scope, receive: Receive, send: Send) -> None:
    """The pipeline in a task of its own, so that a background request can be answered and go on."""
    responses = services.responses
    rid = request_id(scope)
    if rid in responses.runs:  # a client's x-request-id in use by another request in flight
        rid = scope[REQUEST_ID] = os.urandom(16).hex()
    run = Run(responses, send, receive)
    responses.runs[rid] = run
    pipeline = boundary(_pipeline(services), Api.RESPONSES, watch=False)
    task = run.task = asyncio.create_task(_own(responses, run, rid, pipeline(scope, run.receive, run.send)))
    detached = asyncio.create_task(run.detached.wait())
    try:
        await asyncio.wait((task, detached), return_when=asyncio.FIRST_COMPLETED)
    finally:
        detached.cancel()
        if not run.detached.is_set() and not task.done():  # the handler itself was cancelled
            task.cancel()


def _pipeline(services: Services) -> Endpoint:
    """The pipeline with the Responses stage among its hooks (`Services.responses_hooks`): only
    this route's requests cross it. The response cache is left out: a Response has an id of its
    own, stored for its key, which a cached copy served to another request would not be."""
    staged = replace(services, hooks=services.responses_hooks, cache=None)

    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        await proxy.handle(staged, Api.RESPONSES, heads.responses, scope, receive, send)

    return handle


async def _own(responses: Responses, run: Run, rid: str, pipeline: Awaitable[None]) -> None:
    """The run's task: the pipeline, then the run forgotten (and a detached one closed)."""
    try:
        await pipeline
    finally:
        responses.runs.pop(rid, None)
        try:
            await responses.finished(run)
        except Exception:
            log.exception("background response of request %s not closed", rid)


# ---------------------------------------------------------------------- the other endpoints


@dataclass(frozen=True, slots=True)
class _Target:
    response_id: str
    action: str  # "" (the response itself), "cancel", "input_items"
    query: dict[str, str] = field(default_factory=dict)


def target(scope: Scope) -> _Target | None:
    """`/responses/{id}`, `/responses/{id}/cancel` or `/responses/{id}/input_items` (after /v1)."""
    path: str = scope["path"].removeprefix("/v1")
    if not path.startswith(_PREFIX):
        return None
    rest = path[len(_PREFIX) :]
    response_id, _, action = rest.partition("/")  # ASGI's path is percent-decoded already
    if not response_id or action not in ("", "cancel", "input_items") or "/" in action:
        return None
    raw = scope.get("query_string", b"").decode("latin-1")
    query = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}
    return _Target(response_id, action, query)


ALLOWED = {"": ("GET", "DELETE"), "cancel": ("POST",), "input_items": ("GET",)}


async def resource(services: Services, scope: Scope, receive: Receive, send: Send) -> None:
    """GET/DELETE `/v1/responses/{id}`, POST `.../cancel`, GET `.../input_items`."""
    found = target(scope)
    assert found is not None  # the route table matched it
    incoming = Incoming(scope["headers"])
    rid = request_id(scope, incoming)
    principal = await services.auth.authenticate(
        bearer_token(incoming.authorization, incoming.x_api_key, incoming.api_key)
    )
    row = await services.store.responses.get(found.response_id) if storable(found.response_id) else None
    if row is None or not visible(row, principal):
        raise ResponseNotFound(found.response_id)
    responder = Responder(send, rid)
    if row.native:
        return await _native(services, scope, receive, row, found, responder)
    method = scope["method"]
    if row.body is None or row.too_large:  # too large to keep (a background one keeps its queued object)
        raise ResponseNotFound(found.response_id)
    if found.action == "input_items":
        listing = list_items(orjson.loads(row.input_items or "[]"), found.query)
        return await responder.whole(200, orjson.dumps(listing))
    if found.action == "cancel":
        return await responder.whole(200, await _cancel(services.responses, row))
    if method == "DELETE":
        await services.store.responses.delete(row.response_id)
        deleted = {"id": row.response_id, "object": "response", "deleted": True}
        return await responder.whole(200, orjson.dumps(deleted))
    response = orjson.loads(row.body)
    response["status"] = row.status
    if _flag(found.query.get("stream")):
        return await _replay(services.responses, row, response, responder, found.query)
    await responder.whole(200, orjson.dumps(response))


def _flag(value: str | None) -> bool:
    return value is not None and value.lower() in ("true", "1")


async def _cancel(responses: Responses, row: StoredResponse) -> bytes:
    """A background response still running is cancelled (its run stops as if its client had
    left: the ledger row records what it produced); any other is 400, as OpenAI answers."""
    response = orjson.loads(row.body or "{}")
    if not response.get("background"):
        raise BadRequest("Only responses created with background=true can be cancelled.")
    if row.status not in RUNNING:
        if row.status == "cancelled":
            return orjson.dumps(dict(response, status="cancelled"))
        raise BadRequest(f"Cannot cancel a response with status '{row.status}'.")
    response["status"] = "cancelled"
    await responses.store.update(
        row.response_id, status="cancelled", body=orjson.dumps(response).decode(), only_from=RUNNING
    )
    run = responses.background.get(row.response_id)
    if run is not None:
        run.cancel()
        if run.task is not None:
            _, late = await asyncio.wait({run.task}, timeout=CANCEL_WAIT_S)
            for task in late:
                task.cancel()
    fresh = await responses.store.get(row.response_id)
    if fresh is not None and fresh.body is not None:
        stored = orjson.loads(fresh.body)
        stored["status"] = fresh.status
        return orjson.dumps(stored)
    return orjson.dumps(response)


async def _replay(
    responses: Responses, row: StoredResponse, response: dict[str, Any], responder: Responder, query: dict[str, str]
) -> None:
    """`?stream=true` on a bridged response: the event sequence a stream of it would have been,
    made from the stored object (a response still running is awaited first, bounded by the store
    being polled). `starting_after` skips the events up to that sequence number."""
    waited = 0
    while row.status in RUNNING and waited < 600:
        await asyncio.sleep(0.1)
        waited += 1
        fresh = await responses.store.get(row.response_id)
        if fresh is None or fresh.body is None:
            raise ResponseNotFound(row.response_id)
        row = fresh
        response = dict(orjson.loads(fresh.body), status=fresh.status)
    try:
        after = int(query.get("starting_after", "-1"))
    except ValueError:
        raise BadRequest("'starting_after' must be a whole number.", param="starting_after") from None
    events = [e for e in replay_events(response) if e["sequence_number"] > after]
    await responder.start_stream()
    await responder.end(b"".join(fmt.sse(e) for e in events))


# ---------------------------------------------------------------------- native deployments


def _native_provider(services: Services, row: StoredResponse) -> tuple[Deployment, Provider]:
    deployment = services.router.deployment(row.deployment_id)
    if deployment is None:  # removed from the config since: its responses are out of reach
        raise ResponseNotFound(row.response_id)
    provider = deployment.provider_for(Api.RESPONSES)
    if not hasattr(provider, "resource_request"):
        raise UnsupportedOperation(f"Deployment '{deployment.id}' cannot be asked for its stored responses.")
    return deployment, provider


async def _native(
    services: Services, scope: Scope, receive: Receive, row: StoredResponse, found: _Target, responder: Responder
) -> None:
    """The call passed to the deployment (and with the credentials) that made the response; its
    answer relayed as it came, a stream included. A deletion upstream deletes the row too."""
    deployment, provider = _native_provider(services, row)
    method = scope["method"]
    path = f"/responses/{row.response_id}" + (f"/{found.action}" if found.action else "")
    body = await read_body(receive, Incoming(scope["headers"]), services.settings.max_body_bytes)
    query = scope.get("query_string", b"").decode("latin-1")
    request = provider.resource_request(method, path, query, body)  # type: ignore[attr-defined]
    stream = _flag(found.query.get("stream")) and method == "GET" and not found.action
    resp = await services.upstream.send(request, request.headers, deployment.timeout_for(stream), provider.label)
    try:
        if resp.status >= 400 or not stream:
            bound = services.settings.max_upstream_body_bytes
            failed = resp.status >= 400
            data = await resp.read(bound, min(bound, ERROR_BODY_MAX) if failed else None)
            if failed:
                call = Call(Api.RESPONSES, body, RequestHead(row.model_group or ""), request_id(scope))
                err = provider.map_error(call, resp.status, data)
                err.retry_after = retry_after(resp.header("Retry-After"))
                if resp.status == 404 and method == "DELETE":
                    await services.store.responses.delete(row.response_id)
                raise err
            if method == "DELETE":
                await services.store.responses.delete(row.response_id)
            elif method == "GET" and not found.action and not row.metered:  # a background one may have ended
                await _seen(services.responses, row, data)
            return await responder.whole(200, data)
        await responder.start_stream()
        tail = bytearray()  # the stream's last bytes, bounded: its terminal event meters a background run
        bound = services.settings.max_upstream_body_bytes
        async for chunk in resp:
            await responder.chunk(chunk)
            if not row.metered:
                tail += chunk
                if len(tail) > bound:
                    del tail[: len(tail) - bound]
        if not row.metered:
            await _seen(services.responses, row, bytes(tail))
        await responder.end()
    finally:
        resp.release()


async def _seen(responses: Responses, row: StoredResponse, data: bytes) -> None:
    """A retrieved native response (a whole body, or a stream's last bytes) metered if it ended
    and no one metered it yet: a client that reads a background response is always charged for it."""
    try:
        response = final_response(data)
        if response is not None:
            await responses.meter.seen(row, response)
    except Exception:  # the client's answer does not wait on metering: the poll meters it later
        log.exception("response %s not metered on retrieval", row.response_id)


# ---------------------------------------------------------------------- POST /v1/responses/input_tokens


async def input_tokens(services: Services, scope: Scope, receive: Receive, send: Send) -> None:
    """The input tokens a Responses request would use: the native deployment's own count, else
    counted with the ledger's tokenizer (instructions, input and the tools' JSON). Never charged,
    no ledger row, as `count_tokens`."""
    incoming = Incoming(scope["headers"])
    rid = request_id(scope, incoming)
    principal = await services.auth.authenticate(
        bearer_token(incoming.authorization, incoming.x_api_key, incoming.api_key)
    )
    body = await read_body(receive, incoming, services.settings.max_body_bytes)
    try:
        answer = await _input_tokens(services, principal, body, rid, scope["headers"])
    except Exception as exc:
        raise bounds.deep_error(exc, body) from None
    await Responder(send, rid).whole(200, answer)


async def _input_tokens(
    services: Services, principal: Principal, body: bytes, rid: str, headers: list[tuple[bytes, bytes]]
) -> bytes:
    head = heads.responses(body)
    group = proxy.group_for(services, principal, head.model)
    customer = proxy.customer_of(services, principal, headers, head.user)
    await proxy.check_customer_model(services, customer, head.model)  # held to the lists a request is
    deployment = group.deployments[0]
    provider = deployment.provider_for(Api.RESPONSES)
    if not isinstance(provider, ResponsesAdapter) and hasattr(provider, "resource_request"):
        request = orjson.loads(body)
        request["model"] = provider.upstream_model
        upstream = provider.resource_request("POST", "/responses/input_tokens", "", orjson.dumps(request))
        return await fetch(services, deployment, provider, upstream, Call(Api.RESPONSES, body, head, rid))
    tools = orjson.loads(body).get("tools")
    counted = await asyncio.to_thread(count_locally, services.ledger.counter, body, tools, Api.RESPONSES)
    return orjson.dumps({"object": "response.input_tokens", "input_tokens": counted})
