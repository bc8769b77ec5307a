"""The Responses API's state in one worker (`Responses`, in `Services`) and its pipeline hook.

`Responses.before` runs as a pipeline hook after the limits one (a request over budget is refused
before anything here happens): it resolves `previous_response_id` for a deployment bridged to a
chat API (the earlier turns' input and output put in front of `input`; an unknown or foreign id is
404 `previous_response_not_found`), and detaches a bridged `background` request: the client gets
the Response `queued` at once, and the generation runs on in its task (bounded; beyond it 429),
metered once, when it ends, by its own ledger row. `Run.send` sees an answer's last bytes before
the client does and stores the response first, so a retrieve right after the answer finds it.

A response is visible only to the key that created it (the master key sees every one): another
key gets 404, as an unknown id does, never 403, so ids cannot be probed. Keys of one team do not
share responses: a team's keys are often its members' own, and a conversation is one client's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from meterway.api import heads
from meterway.api.asgi import Message, Receive, Responder, Send
from meterway.api.response_shapes import as_input, final_response
from meterway.auth import MASTER_ID
from meterway.errors import BadRequest, RateLimited, RouteNotFound
from meterway.providers import responses_format as fmt
from meterway.providers.base import Api
from meterway.providers.responses_adapter import ResponsesAdapter
from meterway.store.response_record import TERMINAL, StoredResponse

if TYPE_CHECKING:
    from meterway.api.response_meter import NativeMeter
    from meterway.auth import Principal
    from meterway.config.settings import Deployment
    from meterway.context import RequestContext
    from meterway.routing import Router
    from meterway.store.responses import ResponseStore

log = logging.getLogger("meterway.responses")

ID_MAX = 128  # characters of a response id (mw_responses.response_id)
CHAIN_MAX = 256  # earlier responses followed back through previous_response_id, at most
CANCEL_WAIT_S = 5.0  # a cancelled background run may take this long to stop before it is cut
PURGE_EVERY_S = 3600.0  # expired responses are deleted this often
RUNNING = frozenset({"queued", "in_progress"})


class ResponseNotFound(RouteNotFound):
    """An unknown, expired, deleted or someone else's response: 404, in OpenAI's words and type."""

    error_type = "invalid_request_error"

    def __init__(self, response_id: str) -> None:
        super().__init__(f"Response with id '{response_id}' not found.")


def previous_not_found(response_id: str) -> BadRequest:
    """What OpenAI answers for a `previous_response_id` it cannot use (400, not 404: the request
    is wrong, not its path); another key's response is refused the same way."""
    return BadRequest(
        f"Previous response with id '{response_id}' not found.",
        param="previous_response_id",
        code="previous_response_not_found",
    )


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
    response_id: str | None = None  # known in advance only for a detached (background) run
    ctx: RequestContext | None = None  # the request: its recorded usage, and what a cancel ends


class Run:
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
        self.relaying = False  # a detached run's upstream has begun to answer
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
                self.relaying = True
                await self.responses.set_status(self.pending.response_id, "in_progress")
        elif kind == "http.response.body" and not message.get("more_body") and self.status == 200:
            # the billed usage is in these bytes already where the ledger counted it (`relay.answer`,
            # `StreamRelay.settle`): what is stored is what the client gets
            await self.responses.keep(self.pending, message.get("body", b""))
        if self.detached.is_set():
            return
        await self._send(message)

    async def detach(self, answer: bytes, rid: str) -> None:
        """Answers the client now (the queued Response) and goes on without it."""
        await Responder(self._send, rid).whole(200, answer)
        self.detached.set()

    def cancel(self) -> None:
        """Ends a detached run as its client leaving would: a stream under way stops at once (the
        relay sees the departure) and its row records what was delivered; a run still waiting
        for its upstream is cut there, its row recording the prompt."""
        if not self.cancelled.done():
            self.cancelled.set_result({"type": "http.disconnect"})
        if not self.relaying and self.task is not None and not self.task.done():
            if self.pending is not None and self.pending.ctx is not None:
                self.pending.ctx.client_aborted = True
            self.task.cancel()


