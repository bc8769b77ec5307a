"""The ASGI application: a route table in front of the handlers, each route behind the one error
boundary (`api.errors.boundary`), and the lifespan that opens and closes `Services`.

The table is data built once per gateway: path -> the methods it takes, its guarded endpoint, and
the 405 it answers for any other method. Paths are served with and without the `/v1` prefix, as
LiteLLM does; the few paths with a parameter in them (`/ui/...`, `/models/{id}`, a customer's
invoice preview) are matched after the one dict lookup. The model routes are plain ASGI callables.

What exists when is `services.Lifecycle`'s business: the gateway holds one from the start, so
`/health/live` answers before the store is open, and every other route asks it for the services.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Generic, TypeVar
from urllib.parse import unquote

from meterway.admin import Admin
from meterway.api import count_tokens, errors, heads, health, lago_webhooks, management, proxy, responses, webhooks
from meterway.api.admin_routes import ROUTES as ADMIN_ROUTES
from meterway.api.asgi import Incoming, Receive, Responder, Scope, Send, request_id
from meterway.api.errors import Endpoint
from meterway.auth import bearer_token
from meterway.config.settings import Settings
from meterway.context import Hook
from meterway.errors import MeterwayError, MethodNotAllowed, ModelNotFound, RouteNotFound
from meterway.providers.base import Api
from meterway.services import Lifecycle, Services, State, open_services

if TYPE_CHECKING:
    from meterway.ui.routes import AdminUI

log = logging.getLogger("meterway")

_MODEL_ROUTES: dict[str, tuple[Api, proxy.HeadDecoder]] = {
    "/chat/completions": (Api.CHAT, heads.chat),
    "/completions": (Api.COMPLETIONS, heads.completion),
    "/embeddings": (Api.EMBEDDINGS, heads.embedding),
    "/messages": (Api.MESSAGES, heads.messages),
    "/rerank": (Api.RERANK, heads.rerank),
    "/v2/rerank": (Api.RERANK, heads.rerank),  # Cohere's own path, as LiteLLM serves it
    "/moderations": (Api.MODERATIONS, heads.moderation),
    # images
    "/images/generations": (Api.IMAGES, heads.images),
    "/images/edits": (Api.IMAGE_EDITS, heads.image_edit),  # multipart uploads
    "/images/variations": (Api.IMAGE_VARIATIONS, heads.image_variation),
    # audio: uploads (multipart/form-data) and speech
    "/audio/transcriptions": (Api.TRANSCRIPTIONS, heads.transcription),
    "/audio/translations": (Api.TRANSLATIONS, heads.transcription),
    "/audio/speech": (Api.SPEECH, heads.speech),
    # paths some clients use for the same endpoints
    "/engines/chat/completions": (Api.CHAT, heads.chat),
    "/openai/chat/completions": (Api.CHAT, heads.chat),
}
_MANAGEMENT = ADMIN_ROUTES
_LIVE = frozenset({"/health/live", "/health/liveliness", "/health/liveness"})
_READY = frozenset({"/health/ready", "/health/readiness", "/health"})
_METRICS = frozenset({"/metrics", "/health/metrics"})
_INVOICE_PREFIXES = ("/customer/", "/end_user/")  # `/customer/{id}/invoice-preview`
BACKLOG_TTL_S = 5.0  # the billing outbox is read for metrics at most this often

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Route:
    methods: frozenset[str] | None  # None: any method (the probes)
    serve: Endpoint  # the handler, behind the boundary
    refuse: Endpoint  # 405 naming `methods`, behind the same boundary (in the route's API format)


def route(handler: Endpoint, methods: tuple[str, ...] | None, api: Api | None = None, *, watch: bool = True) -> Route:
    """`watch=False` for the hot routes whose handler raises only before its response starts
    (see `api.errors.boundary`)."""

    async def wrong_method(scope: Scope, receive: Receive, send: Send) -> None:
        raise MethodNotAllowed(scope["method"], scope["path"], methods or ())

    return Route(
        frozenset(methods) if methods else None,
        errors.boundary(handler, api, watch=watch),
        errors.boundary(wrong_method, api),
    )


class Once(Generic[T]):
    """A value built on its first use and kept: the admin UI (Jinja) and the OpenAPI document cost
    nothing to a gateway nobody browses."""

    __slots__ = ("_build", "_value")

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._value: T | None = None

    @property
    def built(self) -> T | None:
        return self._value

    def get(self) -> T:
        if self._value is None:
            self._value = self._build()
        return self._value


class Backlog:
    """The billing outbox and the ledger quarantine as metrics, read at most every `ttl_s`: a
    scrape must stay cheap whatever their size, and answer while the database is away."""

    def __init__(self, ttl_s: float = BACKLOG_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._at = float("-inf")

    async def read(self, services: Services) -> None:
        now = time.monotonic()
        if now - self._at <= self.ttl_s:
            return
        self._at = now
        metrics, store = services.metrics, services.store
        try:
            if services.settings.billing is not None:
                pending, parked, age = await store.outbox.backlog()
                metrics.outbox_pending.set(pending)
                metrics.outbox_parked.set(parked)
                metrics.outbox_lag.set(age or 0.0)
            metrics.ledger_quarantine.set((await store.ledger.quarantine_status())[0])
        except Exception as e:  # the database is away: the other metrics still answer
            log.warning("billing outbox and ledger quarantine not read for metrics: %s", e.__class__.__name__)


class Gateway:
    """The ASGI application. Holds its settings, its lifecycle (and through it the services once
    open), the route table, and the few things built on first use; nothing else."""

    def __init__(self, settings: Settings, hooks: tuple[Hook, ...] = ()) -> None:
        self.settings = settings
        self.hooks = hooks
        self.lifecycle = Lifecycle(settings.ledger_queue_size, max(settings.database_wait_s, 1.0))
        self.readiness = health.Readiness()
        self.backlog = Backlog()
        self._ui = Once(self._build_ui)
        self._openapi = Once(_openapi_document)
        self._stop = asyncio.Event()
        self._routes = self._table()
        self._not_found = route(self._no_route, None)
        self._messages_not_found = route(self._no_route, None, Api.MESSAGES)  # /v1/messages/...: Anthropic's 404
        self._ui_route = route(self._serve_ui, None)
        self._model_route = route(self._model_info, ("GET",))
        # /responses/{id} (GET, DELETE), /responses/{id}/cancel (POST), /responses/{id}/input_items (GET)
        self._response_routes = {
            action: route(self._response, methods, Api.RESPONSES) for action, methods in responses.ALLOWED.items()
        }

    @property
    def services(self) -> Services | None:
        """The services while the gateway is open (tests and tools look in)."""
        return self.lifecycle.services

    @property
    def ui(self) -> AdminUI | None:
        """The admin UI, once a request to /ui has built it."""
        return self._ui.built

    def _table(self) -> dict[str, Route]:
        table: dict[str, Route] = {}
        for path, (api, decode) in _MODEL_ROUTES.items():
            table[path] = route(partial(self._model, api, decode), ("POST",), api, watch=False)
        by_path: dict[str, dict[str, management.Handler]] = {}
        for (method, path), handler in ADMIN_ROUTES.items():
            by_path.setdefault(path, {})[method] = handler
        for path, handlers in by_path.items():
            table[path] = route(partial(self._admin, handlers), tuple(handlers))
        for path in webhooks.INGEST:
            table[path] = route(self._ingest, ("POST",))
        table[lago_webhooks.PATH] = route(self._lago_webhook, ("POST",))
        for path in _LIVE:
            table[path] = route(health.live, None, watch=False)  # sends two constant messages, raises nothing
        for path in _READY:
            table[path] = route(self._ready, None)
        table["/health/startup"] = route(self._startup, None)
        for path in _METRICS:
            table[path] = route(self._metrics, ("GET",))
        table["/openapi.json"] = route(self._openapi_json, ("GET",))
        table["/models"] = route(self._model_list, ("GET",))
        table["/messages/count_tokens"] = route(self._count_tokens, ("POST",), Api.MESSAGES)
        table["/responses"] = route(self._responses, ("POST",), Api.RESPONSES, watch=False)
        table["/responses/input_tokens"] = route(self._input_tokens, ("POST",), Api.RESPONSES)
        return table

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw: str = scope["path"]
        path = raw[3:] if raw.startswith("/v1/") else raw
        found = self._routes.get(path) or self._match(raw, path)
        if found.methods is not None and scope["method"] not in found.methods:
            return await found.refuse(scope, receive, send)
        await found.serve(scope, receive, send)

    def _match(self, raw: str, path: str) -> Route:
        """The routes with a parameter in their path."""
        if raw.startswith("/ui") and (len(raw) == 3 or raw[3] == "/"):
            return self._ui_route
        if path.startswith("/models/"):
            return self._model_route
        if path.startswith("/messages/"):
            return self._messages_not_found
        if path.startswith("/responses/"):
            found = responses.target({"path": path})
            return self._response_routes[found.action] if found is not None else self._not_found
        if path.endswith("/invoice-preview"):
            for prefix in _INVOICE_PREFIXES:
                customer_id = unquote(path[len(prefix) : -len("/invoice-preview")]) if path.startswith(prefix) else ""
                if customer_id and "/" not in customer_id:
                    return route(partial(self._admin, {"GET": _invoice(customer_id)}), ("GET",))
        return self._not_found

    # ------------------------------------------------------------------ endpoints

    async def _model(self, api: Api, decode: proxy.HeadDecoder, scope: Scope, receive: Receive, send: Send) -> None:
        # open: no await here; in the first seconds it waits, as the row could not be committed yet
        services = self.lifecycle.services or await self.lifecycle.wait_open()
        await proxy.handle(services, api, decode, scope, receive, send)

    async def _count_tokens(self, scope: Scope, receive: Receive, send: Send) -> None:
        services = self.lifecycle.services or await self.lifecycle.wait_open()
        await count_tokens.handle(services, scope, receive, send)

    async def _responses(self, scope: Scope, receive: Receive, send: Send) -> None:
        services = self.lifecycle.services or await self.lifecycle.wait_open()
        await responses.create(services, scope, receive, send)

    async def _response(self, scope: Scope, receive: Receive, send: Send) -> None:
        services = await self.lifecycle.wait_open()
        await responses.resource(services, scope, receive, send)

    async def _input_tokens(self, scope: Scope, receive: Receive, send: Send) -> None:
        services = await self.lifecycle.wait_open()
        await responses.input_tokens(services, scope, receive, send)

    async def _admin(
        self, handlers: Mapping[str, management.Handler], scope: Scope, receive: Receive, send: Send
    ) -> None:
        await management.handle(self.lifecycle.now(), handlers[scope["method"]], scope, receive, send)

    async def _ingest(self, scope: Scope, receive: Receive, send: Send) -> None:
        await webhooks.handle(self.lifecycle.now().webhooks, scope, receive, send)

    async def _lago_webhook(self, scope: Scope, receive: Receive, send: Send) -> None:
        await lago_webhooks.handle(self.lifecycle.now().lago_webhooks, scope, receive, send)

    async def _ready(self, scope: Scope, receive: Receive, send: Send) -> None:
        await health.ready(self.readiness, self.lifecycle, send)

    async def _startup(self, scope: Scope, receive: Receive, send: Send) -> None:
        await health.startup(self.lifecycle, send)

    async def _openapi_json(self, scope: Scope, receive: Receive, send: Send) -> None:
        await Responder(send, request_id(scope)).whole(200, self._openapi.get())

    async def _serve_ui(self, scope: Scope, receive: Receive, send: Send) -> None:
        services = self.lifecycle.now()
        await self._ui.get().handle(services, scope, receive, send)

    def _build_ui(self) -> AdminUI:
        from meterway.ui import pages
        from meterway.ui.routes import AdminUI

        return AdminUI(self.settings, pages.PAGES)

    async def _model_list(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Waits for the services as a model request does: a client lists models, then calls one."""
        services = await self.lifecycle.wait_open()
        incoming = Incoming(scope["headers"])
        principal = await services.auth.authenticate(
            bearer_token(incoming.authorization, incoming.x_api_key, incoming.api_key)
        )
        await Responder(send, request_id(scope)).whole(200, services.models.listing(principal))

    async def _model_info(self, scope: Scope, receive: Receive, send: Send) -> None:
        services = await self.lifecycle.wait_open()
        incoming = Incoming(scope["headers"])
        principal = await services.auth.authenticate(
            bearer_token(incoming.authorization, incoming.x_api_key, incoming.api_key)
        )
        path: str = scope["path"].removeprefix("/v1")
        model_id = path[len("/models/") :]
        body = services.models.one(model_id)
        if body is None:
            raise ModelNotFound(model_id, principal.visible(services.router.model_names))
        principal.check_model(model_id)
        await Responder(send, request_id(scope)).whole(200, body)

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Prometheus exposition (the database's backlogs read at most every few seconds). Waits
        for the services as model requests do: a scrape of a worker still opening is answered."""
        services = await self.lifecycle.wait_open()
        ledger = services.ledger
        services.metrics.ledger_stalled(ledger.stall_s(), ledger.stall_limit_s)
        services.metrics.cooling.set(services.router.cooldowns.count())
        await self.backlog.read(services)
        body, content_type = services.metrics.render()
        await Responder(send, request_id(scope)).whole(200, body, content_type.encode())

    async def _no_route(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise RouteNotFound(f"No route for {scope['method']} {scope['path']}.")

    # ------------------------------------------------------------------ lifespan

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        running = asyncio.create_task(self._run())
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        if self.lifecycle.state is State.OPENING:  # still waiting for the database: stop waiting
            running.cancel()
        self._stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        if self.lifecycle.state is not State.STOPPING:  # stopped while opening: nothing waits any more
            self.lifecycle.stopping()
        await send({"type": "lifespan.shutdown.complete"})

    async def _run(self) -> None:
        """Opens the services beside serving (liveness does not wait for SQLAlchemy's import or
        the database; readiness and model requests do), serves until told to stop, closes them."""
        try:
            async with open_services(self.settings, self.hooks) as services:
                self.lifecycle.opened(services)
                await self._stop.wait()
                self.lifecycle.stopping()
        except MeterwayError as e:
            if self.lifecycle.state is not State.OPENING:
                raise
            self.lifecycle.failed(e.message)
            log.error("store not opened: %s", e.message)
        except Exception as e:
            if self.lifecycle.state is not State.OPENING:
                log.exception("services did not close cleanly")
                return
            self.lifecycle.failed(f"{e.__class__.__name__}: {e}")
            log.exception("services could not be opened")


def _invoice(customer_id: str) -> management.Handler:
    from meterway.api import reports

    async def preview(admin: Admin, body: bytes, query: dict[str, str]) -> object:
        return await reports.invoice_preview(admin, customer_id, query)

    return preview


def _openapi_document() -> bytes:
    from meterway.api import openapi

    return openapi.document()


def create_app(settings: Settings, hooks: tuple[Hook, ...] = ()) -> Gateway:
    return Gateway(settings, hooks)
