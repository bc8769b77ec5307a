"""The Lago price of meterway's events, computed as Lago computes a subscription's current usage.

The prepaid budget (docs/billing.md) compares what Lago has counted against a wallet with what
meterway has sent since; both sides must be priced the same way, so this module follows Lago's
own code (getlago/lago-api, read at 1b1c24a, Aug 2026) rather than a reading of its docs:

* `Fees::ChargeService#init_fees`: a charge with filters is priced once per filter, with the
  filter's properties, and once more for the events no filter matches, with the charge's own;
  each of those is one fee, and so is each pricing group inside them (`ChargeModels::
  GroupedService`). A fee with negative units or amount is 0. Current usage carries fees with
  no units too, so a tier's `flat_amount` is owed from the first tier on (lago-api #5760).
* `ChargeFilters::MatchingAndIgnoredService` and the Postgres event store: an event is in a
  filter's fee when its properties hold one of the filter's values on every key
  (`__ALL_FILTER_VALUES__` is every value the metric declares), unless a more specific filter
  (the same keys and fewer values, or more keys) also matches it; the charge's own fee takes the
  events no filter matches. Values compare as Postgres' `properties->>key` text.
* `BillableMetrics::Aggregations::{Sum,Count}Service`: `sum_agg` reads `field_name`, and an event
  whose value is missing or not `^-?\\d+(\\.\\d+)?$` is left out entirely (not even counted);
  `count_agg` counts every event. The metric's `rounding_function` rounds each fee's units.
* `ChargeModels::{Standard,Package,Graduated,Volume,Percentage}Service`: the formulas.

Not computed here, listed in `PlanPrice.unpriced` so the caller asks Lago or falls back: other
aggregations (max, unique count, latest, weighted sum, custom), metrics with an `expression` or
`recurring` (their units carry over from earlier periods or need an evaluator), and the models
graduated_percentage, dynamic and custom.

Left out on purpose: taxes (the caller applies `billing.prepaid.tax_rate`), `min_amount_cents`
(a true-up Lago adds only when it invoices, never in current usage), and rounding to cents (Lago
rounds each fee; the budget keeps the exact figure, the difference is under a cent per fee).

For the caller comparing with a wallet: Lago's ongoing usage (`Wallets::Balance::
AllocateOngoingUsageByWalletsService`) is current usage with each fee rounded to cents plus its
taxes, minus the fees of pay_in_advance charges already invoiced (those debit the balance at
once); this module prices a pay_in_advance charge as current usage does, so it is the caller's
to net it out.

Approximations, all for grouped events (`Tally.add(event, count > 1)`, a SQL GROUP BY of ledger
rows) under a percentage charge with free units or per-transaction bounds, which need each
event's own value: the group is taken as `count` events of its mean value, in the order added.
Events are assumed to be added in timestamp order (Lago orders them so for free units). A
`per_transaction_min/max_amount` is applied as written; Lago applies it only on a premium
licence, which a plan carrying one is taken to have.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Final

import orjson

from meterway.errors import LagoPlanInvalid

ALL_FILTER_VALUES: Final = "__ALL_FILTER_VALUES__"
PRICED_MODELS: Final = frozenset({"standard", "package", "graduated", "volume", "percentage"})
PRICED_AGGREGATIONS: Final = frozenset({"sum_agg", "count_agg"})
_ZERO: Final = Decimal(0)
_NUMERIC_CHARS: Final = frozenset("0123456789")


def _text(value: Any) -> str | None:
    """A property as Postgres' `properties->>key` reads it from the stored JSONB: numbers in
    their normalised decimal form, booleans lower case, null as SQL NULL (matches nothing)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None  # JSON has no NaN: the encoder sends null
        return format(Decimal(repr(value)), "f")
    if isinstance(value, Decimal):
        return format(value, "f") if value.is_finite() else None
    return orjson.dumps(value).decode()


def _numeric(value: Any) -> Decimal | None:
    """The value Lago sums, or None when its Postgres store leaves the event out: the text must
    match `^-?\\d+(\\.\\d+)?$` (no exponent, no leading `+` or `.`)."""
    text = _text(value)
    if not text:
        return None
    body = text[1:] if text.startswith("-") else text
    whole, dot, frac = body.partition(".")
    if not whole or not set(whole) <= _NUMERIC_CHARS or (dot and (not frac or not set(frac) <= _NUMERIC_CHARS)):
        return None
    return Decimal(text)


