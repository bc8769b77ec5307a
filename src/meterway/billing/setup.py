"""`billing check` and `billing setup`: make Lago ready for meterway's events before any is sent.

Lago takes an event with 200 and never bills it when its billable metric does not exist, when a
`model` filter on the metric does not list the event's model (it is billed at the charge's default
price and flagged), or when its subscription does not exist or had not started yet (contract
sections 4 and 5). `check` finds each of these without changing anything; `setup` fixes what it
can: it creates the metric meterway's events need, adds the models in use (and the token types,
when events are split by type) to the metric's filters, and, when asked, creates the Lago customer
and subscription of every meterway customer that names a `billing_plan_code`. Every step is
idempotent: running setup twice changes nothing the second time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson

from meterway.config.billing import METADATA, Billing, additive
from meterway.errors import ConfigError


@dataclass(frozen=True, slots=True)
class BillingLink:
    """What the billing endpoints need to talk to Lago: the settings, an HTTP session and the
    models the gateway serves (they go on the metric's `model` filter)."""

    billing: Billing
    session: aiohttp.ClientSession
    models: tuple[str, ...] = ()


TOKEN_TYPES = ("input", "cached_input", "cache_write", "output", "reasoning")
TIMEOUT = aiohttp.ClientTimeout(total=15)


@dataclass(slots=True)
class Step:
    """One thing checked or done, readable on the CLI and in JSON."""

    name: str
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass(slots=True)
class Outcome:
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.steps.append(Step(name, ok, detail))

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "steps": [s.as_dict() for s in self.steps]}


def summable(billing: Billing) -> tuple[str, ...]:
    """The figures an event carries that a sum metric may add up: meterway's own names, LiteLLM's
    Lago callback's (`response_cost`), so a LiteLLM user's existing metric keeps counting, and
    whatever `billing.properties` adds from a figure or from request metadata (a metadata value
    may be a number: its owner knows; `check` says it comes from the client). Properties it drops
    are not carried. A split event carries one figure, its `tokens` (config refuses the others)."""
    if billing.split_by_token_type:
        return ("tokens",)
    return tuple(n for n, s in billing.event_properties().items() if additive(s))


def model_property(billing: Billing) -> str | None:
    """The property that carries the row's model group (what the router is asked for), the one a
    `model` filter lists the gateway's models on; None when `billing.properties` sends none."""
    if billing.split_by_token_type:
        return "model"
    return next((n for n, s in billing.event_properties().items() if s == "model"), None)


def wanted_metric(billing: Billing, models: Iterable[str]) -> dict[str, Any]:
    """The billable metric meterway's events are aggregated by: a sum of the tokens each event
    carries, filterable by model (and by token type when events are split by type). Raises
    ConfigError when the events carry no total tokens to sum (`billing.properties` dropped it)."""
    return {
        "name": "LLM tokens" if billing.event_code == "llm_tokens" else billing.event_code,
        "code": billing.event_code,
        "description": "Tokens served by meterway",
        "aggregation_type": "sum_agg",
        "field_name": "tokens" if billing.split_by_token_type else _tokens_name(billing),
        "recurring": False,
        "filters": wanted_filters(billing, models),
    }


def wanted_filters(billing: Billing, models: Iterable[str]) -> list[dict[str, Any]]:
    """The metric's filters: the models on the property carrying the model group (none when no
    property carries it), and the token types when events are split by type."""
    model = model_property(billing)
    filters = [{"key": model, "values": sorted(set(models))}] if model else []
    if billing.split_by_token_type:
        filters.append({"key": "type", "values": list(TOKEN_TYPES)})
    return [f for f in filters if f["values"]]


def _tokens_name(billing: Billing) -> str:
    """The property carrying total tokens (renamed by `billing.properties`). None carrying it is
    refused: summing another figure (prompt tokens, a cost) under a metric of tokens would bill
    the wrong thing without a word."""
    named = [n for n, s in billing.event_properties().items() if s == "total_tokens"]
    if not named:
        raise ConfigError(
            "no event property carries total tokens (billing.properties drops total_tokens): "
            "add one, e.g. {total_tokens: total_tokens}, or create the metric in Lago yourself on the figure "
            "it should sum and run `meterway billing check`"
        )
    return named[0]


