"""The application: `Services` (everything built once) and the ASGI app that serves them.

Stores, clients and caches are built in `open_services`, opened and closed by the ASGI lifespan,
and passed along; nothing on the request path reaches for module-level state. The model routes
are plain ASGI callables found in one dict lookup; anything else falls through to 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC
from functools import partial
from typing import TYPE_CHECKING, Any

import aiohttp

from meterway.api import errors, heads, health, management, proxy, webhooks
from meterway.api.asgi import Incoming, Receive, Responder, Scope, Send, request_id_for
from meterway.api.models import ModelList
from meterway.auth import Authenticator, KeyCache, Principal, TTLCache, bearer_token
from meterway.auth.changes import Changes
from meterway.config.durations import parse_duration
from meterway.config.settings import Settings
from meterway.context import Hook
from meterway.errors import MeterwayError, ModelNotFound, RouteNotFound, ServiceUnavailable
from meterway.ledger import pricing
from meterway.ledger.recorder import Ledger
from meterway.limits import Budget, Limiter, LimitSpec
from meterway.limits.hook import LimitsHook
from meterway.limits.memory import MemoryLimiter
from meterway.providers.base import Api
from meterway.providers.transport import new_session
from meterway.routing import Router
from meterway.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from meterway.billing.sender import Sender
    from meterway.cache import ResponseCache
    from meterway.store.runtime import Store
    from meterway.telemetry.tracing import Tracing
    from meterway.ui.routes import AdminUI

log = logging.getLogger("meterway")


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    http: aiohttp.ClientSession  # one per worker: pooled, keep-alive
    auth: Authenticator
    router: Router
    models: ModelList
    hooks: tuple[Hook, ...] = ()
    redis: Any | None = None  # a client on the configured Redis, shared by limits and change announcements
    ledger: Ledger = field(default_factory=Ledger)
    metrics: Metrics = field(default_factory=Metrics)
    tracing: Tracing | None = None  # when traces are on
    cache: ResponseCache | None = None  # the response cache, when litellm_settings.cache is on


@asynccontextmanager
async def open_services(settings: Settings, hooks: tuple[Hook, ...] = ()) -> AsyncIterator[Services]:
    session = new_session(settings.upstream_pool_size)
    redis_client = None
    limiter: Limiter
    if settings.redis_url is not None:
        import redis.asyncio  # only where Redis is configured

        from meterway.limits.redis import RedisLimiter

        # A bounded pool that waits for a free connection instead of failing under load.
        pool = redis.asyncio.BlockingConnectionPool.from_url(settings.redis_url.reveal(), max_connections=64, timeout=5)
        redis_client = redis.asyncio.Redis.from_pool(pool)  # closing the client closes the pool
        limiter = RedisLimiter(redis_client, settings.redis_prefix + "limits:", settings.lease_ttl_s)
    else:
        limiter = MemoryLimiter(settings.lease_ttl_s)
    limits = LimitsHook(
        limiter,
        default_output_tokens=settings.budget_default_output_tokens,
        clamp_max_tokens=settings.budget_clamp_max_tokens,
        require_customer_binding=settings.require_customer_binding,
    )
    hooks = (limits, *hooks)
    metrics = Metrics(settings.telemetry.metrics_max_label_values)
    tracing = None
    if settings.telemetry.traces:
        from meterway import __version__
        from meterway.telemetry.tracing import Tracing

        tracing = Tracing(settings.telemetry, __version__)
    ledger = Ledger(capacity=settings.ledger_queue_size)
    cache = None
    if settings.cache is not None:
        from meterway.cache import LocalStore, RedisStore, ResponseCache

        store = RedisStore(redis_client) if settings.cache.type == "redis" else LocalStore()
        cache = ResponseCache(settings.cache, store, settings.redis_prefix + "cache")
        ledger.cache_hit_ratio = settings.cache.hit_cost_ratio

    def committed(seconds: float, waiting: int) -> None:
        metrics.ledger_commit.observe(seconds)
        metrics.ledger_waiting.set(waiting)

    ledger.on_commit = committed
    ledger.on_kept = metrics.ledger_kept
    ledger.on_stall = lambda seconds: metrics.ledger_stalled(seconds, ledger.stall_limit_s)
    try:
        yield Services(
            settings=settings,
            http=session,
            auth=Authenticator(settings.master_key),
            router=Router(
                settings.deployments, settings.routing, redis=redis_client, prefix=settings.redis_prefix + "router:"
            ),
            models=ModelList(settings),
            hooks=hooks,
            redis=redis_client,
            ledger=ledger,
            metrics=metrics,
            tracing=tracing,
            cache=cache,
        )
    finally:
        await session.close()
        if tracing is not None:  # queued spans flushed, bounded by the exporter's timeout
            await asyncio.to_thread(tracing.shutdown)
        if redis_client is not None:
            await redis_client.aclose()


Handler = Callable[["Services", Scope, Receive, Send], Awaitable[None]]

_MODEL_ROUTES: dict[str, tuple[Api, proxy.HeadDecoder]] = {
    "/chat/completions": (Api.CHAT, heads.chat),
    "/completions": (Api.COMPLETIONS, heads.completion),
    "/embeddings": (Api.EMBEDDINGS, heads.embedding),
    "/messages": (Api.MESSAGES, heads.messages),
    # paths some clients use for the same endpoints
    "/engines/chat/completions": (Api.CHAT, heads.chat),
    "/openai/chat/completions": (Api.CHAT, heads.chat),
}
_MANAGEMENT = management.all_routes()
_LIVE = frozenset({"/health/live", "/health/liveliness", "/health/liveness"})
_READY = frozenset({"/health/ready", "/health/readiness", "/health"})
_METRICS = frozenset({"/metrics", "/health/metrics"})
SENDER_STOP_S = 5.0  # at shutdown, the billing sender's round in flight may finish within this
BACKLOG_TTL_S = 5.0  # the billing outbox is read for metrics at most this often
STORE_RETRY_AFTER_S = 2.0  # a model request refused because the store is not open: retry after


class Gateway:
    """The ASGI application. Paths are served with and without the `/v1` prefix, as LiteLLM does."""

    def __init__(self, settings: Settings, hooks: tuple[Hook, ...] = ()) -> None:
        self.settings = settings
        self.hooks = hooks
        self.services: Services | None = None
        self.store: Store | None = None
        self.store_state = "opening"  # "open", or the reason it could not be opened
        self._store_settled = asyncio.Event()  # set once the store is open, or could not be opened
        self._store_waiters = 0  # model requests waiting for the store (bounded by the ledger's capacity)
        self.key_routes: management.KeyRoutes | None = None
        self.changes: Changes | None = None
        self._openapi: bytes | None = None
        self._listening: asyncio.Task[None] | None = None
        self._sending: asyncio.Task[None] | None = None
        self._cooling: asyncio.Task[None] | None = None  # takes in other replicas' cooldowns
        self._watching: asyncio.Task[None] | None = None  # takes in other replicas' model changes
        self.sender: Sender | None = None
        self._backlog_at = float("-inf")
        self.readiness = health.Readiness()
        self.webhooks: webhooks.Webhooks | None = None  # usage reported by other proxies, once the store is open
        self.ui: AdminUI | None = None  # the admin pages at /ui, built on first use

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if path in _LIVE:
            return await health.live(scope, receive, send)
        if path.startswith("/v1/"):
            path = path[3:]
        route = _MODEL_ROUTES.get(path)
        services = self.services
        if route is not None and services is not None:
            if scope["method"] != "POST":
                return await self._error(scope, send, RouteNotFound(f"Use POST for {path}.", status=405), route[0])
            if self.store_state != "open":  # the first seconds: the row could not be committed yet
                refused = await self._wait_for_store()
                if refused is not None:
                    return await self._error(scope, send, refused, route[0])
            api, decode = route
            return await proxy.handle(services, api, decode, scope, receive, send)
        if scope["path"].startswith("/ui") and (len(scope["path"]) == 3 or scope["path"][3] == "/"):
            return await self._ui(scope, receive, send)
        handler = _MANAGEMENT.get((scope["method"], path))
        if handler is None and path.endswith("/invoice-preview") and scope["method"] == "GET":
            handler = _invoice_handler(path)
        if handler is not None and services is not None:
            return await management.handle(services, self.key_routes, handler, scope, receive, send)
        if path in webhooks.INGEST and scope["method"] == "POST" and services is not None:
            return await webhooks.handle(self.webhooks, self.settings.max_body_bytes, scope, receive, send)
        if path == "/openapi.json" and scope["method"] == "GET":
            if self._openapi is None:
                from meterway.api import openapi

                self._openapi = openapi.document()
            return await Responder(send, request_id_for(Incoming(scope["headers"]))).whole(200, self._openapi)
        if path in _READY:
            return await health.ready(self.readiness, services, self.store, self.store_state, send)
        if path == "/health/startup":
            return await health.startup(services, self.store_state, scope, receive, send)
        if path in _METRICS and services is not None and scope["method"] == "GET":
            return await self._metrics(services, scope, send)
        if services is not None and (path == "/models" or path.startswith("/models/")):
            return await self._models(services, scope, send, path)
        if services is None:
            return await self._error(scope, send, RouteNotFound("The gateway is starting.", status=503), None)
        return await self._error(scope, send, RouteNotFound(f"No route for {scope['method']} {scope['path']}."), None)

    async def _wait_for_store(self) -> MeterwayError | None:
        """A model request that arrives while the store opens waits for it (at most as long as
        the store waits for its database, and no more requests than the ledger may hold), so its
        row is committed before its response completes, as for any other; else it gets 503 with
        Retry-After, unserved."""
        if self.store_state == "opening" and self._store_waiters < self.settings.ledger_queue_size:
            self._store_waiters += 1
            try:
                await asyncio.wait_for(self._store_settled.wait(), max(self.settings.database_wait_s, 1.0))
            except TimeoutError:
                pass
            finally:
                self._store_waiters -= 1
        if self.store_state == "open":
            return None
        err = ServiceUnavailable(
            "The gateway's database is not open yet, so the request could not be metered; retry shortly.",
            code="store_not_open",
        )
        err.retry_after = STORE_RETRY_AFTER_S
        return err

    async def _ui(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The admin UI, built on its first request: a gateway nobody browses never loads Jinja."""
        services = self.services
        if services is None:
            return await self._error(scope, send, RouteNotFound("The gateway is starting.", status=503), None)
        if self.ui is None:
            from meterway.ui.routes import AdminUI

            self.ui = AdminUI(self.settings)
        await self.ui.handle(services, self.key_routes, scope, receive, send)

    async def _models(self, services: Services, scope: Scope, send: Send, path: str) -> None:
        incoming = Incoming(scope["headers"])
        responder = Responder(send, request_id_for(incoming))
        try:
            principal = await services.auth.authenticate(
                bearer_token(incoming.authorization, incoming.x_api_key, incoming.api_key)
            )
            if path == "/models":
                return await responder.whole(200, services.models.listing(principal))
            model_id = path[len("/models/") :]
            body = services.models.one(model_id)
            if body is None:
                raise ModelNotFound(model_id, principal.visible(services.router.model_names))
            principal.check_model(model_id)
            await responder.whole(200, body)
        except MeterwayError as err:
            status, extra, payload = errors.render(err, None)
            await responder.whole(status, payload, extra=extra)

    async def _metrics(self, services: Services, scope: Scope, send: Send) -> None:
        """Prometheus exposition; the billing outbox and the ledger quarantine are read at most
        every few seconds (a scrape must stay cheap whatever their size)."""
        metrics = services.metrics
        store = self.store
        now = time.monotonic()
        ledger = services.ledger
        metrics.ledger_stalled(ledger.stall_s(), ledger.stall_limit_s)
        if store is not None and now - self._backlog_at > BACKLOG_TTL_S:
            self._backlog_at = now
            try:
                if self.settings.billing is not None:
                    pending, parked, age = await store.outbox.backlog()
                    metrics.outbox_pending.set(pending)
                    metrics.outbox_parked.set(parked)
                    metrics.outbox_lag.set(age or 0.0)
                metrics.ledger_quarantine.set((await store.ledger.quarantine_status())[0])
            except Exception as e:  # the database is away: the other metrics still answer
                log.warning("billing outbox and ledger quarantine not read for metrics: %s", e.__class__.__name__)
        body, content_type = metrics.render()
        await Responder(send, request_id_for(Incoming(scope["headers"]))).whole(200, body, content_type.encode())

    async def _error(self, scope: Scope, send: Send, err: MeterwayError, api: Api | None) -> None:
        responder = Responder(send, request_id_for(Incoming(scope["headers"])))
        status, extra, payload = errors.render(err, api)
        await responder.whole(status, payload, extra=extra)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        try:
            async with open_services(self.settings, self.hooks) as services:
                self.services = services
                if services.redis is not None and services.router.shares_cooldowns:
                    ids = [d.id for d in self.settings.deployments]
                    self._cooling = asyncio.create_task(services.router.cooldowns.listen(ids))
                opening = asyncio.create_task(self._open_store(services))
                # however opening ends (open, refused, a bug), model requests stop waiting for it
                opening.add_done_callback(lambda _: self._store_settled.set())
                await send({"type": "lifespan.startup.complete"})
                message = await receive()
                await services.ledger.flush(self.settings.shutdown_flush_s)
                self.services = None
                opening.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await opening
                if self.sender is not None and self._sending is not None:
                    # a batch on its way to Lago is answered and marked, not left to its claim's expiry
                    self.sender.stop()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(self._sending), SENDER_STOP_S)
                for task in (self._listening, self._sending, self._cooling, self._watching):
                    if task is not None:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                if self.store is not None:
                    await self.store.close()
        except Exception as e:
            log.exception("startup failed")
            await send({"type": "lifespan.startup.failed", "message": str(e)})
            return
        await send({"type": "lifespan.shutdown.complete"})

    async def _open_store(self, services: Services) -> None:
        """Opens (and migrates) the store beside serving: liveness does not wait for SQLAlchemy's
        import or the database; readiness does, and so do model requests (`_wait_for_store`)."""
        settings = self.settings
        try:
            runtime = await asyncio.to_thread(importlib.import_module, "meterway.store.runtime")
            store: Store = await runtime.Store.open(
                settings.database_url.reveal(),
                wait_s=settings.database_wait_s,
                run_migrations=settings.migrate_at_start,
            )
        except MeterwayError as e:
            self.store_state = e.message
            log.error("store not opened: %s", e.message)
            return
        self.store = store
        cache = KeyCache(partial(_principal_for, store))
        services.auth.keys = cache
        customers: TTLCache[LimitSpec] = TTLCache(partial(_customer_limits, store))
        for hook in services.hooks:
            if isinstance(hook, LimitsHook):
                hook.customers = customers
        self.changes = Changes(cache, customers, services.redis, settings.redis_prefix + "changes")
        if services.redis is not None:
            self._listening = asyncio.create_task(self.changes.listen())
        self.key_routes = management.KeyRoutes(store, self.changes, settings.salt_key or settings.master_key)
        store.ledger.export = settings.billing is not None  # billable rows enqueue their export
        if settings.billing is not None:
            from meterway.billing.setup import BillingLink

            self.key_routes.billing = BillingLink(settings.billing, services.http, tuple(settings.model_names()))
        if settings.billing is not None and settings.billing.run_sender:
            from meterway.billing.sender import Sender

            self.sender = Sender(settings.billing, store.outbox, services.http, services.metrics)
            self._sending = asyncio.create_task(self.sender.run())
            self.key_routes.sender = self.sender
        self.webhooks = webhooks.Webhooks(settings, store, services.http)
        self.key_routes.webhooks = self.webhooks
        await self._open_models(services, store)
        services.ledger.writer = store.ledger
        services.ledger.kick()
        self.store_state = "open"
        self._store_settled.set()  # model requests waiting for the store go on (before the task ends)

    async def _open_models(self, services: Services, store: Store) -> None:
        """Models in the database (STORE_MODEL_IN_DB): served from now on, and watched for other
        replicas' changes. Without it `/model/info` still lists the config file's."""
        from meterway.routing.runtime import RuntimeModels
        from meterway.store.models import ModelStore

        settings = self.settings
        key = settings.salt_key or settings.master_key
        models_store = None
        if settings.store_models and key is None:
            log.error("STORE_MODEL_IN_DB needs METERWAY_SALT_KEY (or a master key) to encrypt credentials")
        elif settings.store_models and key is not None:
            from meterway.store.sealing import Sealer

            models_store = ModelStore(store.engine, Sealer(key))
        runtime = RuntimeModels(
            settings,
            models_store,
            services.router,
            services.models,
            services.ledger,
            services.redis,
            settings.redis_prefix + "models",
            writable=models_store is not None,
        )
        if runtime.writable:
            try:
                await runtime.reload()
            except Exception:
                log.exception("stored models could not be read; serving the config file's")
            self._watching = asyncio.create_task(runtime.watch())
        assert self.key_routes is not None
        self.key_routes.models = runtime