def _ceil(value: Decimal) -> Decimal:
    return value.to_integral_value(rounding=ROUND_CEILING)


def _floor(value: Decimal) -> Decimal:
    return value.to_integral_value(rounding=ROUND_FLOOR)


def _below(start: Decimal, step: Decimal, n: int, limit: Decimal) -> int:
    """How many of `start + step * i`, i = 1..n, are < limit (running totals under a free
    allowance), without a loop over n."""
    if n <= 0:
        return 0
    if step == 0:
        return n if start < limit else 0
    count = int(_ceil((limit - start) / step)) - 1 if step > 0 else n - int(_floor((start - limit) / -step))
    return max(0, min(n, count))


# --------------------------------------------------------------------------------------------
# parsing


def _bad(where: str, why: str) -> LagoPlanInvalid:
    return LagoPlanInvalid(f"Lago plan: {where}: {why}")


def _decimal(raw: Any, where: str, *, optional: bool = False) -> Decimal | None:
    if raw is None or (optional and raw == ""):
        if optional:
            return None
        raise _bad(where, "missing")
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise _bad(where, f"not a decimal: {raw!r}")
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        raise _bad(where, f"not a decimal: {raw!r}") from None
    if not value.is_finite() or value < 0:
        raise _bad(where, f"not a finite non-negative decimal: {raw!r}")
    return value


def _required(raw: Any, where: str) -> Decimal:
    value = _decimal(raw, where)
    assert value is not None  # _decimal raises when a required value is missing
    return value


@dataclass(frozen=True, slots=True)
class _Tier:
    low: Decimal
    high: Decimal | None
    per_unit: Decimal
    flat: Decimal


def _tiers(raw: Any, where: str) -> tuple[_Tier, ...]:
    if not isinstance(raw, list) or not raw:
        raise _bad(where, "ranges must be a non-empty list")
    out = []
    for i, r in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(r, Mapping):
            raise _bad(at, "not an object")
        high = _decimal(r.get("to_value"), f"{at}.to_value", optional=True)
        low = _required(r.get("from_value"), f"{at}.from_value")
        if high is not None and high < low:
            raise _bad(at, "to_value below from_value")
        out.append(
            _Tier(
                low,
                high,
                _required(r.get("per_unit_amount"), f"{at}.per_unit_amount"),
                _required(r.get("flat_amount"), f"{at}.flat_amount"),
            )
        )
    if out[-1].high is not None:
        raise _bad(where, "the last range must be open (to_value null), as Lago requires")
    return tuple(out)


@dataclass(frozen=True, slots=True)
class _Model:
    """One set of charge properties (the charge's own, or a filter's) under one charge model."""

    kind: str
    group_keys: tuple[str, ...] = ()
    amount: Decimal = _ZERO  # standard: per unit; package: per package
    package_size: Decimal = Decimal(1)
    free_units: Decimal = _ZERO
    tiers: tuple[_Tier, ...] = ()
    adjacent: bool = False  # graduated tiers where each from_value is the previous to_value
    rate: Decimal = _ZERO
    fixed: Decimal = _ZERO
    free_events: int = 0
    free_total: Decimal = _ZERO
    min_tx: Decimal | None = None
    max_tx: Decimal | None = None

    @property
    def bounded(self) -> bool:
        """Lago prices a percentage event by event when per-transaction bounds are set."""
        return self.min_tx is not None or self.max_tx is not None

    @property
    def tracks_free(self) -> bool:
        return self.free_events > 0 or self.free_total > 0

    def clamp(self, amount: Decimal) -> Decimal:
        if self.min_tx is not None and amount < self.min_tx:
            return self.min_tx
        if self.max_tx is not None and amount > self.max_tx:
            return self.max_tx
        return amount


def _group_keys(props: Mapping[str, Any], where: str) -> tuple[str, ...]:
    raw = props.get("pricing_group_keys") or props.get("grouped_by") or []
    if not isinstance(raw, list) or not all(isinstance(k, str) and k for k in raw):
        raise _bad(where, "pricing_group_keys must be a list of names")
    return tuple(raw)


