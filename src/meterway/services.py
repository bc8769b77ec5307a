"""`Services`: everything a worker builds once and passes along, and `Lifecycle`: whether it exists yet.

Services are built whole, in dependency order, by `open_services`: the HTTP session and Redis
first, then the store (opened, and migrated, in the background: it may wait for its database),
and from the open store the key cache, the customers cache, the ledger's writer and the one admin
service (`admin.Admin`) that the API, the UI and the CLI share. Every part is given what it needs
when it is constructed; nothing is assigned to any of them afterwards.

The gateway must answer `/health/live` at once, though, before the store is open. So it holds a
`Lifecycle` from the start: a state (OPENING, OPEN, FAILED with its reason, STOPPING) set once per
transition, and the `Services` once they are OPEN. Routes that need services ask the lifecycle:
model requests that arrive while it is OPENING wait for it (bounded: no longer than the store
waits for its database, and no more of them than the ledger may hold), so their rows are committed
before their responses complete like any other; when it is not OPEN they get 503 `store_not_open`
with Retry-After, unserved. The alternative, Services built before the store and completed when
it opens, is what this replaces: it needed half-built objects (an authenticator without keys, a
ledger without a writer) and assignments after construction to finish them.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import importlib
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC
from decimal import Decimal
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import aiohttp

from meterway.admin import Admin
from meterway.alerts import Alerts
from meterway.api.models import ModelList
from meterway.api.response_meter import NativeMeter
from meterway.api.response_runs import Responses
from meterway.api.webhooks import Webhooks
from meterway.auth import Authenticator, KeyCache, Principal, TTLCache
from meterway.auth.changes import Changes
from meterway.config.durations import parse_duration
from meterway.config.settings import Settings
from meterway.context import Hook
from meterway.errors import ServiceUnavailable
from meterway.ledger import pricing
from meterway.ledger.recorder import Ledger
from meterway.limits import Budget, Limiter, LimitSpec
from meterway.limits.hook import LimitsHook
from meterway.limits.memory import MemoryLimiter
from meterway.providers.google_auth import Refreshers, first_tokens
from meterway.providers.transport import HttpUpstream, Upstream, new_session
from meterway.routing import Router
from meterway.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from meterway.api.lago_webhooks import LagoWebhooks
    from meterway.billing.prepaid import AlertSink, Prepaid, PrepaidAlert
    from meterway.billing.sender import Sender
    from meterway.billing.setup import BillingLink
    from meterway.cache import ResponseCache
    from meterway.config.billing import Prepaid as PrepaidConfig
    from meterway.routing.runtime import RuntimeModels
    from meterway.store.runtime import Store
    from meterway.telemetry.tracing import Tracing

log = logging.getLogger("meterway")

SENDER_STOP_S = 5.0  # at shutdown, the billing sender's round in flight may finish within this
STORE_RETRY_AFTER_S = 2.0  # a model request refused because the store is not open: retry after


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    http: aiohttp.ClientSession  # one per worker: pooled, keep-alive
    upstream: Upstream  # every HTTP deployment's calls, over `http` (the demo model has its own)
    store: Store
    auth: Authenticator
    router: Router
    models: ModelList
    ledger: Ledger
    metrics: Metrics
    changes: Changes  # key, user, team and customer changes, heard from every replica
    admin: Admin  # what the management API, the UI and the CLI call their handlers with
    webhooks: Webhooks  # usage reported by other proxies
    responses: Responses  # the Responses API's stored responses and background runs
    hooks: tuple[Hook, ...] = ()
    responses_hooks: tuple[Hook, ...] = ()  # the hooks of POST /v1/responses: `hooks` and the Responses stage
    redis: Any | None = None  # a client on the configured Redis, shared by limits and change announcements
    tracing: Tracing | None = None  # when traces are on
    cache: ResponseCache | None = None  # the response cache, when litellm_settings.cache is on
    customers: TTLCache[LimitSpec] | None = None  # a customer's id -> its limits and model list
    prepaid: Prepaid | None = None  # prepaid credits from Lago wallets, when billing.prepaid is not off
    lago_webhooks: LagoWebhooks | None = None  # POST /webhooks/lago, with prepaid credits
    alerts: Alerts | None = None  # budget and credit alerts: `enqueue` for other modules (a no-op when off)


class State(enum.Enum):
    OPENING = "opening"
    OPEN = "open"
    FAILED = "failed"  # the store could not be opened; `Lifecycle.reason` says why
    STOPPING = "stopping"


class Lifecycle:
    """Where a gateway is between start and stop, and its `Services` while it is OPEN. Each
    transition happens once: OPENING -> OPEN or FAILED, then STOPPING."""

    def __init__(self, wait_limit: int, wait_s: float) -> None:
        self._state = State.OPENING
        self._reason: str | None = None
        self._services: Services | None = None
        self._settled = asyncio.Event()  # set on leaving OPENING, however that happens
        self._waiting = 0  # model requests waiting for OPEN
        self._wait_limit = wait_limit  # at most this many (the ledger's capacity)
        self._wait_s = wait_s  # each for at most this long (the store's wait for its database)

    @property
    def state(self) -> State:
        return self._state

    @property
    def services(self) -> Services | None:
        """The services while OPEN; None before and after."""
        return self._services

    @property
    def store_text(self) -> str:
        """The store's state as the probes report it: "opening", "open", or why it is not open."""
        if self._state is State.FAILED:
            return self._reason or "failed"
        return str(self._state.value)

    def opened(self, services: Services) -> None:
        self._services = services
        self._state = State.OPEN
        self._settled.set()

    def failed(self, reason: str) -> None:
        self._reason = reason
        self._state = State.FAILED
        self._settled.set()

    def stopping(self) -> None:
        self._services = None
        self._state = State.STOPPING
        self._settled.set()

    def now(self) -> Services:
        """The services, or a 503 while there are none: only the model routes, the model list and metrics wait."""
        services = self._services
        if services is None:
            raise self._refusal("The gateway is starting (its database is not open yet); retry shortly.", "starting")
        return services

    async def wait_open(self) -> Services:
        """The services, waiting (bounded) while they are being opened, for the model routes, the
        model list and metrics: see the module docstring."""
        services = self._services
        if services is not None:
            return services
        if self._state is State.OPENING and self._waiting < self._wait_limit:
            self._waiting += 1
            try:
                await asyncio.wait_for(self._settled.wait(), self._wait_s)
            except TimeoutError:
                pass
            finally:
                self._waiting -= 1
        services = self._services
        if services is None:
            raise self._refusal(
                "The gateway's database is not open yet, so the request could not be metered; retry shortly.",
                "store_not_open",
            )
        return services

    @staticmethod
    def _refusal(message: str, code: str) -> ServiceUnavailable:
        err = ServiceUnavailable(message, code=code)
        err.retry_after = STORE_RETRY_AFTER_S
        return err


