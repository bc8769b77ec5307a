"""OpenAI's Responses API, the gateway's side: `POST /v1/responses` through the one pipeline, and
the endpoints that work on a response once it exists (retrieve, delete, cancel, input items,
input token counts).

A generation goes through `api.proxy.handle` like a chat (auth, model access, limits, routing
and fallbacks, the ledger row committed before the last byte). Around it this module does what
only the Responses API asks for:

- `ResponsesHook.before` (a pipeline hook, after the limits one, so a request over budget is
  refused before anything here happens): resolves `previous_response_id` for a deployment bridged
  to a chat API (the earlier turns' input and output put in front of `input`; an unknown or
  foreign id is 404 `previous_response_not_found`), and detaches a bridged `background` request:
  the client gets the Response `queued` at once, and the generation runs on in a task of
  `Responses` (bounded; beyond it 429), metered once, when it ends, by its own ledger row.
- `_Run.send` sees the answer's last bytes before the client does and stores the response first
  (`store.responses`), so a retrieve right after the answer finds it: for a native deployment
  only its id, owner and deployment (the upstream keeps the response; later calls are routed back
  to the deployment and credentials that made it), for a bridged one the Response object and its
  input items as well, bounded by the body limit (bigger: the row says so, and retrieval is 404).

A response is visible only to the key that created it (the master key sees every one): another
key gets 404, as an unknown id does, never 403, so ids cannot be probed. Keys of one team do not
share responses: a team's keys are often its members' own, and a conversation is one client's.

Nothing here but the generation adds a ledger row: retrieving, listing, deleting, cancelling and
counting input tokens are reads and bookkeeping, not usage (`count_tokens` does the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

import orjson

from meterway.api import heads, proxy
from meterway.api.asgi import (
    REQUEST_ID,
    Incoming,
    Message,
    Receive,
    Responder,
    Scope,
    Send,
    read_body,
    request_id,
)
from meterway.api.attempts import ERROR_BODY_MAX, retry_after
from meterway.api.errors import boundary
from meterway.auth import MASTER_ID, bearer_token
from meterway.errors import BadRequest, RateLimited, RouteNotFound, UnsupportedOperation
from meterway.providers import responses_format as fmt
from meterway.providers.base import Api, Call, RequestHead
from meterway.providers.responses_adapter import ResponsesAdapter
from meterway.store.responses import TERMINAL, StoredResponse

if TYPE_CHECKING:
    from meterway.auth import Principal
    from meterway.config.settings import Deployment
    from meterway.context import RequestContext
    from meterway.providers.base import Provider
    from meterway.services import Services
    from meterway.store.responses import ResponseStore

log = logging.getLogger("meterway.responses")

CHAIN_MAX = 256  # earlier responses followed back through previous_response_id, at most
CANCEL_WAIT_S = 5.0  # a cancelled background run may take this long to stop before it is cut
PURGE_EVERY_S = 3600.0  # expired responses are deleted this often
_TERMINAL_EVENTS = {b"response.completed", b"response.incomplete", b"response.failed"}
_RUNNING = frozenset({"queued", "in_progress"})
_PREFIX = "/responses/"


class ResponseNotFound(RouteNotFound):
    """An unknown, expired, deleted or someone else's response: 404, in OpenAI's words."""

    def __init__(self, response_id: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(f"Response with id '{response_id}' not found.")
        self.param = param
        self.code = code


def previous_not_found(response_id: str) -> ResponseNotFound:
    return ResponseNotFound(response_id, "previous_response_id", "previous_response_not_found")


@dataclass(slots=True)
class Pending:
    """What `ResponsesHook.before` decided for one generation, read when its answer is stored."""

    key_id: str | None
    team_id: str | None
    model_group: str | None
    deployment_id: str
    native: bool
    store: bool
    input_items: list[dict[str, Any]]
    background: bool = False
    response_id: str | None = None  # known in advance only for a detached (background) run


class _Run:
    """One `POST /v1/responses`: the pipeline runs in its own task and talks to the client through
    this object, until a background request is detached; after that its answer is only stored,
    and its `receive` waits for a cancel (which reads to the relay as the client leaving, so the
    ledger row records what was produced)."""

    def __init__(self, responses: Responses, send: Send, receive: Receive) -> None:
        self.responses = responses
        self._send = send
        self._receive = receive
        self.pending: Pending | None = None
        self.detached = asyncio.Event()
        self.cancelled: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self.status = 0
        self.task: asyncio.Task[None] | None = None

    async def receive(self) -> Message:
        if not self.detached.is_set():
            return await self._receive()
        return await self.cancelled

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            if self.detached.is_set() and self.pending is not None and self.pending.response_id and self.status == 200:
                await self.responses.set_status(self.pending.response_id, "in_progress")
        elif kind == "http.response.body" and not message.get("more_body") and self.status == 200:
            await self.responses.keep(self.pending, message.get("body", b""))
        if not self.detached.is_set():
            await self._send(message)

    async def detach(self, answer: bytes, rid: str) -> None:
        """Answers the client now (the queued Response) and goes on without it."""
        await Responder(self._send, rid).whole(200, answer)
        self.detached.set()

    def cancel(self) -> None:
        if not self.cancelled.done():
            self.cancelled.set_result({"type": "http.disconnect"})


class Responses:
    """The Responses API's state in one worker: the store, the runs in flight (by request id, for
    the hook), and the background ones (by response id, for cancel), bounded. Built once with the
    services; `close` ends the background runs before the ledger is flushed."""

    def __init__(self, store: ResponseStore, ttl_s: float, background_max: int, stored_max: int) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.background_max = background_max
        self.stored_max = stored_max  # bytes of one response's object and input items kept at most
        self.runs: dict[str, _Run] = {}
        self.background: dict[str, _Run] = {}

    # ------------------------------------------------------------------ storing

    def _record(self, pending: Pending, response_id: str, status: str, body: bytes | None) -> StoredResponse:
        now = datetime.now(UTC)
        items: bytes | None = None
        too_large = False
        if not pending.native and body is not None:
            items = orjson.dumps(pending.input_items)
            if len(body) + len(items) > self.stored_max:
                body = items = None
                too_large = True
        return StoredResponse(
            response_id=response_id,
            key_id=pending.key_id,
            team_id=pending.team_id,
            model_group=pending.model_group,
            deployment_id=pending.deployment_id,
            native=pending.native,
            status=status,
            body=body.decode() if body is not None else None,
            input_items=items.decode() if items is not None else None,
            too_large=too_large,
            metered=status in TERMINAL,
            created_at=now,
            expires_at=now + timedelta(seconds=self.ttl_s),
        )

    async def keep(self, pending: Pending | None, last: bytes) -> None:
        """Stores the response whose answer ends with `last` (a whole Response, or a stream's held
        terminal event). A store that fails costs the client nothing but later retrieval: logged."""
        if pending is None or not pending.store:
            return
        response = _final_response(last)
        if response is None:
            return
        response_id = response.get("id")
        if not isinstance(response_id, str) or not response_id:
            return
        status = str(response.get("status") or "completed")
        try:
            if pending.background:
                response["background"] = True
                body = orjson.dumps(response)
                record = self._record(pending, response_id, status, body)
                await self.store.update(
                    response_id, status=status, body=record.body, too_large=record.too_large, only_from=_RUNNING
                )
            else:
                body = None if pending.native else orjson.dumps(response)
                if not await self.store.put(self._record(pending, response_id, status, body)):
                    log.warning("response %s not stored: its id is already taken", response_id)
        except Exception:
            log.exception("response %s could not be stored", response_id)

    async def set_status(self, response_id: str, status: str) -> None:
        try:
            await self.store.update(response_id, status=status, only_from=_RUNNING)
        except Exception:
            log.exception("status of response %s not stored", response_id)

    # ------------------------------------------------------------------ the hook

    async def before(self, ctx: RequestContext) -> None:
        run = self.runs.get(ctx.request_id)
        if ctx.api is not Api.RESPONSES or run is None or ctx.deployment is None:
            return
        deployment, principal = ctx.deployment, ctx.principal
        options = heads.responses_options(ctx.body)
        native = not isinstance(deployment.provider_for(Api.RESPONSES), ResponsesAdapter)
        request = orjson.loads(ctx.body)
        pending = Pending(
            key_id=principal.key_id if principal is not None else None,
            team_id=principal.team_id if principal is not None else None,
            model_group=ctx.model_group,
            deployment_id=deployment.id,
            native=native,
            store=options.store is not False,
            input_items=[] if native else fmt.input_items(request),
        )
        previous = options.previous_response_id
        if previous is not None:
            earlier = await self._earlier(previous, principal, native)
            if earlier is not None:  # bridged: the earlier turns go in front of this one's input
                current = request["input"]
                if isinstance(current, str):
                    current = [{"type": "message", "role": "user", "content": current}]
                request["input"] = earlier + current
                ctx.body = orjson.dumps(request)
        run.pending = pending
        if options.background and not native:
            await self._detach(ctx, run, pending, request)

    async def after(self, ctx: RequestContext) -> None:
        return None

    async def _earlier(self, previous: str, principal: Principal | None, native: bool) -> list[dict[str, Any]] | None:
        """The input a bridged request continues from (its earlier turns' input and output, oldest
        first), or None for a native one (the upstream resolves the id itself; it is only checked
        to be this key's)."""
        chain: list[StoredResponse] = []
        at: str | None = previous
        while at is not None and len(chain) < CHAIN_MAX:
            row = await self.store.get(at)
            if row is None or not visible(row, principal):
                raise previous_not_found(previous)
            if native or row.native:
                if not native:
                    raise BadRequest(
                        f"Response '{previous}' was made by deployment '{row.deployment_id}', which keeps it "
                        "upstream; continue it on a model served by that deployment.",
                        param="previous_response_id",
                    )
                return None
            if row.body is None:
                raise previous_not_found(previous)
            chain.append(row)
            response = orjson.loads(row.body)
            at = response.get("previous_response_id")
        items: list[dict[str, Any]] = []
        for row in reversed(chain):
            items.extend(_as_input(orjson.loads(row.input_items or "[]")))
            items.extend(fmt.output_as_input(orjson.loads(row.body or "{}")))
        return items

    async def _detach(self, ctx: RequestContext, run: _Run, pending: Pending, request: dict[str, Any]) -> None:
        """A bridged background request: stored `queued`, answered at once, generated on as a
        stream (so a cancel finds what was produced so far)."""
        if not pending.store:
            raise BadRequest("'background' requires 'store' to be true.", param="background")
        if len(self.background) >= self.background_max:
            raise RateLimited(
                f"This gateway runs at most {self.background_max} background responses at once; retry shortly.",
                retry_after=1.0,
                code="too_many_background_responses",
            )
        response_id = "resp_" + ctx.request_id
        pending.background, pending.response_id = True, response_id
        start = fmt.ChatToResponsesStream(request, response_id, int(time.time())).start()
        queued = dict(start[0]["response"], status="queued", background=True)
        body = orjson.dumps(queued)
        if not await self.store.put(self._record(pending, response_id, "queued", body)):
            raise BadRequest("A response with this request id exists already; send another x-request-id.")
        request["stream"] = True
        request.pop("background", None)
        ctx.body = orjson.dumps(request)
        if ctx.head is not None:
            ctx.head = replace(ctx.head, stream=True)
        ctx.stream = True
        self.background[response_id] = run
        await run.detach(body, ctx.request_id)

    # ------------------------------------------------------------------ background runs

    async def finished(self, run: _Run) -> None:
        """After a run: a detached one that did not store a terminal state failed (or was cut)."""
        pending = run.pending
        if pending is None or pending.response_id is None:
            return
        self.background.pop(pending.response_id, None)
        row = await self.store.get(pending.response_id)
        if row is None or row.status not in _RUNNING or row.body is None:
            return
        response = orjson.loads(row.body)
        response.update(
            status="failed",
            error={"code": "server_error", "message": "The response could not be completed."},
        )
        await self.store.update(
            pending.response_id, status="failed", body=orjson.dumps(response).decode(), only_from=_RUNNING
        )

    async def close(self) -> None:
        """At shutdown: background runs are cancelled (as a client's cancel would) and awaited, so
        each writes its ledger row before the ledger's last flush."""
        runs = list(self.background.values())
        for run in runs:
            if run.pending is not None and run.pending.response_id is not None:
                await self.set_status(run.pending.response_id, "cancelled")
            run.cancel()
        tasks = [run.task for run in runs if run.task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=CANCEL_WAIT_S)
            for task in late:
                task.cancel()
            for task in late:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def purge(self) -> None:
        """Deletes expired responses now and then; a failure waits for the next round."""
        while True:
            try:
                while await self.store.purge() > 0:
                    pass
            except Exception as e:
                log.warning("expired responses not purged: %s", e.__class__.__name__)
            await asyncio.sleep(PURGE_EVERY_S)


def visible(row: StoredResponse, principal: Principal | None) -> bool:
    return principal is not None and (principal.key_id == MASTER_ID or principal.key_id == row.key_id)


def _as_input(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored input items as input again: the ids and statuses the listing shows are not input."""
    return [{k: v for k, v in item.items() if k not in ("id", "status")} for item in items if isinstance(item, dict)]


def _final_response(last: bytes) -> dict[str, Any] | None:
    """The Response in an answer's last bytes: the whole JSON object, or the `response` of the
    terminal event (`response.completed`, `.incomplete`, `.failed`) at the end of a stream."""
    data = last.strip()
    if data.startswith(b"{"):
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        return value if isinstance(value, dict) and value.get("object") == "response" else None
    for block in reversed(data.split(b"\n\n")):
        payload = b"".join(line[5:].strip() for line in block.splitlines() if line.startswith(b"data:"))
        if not payload or not any(name in payload for name in _TERMINAL_EVENTS):
            continue
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict) and isinstance(event.get("response"), dict):
            response: dict[str, Any] = event["response"]
            return response
    return None


# ---------------------------------------------------------------------- POST /v1/responses


async def create(services: Services, scope: Scope, receive: Receive, send: Send) -> None:
    """The pipeline in a task of its own, so that a background request can be answered and go on."""
    responses = services.responses
    rid = request_id(scope)
    if rid in responses.runs:  # a client's x-request-id in use by another request in flight
        rid = scope[REQUEST_ID] = os.urandom(16).hex()
    run = _Run(responses, send, receive)
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


def _pipeline(services: Services) -> Any:
    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        await proxy.handle(services, Api.RESPONSES, heads.responses, scope, receive, send)

    return handle


async def _own(responses: Responses, run: _Run, rid: str, pipeline: Any) -> None:
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
    response_id, _, action = rest.partition("/")
    response_id = unquote(response_id)
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
    row = await services.store.responses.get(found.response_id)
    if row is None or not visible(row, principal):
        raise ResponseNotFound(found.response_id)
    responder = Responder(send, rid)
    if row.native:
        return await _native(services, scope, receive, row, found, responder)
    method = scope["method"]
    if row.body is None:
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
    if row.status not in _RUNNING:
        if row.status == "cancelled":
            return orjson.dumps(dict(response, status="cancelled"))
        raise BadRequest(f"Cannot cancel a response with status '{row.status}'.")
    response["status"] = "cancelled"
    await responses.store.update(
        row.response_id, status="cancelled", body=orjson.dumps(response).decode(), only_from=_RUNNING
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


def list_items(items: list[dict[str, Any]], query: dict[str, str]) -> dict[str, Any]:
    """OpenAI's list shape over a response's input items: `limit` (1-100, 20), `order` (`desc`,
    OpenAI's default, or `asc`), `after` (an item id: the items after it in that order)."""
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        raise BadRequest("'limit' must be a whole number.", param="limit", code="invalid_type") from None
    if not 1 <= limit <= 100:
        raise BadRequest("'limit' must be between 1 and 100.", param="limit", code="invalid_value")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequest("'order' must be 'asc' or 'desc'.", param="order", code="invalid_value")
    ordered = list(items) if order == "asc" else list(reversed(items))
    after = query.get("after")
    if after:
        ids = [item.get("id") for item in ordered]
        if after not in ids:
            raise BadRequest(f"No input item with id '{after}'.", param="after", code="invalid_value")
        ordered = ordered[ids.index(after) + 1 :]
    page = ordered[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0].get("id") if page else None,
        "last_id": page[-1].get("id") if page else None,
        "has_more": len(ordered) > limit,
    }


async def _replay(
    responses: Responses, row: StoredResponse, response: dict[str, Any], responder: Responder, query: dict[str, str]
) -> None:
    """`?stream=true` on a bridged response: the event sequence a stream of it would have been,
    made from the stored object (a response still running is awaited first, bounded by the store
    being polled). `starting_after` skips the events up to that sequence number."""
    waited = 0
    while row.status in _RUNNING and waited < 600:
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


def replay_events(response: dict[str, Any]) -> list[dict[str, Any]]:
    """A finished Response as the events that stream it: created, in_progress, each output item
    (its parts and text, or its arguments, in one delta each), then the terminal event."""
    events: list[dict[str, Any]] = []

    def add(event: dict[str, Any]) -> None:
        event["sequence_number"] = len(events)
        events.append(event)

    opening = dict(response, status="in_progress", output=[], usage=None)
    add({"type": "response.created", "response": opening})
    add({"type": "response.in_progress", "response": opening})
    for index, item in enumerate(response.get("output") or []):
        kind = item.get("type")
        item_id = item.get("id")
        if kind == "message":
            add({"type": "response.output_item.added", "output_index": index,
                 "item": dict(item, status="in_progress", content=[])})
            for c, part in enumerate(item.get("content") or []):
                where = {"item_id": item_id, "output_index": index, "content_index": c}
                if part.get("type") == "output_text":
                    add({"type": "response.content_part.added", **where,
                         "part": {"type": "output_text", "text": "", "annotations": []}})
                    add({"type": "response.output_text.delta", **where, "delta": part.get("text", ""),
                         "logprobs": []})
                    add({"type": "response.output_text.done", **where, "text": part.get("text", ""),
                         "logprobs": []})
                elif part.get("type") == "refusal":
                    add({"type": "response.content_part.added", **where, "part": {"type": "refusal", "refusal": ""}})
                    add({"type": "response.refusal.delta", **where, "delta": part.get("refusal", "")})
                    add({"type": "response.refusal.done", **where, "refusal": part.get("refusal", "")})
                add({"type": "response.content_part.done", **where, "part": part})
        elif kind == "function_call":
            add({"type": "response.output_item.added", "output_index": index,
                 "item": dict(item, status="in_progress", arguments="")})
            where = {"item_id": item_id, "output_index": index}
            add({"type": "response.function_call_arguments.delta", **where, "delta": item.get("arguments", "")})
            add({"type": "response.function_call_arguments.done", **where, "name": item.get("name", ""),
                 "arguments": item.get("arguments", "")})
        else:
            add({"type": "response.output_item.added", "output_index": index, "item": item})
        add({"type": "response.output_item.done", "output_index": index, "item": item})
    status = response.get("status")
    terminal = {"completed": "response.completed", "failed": "response.failed"}.get(str(status), "response.incomplete")
    add({"type": terminal, "response": response})
    return events


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
            return await responder.whole(200, data)
        await responder.start_stream()
        async for chunk in resp:
            await responder.chunk(chunk)
        await responder.end()
    finally:
        resp.release()


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
    head = heads.responses(body)
    group = proxy.group_for(services, principal, head.model)
    deployment = group.deployments[0]
    provider = deployment.provider_for(Api.RESPONSES)
    responder = Responder(send, rid)
    if not isinstance(provider, ResponsesAdapter) and hasattr(provider, "resource_request"):
        request = orjson.loads(body)
        request["model"] = provider.upstream_model
        upstream = provider.resource_request("POST", "/responses/input_tokens", "", orjson.dumps(request))
        resp = await services.upstream.send(upstream, upstream.headers, deployment.timeout_for(False), provider.label)
        try:
            bound = services.settings.max_upstream_body_bytes
            failed = resp.status >= 400
            data = await resp.read(bound, min(bound, ERROR_BODY_MAX) if failed else None)
        finally:
            resp.release()
        if failed:
            err = provider.map_error(Call(Api.RESPONSES, body, head, rid), resp.status, data)
            err.retry_after = retry_after(resp.header("Retry-After"))
            raise err
        return await responder.whole(200, data)
    counted = await asyncio.to_thread(count_locally, services, body)
    await responder.whole(200, orjson.dumps({"object": "response.input_tokens", "input_tokens": counted}))


def count_locally(services: Services, body: bytes) -> int:
    request = orjson.loads(body)
    counter = services.ledger.counter
    total = counter.prompt(Api.RESPONSES, body)
    tools = request.get("tools") if isinstance(request, dict) else None
    if tools:
        total += counter.count(orjson.dumps(tools).decode())
    return total