class Responses:
    """The Responses API's state in one worker: the store, the runs in flight (by request id, for
    the hook), and the background ones (by response id, for cancel), bounded. Built once with the
    services; `close` ends the background runs before the ledger is flushed."""

    def __init__(
        self,
        store: ResponseStore,
        ttl_s: float,
        background_max: int,
        stored_max: int,
        meter: NativeMeter,
        router: Router,
    ) -> None:
        self.store = store
        self.router = router  # finds the deployment that holds a native response a request continues
        self.meter = meter  # native background responses, metered when they end
        self.ttl_s = ttl_s
        self.background_max = background_max
        self.stored_max = stored_max  # bytes of one response's object and input items kept at most
        self.runs: dict[str, Run] = {}
        self.background: dict[str, Run] = {}

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
        response = final_response(last)
        if response is None:
            return
        response_id = response.get("id")
        if not isinstance(response_id, str) or not response_id:
            return
        status = str(response.get("status") or "completed")
        try:
            if pending.response_id is not None:  # a detached (bridged background) run: its row exists
                response["background"] = True
                record = self._record(pending, response_id, status, orjson.dumps(response))
                await self.store.update(
                    response_id, status=status, body=record.body, too_large=record.too_large, only_from=RUNNING
                )
            else:
                kept = None if pending.native else orjson.dumps(response)
                record = self._record(pending, response_id, status, kept)
                if not await self.store.put(record):
                    log.warning("response %s not stored: its id is already taken", response_id)
                elif pending.native and status in RUNNING:  # a native background response: metered when it ends
                    self.meter.watch(record)
        except Exception:
            log.exception("response %s could not be stored", response_id)

    async def set_status(self, response_id: str, status: str) -> None:
        try:
            await self.store.update(response_id, status=status, only_from=RUNNING)
        except Exception:
            log.exception("status of response %s not stored", response_id)

    # ------------------------------------------------------------------ the hook

    async def before(self, ctx: RequestContext) -> None:
        run = self.runs.get(ctx.request_id)
        if ctx.api is not Api.RESPONSES or run is None or ctx.deployment is None:
            return
        try:
            await self._before(ctx, run, ctx.deployment)
        except fmt.TranslationError as e:  # input items the bridge cannot read: the client's error
            raise BadRequest(str(e), param=e.param) from None

    async def _before(self, ctx: RequestContext, run: Run, deployment: Deployment) -> None:
        principal = ctx.principal
        options = heads.responses_options(ctx.body)
        native = not isinstance(deployment.provider_for(Api.RESPONSES), ResponsesAdapter)
        request = orjson.loads(ctx.body)
        if not native and fmt.item_references(request):
            request = await self._resolved(request, principal)
            ctx.body = orjson.dumps(request)
        pending = Pending(
            key_id=principal.key_id if principal is not None else None,
            team_id=principal.team_id if principal is not None else None,
            model_group=ctx.model_group,
            deployment_id=deployment.id,
            native=native,
            store=options.store is not False,
            input_items=[] if native else fmt.input_items(request),
            ctx=ctx,
        )
        previous = options.previous_response_id
        if previous is not None and native:
            holder = await self._holder(previous, principal, deployment)
            if holder is not None:  # the pipeline sends the request where `ctx.deployment` now says
                ctx.deployment, pending.deployment_id = holder, holder.id
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

    async def _resolved(self, request: dict[str, Any], principal: Principal | None) -> dict[str, Any]:
        """`item_reference` inputs (the Vercel AI SDK sends an earlier answer back so) replaced by
        the output items they name, from this key's stored responses; one not found is 400."""
        items: dict[str, Any] = {}
        for response_id in {fmt.response_id_for_item(ref) for ref in fmt.item_references(request)} - {None}:
            row = await self.store.get(str(response_id)) if storable(str(response_id)) else None
            if row is None or row.body is None or row.too_large or not visible(row, principal):
                continue
            for item in orjson.loads(row.body).get("output") or []:
                if isinstance(item, dict) and isinstance(item.get("id"), str):
                    items[item["id"]] = as_input([item])[0]
        try:
            resolved: dict[str, Any] = fmt.resolve_references(request, items)
        except fmt.TranslationError as e:
            raise BadRequest(str(e), param=e.param) from None
        return resolved

    async def _holder(self, previous: str, principal: Principal | None, deployment: Deployment) -> Deployment | None:
        """The deployment that made the native response a request continues, when routing picked
        another of the same model name: the upstream that made it keeps it, so the request goes
        there, with its credentials. Another model name's deployment is not taken (the request is
        as routed, and its upstream answers for the id); unknown or foreign ids are `_earlier`'s."""
        row = await self.store.get(previous) if storable(previous) else None
        if row is None or not row.native or row.deployment_id == deployment.id or not visible(row, principal):
            return None
        holder = self.router.deployment(row.deployment_id)
        if holder is None or holder.model_name != deployment.model_name:
            return None
        return holder

    async def _earlier(self, previous: str, principal: Principal | None, native: bool) -> list[dict[str, Any]] | None:
        """The input a bridged request continues from (its earlier turns' input and output, oldest
        first), or None for a native one (the upstream resolves the id itself; it is only checked
        to be this key's)."""
        chain: list[StoredResponse] = []
        at: str | None = previous
        size = 0  # bytes of the conversation taken in: bounded as a request body is
        while at is not None and len(chain) < CHAIN_MAX:
            row = await self.store.get(at) if storable(at) else None
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
            if row.body is None or row.too_large:
                raise previous_not_found(previous)
            size += len(row.body) + len(row.input_items or "")
            if size > self.stored_max:
                raise BadRequest(
                    f"The conversation before '{previous}' is larger than {self.stored_max} bytes; start a new one.",
                    param="previous_response_id",
                    code="conversation_too_large",
                )
            chain.append(row)
            response = orjson.loads(row.body)
            at = response.get("previous_response_id")
        items: list[dict[str, Any]] = []
        for row in reversed(chain):
            items.extend(as_input(orjson.loads(row.input_items or "[]")))
            items.extend(fmt.output_as_input(orjson.loads(row.body or "{}")))
        return items

    async def _detach(self, ctx: RequestContext, run: Run, pending: Pending, request: dict[str, Any]) -> None:
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
        pending.response_id = response_id
        start = fmt.ChatToResponsesStream(request, response_id, int(time.time())).start()
        queued = dict(start[0]["response"], status="queued", background=True)
        body = orjson.dumps(queued)
        self.background[response_id] = run  # the slot is taken before the wait, so a burst cannot pass the cap
        try:
            stored = await self.store.put(self._record(pending, response_id, "queued", body))
        except BaseException:
            self.background.pop(response_id, None)
            raise
        if not stored:
            self.background.pop(response_id, None)
            raise BadRequest("A response with this request id exists already; send another x-request-id.")
        request["stream"] = True
        request.pop("background", None)
        ctx.body = orjson.dumps(request)
        if ctx.head is not None:
            ctx.head = replace(ctx.head, stream=True)
        ctx.stream = True
        await run.detach(body, ctx.request_id)

    # ------------------------------------------------------------------ background runs

    async def finished(self, run: Run) -> None:
        """After a run: a detached one that did not store a terminal state failed (or was cut)."""
        pending = run.pending
        if pending is None or pending.response_id is None:
            return
        self.background.pop(pending.response_id, None)
        row = await self.store.get(pending.response_id)
        if row is None or row.status not in RUNNING or row.body is None:
            return
        response = orjson.loads(row.body)
        response.update(
            status="failed",
            error={"code": "server_error", "message": "The response could not be completed."},
        )
        await self.store.update(
            pending.response_id, status="failed", body=orjson.dumps(response).decode(), only_from=RUNNING
        )

    async def close(self) -> None:
        """At shutdown: background runs are cancelled (as a client's cancel would) and awaited, so
        each writes its ledger row before the ledger's last flush."""
        await self.meter.close()
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


def storable(response_id: str) -> bool:
    """An id the store could hold (its column's length, no NUL): any other is unknown without a
    look-up, which PostgreSQL would refuse for a NUL."""
    return len(response_id) <= ID_MAX and "\x00" not in response_id


def visible(row: StoredResponse, principal: Principal | None) -> bool:
    return principal is not None and (principal.key_id == MASTER_ID or principal.key_id == row.key_id)