@asynccontextmanager
async def open_services(
    settings: Settings, hooks: tuple[Hook, ...] = (), prepaid_alert: AlertSink | None = None
) -> AsyncIterator[Services]:
    """Everything, in dependency order; closed in reverse. Raises `MeterwayError` (e.g.
    `DatabaseUnavailable`) when the store cannot be opened. `prepaid_alert`: where prepaid
    credits_low / credits_exhausted alerts go (none: dropped)."""
    async with AsyncExitStack() as stack:
        session = new_session(settings.upstream_pool_size)
        stack.push_async_callback(session.close)
        redis_client = None
        limiter: Limiter
        if settings.redis_url is not None:
            import redis.asyncio  # only where Redis is configured

            from meterway.limits.redis import RedisLimiter

            # A bounded pool that waits for a free connection instead of failing under load.
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                settings.redis_url.reveal(), max_connections=64, timeout=5
            )
            redis_client = redis.asyncio.Redis.from_pool(pool)  # closing the client closes the pool
            stack.push_async_callback(redis_client.aclose)
            limiter = RedisLimiter(redis_client, settings.redis_prefix + "limits:", settings.lease_ttl_s)
            stack.push_async_callback(limiter.aclose)  # leases given back before Redis closes
        else:
            limiter = MemoryLimiter(settings.lease_ttl_s)
        metrics = Metrics(settings.telemetry.metrics_max_label_values)
        tracing = None
        if settings.telemetry.traces:
            from meterway import __version__
            from meterway.telemetry.tracing import Tracing

            tracing = Tracing(settings.telemetry, __version__)
            stack.push_async_callback(asyncio.to_thread, tracing.shutdown)  # queued spans flushed, bounded

        # SQLAlchemy's import alone takes longer than a liveness probe may wait: in a thread.
        runtime = await asyncio.to_thread(importlib.import_module, "meterway.store.runtime")
        store: Store = await runtime.Store.open(
            settings.database_url.reveal(),
            wait_s=settings.database_wait_s,
            run_migrations=settings.migrate_at_start,
            export=settings.billing is not None,  # billable rows enqueue their export
        )
        stack.push_async_callback(store.close)

        keys: KeyCache = TTLCache(partial(_principal_for, store))
        customers: TTLCache[LimitSpec] = TTLCache(partial(_customer_limits, store))
        changes = Changes(keys, customers, redis_client, settings.redis_prefix + "changes")
        alerts = Alerts(settings.alerting, store.engine, session, metrics)
        limits = LimitsHook(
            limiter,
            default_output_tokens=settings.budget_default_output_tokens,
            clamp_max_tokens=settings.budget_clamp_max_tokens,
            require_customer_binding=settings.require_customer_binding,
            customers=customers,
            alerts=alerts if alerts.enabled else None,
        )
        cache = None
        if settings.cache is not None:
            from meterway.cache import LocalStore, RedisStore, ResponseCache

            kept = RedisStore(redis_client) if settings.cache.type == "redis" else LocalStore()
            cache = ResponseCache(settings.cache, kept, settings.redis_prefix + "cache")

        def committed(seconds: float, waiting: int) -> None:
            metrics.ledger_commit.observe(seconds)
            metrics.ledger_waiting.set(waiting)

        ledger = Ledger(
            capacity=settings.ledger_queue_size,
            writer=store.ledger,
            on_commit=committed,
            on_kept=metrics.ledger_kept,
            on_stall=metrics.ledger_stalled,
            cache_hit_ratio=settings.cache.hit_cost_ratio if settings.cache is not None else Decimal(0),
            default_tags=settings.default_tags,
        )
        router = Router(
            settings.deployments, settings.routing, redis=redis_client, prefix=settings.redis_prefix + "router:"
        )
        models = ModelList(settings)
        billing: BillingLink | None = None
        sender: Sender | None = None
        if settings.billing is not None:
            from meterway.billing.setup import BillingLink

            billing = BillingLink(settings.billing, session, tuple(settings.model_names()))
            if settings.billing.run_sender:
                from meterway.billing.sender import Sender

                sender = Sender(settings.billing, store.outbox, session, metrics)
        webhooks = Webhooks(settings, store, session)
        prepaid: Prepaid | None = None
        lago_webhooks: LagoWebhooks | None = None
        admission: tuple[Hook, ...] = (limits,)
        if settings.billing is not None and settings.billing.prepaid.on:
            from meterway.api.lago_webhooks import LagoWebhooks
            from meterway.billing.prepaid import Prepaid, no_alerts
            from meterway.limits.prepaid import PrepaidHook

            sink = prepaid_alert or (_credits_alerts(alerts, settings.billing.prepaid) if alerts.enabled else no_alerts)
            prepaid = Prepaid(settings.billing, store, session, sink, budget=limiter.budget)
            lago_webhooks = LagoWebhooks(prepaid)
            # after the limits: a request over its own budget or rate is refused before credits are held
            admission = (limits, PrepaidHook(prepaid, limiter, limits, metrics))
        upstream = HttpUpstream(session)
        meter = NativeMeter(
            store.responses,
            upstream,
            router,
            ledger,
            keys,
            settings.responses_background_max,
            settings.max_upstream_body_bytes,
        )
        responses = Responses(
            store.responses,
            settings.responses_ttl_s,
            settings.responses_background_max,
            settings.max_body_bytes,
            meter,
            router,
        )
        refreshers = Refreshers()
        stack.push_async_callback(refreshers.close)
        # expiring credentials (vertex_ai/'s Google tokens, Bedrock's AWS credentials) kept fresh off the
        # request path; the first ones waited for, bounded: one that fails is logged and retried, its
        # requests get a 502 at once meanwhile
        await first_tokens(refreshers.serve(d.provider for d in settings.deployments))
        runtime_models = await _runtime_models(settings, store, router, models, ledger, redis_client, refreshers)
        services = Services(
            settings=settings,
            http=session,
            upstream=upstream,
            store=store,
            auth=Authenticator(settings.master_key, keys),
            router=router,
            models=models,
            ledger=ledger,
            metrics=metrics,
            changes=changes,
            admin=Admin(
                store,
                changes,
                secret=settings.salt_key or settings.master_key,
                billing=billing,
                sender=sender,
                webhooks=webhooks,
                models=runtime_models,
                prepaid=prepaid,
            ),
            webhooks=webhooks,
            responses=responses,
            customers=customers,
            hooks=(*admission, *hooks),
            # POST /v1/responses only (no other request crosses it): after the limits, so a request
            # over budget is refused before a background one is answered
            responses_hooks=(*admission, responses, *hooks),
            redis=redis_client,
            tracing=tracing,
            cache=cache,
            prepaid=prepaid,
            lago_webhooks=lago_webhooks,
            alerts=alerts,
        )
        tasks: list[asyncio.Task[None]] = []
        stack.push_async_callback(_cancel, tasks)  # after the sender's stop (callbacks run in reverse)
        if redis_client is not None:
            tasks.append(asyncio.create_task(changes.listen()))
            if router.shares_cooldowns:  # takes in other replicas' cooldowns
                tasks.append(asyncio.create_task(router.cooldowns.listen([d.id for d in settings.deployments])))
        tasks.append(asyncio.create_task(responses.purge()))
        if prepaid is not None:  # readings of entities with wallets kept fresh, one replica each
            tasks.append(asyncio.create_task(prepaid.run()))
        if runtime_models.writable:  # takes in other replicas' model changes
            tasks.append(asyncio.create_task(runtime_models.watch()))
        if sender is not None:
            sending = asyncio.create_task(sender.run())
            tasks.append(sending)
            stack.push_async_callback(_stop_sender, sender, sending)
        if alerts.enabled:
            alerting = asyncio.create_task(alerts.run())
            tasks.append(alerting)
            stack.push_async_callback(_stop_alerts, alerts, alerting)
        # last in, first out: the rows queued at shutdown are written before anything closes
        stack.push_async_callback(ledger.flush, settings.shutdown_flush_s)
        stack.push_async_callback(responses.close)  # before that flush: background runs write their rows
        yield services