def _model(kind: str, props: Any, where: str, wallet_group: bool) -> _Model:
    if props is None:
        props = {}
    if not isinstance(props, Mapping):
        raise _bad(where, "properties is not an object")
    keys = _group_keys(props, where)
    if wallet_group and "target_wallet_code" not in keys:
        keys += ("target_wallet_code",)  # Lago groups such a charge's fees by target wallet
    if kind == "standard":
        return _Model(kind, keys, amount=_required(props.get("amount"), f"{where}.amount"))
    if kind == "package":
        size = _required(props.get("package_size"), f"{where}.package_size")
        if size <= 0:
            raise _bad(f"{where}.package_size", "must be above 0")
        free = _decimal(props.get("free_units"), f"{where}.free_units", optional=True)
        amount = _required(props.get("amount"), f"{where}.amount")
        return _Model(kind, keys, amount=amount, package_size=size, free_units=free or _ZERO)
    if kind == "graduated":
        tiers = _tiers(props.get("graduated_ranges"), f"{where}.graduated_ranges")
        adjacent = len(tiers) >= 2 and all(b.low == (a.high or _ZERO) for a, b in itertools.pairwise(tiers))
        return _Model(kind, keys, tiers=tiers, adjacent=adjacent)
    if kind == "volume":
        tiers = tuple(sorted(_tiers(props.get("volume_ranges"), f"{where}.volume_ranges"), key=lambda t: t.low))
        return _Model(kind, keys, tiers=tiers)
    # percentage
    events = props.get("free_units_per_events")
    if events is not None and (isinstance(events, bool) or not isinstance(events, int) or events < 0):
        raise _bad(f"{where}.free_units_per_events", f"not a count: {events!r}")
    low = _decimal(props.get("per_transaction_min_amount"), f"{where}.per_transaction_min_amount", optional=True)
    high = _decimal(props.get("per_transaction_max_amount"), f"{where}.per_transaction_max_amount", optional=True)
    if low is not None and high is not None and low > high:
        raise _bad(where, "per_transaction_min_amount above per_transaction_max_amount")
    return _Model(
        kind,
        keys,
        rate=_required(props.get("rate"), f"{where}.rate"),
        fixed=_decimal(props.get("fixed_amount"), f"{where}.fixed_amount", optional=True) or _ZERO,
        free_events=events or 0,
        free_total=_decimal(
            props.get("free_units_per_total_aggregation"), f"{where}.free_units_per_total_aggregation", optional=True
        )
        or _ZERO,
        min_tx=low,
        max_tx=high,
    )


Values = Mapping[str, frozenset[str]]
Frozen = tuple[tuple[str, frozenset[str]], ...]  # Values, kept hashable in the parsed plan


def _freeze(values: Values) -> Frozen:
    return tuple(sorted(values.items()))


def _matches(props: Mapping[str, Any], values: Frozen) -> bool:
    """Postgres' `properties->>key IN (values)` on every key (a missing key never matches)."""
    return all(_text(props.get(key)) in wanted for key, wanted in values)


def _ignored_matches(props: Mapping[str, Any], values: Frozen) -> bool:
    """Lago's exclusion clause: `coalesce(properties->>key, '') IN (values)` on every key with
    values; a clause with none excludes nothing."""
    clauses = [(k, v) for k, v in values if v]
    return bool(clauses) and all((_text(props.get(k)) or "") in v for k, v in clauses)


@dataclass(frozen=True, slots=True)
class _Filter:
    values: Frozen  # ALL_FILTER_VALUES expanded to the metric's values
    ignored: tuple[Frozen, ...]  # more specific filters whose events this one leaves to them
    model: _Model

    def takes(self, props: Mapping[str, Any]) -> bool:
        return _matches(props, self.values) and not any(_ignored_matches(props, i) for i in self.ignored)