class Lago:
    """The few Lago calls setup and check make; answers are (status, body), status 0 when Lago
    did not answer."""

    def __init__(self, billing: Billing, session: aiohttp.ClientSession) -> None:
        self.base = billing.api_base + "/api/v1"
        self.session = session
        self.headers = {"Authorization": f"Bearer {billing.api_key.reveal()}", "Content-Type": "application/json"}

    async def call(
        self, method: str, path: str, body: Any = None, within: aiohttp.ClientTimeout = TIMEOUT
    ) -> tuple[int, Any]:
        try:
            async with self.session.request(
                method,
                self.base + path,
                data=orjson.dumps(body) if body is not None else None,
                headers=self.headers,
                timeout=within,
            ) as resp:
                raw = await resp.read()
                try:
                    return resp.status, orjson.loads(raw) if raw else None
                except orjson.JSONDecodeError:
                    return resp.status, raw[:200].decode(errors="replace")
        except (aiohttp.ClientError, TimeoutError) as e:
            return 0, f"{e.__class__.__name__}: {e}"


def _explain(status: int, body: Any) -> str:
    if status == 0:
        return f"no answer ({body})"
    return f"HTTP {status}: {orjson.dumps(body).decode() if not isinstance(body, str) else body}"


async def _metric(lago: Lago, billing: Billing, out: Outcome) -> dict[str, Any] | None:
    """The metric as Lago has it, after checking Lago answers and takes the key; None (and a
    failed step) when it cannot be read."""
    status, body = await lago.call("GET", f"/billable_metrics/{billing.event_code}")
    if status == 0:
        out.add("lago", False, f"Lago at {billing.api_base} did not answer: {body}")
        return None
    if status == 401:
        out.add("lago", True, f"Lago answers at {billing.api_base}")
        out.add("api_key", False, "Lago refused the API key (401)")
        return None
    out.add("lago", True, f"Lago answers at {billing.api_base}")
    out.add("api_key", True, "Lago accepts the API key")
    if status == 404:
        return {}
    if status != 200 or not isinstance(body, dict) or not isinstance(body.get("billable_metric"), dict):
        out.add("billable_metric", False, f"could not read metric '{billing.event_code}': {_explain(status, body)}")
        return None
    metric: dict[str, Any] = body["billable_metric"]
    return metric


def _declared(metric: Mapping[str, Any], key: str) -> set[str] | None:
    for f in metric.get("filters") or []:
        if f.get("key") == key:
            return {str(v) for v in f.get("values") or []}
    return None


def _metric_problems(metric: Mapping[str, Any], billing: Billing) -> list[str]:
    """What makes an existing metric count meterway's events wrongly (beyond missing filter
    values, which setup can add). Its field may be any figure the events carry (`summable`), but
    not one the client sets (request metadata): a caller would choose what it is billed."""
    carried = summable(billing)
    problems = []
    if metric.get("aggregation_type") != "sum_agg":
        problems.append(f"aggregation_type is {metric.get('aggregation_type')!r}, events need 'sum_agg'")
    field_name = metric.get("field_name")
    if field_name not in carried:
        names = ", ".join(repr(n) for n in carried)
        problems.append(f"field_name is {field_name!r}, events carry {names}")
    else:
        source = billing.event_properties().get(str(field_name), "")
        if not billing.split_by_token_type and source.startswith(METADATA):
            problems.append(
                f"field_name is {field_name!r}, which billing.properties takes from the request's metadata "
                f"({source}): the client sets it, so each caller would choose what it is billed; "
                "sum a figure the gateway measured (total_tokens, cost)"
            )
    return problems


def _filter_problems(metric: Mapping[str, Any], billing: Billing) -> list[tuple[str, str]]:
    """Filters of the metric that events cannot match as meterway fills them: on a property no
    event carries, or on `model` when that property carries something else than the model group
    (setup lists the model groups there). Lago bills such events at the charge's default price."""
    carried: Mapping[str, str] = billing.event_properties()
    if billing.split_by_token_type:  # its own three, and what `billing.properties` adds to each
        added = {n: s for n, s in billing.properties if s is not None}
        carried = {**added, "type": "type", "model": "model", "tokens": "tokens"}
    model = model_property(billing)
    problems = []
    for f in metric.get("filters") or []:
        key = str(f.get("key"))
        if key not in carried:
            unsent = key == "model" and model is None
            why = "no event carries it" + (" (billing.properties sends no property from `model`)" if unsent else "")
            problems.append(
                (
                    key,
                    f"the metric filters on '{key}' but {why}: Lago would bill every event at "
                    "the charge's default price",
                )
            )
        elif key == "model" and model != "model":
            source = carried["model"]
            problems.append(
                (
                    key,
                    f"the metric's 'model' filter lists model groups, but billing.properties fills "
                    f"'model' from {source}" + (f"; the model group is in '{model}'" if model else ""),
                )
            )
    return problems