async def _runtime_models(
    settings: Settings,
    store: Store,
    router: Router,
    models: ModelList,
    ledger: Ledger,
    redis: Any | None,
    refreshers: Refreshers,
) -> RuntimeModels:
    """Models in the database (STORE_MODEL_IN_DB): served from now on, and watched for other
    replicas' changes. Without it `/model/info` still lists the config file's. (Imported here:
    they load SQLAlchemy, which the store's opening has just loaded off the event loop.)"""
    from meterway.routing.runtime import RuntimeModels
    from meterway.store.models import ModelStore

    key = settings.seal_key
    models_store = None
    if settings.store_models and key is None:
        log.error("STORE_MODEL_IN_DB needs METERWAY_SALT_KEY (or a master key) to encrypt credentials")
    elif settings.store_models and key is not None:
        from meterway.store.sealing import Sealer

        models_store = ModelStore(store.engine, Sealer(key))
    runtime = RuntimeModels(
        settings,
        models_store,
        router,
        models,
        ledger,
        redis,
        settings.redis_prefix + "models",
        writable=models_store is not None,
        refreshers=refreshers,
    )
    if runtime.writable:
        try:
            await runtime.reload()
        except Exception:
            log.exception("stored models could not be read; serving the config file's")
    return runtime


async def _stop_sender(sender: Sender, sending: asyncio.Task[None]) -> None:
    """A batch on its way to Lago is answered and marked, not left to its claim's expiry."""
    sender.stop()
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(sending), SENDER_STOP_S)


