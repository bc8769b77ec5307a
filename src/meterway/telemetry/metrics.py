"""Prometheus metrics: what the gateway served, what it cost, what it refused, and how its ledger
and billing export keep up. Exposed at `GET /metrics` (and `/health/metrics`).

With several workers (`serve --workers N`) every worker writes its values to files in one
directory (`PROMETHEUS_MULTIPROC_DIR`, which `serve` sets to a fresh directory before the
workers start) and a scrape, answered by any worker, sums them all: a counter never goes back
when a scrape lands on another worker.

Label cardinality is bounded: `team` and `customer` labels take at most `max_label_values`
distinct values per worker (the first seen); later ones are counted under `other`. Model and
deployment labels come from the configuration, so they are bounded by it (names a client sends
that are not configured are refused before they reach a metric).

The label children a request touches are looked up once and kept (`Metrics.observe`): a chat
charged to a team and a customer made 12 `.labels()` calls, two thirds of the step's time
(`bench/metrics_observe.py`: 31 µs per request before, 12 after).
A child is bound when first used, as `.labels()` would make it, so the exposition is the same;
the tables that keep them are bounded, and past a bound a child is looked up as before.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from meterway.context import RequestContext
    from meterway.errors import MeterwayError

log = logging.getLogger("meterway.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
ANOMALIES = frozenset(("usage_invalid", "usage_absurd"))  # the ledger's flags (`ledger.usage_checks`)
OTHER = "other"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
USD_PER_UNIT = 1e-10  # ledger money units
MAX_SERVED = 1024  # (endpoint, model) pairs whose children are kept: 4 endpoints x the configured models
MAX_STATUSES = 32  # status codes kept per pair; the gateway answers with a handful


class Bounded:
    """At most `limit` distinct label values; the rest are `other`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        if not value:
            return ""
        if value in self._seen:
            return value
        value = _label(value)  # a value the exposition can encode: one surrogate would fail every scrape
        if value in self._seen:
            return value
        if len(self._seen) >= self.limit:
            return OTHER
        self._seen.add(value)
        return value


class _Charged:
    """The children that count one model's, team's or customer's tokens and cost. A request with
    usage adds to all three, so they are bound together."""

    __slots__ = ("cost", "input", "output")

    def __init__(self, tokens: Counter, cost: Counter, label: str) -> None:
        self.input = tokens.labels(label, "input")
        self.output = tokens.labels(label, "output")
        self.cost = cost.labels(label)

    def add(self, inp: int, out: int, cost: float) -> None:
        self.input.inc(inp)
        self.output.inc(out)
        self.cost.inc(cost)


class _Served:
    """The children one (endpoint, model) pair uses, each bound when first needed: a series exists
    only once a request has touched it, exactly as with `.labels()` at every request."""

    __slots__ = ("duration", "hits", "misses", "model", "statuses", "ttft", "usage")

    def __init__(self, model: str) -> None:
        self.model = model
        self.statuses: dict[int, Counter] = {}
        self.duration: Histogram | None = None
        self.ttft: Histogram | None = None
        self.usage: _Charged | None = None
        self.hits: Counter | None = None
        self.misses: Counter | None = None