def _ignored(i: int, filters: list[tuple[Values, Mapping[str, list[str]]]]) -> tuple[Values, ...]:
    """`ChargeFilters::MatchingAndIgnoredService` for filter i: the other filters that overlap
    it on every one of its keys. With the same keys: an identical older one (earlier in the
    list, standing for Lago's created_at) takes all; one with a subset of its values is left out
    as it is; one that only overlaps loses the values this filter has (so both count the shared
    events, as in Lago). With more keys: left out as it is."""
    mine, raw = filters[i]
    out: list[Values] = []
    for j, (child, _) in enumerate(filters):
        if j == i or not all(any(v in child.get(k, frozenset()) for v in vs) for k, vs in mine.items()):
            continue
        if sorted(child) == sorted(mine):
            if all(child[k] == mine[k] for k in child):
                if j < i:
                    out.append(child)
                continue
            if not all(child[k] <= mine[k] for k in child):
                child = {k: v if raw.get(k) == [ALL_FILTER_VALUES] else v - mine[k] for k, v in child.items()}
        out.append(child)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class _Charge:
    code: str
    field: str | None  # None: count_agg
    rounding: tuple[str, int] | None
    filters: tuple[_Filter, ...]
    default: _Model
    rate: Decimal  # applied_pricing_unit's conversion rate to the plan currency, else 1

    def buckets(self, props: Mapping[str, Any]) -> list[int]:
        """The fees (filter index, or -1 for the charge's own) an event counts in."""
        if not self.filters:
            return [-1]
        hit = [i for i, f in enumerate(self.filters) if f.takes(props)]
        # the charge's own fee ignores every filter's events, by the same exclusion clause
        if not any(_ignored_matches(props, f.values) for f in self.filters):
            hit.append(-1)
        return hit

    def model(self, bucket: int) -> _Model:
        return self.default if bucket < 0 else self.filters[bucket].model

    def round(self, units: Decimal) -> Decimal:
        """`BillableMetrics::Aggregations::ApplyRoundingService` (BigDecimal#round is half up)."""
        if self.rounding is None:
            return units
        how, precision = self.rounding
        step = Decimal(1).scaleb(-precision)
        mode = {"ceil": ROUND_CEILING, "floor": ROUND_FLOOR, "round": ROUND_HALF_UP}[how]
        return units.quantize(step, rounding=mode)


def _metric(code: str, metric: Any, where: str) -> tuple[str | None, str | None, tuple[str, int] | None]:
    """(why unpriced or None, field_name, rounding) of a billable metric."""
    if not isinstance(metric, Mapping):
        raise _bad(where, f"no billable metric {code!r} given")
    agg = metric.get("aggregation_type")
    if not isinstance(agg, str):
        raise _bad(where, "billable metric without aggregation_type")
    if agg not in PRICED_AGGREGATIONS or metric.get("expression") or metric.get("recurring"):
        return agg, None, None
    name = metric.get("field_name")
    if agg == "sum_agg" and (not isinstance(name, str) or not name):
        raise _bad(where, "sum_agg metric without field_name")
    how = metric.get("rounding_function")
    precision = metric.get("rounding_precision") or 0
    if how is not None and (how not in ("ceil", "floor", "round") or not isinstance(precision, int)):
        raise _bad(where, f"rounding {how!r}/{precision!r} is not Lago's")
    return None, name if agg == "sum_agg" else None, (how, precision) if how else None


def _declared(metric: Mapping[str, Any], where: str) -> dict[str, list[str]]:
    raw = metric.get("filters") or []
    if not isinstance(raw, list):
        raise _bad(where, "billable metric filters is not a list")
    out = {}
    for f in raw:
        if not isinstance(f, Mapping) or not isinstance(f.get("key"), str) or not isinstance(f.get("values"), list):
            raise _bad(where, f"billable metric filter {f!r} is not {{key, values}}")
        out[f["key"]] = [str(v) for v in f["values"]]
    return out