async def _principal_for(store: Store, key_digest: str) -> Principal | None:
    try:
        record = await store.keys.get(key_digest)
        user = await store.users.get(record.user_id) if record is not None and record.user_id else None
        team = await store.teams.get(record.team_id) if record is not None and record.team_id else None
    except Exception as e:  # the database went away: the caller may retry, it is not their fault
        log.warning("key lookup failed: %s", e.__class__.__name__)
        raise ServiceUnavailable("The key store is unavailable; retry shortly.") from None
    if record is None:
        return None
    expires = record.expires
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    role = str(user["user_role"]) if user is not None else "key"  # a user's key acts with the user's role
    return Principal(
        key_id=record.token,
        role=role,
        models=record.models,
        key_alias=record.key_alias,
        user_id=record.user_id,
        team_id=record.team_id,
        blocked=record.blocked,
        team_blocked=bool(team["blocked"]) if team is not None else False,
        team_models=tuple(team["models"] or ()) if team is not None else (),
        expires=expires,
        customer_id=record.customer_id or (team["customer_id"] if team is not None else None),
        limits=tuple(
            spec
            for spec in (
                _spec("key", record.token, vars_of(record)),
                _spec("user", record.user_id, user),
                _spec("team", record.team_id, team),
            )
            if spec is not None
        ),
    )


