"""meterway prices its events as Lago's current usage prices them: each charge model's worked
example from Lago's documentation (getlago.com/docs/guide/plans/charges/charge-models/<model>;
where the docs give no figure, the figure follows lago-api's service, named beside it), the
filter and aggregation rules of lago-api, grouped ledger rows priced as the rows one by one, a
request's extra price as the difference it makes, and plans it cannot read refused by name."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lago_python_client.client import Client
from lago_python_client.models import BillableMetric, BillableMetricFilter, ChargeFilter, Customer, Subscription
from lago_python_client.models import Event as LagoEvent

from meterway.billing.lago_price import PlanPrice
from meterway.errors import LagoPlanInvalid
from tests.lago.standin import LagoStandIn, payg_plan

D = Decimal


def metric(code: str, agg: str = "sum_agg", field: str | None = "tokens", **extra: Any) -> dict[str, Any]:
    return {"code": code, "aggregation_type": agg, "field_name": field, "recurring": False, "filters": [], **extra}


def charge(code: str, model: str, properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"billable_metric_code": code, "charge_model": model, "properties": properties, "filters": [], **extra}


def plan(*charges: dict[str, Any]) -> dict[str, Any]:
    return {"code": "p", "amount_currency": "USD", "charges": list(charges)}


def ev(code: str = "llm", **properties: Any) -> dict[str, Any]:
    return {"code": code, "properties": properties}


def price(p: PlanPrice, events: list[dict[str, Any]]) -> Decimal:
    tally = p.tally()
    for e in events:
        tally.add(e)
    return tally.amount()


METRICS = {"llm": metric("llm"), "calls": metric("calls", "count_agg", None)}

GRADUATED = [  # Lago docs, graduated: $1 the first 100 units, $0.50 the next 100, $0.10 beyond
    {"from_value": 0, "to_value": 100, "per_unit_amount": "1", "flat_amount": "0"},
    {"from_value": 101, "to_value": 200, "per_unit_amount": "0.5", "flat_amount": "0"},
    {"from_value": 201, "to_value": None, "per_unit_amount": "0.1", "flat_amount": "0"},
]
VOLUME = [  # Lago docs, volume: four tiers, each with a $10 fee
    {"from_value": 0, "to_value": 10000, "per_unit_amount": "0.0010", "flat_amount": "10"},
    {"from_value": 10001, "to_value": 50000, "per_unit_amount": "0.0008", "flat_amount": "10"},
    {"from_value": 50001, "to_value": 100000, "per_unit_amount": "0.0006", "flat_amount": "10"},
    {"from_value": 100001, "to_value": None, "per_unit_amount": "0.0004", "flat_amount": "10"},
]


# --- each model, on Lago's own examples -------------------------------------------------------


def test_standard_charges_the_amount_per_unit_summed() -> None:
    # Lago docs, standard: $0.05 per API call, 1,000 calls in the period = $50
    p = PlanPrice.parse(plan(charge("calls", "standard", {"amount": "0.05"})), METRICS)
    tally = p.tally()
    tally.add(ev("calls"), count=1000)
    assert tally.amount() == D(50)
    p = PlanPrice.parse(plan(charge("llm", "standard", {"amount": "0.000002"})), METRICS)
    assert price(p, [ev(tokens=1000), ev(tokens="500"), ev(tokens=2.5)]) == D("0.003005")


def test_package_rounds_packages_up_after_the_free_units() -> None:
    # Lago docs, package: $5 per 100 units, the first 100 free: 201 units cost $0 + $5 + $5 = $10
    p = PlanPrice.parse(
        plan(charge("llm", "package", {"amount": "5", "package_size": 100, "free_units": 100})), METRICS
    )
    assert price(p, [ev(tokens=201)]) == D(10)
    assert price(p, [ev(tokens=100)]) == 0
    assert price(p, [ev(tokens=101)]) == D(5)


def test_graduated_prices_each_tier_at_its_own_rate() -> None:
    # Lago docs, graduated: 250 units = 100 x $1 + 100 x $0.50 + 50 x $0.10 = $155
    p = PlanPrice.parse(plan(charge("llm", "graduated", {"graduated_ranges": GRADUATED})), METRICS)
    assert price(p, [ev(tokens=250)]) == D(155)
    assert price(p, [ev(tokens=100)]) == D(100)
    assert price(p, [ev(tokens=101)]) == D("100.5")


def test_graduated_flat_amount_is_owed_once_per_tier_entered_and_from_zero_usage() -> None:
    # lago-api #5760: the first tier's flat fee is owed even with no usage (current usage shows it)
    ranges = [
        {"from_value": 0, "to_value": 10, "per_unit_amount": "1", "flat_amount": "5"},
        {"from_value": 11, "to_value": None, "per_unit_amount": "0.5", "flat_amount": "3"},
    ]
    p = PlanPrice.parse(plan(charge("llm", "graduated", {"graduated_ranges": ranges})), METRICS)
    assert price(p, []) == D(5)
    assert price(p, [ev(tokens=10)]) == D(15)
    assert price(p, [ev(tokens=12)]) == D(5) + 10 + 3 + 2 * D("0.5")


def test_graduated_adjacent_ranges_count_units_half_open() -> None:
    # lago-api GraduatedService#adjacent_ranges?: from_value == previous to_value, no one-unit step
    ranges = [
        {"from_value": 0, "to_value": 1, "per_unit_amount": "2", "flat_amount": "0"},
        {"from_value": 1, "to_value": None, "per_unit_amount": "1", "flat_amount": "0"},
    ]
    p = PlanPrice.parse(plan(charge("llm", "graduated", {"graduated_ranges": ranges})), METRICS)
    assert price(p, [ev(tokens="2.5")]) == D(2) + D("1.5")


def test_volume_prices_every_unit_at_the_tier_the_total_falls_in() -> None:
    # Lago docs, volume: 65,000 API calls = 65,000 x $0.0006 + $10 = $49
    p = PlanPrice.parse(plan(charge("calls", "volume", {"volume_ranges": VOLUME})), METRICS)
    tally = p.tally()
    tally.add(ev("calls"), count=65_000)
    assert tally.amount() == D(49)
    assert price(p, []) == D(10)  # the first tier's fee, owed from zero usage (lago-api #5760)


def test_percentage_takes_the_rate_of_the_sum_and_a_fixed_fee_per_event() -> None:
    # Lago docs, percentage: 1.2 % of the transactions plus $0.10 each; $600 in 3 events = $7.50
    p = PlanPrice.parse(plan(charge("llm", "percentage", {"rate": "1.2", "fixed_amount": "0.1"})), METRICS)
    assert price(p, [ev(tokens=100), ev(tokens=200), ev(tokens=300)]) == D("7.5")


def test_percentage_free_units_follow_lagos_running_totals() -> None:
    # Lago docs: "the first 3 events or $500 are free"; by PercentageService with SumService's
    # running total of the first 3 events [100, 300, 600]: $500 free of $1000, and 2 events whose
    # running total stays under $500 skip the fixed fee -> 500 x 1.2 % + 2 x $0.10 = $6.20
    props = {
        "rate": "1.2",
        "fixed_amount": "0.1",
        "free_units_per_events": 3,
        "free_units_per_total_aggregation": "500",
    }
    p = PlanPrice.parse(plan(charge("llm", "percentage", props)), METRICS)
    assert price(p, [ev(tokens=t) for t in (100, 200, 300, 400)]) == D("6.2")
    # free events only: the first 2 events' values and fixed fees are free
    p = PlanPrice.parse(
        plan(charge("llm", "percentage", {"rate": "10", "fixed_amount": "1", "free_units_per_events": 2})), METRICS
    )
    assert price(p, [ev(tokens=t) for t in (10, 20, 30)]) == D(3) + D(1)


def test_percentage_bounds_each_transaction() -> None:
    # PercentageService#compute_amount_with_transaction_min_max: each event's 1 % + $0.50,
    # held between $1 and $3: 10 -> 0.60 -> 1; 100 -> 1.50; 1000 -> 10.50 -> 3
    props = {"rate": "1", "fixed_amount": "0.5", "per_transaction_min_amount": "1", "per_transaction_max_amount": "3"}
    p = PlanPrice.parse(plan(charge("llm", "percentage", props)), METRICS)
    assert price(p, [ev(tokens=10), ev(tokens=100), ev(tokens=1000)]) == D("5.5")


def test_grouped_rows_under_free_units_or_bounds_are_taken_as_equal_events() -> None:
    # the documented approximation: 3 rows summing 300 stand for 3 events of 100 each
    props = {"rate": "10", "free_units_per_events": 2}
    p = PlanPrice.parse(plan(charge("llm", "percentage", props)), METRICS)
    grouped = p.tally()
    grouped.add(ev(tokens=300), count=3)
    assert grouped.amount() == price(p, [ev(tokens=100)] * 3) == D(10)
    bounded = {"rate": "1", "per_transaction_max_amount": "0.5", "free_units_per_total_aggregation": "150"}
    p = PlanPrice.parse(plan(charge("llm", "percentage", bounded)), METRICS)
    grouped = p.tally()
    grouped.add(ev(tokens=100_000_000), count=1_000_000)  # a million events, priced without a loop over them
    # 100 each: the first is free, the second pays on 50 (0.50), the rest 1.00 each, capped at 0.50
    assert grouped.amount() == D("0.5") * 999_999
    assert price(p, [ev(tokens=100)] * 4) == D("1.5")


def test_a_pricing_unit_charge_is_converted_to_the_plan_currency() -> None:
    c = charge("llm", "standard", {"amount": "2"}, applied_pricing_unit={"code": "credits", "conversion_rate": "0.5"})
    p = PlanPrice.parse(plan(c), METRICS)
    assert price(p, [ev(tokens=3)]) == 3


# --- filters -----------------------------------------------------------------------------------

FILTERED = {
    "llm": metric(
        "llm",
        filters=[
            {"key": "model", "values": ["gpt-4o", "gpt-4o-mini"]},
            {"key": "type", "values": ["input", "output"]},
        ],
    )
}


def test_filters_price_matching_events_the_rest_at_the_charges_own_price() -> None:
    c = charge("llm", "standard", {"amount": "1"})
    c["filters"] = [
        {"values": {"model": ["gpt-4o"], "type": ["output"]}, "properties": {"amount": "10"}},
        {"values": {"model": ["gpt-4o"]}, "properties": {"amount": "4"}},
    ]
    p = PlanPrice.parse(plan(c), FILTERED)
    assert price(p, [ev(model="gpt-4o", type="output", tokens=1)]) == 10  # the more specific filter only
    assert price(p, [ev(model="gpt-4o", type="input", tokens=1)]) == 4
    assert price(p, [ev(model="gpt-4o-mini", type="output", tokens=1)]) == 1  # no filter: the charge's own
    assert price(p, [ev(tokens=1)]) == 1


def test_all_filter_values_matches_every_value_the_metric_declares() -> None:
    c = charge("llm", "standard", {"amount": "1"})
    c["filters"] = [{"values": {"type": ["__ALL_FILTER_VALUES__"]}, "properties": {"amount": "2"}}]
    p = PlanPrice.parse(plan(c), FILTERED)
    assert price(p, [ev(type="input", tokens=1), ev(type="output", tokens=1)]) == 4
    assert price(p, [ev(type="cached", tokens=1)]) == 1  # not a declared value


def test_each_filter_is_its_own_fee_so_tiers_restart_per_filter() -> None:
    ranges = [
        {"from_value": 0, "to_value": 10, "per_unit_amount": "1", "flat_amount": "0"},
        {"from_value": 11, "to_value": None, "per_unit_amount": "0", "flat_amount": "0"},
    ]
    c = charge("llm", "graduated", {"graduated_ranges": ranges})
    c["filters"] = [{"values": {"model": ["gpt-4o"]}, "properties": {"graduated_ranges": ranges}}]
    p = PlanPrice.parse(plan(c), FILTERED)
    assert price(p, [ev(model="gpt-4o", tokens=8), ev(model="other", tokens=8)]) == 16


def test_filters_with_the_same_keys_follow_lagos_ignored_filters() -> None:
    # MatchingAndIgnoredService: a filter with a subset of another's values takes its events from
    # it; two that only overlap both count the shared value (as Lago does)
    c = charge("llm", "standard", {"amount": "1"})
    c["filters"] = [
        {"values": {"model": ["gpt-4o", "gpt-4o-mini"]}, "properties": {"amount": "2"}},
        {"values": {"model": ["gpt-4o"]}, "properties": {"amount": "5"}},
    ]
    p = PlanPrice.parse(plan(c), FILTERED)
    assert price(p, [ev(model="gpt-4o", tokens=1), ev(model="gpt-4o-mini", tokens=1)]) == 5 + 2
    metrics = {"llm": metric("llm", filters=[{"key": "model", "values": ["a", "b", "c"]}])}
    c["filters"] = [
        {"values": {"model": ["a", "b"]}, "properties": {"amount": "2"}},
        {"values": {"model": ["b", "c"]}, "properties": {"amount": "5"}},
    ]
    p = PlanPrice.parse(plan(c), metrics)
    assert price(p, [ev(model="b", tokens=1)]) == 7


def test_pricing_groups_are_fees_of_their_own() -> None:
    props = {"amount": "5", "package_size": 10, "pricing_group_keys": ["team"]}
    p = PlanPrice.parse(plan(charge("llm", "package", props)), METRICS)
    assert price(p, [ev(team="a", tokens=1), ev(team="b", tokens=1)]) == 10  # one package each


# --- aggregations --------------------------------------------------------------------------------


def test_count_counts_events_and_sum_adds_the_field() -> None:
    p = PlanPrice.parse(
        plan(charge("calls", "standard", {"amount": "0.5"}), charge("llm", "standard", {"amount": "1"})), METRICS
    )
    assert price(p, [ev("calls", tokens=99), ev("calls"), ev("llm", tokens=7), ev("other", tokens=5)]) == D(8)


def test_a_missing_or_non_numeric_value_is_left_out_of_a_sum_as_lagos_store_does() -> None:
    # Postgres store: `properties->>field ~ '^-?\d+(\.\d+)?$'`, else the event is not aggregated
    p = PlanPrice.parse(plan(charge("llm", "percentage", {"rate": "0", "fixed_amount": "1"})), METRICS)
    assert price(p, [ev(tokens="12"), ev(tokens="1e3"), ev(tokens="x"), ev(), ev(tokens=True)]) == 1


def test_the_metrics_rounding_applies_to_the_fees_units() -> None:
    metrics = {"llm": metric("llm", rounding_function="ceil", rounding_precision=-3)}
    p = PlanPrice.parse(plan(charge("llm", "standard", {"amount": "0.001"})), metrics)
    assert price(p, [ev(tokens=1001)]) == 2


def test_charges_not_computed_here_are_listed_by_metric_and_model() -> None:
    metrics = {**METRICS, "peak": metric("peak", "max_agg"), "w": metric("w", expression="event.properties.a * 2")}
    p = PlanPrice.parse(
        plan(
            charge("peak", "standard", {"amount": "1"}),
            charge("w", "standard", {"amount": "1"}),
            charge("llm", "graduated_percentage", {}),
            charge("llm", "dynamic", {}),
            charge("calls", "standard", {"amount": "1"}),
        ),
        metrics,
    )
    assert p.unpriced == ("peak/standard", "w/standard", "llm/graduated_percentage", "llm/dynamic")
    assert p.codes() == {"peak", "w", "llm", "calls"}
    assert price(p, [ev("calls"), ev("peak", tokens=5), ev("llm", tokens=100)]) == 1
    assert p.currency == "USD"


# --- grouped rows, extra(), monotony ------------------------------------------------------------

MODELS = [
    ("standard", {"amount": "0.003"}),
    ("package", {"amount": "2", "package_size": 7, "free_units": 5}),
    ("graduated", {"graduated_ranges": GRADUATED}),
    ("volume", {"volume_ranges": VOLUME}),
    ("percentage", {"rate": "2.5", "fixed_amount": "0.25"}),
]
PERCENTAGES = [
    (
        "percentage",
        {"rate": "2", "fixed_amount": "0.1", "free_units_per_events": 2, "free_units_per_total_aggregation": "50"},
    ),
    ("percentage", {"rate": "2", "fixed_amount": "0.1", "free_units_per_total_aggregation": "50"}),
    (
        "percentage",
        {"rate": "3", "fixed_amount": "0.2", "per_transaction_min_amount": "0.5", "per_transaction_max_amount": "4"},
    ),
    (
        "percentage",
        {
            "rate": "3",
            "per_transaction_max_amount": "4",
            "free_units_per_events": 1,
            "free_units_per_total_aggregation": "9",
        },
    ),
]
units = st.integers(min_value=0, max_value=400) | st.decimals(min_value=0, max_value=400, places=3)


@pytest.mark.parametrize(("model", "props"), MODELS[:4], ids=[m for m, _ in MODELS[:4]])
@settings(max_examples=40, deadline=None)
@given(groups=st.lists(st.lists(units, min_size=1, max_size=5), max_size=5))
def test_a_grouped_row_prices_as_its_rows_one_by_one(
    model: str, props: dict[str, Any], groups: list[list[Decimal]]
) -> None:
    for code in ("llm", "calls"):
        p = PlanPrice.parse(plan(charge(code, model, props)), METRICS)
        one, grouped = p.tally(), p.tally()
        for rows in groups:
            for u in rows:
                one.add(ev(code, tokens=str(u)))
            grouped.add(ev(code, tokens=str(sum(rows, Decimal(0)))), count=len(rows))
        assert grouped.amount() == one.amount()


@pytest.mark.parametrize(("model", "props"), MODELS + PERCENTAGES, ids=[str(i) for i in range(len(MODELS) + 4)])
@settings(max_examples=40, deadline=None)
@given(before=st.lists(units, max_size=6), request=st.lists(units, max_size=3))
def test_extra_is_what_adding_the_events_adds(
    model: str, props: dict[str, Any], before: list[Decimal], request: list[Decimal]
) -> None:
    p = PlanPrice.parse(plan(charge("llm", model, props)), METRICS)
    tally = p.tally()
    for u in before:
        tally.add(ev(tokens=str(u)))
    start = tally.amount()
    events = [ev(tokens=str(u)) for u in request]
    extra = tally.extra(events)
    assert tally.amount() == start  # extra() leaves the tally as it was
    for e in events:
        tally.add(e)
    assert tally.amount() - start == extra


@pytest.mark.parametrize(("model", "props"), MODELS + PERCENTAGES, ids=[str(i) for i in range(len(MODELS) + 4)])
@settings(max_examples=40, deadline=None)
@given(seq=st.lists(units, max_size=8))
def test_the_price_never_falls_as_non_negative_units_come(
    model: str, props: dict[str, Any], seq: list[Decimal]
) -> None:
    p = PlanPrice.parse(plan(charge("llm", model, props)), METRICS)
    tally = p.tally()
    last = tally.amount()
    for u in seq:
        tally.add(ev(tokens=str(u)))
        now = tally.amount()
        assert now >= last
        last = now


def test_a_copy_is_independent() -> None:
    p = PlanPrice.parse(plan(charge("llm", "standard", {"amount": "1"})), METRICS)
    a = p.tally()
    a.add(ev(tokens=1))
    b = a.copy()
    b.add(ev(tokens=5))
    assert (a.amount(), b.amount()) == (1, 6)


# --- malformed plans ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "metrics"),
    [
        ({"charges": []}, METRICS),  # no currency
        ({**plan(), "charges": "x"}, METRICS),
        (plan(charge("nope", "standard", {"amount": "1"})), METRICS),  # metric not given
        (plan(charge("llm", "standard", {})), METRICS),  # no amount
        (plan(charge("llm", "standard", {"amount": "abc"})), METRICS),
        (plan(charge("llm", "standard", {"amount": "-1"})), METRICS),
        (plan(charge("llm", "package", {"amount": "1", "package_size": 0})), METRICS),
        (plan(charge("llm", "graduated", {"graduated_ranges": []})), METRICS),
        (plan(charge("llm", "graduated", {"graduated_ranges": GRADUATED[:2]})), METRICS),  # last range closed
        (plan(charge("llm", "volume", {"volume_ranges": [{"from_value": 0, "to_value": None}]})), METRICS),
        (plan(charge("llm", "percentage", {"fixed_amount": "1"})), METRICS),  # no rate
        (
            plan(
                charge(
                    "llm",
                    "percentage",
                    {"rate": "1", "per_transaction_min_amount": "5", "per_transaction_max_amount": "1"},
                )
            ),
            METRICS,
        ),
        (
            plan(
                {
                    **charge("llm", "standard", {"amount": "1"}),
                    "filters": [{"values": {"type": ["__ALL_FILTER_VALUES__"]}}],
                }
            ),
            METRICS,
        ),
        (plan(charge("llm", "standard", {"amount": "1"})), {"llm": metric("llm", field=None)}),  # sum of nothing
    ],
)
def test_a_malformed_plan_is_refused_by_name(bad: dict[str, Any], metrics: dict[str, Any]) -> None:
    with pytest.raises(LagoPlanInvalid) as caught:
        PlanPrice.parse(bad, metrics)
    assert isinstance(caught.value, ValueError)
    assert caught.value.message.startswith("Lago plan:")


# --- against the Lago stand-in, through the real client --------------------------------------


def test_the_plan_lago_serves_prices_events_as_its_current_usage_does() -> None:
    """The plan and metric read back as GET /plans/{code} and GET /billable_metrics/{code} give
    the total the stand-in's current usage reports for the same events."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with LagoStandIn() as lago:
        client = Client(api_key=lago.api_key, api_url=lago.url)
        made = client.billable_metrics.create(
            BillableMetric(
                name="LLM tokens",
                code="llm_tokens",
                aggregation_type="sum_agg",
                field_name="tokens",
                filters=[
                    BillableMetricFilter(key="model", values=["gpt-4o", "gpt-4o-mini"]),
                    BillableMetricFilter(key="type", values=["input", "output"]),
                ],
            )
        )
        assert made is not None
        filters = [
            ChargeFilter(values={"model": ["gpt-4o"], "type": ["input"]}, properties={"amount": "0.0025"}),
            ChargeFilter(values={"model": ["gpt-4o"], "type": ["output"]}, properties={"amount": "0.01"}),
            ChargeFilter(
                values={"model": ["gpt-4o-mini"], "type": ["__ALL_FILTER_VALUES__"]}, properties={"amount": "0.0005"}
            ),
        ]
        client.plans.create(payg_plan(made.lago_id, "0.001", filters))
        client.customers.create(Customer(external_id="acme", name="Acme", currency="USD"))
        client.subscriptions.create(
            Subscription(
                external_customer_id="acme", plan_code="payg", external_id="sub_1", subscription_at=start.isoformat()
            )
        )
        headers = {"Authorization": f"Bearer {lago.api_key}"}
        plan_body = httpx.get(f"{lago.url}/api/v1/plans/payg", headers=headers).json()["plan"]
        metric_body = httpx.get(f"{lago.url}/api/v1/billable_metrics/llm_tokens", headers=headers).json()[
            "billable_metric"
        ]
        p = PlanPrice.parse(plan_body, {"llm_tokens": metric_body})
        tally = p.tally()
        sent = [
            ("gpt-4o", "input", 2000),
            ("gpt-4o", "input", 1000),
            ("gpt-4o", "output", 500),
            ("gpt-4o-mini", "output", 4000),
            ("gpt-4o-mini", "input", 2000),
            ("llama-3", "input", 300),  # no filter: the charge's own price
        ]
        for i, (model, kind, tokens) in enumerate(sent):
            props = {"tokens": tokens, "model": model, "type": kind}
            client.events.create(
                LagoEvent(
                    transaction_id=f"t-{i}",
                    external_subscription_id="sub_1",
                    code="llm_tokens",
                    timestamp=start.timestamp() + 60,
                    properties=props,
                )
            )
            tally.add({"code": "llm_tokens", "properties": props})
        usage = client.customers.current_usage("acme", "sub_1")
        assert usage is not None
        # 3000 x 0.0025 + 500 x 0.01 + 6000 x 0.0005 + 300 x 0.001 = 7.5 + 5 + 3 + 0.3
        assert tally.amount() == D("15.8")
        assert usage.amount_cents == tally.amount() * 100