def _charge(raw: Any, metrics: Mapping[str, Mapping[str, Any]], where: str) -> _Charge | str:
    """A priced charge, or the "<metric code>/<charge_model>" of one not computed here."""
    if not isinstance(raw, Mapping):
        raise _bad(where, "not an object")
    code, kind = raw.get("billable_metric_code"), raw.get("charge_model")
    if not isinstance(code, str) or not code:
        raise _bad(where, "no billable_metric_code")
    if not isinstance(kind, str) or not kind:
        raise _bad(where, "no charge_model")
    where = f"charge {code}/{kind}"
    metric = metrics.get(code)
    why, name, rounding = _metric(code, metric, where)
    if why is not None or kind not in PRICED_MODELS:
        return f"{code}/{kind}"
    assert metric is not None  # _metric raises when it is missing
    declared = _declared(metric, where)
    wallet = bool(raw.get("accepts_target_wallet"))
    default = _model(kind, raw.get("properties"), f"{where}.properties", wallet)
    parsed: list[tuple[Values, Mapping[str, list[str]], _Model]] = []
    filters = raw.get("filters") or []
    if not isinstance(filters, list):
        raise _bad(where, "filters is not a list")
    for i, f in enumerate(filters):
        at = f"{where}.filters[{i}]"
        values = f.get("values") if isinstance(f, Mapping) else None
        if not isinstance(values, Mapping) or not values:
            raise _bad(at, "values must be a non-empty object")
        expanded: dict[str, frozenset[str]] = {}
        for key, wanted in values.items():
            if not isinstance(wanted, list) or not wanted:
                raise _bad(f"{at}.values.{key}", "must be a non-empty list")
            if ALL_FILTER_VALUES in wanted:
                if key not in declared:
                    raise _bad(f"{at}.values.{key}", "__ALL_FILTER_VALUES__ on a key the metric does not declare")
                expanded[key] = frozenset(declared[key])
            else:
                expanded[key] = frozenset(str(v) for v in wanted)
        assert isinstance(f, Mapping)
        parsed.append((expanded, values, _model(kind, f.get("properties"), f"{at}.properties", wallet)))
    pairs = [(v, r) for v, r, _ in parsed]
    rate = Decimal(1)
    unit = raw.get("applied_pricing_unit")
    if isinstance(unit, Mapping):
        rate = _required(unit.get("conversion_rate"), f"{where}.applied_pricing_unit.conversion_rate")
    return _Charge(
        code,
        name,
        rounding,
        tuple(_Filter(_freeze(v), tuple(map(_freeze, _ignored(i, pairs))), m) for i, (v, _, m) in enumerate(parsed)),
        default,
        rate,
    )


# --------------------------------------------------------------------------------------------
# tallying


@dataclass(slots=True)
class _Fee:
    """What one fee (a charge, filter and pricing group) has aggregated so far: enough to price
    it by its model without keeping the events."""

    units: Decimal = _ZERO
    count: int = 0
    # percentage, free units: Lago's running totals of the first events' values
    run_len: int = 0
    run_last: Decimal = _ZERO
    run_below: int = 0  # running totals under free_units_per_total_aggregation
    # percentage, per-transaction bounds: the event-by-event reduce, carried forward
    free_events: int = 0
    free_total: Decimal = _ZERO
    bounded_total: Decimal = _ZERO

    @staticmethod
    def new(model: _Model) -> _Fee:
        return _Fee(free_events=model.free_events, free_total=model.free_total)

    def copy(self) -> _Fee:
        return _Fee(
            self.units,
            self.count,
            self.run_len,
            self.run_last,
            self.run_below,
            self.free_events,
            self.free_total,
            self.bounded_total,
        )

    def add(self, value: Decimal, count: int, model: _Model, summed: bool) -> None:
        self.units += value
        self.count += count
        if model.kind != "percentage" or count <= 0:
            return
        mean = value if count == 1 else value / count
        if model.bounded:
            self._bounded(mean, count, model)
        elif summed and model.tracks_free:
            self._running(value, mean, count, model)

    def _running(self, value: Decimal, mean: Decimal, count: int, model: _Model) -> None:
        """`SumService#running_total`: the running totals of the first free_units_per_events
        events, or, without it, of the events until the total passes the free amount."""
        if model.free_events > 0:
            n = min(count, model.free_events - self.run_len)
        elif self.run_len and self.run_last > model.free_total:
            n = 0  # Lago stopped at the first total past the free amount
        elif mean > 0:
            n = min(count, int(_floor((model.free_total - self.run_last) / mean)) + 1)
        else:
            n = count
        if n <= 0:
            return
        self.run_below += _below(self.run_last, mean, n, model.free_total)
        self.run_last += value if n == count else mean * n
        self.run_len += n

    def _bounded(self, mean: Decimal, count: int, model: _Model) -> None:
        """`PercentageService#compute_amount_with_transaction_min_max`, for `count` events of
        value `mean`, in closed form so a large group is not a long loop."""
        left = count
        if self.free_total > 0:
            if mean <= 0:  # nothing is used up: every event stays free
                self.free_total -= mean * left
                self.free_events -= left
                return
            absorbed = min(left, int(_ceil(self.free_total / mean)) - 1)
            self.free_total -= mean * absorbed
            self.free_events -= absorbed
            left -= absorbed
            if left:
                value, self.free_total, self.free_events = mean - self.free_total, _ZERO, 0
                left -= 1
                self.bounded_total += model.clamp(value * model.rate / 100 + model.fixed)
        elif self.free_events > 0:
            free = min(left, self.free_events)
            self.free_events -= free
            left -= free
        if left:
            self.bounded_total += left * model.clamp(mean * model.rate / 100 + model.fixed)