def _missing_values(metric: Mapping[str, Any], want: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Filter values the events will carry that the metric does not declare (only for filters the
    metric has: a metric without a `model` filter counts every model)."""
    missing: dict[str, list[str]] = {}
    for f in want:
        declared = _declared(metric, f["key"])
        if declared is not None:
            lacking = sorted(set(f["values"]) - declared)
            if lacking:
                missing[f["key"]] = lacking
    return missing


async def check(billing: Billing, session: aiohttp.ClientSession, models: Sequence[str]) -> Outcome:
    """Lago answers, takes the key, and has a metric that counts the events of `models`."""
    out = Outcome()
    lago = Lago(billing, session)
    metric = await _metric(lago, billing, out)
    if metric is None:
        return out
    if not metric:
        out.add("billable_metric", False, f"no billable metric '{billing.event_code}' (run `meterway billing setup`)")
        return out
    problems = _metric_problems(metric, billing)
    out.add("billable_metric", not problems, "; ".join(problems) or f"metric '{billing.event_code}' counts the events")
    for key, detail in _filter_problems(metric, billing):
        out.add(f"filter:{key}", False, detail)
    for key, values in _missing_values(metric, wanted_filters(billing, models)).items():
        out.add(
            f"filter:{key}",
            False,
            f"the metric's '{key}' filter does not list {', '.join(values)}: Lago would bill them at the "
            "charge's default price (run `meterway billing setup`)",
        )
    return out


async def setup(
    billing: Billing,
    session: aiohttp.ClientSession,
    models: Sequence[str],
    customers: Sequence[Mapping[str, Any]] = (),
) -> Outcome:
    """Creates or completes the metric; subscribes `customers` (rows with a `billing_plan_code`)."""
    out = Outcome()
    lago = Lago(billing, session)
    metric = await _metric(lago, billing, out)
    if metric is None:
        return out
    if not metric:
        try:
            want = wanted_metric(billing, models)
        except ConfigError as e:
            out.add("billable_metric", False, f"cannot create '{billing.event_code}': {e}")
            return out
        status, body = await lago.call("POST", "/billable_metrics", {"billable_metric": want})
        ok = status == 200
        out.add("billable_metric", ok, f"created '{billing.event_code}'" if ok else _explain(status, body))
    else:
        problems = _metric_problems(metric, billing)
        for key, detail in _filter_problems(metric, billing):
            out.add(f"filter:{key}", False, detail)
        missing = _missing_values(metric, wanted_filters(billing, models))
        if missing:
            filters = [
                {"key": f["key"], "values": sorted({*f.get("values", []), *missing.get(f["key"], [])})}
                for f in metric.get("filters") or []
            ]
            status, body = await lago.call(
                "PUT", f"/billable_metrics/{billing.event_code}", {"billable_metric": {"filters": filters}}
            )
            added = "; ".join(f"{k}: {', '.join(v)}" for k, v in missing.items())
            ok = status == 200
            out.add("filters", ok, f"added to the metric's filters: {added}" if ok else _explain(status, body))
        out.add(
            "billable_metric",
            not problems,
            "; ".join(problems) or f"'{billing.event_code}' exists" + ("" if missing else " and lists every model"),
        )
    for row in customers:
        await _subscribe(lago, row, out)
    return out


async def _subscribe(lago: Lago, row: Mapping[str, Any], out: Outcome) -> None:
    """The Lago customer and subscription of a meterway customer: both upserts in Lago (a
    subscription with the same id, customer and plan is returned as it is). The subscription
    starts when the customer was created, so none of its usage predates it."""
    customer_id = str(row["customer_id"])
    external_customer = row.get("billing_external_customer_id") or customer_id
    subscription = row.get("billing_external_subscription_id") or customer_id
    if "." in external_customer:
        # Lago's customer routes end an id at a dot (contract section 9): its usage could not be read
        out.add(f"customer:{customer_id}", False, f"Lago customer id '{external_customer}' must not contain a dot")
        return
    body: dict[str, Any] = {"external_id": external_customer}
    if row.get("alias"):
        body["name"] = row["alias"]
    status, answer = await lago.call("POST", "/customers", {"customer": body})
    if status != 200:
        out.add(f"customer:{customer_id}", False, f"Lago customer '{external_customer}': {_explain(status, answer)}")
        return
    started = row.get("created_at") or datetime.now(UTC)
    if isinstance(started, datetime):
        started = (started if started.tzinfo else started.replace(tzinfo=UTC)).isoformat()
    status, answer = await lago.call(
        "POST",
        "/subscriptions",
        {
            "subscription": {
                "external_customer_id": external_customer,
                "plan_code": row["billing_plan_code"],
                "external_id": subscription,
                "subscription_at": started,
                "billing_time": "calendar",
            }
        },
    )
    ok = status == 200
    detail = (
        f"Lago customer '{external_customer}' subscribed to plan '{row['billing_plan_code']}' as '{subscription}'"
        if ok
        else f"subscription '{subscription}': {_explain(status, answer)}"
    )
    out.add(f"customer:{customer_id}", ok, detail)