def _credits_alerts(alerts: Alerts, config: PrepaidConfig) -> AlertSink:
    """The prepaid stage's alert call-site, wired to the alerts outbox: credits_low and
    credits_exhausted in LiteLLM's shape, once per dedupe key (which carries the funded amount)."""
    from meterway.alerts.model import credits_alert

    low = float(config.low_balance) if config.low_balance is not None else None

    async def enqueue(alert: PrepaidAlert) -> None:
        event: Literal["credits_low", "credits_exhausted"] = (
            "credits_low" if alert.event == "credits_low" else "credits_exhausted"
        )
        await alerts.enqueue(
            credits_alert(
                event,
                alert.entity_id,
                alert.dedupe,
                available=float(alert.available),
                funded=float(alert.funded),
                currency=alert.currency or "USD",
                low_balance=low,
            )
        )

    return enqueue


async def _stop_alerts(alerts: Alerts, running: asyncio.Task[None]) -> None:
    """A post in flight is answered and marked, not left to its claim's expiry."""
    alerts.stop()
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(running), SENDER_STOP_S)


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


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
                _spec("key", record.token, {name: getattr(record, name) for name in LIMIT_COLUMNS}),
                _spec("user", record.user_id, user),
                _spec("team", record.team_id, team),
            )
            if spec is not None
        ),
    )


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
    if scope != "customer":
        return LimitSpec(scope, ident, row["rpm_limit"], row["max_parallel_requests"], row["tpm_limit"], budget)
    return LimitSpec(
        scope,
        ident,
        row["rpm_limit"],
        row["max_parallel_requests"],
        row["tpm_limit"],
        budget,
        blocked=bool(row.get("blocked")),
        models=tuple(str(m) for m in row.get("models") or ()),
    )


async def _customer_limits(store: Store, customer_id: str) -> LimitSpec | None:
    try:
        row = await store.customers.get(customer_id)
    except Exception as e:
        log.warning("customer lookup failed: %s", e.__class__.__name__)
        raise ServiceUnavailable("The customer store is unavailable; retry shortly.") from None
    return _spec("customer", customer_id, row)