def _price(model: _Model, fee: _Fee, units: Decimal, summed: bool) -> Decimal:
    """One fee by its charge model, as `ChargeModels::*Service#compute_amount`."""
    if model.kind == "standard":
        return units * model.amount
    if model.kind == "package":
        paid = units - model.free_units
        # Lago divides in floats (`fdiv`); exact decimals here, equal below 2**53 units
        return _ZERO if paid < 0 else _ceil(paid / model.package_size) * model.amount
    if model.kind == "graduated":
        total = _ZERO
        for tier in model.tiers:
            top = tier.high if tier.high is not None and units >= tier.high else units
            n = top if tier.low == 0 else top - tier.low + (0 if model.adjacent else 1)
            total += (n * tier.per_unit if n else _ZERO) + tier.flat
            if tier.high is None or tier.high >= units:
                break
        return total
    if model.kind == "volume":
        for tier in model.tiers:
            if tier.low <= _ceil(units) and (tier.high is None or units <= tier.high):
                return units * tier.per_unit + tier.flat
        return _ZERO  # no tier holds it (negative units): Lago fails the charge; the fee is 0
    return _percentage(model, fee, units, summed)


def _percentage(model: _Model, fee: _Fee, units: Decimal, summed: bool) -> Decimal:
    if model.bounded:
        return fee.bounded_total
    # running totals: a count's are 1..count; a sum's were kept as events came
    if not model.tracks_free:
        run_len, last, below = 0, _ZERO, 0
    elif summed:
        run_len, last, below = fee.run_len, fee.run_last, fee.run_below
    else:
        run_len, last = fee.count, Decimal(fee.count)
        below = _below(_ZERO, Decimal(1), fee.count, model.free_total)
    if last == 0:
        free_value = _ZERO
    elif 0 < model.free_events < run_len:
        free_value = Decimal(model.free_events) if not summed else last  # only a count's list runs past it
    elif model.free_total == 0 or last <= model.free_total:
        free_value = last
    else:
        free_value = model.free_total
    share = _ZERO if free_value > units else (units - free_value) * model.rate / 100
    free_count = min((c for c in (model.free_events, below) if c), default=0)
    fixed = (
        _ZERO if units == 0 or model.fixed == 0 or free_count >= fee.count else (fee.count - free_count) * model.fixed
    )
    return share + fixed


@dataclass(frozen=True, slots=True)
class PlanPrice:
    """A Lago plan's charges, parsed once per reading of the plan, to price meterway's events."""

    currency: str
    unpriced: tuple[str, ...]  # "<metric code>/<charge_model>" of the charges not computed here
    _charges: tuple[_Charge, ...] = field(default=(), repr=False)
    _codes: frozenset[str] = field(default=frozenset(), repr=False)

    @staticmethod
    def parse(plan: Mapping[str, Any], metrics: Mapping[str, Mapping[str, Any]]) -> PlanPrice:
        """plan: the "plan" object of GET /api/v1/plans/{code}; metrics: metric code -> the
        "billable_metric" object of GET /api/v1/billable_metrics/{code}. Checked whole here, so
        a plan meterway cannot read fails its reading (LagoPlanInvalid) rather than a request."""
        if not isinstance(plan, Mapping):
            raise _bad("plan", "not an object")
        currency = plan.get("amount_currency")
        if not isinstance(currency, str) or not currency:
            raise _bad("plan", "no amount_currency")
        raw = plan.get("charges") or []
        if not isinstance(raw, list):
            raise _bad("plan", "charges is not a list")
        charges: list[_Charge] = []
        unpriced: list[str] = []
        codes: set[str] = set()
        for i, c in enumerate(raw):
            parsed = _charge(c, metrics, f"charges[{i}]")
            if isinstance(parsed, str):
                unpriced.append(parsed)
                codes.add(parsed.rsplit("/", 1)[0])
            else:
                charges.append(parsed)
                codes.add(parsed.code)
        return PlanPrice(currency, tuple(unpriced), tuple(charges), frozenset(codes))

    def codes(self) -> frozenset[str]:
        """The metric codes this plan charges, priced here or not."""
        return self._codes

    def tally(self) -> Tally:
        return Tally(self._charges)