def vars_of(record: object) -> dict[str, Any]:
    return {name: getattr(record, name) for name in LIMIT_COLUMNS}


LIMIT_COLUMNS = (
    "rpm_limit",
    "tpm_limit",
    "max_parallel_requests",
    "max_budget",
    "spend",
    "budget_duration",
    "budget_reset_at",
)


def _spec(scope: str, ident: str | None, row: Mapping[str, Any] | None) -> LimitSpec | None:
    """An entity's limits and budget, as the limiter counts them."""
    if row is None or ident is None:
        return None
    budget = None
    if row["max_budget"] is not None or row["budget_duration"]:
        reset_at = row["budget_reset_at"]
        if reset_at is not None and reset_at.tzinfo is None:
            reset_at = reset_at.replace(tzinfo=UTC)  # SQLite keeps no zone; the store writes UTC
        duration = row["budget_duration"]
        budget = Budget(
            max_budget=pricing.units(row["max_budget"]) if row["max_budget"] is not None else None,
            spend=pricing.units(row["spend"] or 0),
            duration_s=int(parse_duration(duration, "budget_duration").total_seconds()) if duration else None,
            reset_at=reset_at.timestamp() if reset_at is not None else None,
        )
    blocked = bool(row.get("blocked")) if scope == "customer" else False
    return LimitSpec(scope, ident, row["rpm_limit"], row["max_parallel_requests"], row["tpm_limit"], budget, blocked)


async def _customer_limits(store: Store, customer_id: str) -> LimitSpec | None:
    try:
        row = await store.customers.get(customer_id)
    except Exception as e:
        log.warning("customer lookup failed: %s", e.__class__.__name__)
        raise ServiceUnavailable("The customer store is unavailable; retry shortly.") from None
    return _spec("customer", customer_id, row)


def _invoice_handler(path: str) -> management.Handler | None:
    """`/customer/{id}/invoice-preview` (also under `/end_user/`)."""
    for prefix in ("/customer/", "/end_user/"):
        if path.startswith(prefix):
            from urllib.parse import unquote

            from meterway.api import reports

            customer_id = unquote(path[len(prefix) : -len("/invoice-preview")])
            if customer_id and "/" not in customer_id:
                return lambda routes, body, query: reports.invoice_preview(routes, customer_id, query)
    return None


def create_app(settings: Settings, hooks: tuple[Hook, ...] = ()) -> Gateway:
    return Gateway(settings, hooks)