class Metrics:
    """Every metric of one process, registered on a registry of its own (no global state)."""

    def __init__(self, max_label_values: int = 100) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        # in multiprocess mode values live in files; the registry is only for the single-process case
        registry = None if self.multiprocess else CollectorRegistry(auto_describe=True)
        self.registry = registry
        self.teams = Bounded(max_label_values)
        self.customers = Bounded(max_label_values)
        # label children kept for `observe` (see the module's docstring); per instance, like the metrics
        self._served: dict[tuple[str, str], _Served] = {}
        self._teams: dict[str, _Charged] = {}
        self._customers: dict[str, _Charged] = {}
        self._max_charged = max_label_values + 1  # the bounded values and `other`
        self.requests = Counter(
            "meterway_requests", "Model requests answered", ["endpoint", "model", "status"], registry=registry
        )
        self.duration = Histogram(
            "meterway_request_duration_seconds",
            "Time from a request's arrival to its last byte",
            ["endpoint", "model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "meterway_time_to_first_token_seconds",
            "Time from a streamed request's arrival to its first byte",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter("meterway_tokens", "Tokens used, by model", ["model", "type"], registry=registry)
        self.cost = Counter(
            "meterway_cost_usd", "Cost of the requests served, by model (USD)", ["model"], registry=registry
        )
        self.team_tokens = Counter("meterway_team_tokens", "Tokens used, by team", ["team", "type"], registry=registry)
        self.team_cost = Counter("meterway_team_cost_usd", "Cost by team (USD)", ["team"], registry=registry)
        self.customer_tokens = Counter(
            "meterway_customer_tokens", "Tokens used, by customer", ["customer", "type"], registry=registry
        )
        self.customer_cost = Counter(
            "meterway_customer_cost_usd", "Cost by customer (USD)", ["customer"], registry=registry
        )
        self.rejections = Counter(
            "meterway_limit_rejections", "Requests refused by a limit, budget or block", ["reason"], registry=registry
        )
        self.upstream_errors = Counter(
            "meterway_upstream_errors",
            "Failed upstream calls, by deployment",
            ["deployment", "error_type"],
            registry=registry,
        )
        self.cache = Counter(
            "meterway_cache_lookups",
            "Response cache lookups, by model and result",
            ["model", "result"],
            registry=registry,
        )
        self.usage_anomalies = Counter(
            "meterway_usage_anomalies",
            "Requests whose upstream usage was not believed (invalid: counted here) or is beyond what they "
            "could use (absurd: recorded as reported)",
            ["deployment", "kind"],
            registry=registry,
        )
        self.cooling = Gauge(
            "meterway_deployments_cooling_down",
            "Deployments left out of routing after failures (cooldowns started here or announced by another replica)",
            multiprocess_mode="max",
            registry=registry,
        )
        self.ledger_waiting = Gauge(
            "meterway_ledger_queue_rows",
            "Ledger rows waiting to be committed",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.ledger_commit = Histogram(
            "meterway_ledger_commit_seconds",
            "Time to commit a group of ledger rows",
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        self.ledger_cut = Counter(
            "meterway_ledger_cut_rows",
            "Ledger rows the database refused as given, written cut to their columns' bounds (flagged 'cut')",
            registry=registry,
        )
        self.ledger_quarantined = Counter(
            "meterway_ledger_quarantined_rows",
            "Ledger rows the database refused even cut, kept in mw_ledger_quarantine",
            registry=registry,
        )
        self.ledger_quarantine = Gauge(
            "meterway_ledger_quarantine_rows",
            "Rows in mw_ledger_quarantine not yet reprocessed (their cost is added nowhere)",
            multiprocess_mode="mostrecent",
            registry=registry,
        )
        self.ledger_failing = Gauge(
            "meterway_ledger_write_failing",
            "1 while ledger rows have waited past the stall limit with nothing written (readiness fails)",
            multiprocess_mode="max",
            registry=registry,
        )
        self.ledger_stall = Gauge(
            "meterway_ledger_stall_seconds",
            "How long ledger rows have waited with nothing written (0 while writes go through)",
            multiprocess_mode="max",
            registry=registry,
        )
        self.billing_delivered = Counter(
            "meterway_billing_events_delivered", "Events Lago stored (or already had)", registry=registry
        )
        self.billing_parked = Counter(
            "meterway_billing_rows_parked", "Ledger rows parked by the sender", registry=registry
        )
        self.billing_failures = Counter(
            "meterway_billing_failed_batches", "Batches Lago did not take, to be retried", registry=registry
        )
        self.outbox_pending = Gauge(
            "meterway_billing_outbox_pending",
            "Exports waiting to be sent",
            multiprocess_mode="mostrecent",
            registry=registry,
        )
        self.outbox_parked = Gauge(
            "meterway_billing_outbox_parked", "Exports parked", multiprocess_mode="mostrecent", registry=registry
        )
        self.outbox_lag = Gauge(
            "meterway_billing_export_lag_seconds",
            "Age of the oldest pending export",
            multiprocess_mode="mostrecent",
            registry=registry,
        )
        self.prepaid_refusals = Counter(
            "meterway_prepaid_refusals",
            "Requests refused (enforce) or that would have been (observe) for want of prepaid credits",
            ["mode"],
            registry=registry,
        )
        self.prepaid_entities = Bounded(max_label_values)
        self.prepaid_available = Gauge(
            "meterway_prepaid_available",
            "Prepaid credits available to an entity with Lago wallets, in its plan's currency (last seen here)",
            ["entity"],
            multiprocess_mode="mostrecent",
            registry=registry,
        )

        self.alerts_sent = Counter(
            "meterway_alerts_sent",
            "Alerts delivered, by event and destination (webhook, slack)",
            ["event", "destination"],
            registry=registry,
        )
        self.alerts_pending = Gauge(
            "meterway_alerts_pending",
            "Alerts waiting to be delivered (in backoff while their receiver is down)",
            multiprocess_mode="mostrecent",
            registry=registry,
        )

    def prepaid_seen(self, entity: str, available: float) -> None:
        """An entity's available prepaid credits (at most `max_label_values` entities, the rest `other`)."""
        self.prepaid_available.labels(self.prepaid_entities(entity)).set(available)

    def ledger_kept(self, how: str) -> None:
        """A row of a failed group written cut, or quarantined."""
        (self.ledger_cut if how == "cut" else self.ledger_quarantined).inc()

    def ledger_stalled(self, seconds: float, limit_s: float) -> None:
        self.ledger_stall.set(seconds)
        self.ledger_failing.set(1 if seconds >= limit_s else 0)

    def attempt_failed(self, deployment_id: str, err: MeterwayError) -> None:
        """An attempt that failed and was retried or fell back; the request's last failure, if it
        fails, is counted by `observe`."""
        self.upstream_errors.labels(deployment_id, err.error_type).inc()

    def observe(self, ctx: RequestContext) -> None:
        """One finished request: called once, after its ledger row was made. It never raises: it
        runs after the response, where an error would only break the client's connection."""
        try:
            self._observe(ctx)
        except Exception:
            log.exception("metrics of request %s not recorded", ctx.request_id)

    def _observe(self, ctx: RequestContext) -> None:
        endpoint = ctx.api.value
        model = "" if ctx.deployment is None else str(ctx.model_group)  # as `.labels()` writes it
        served = self._served.get((endpoint, model))
        if served is None:
            served = self._serve(endpoint, model)
        status = ctx.status_code
        requests = served.statuses.get(status)
        if requests is None:
            requests = self.requests.labels(endpoint, model, str(status))
            if len(served.statuses) < MAX_STATUSES:
                served.statuses[status] = requests
        requests.inc()
        if ctx.ended_ns is not None:
            duration = served.duration
            if duration is None:
                duration = served.duration = self.duration.labels(endpoint, model)
            duration.observe((ctx.ended_ns - ctx.started_ns) / 1e9)
        if ctx.stream and ctx.first_byte_ns is not None:
            ttft = served.ttft
            if ttft is None:
                ttft = served.ttft = self.ttft.labels(model)
            ttft.observe((ctx.first_byte_ns - ctx.started_ns) / 1e9)
        if ctx.cache_looked:
            self._cache_lookup(served, ctx.cache_hit).inc()
        err = ctx.error
        if err is not None:
            reason = _rejection(err)
            if reason is not None:
                self.rejections.labels(reason).inc()
            elif ctx.forwarded and ctx.deployment is not None and err.status >= 500:
                self.upstream_errors.labels(ctx.deployment.id, err.error_type).inc()
        if ctx.flags and ctx.deployment is not None:
            for kind in ANOMALIES.intersection(ctx.flags):
                self.usage_anomalies.labels(ctx.deployment.id, kind.removeprefix("usage_")).inc()
        usage = ctx.counted
        if usage is None or not usage.total_tokens:
            return
        # counters only go up: a figure below zero (which the ledger never records) counts as none
        inp, out = max(usage.prompt_tokens, 0), max(usage.completion_tokens, 0)
        cost = max(ctx.cost_units or 0, 0) * USD_PER_UNIT
        charged = served.usage
        if charged is None:
            charged = served.usage = _Charged(self.tokens, self.cost, model)
        charged.add(inp, out, cost)
        principal = ctx.principal
        team = self.teams(principal.team_id if principal is not None else None)
        if team:
            self._charged(self._teams, self.team_tokens, self.team_cost, team).add(inp, out, cost)
        customer = self.customers(ctx.user)
        if customer:
            self._charged(self._customers, self.customer_tokens, self.customer_cost, customer).add(inp, out, cost)

    def _serve(self, endpoint: str, model: str) -> _Served:
        """The children of a new (endpoint, model) pair, kept unless MAX_SERVED pairs already are
        (then they serve this one request, looked up as before)."""
        served = _Served(model)
        if len(self._served) < MAX_SERVED:
            self._served[(endpoint, model)] = served
        return served

    def _cache_lookup(self, served: _Served, hit: bool) -> Counter:
        model = served.model
        if hit:
            if served.hits is None:
                served.hits = self.cache.labels(model, "hit")
            return served.hits
        if served.misses is None:
            served.misses = self.cache.labels(model, "miss")
        return served.misses

    def _charged(self, table: dict[str, _Charged], tokens: Counter, cost: Counter, label: str) -> _Charged:
        """A team's or customer's children. `label` is already bounded (`Bounded`), so the table
        holds at most max_label_values + 1 of them; the check keeps that true whatever comes."""
        charged = table.get(label)
        if charged is None:
            charged = _Charged(tokens, cost, label)
            if len(table) < self._max_charged:
                table[label] = charged
        return charged

    def render(self) -> tuple[bytes, str]:
        """The exposition text (summed over workers in multiprocess mode) and its content type."""
        if self.registry is not None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST


LABEL_CHARS = 128


def _label(value: str) -> str:
    """At most LABEL_CHARS characters, without lone surrogates (a customer id is the client's `user`)."""
    value = value[:LABEL_CHARS]
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def _rejection(err: object) -> str | None:
    """Why a limit refused the request, or None when the error was not a limit's."""
    from meterway.errors import BudgetExceeded, PermissionDenied, RateLimited

    if isinstance(err, BudgetExceeded):
        return "budget"
    if isinstance(err, RateLimited):
        return err.limit or "rate_limit"
    if isinstance(err, PermissionDenied) and err.code in ("customer_blocked",):
        return "blocked"
    return None