_Group = tuple[str | None, ...]  # the pricing group keys' values, as `properties->>key` reads them


class Tally:
    """Events added up per fee, priced on demand. Cheap to copy (a few numbers per fee), so a
    request's price is the difference a copy sees. Fees are kept per charge, then per filter
    (-1: the charge's own), then per pricing group."""

    __slots__ = ("_charges", "_fees")

    def __init__(self, charges: tuple[_Charge, ...], fees: list[dict[int, dict[_Group, _Fee]]] | None = None) -> None:
        self._charges = charges
        self._fees = fees if fees is not None else [{} for _ in charges]

    def add(self, event: Mapping[str, Any], count: int = 1) -> None:
        """event: {"code": ..., "properties": {...}} as meterway sends it. `count` > 1: the event
        stands for `count` events whose summed properties it carries (a SQL GROUP BY of ledger
        rows), so sums add and count_agg adds `count`. A count below 1 adds nothing."""
        self._add(event, count)

    def _add(self, event: Mapping[str, Any], count: int) -> set[int]:
        """Add, and say which charges the event touched."""
        touched: set[int] = set()
        if count <= 0:
            return touched
        code = event.get("code")
        props = event.get("properties")
        if not isinstance(props, Mapping):
            props = {}
        for ci, charge in enumerate(self._charges):
            if charge.code != code:
                continue
            if charge.field is None:
                value = Decimal(count)
            else:
                found = _numeric(props.get(charge.field))
                if found is None:
                    continue  # Lago's store leaves the event out of a sum entirely
                value = found
            for bucket in charge.buckets(props):
                model = charge.model(bucket)
                groups = self._fees[ci].setdefault(bucket, {})
                group = tuple(_text(props.get(k)) for k in model.group_keys)
                fee = groups.get(group)
                if fee is None:
                    fee = groups[group] = _Fee.new(model)
                fee.add(value, count, model, charge.field is not None)
                touched.add(ci)
        return touched

    def _charge_amount(self, ci: int) -> Decimal:
        """One charge's fees. A fee with no events still owes its first tier's flat amount, as
        in Lago's current usage (one empty group when the charge has pricing groups)."""
        charge = self._charges[ci]
        charged = _ZERO
        for bucket in [-1, *range(len(charge.filters))]:
            model = charge.model(bucket)
            groups = self._fees[ci].get(bucket)
            for fee in groups.values() if groups else [_Fee.new(model)]:
                units = charge.round(fee.units)
                amount = _price(model, fee, units, charge.field is not None)
                if units >= 0 and amount >= 0:  # Lago zeroes a negative fee
                    charged += amount
        return charged * charge.rate

    def amount(self) -> Decimal:
        """Lago's fee total for everything added: plan currency, before taxes, unrounded."""
        return sum((self._charge_amount(ci) for ci in range(len(self._charges))), _ZERO)

    def extra(self, events: Iterable[Mapping[str, Any]]) -> Decimal:
        """What adding these events would add to amount(), without changing the tally (a
        request's price). Only the charges the events touch are priced again."""
        after = self.copy()
        touched: set[int] = set()
        for e in events:
            touched |= after._add(e, 1)
        return sum((after._charge_amount(ci) - self._charge_amount(ci) for ci in sorted(touched)), _ZERO)

    def copy(self) -> Tally:
        return Tally(
            self._charges,
            [{b: {g: f.copy() for g, f in groups.items()} for b, groups in fees.items()} for fees in self._fees],
        )
