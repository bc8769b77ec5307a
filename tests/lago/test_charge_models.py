"""The Lago stand-in's charge models beyond `standard` and its fee estimate, on worked examples
from Lago's own specs (`spec/services/charge_models/*_spec.rb`), through the real client."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from lago_python_client.client import Client
from lago_python_client.exceptions import LagoApiError
from lago_python_client.models import BillableMetric, Charge, Customer, Event, Plan, Subscription

from tests.lago.standin import LagoStandIn, charge_amount


@pytest.fixture
def lago() -> Iterator[LagoStandIn]:
    with LagoStandIn() as stand_in:
        yield stand_in


def _d(*values: int) -> list[Decimal]:
    return [Decimal(v) for v in values]


GRADUATED = {
    "graduated_ranges": [
        {"from_value": 0, "to_value": 10, "per_unit_amount": "10", "flat_amount": "2"},
        {"from_value": 11, "to_value": 20, "per_unit_amount": "5", "flat_amount": "3"},
        {"from_value": 21, "to_value": None, "per_unit_amount": "5", "flat_amount": "3"},
    ]
}
VOLUME = {
    "volume_ranges": [
        {"from_value": 0, "to_value": 100, "per_unit_amount": "2", "flat_amount": "10"},
        {"from_value": 101, "to_value": 200, "per_unit_amount": "1", "flat_amount": "0"},
        {"from_value": 201, "to_value": None, "per_unit_amount": "0.5", "flat_amount": "50"},
    ]
}


@pytest.mark.parametrize(
    ("units", "expected"),
    [(0, "0"), (1, "12"), (10, "102"), (11, "110"), (12, "115"), (21, "163")],
)
def test_graduated_prices_each_tier_and_adds_its_flat_amount_once_entered(units: int, expected: str) -> None:
    assert charge_amount("graduated", GRADUATED, _d(units)) == Decimal(expected)


def test_graduated_adjacent_tiers_are_half_open() -> None:
    tiers = {
        "graduated_ranges": [
            {"from_value": 0, "to_value": 10, "per_unit_amount": "1", "flat_amount": "0"},
            {"from_value": 10, "to_value": None, "per_unit_amount": "2", "flat_amount": "0"},
        ]
    }
    assert charge_amount("graduated", tiers, _d(15)) == Decimal(10 + 5 * 2)


@pytest.mark.parametrize(("units", "expected"), [(1, "12"), (100, "210"), (121, "121"), (250, "175")])
def test_volume_prices_all_units_at_the_tier_reached(units: int, expected: str) -> None:
    assert charge_amount("volume", VOLUME, _d(units)) == Decimal(expected)


@pytest.mark.parametrize(
    ("free", "units", "expected"),
    [(0, 121, "1300"), (10, 121, "1200"), (0, 120, "1200"), (10, 10, "0"), (10, 5, "0")],
)
def test_package_rounds_up_the_packages_after_the_free_units(free: int, units: int, expected: str) -> None:
    properties = {"amount": "100", "package_size": 10, "free_units": free}
    assert charge_amount("package", properties, _d(units)) == Decimal(expected)


def test_percentage_free_events_and_fixed_amount_per_paid_event() -> None:
    values = _d(100, 200, 300, 400, 500)
    base = {"rate": "1", "fixed_amount": "2"}
    assert charge_amount("percentage", base, values) == Decimal(15) + 5 * 2
    # the first 3 events are free: (1500 - 600) x 1 % + 2 paid events x 2
    assert charge_amount("percentage", {**base, "free_units_per_events": 3}, values) == Decimal(9 + 4)
    # 500 units free: (1500 - 500) x 1 %; events whose running total stays under 500 (1) are free of the fixed fee
    assert charge_amount("percentage", {**base, "free_units_per_total_aggregation": "500"}, values) == Decimal(16)


def test_percentage_per_transaction_bounds_need_a_premium_licence() -> None:
    values = _d(100, 10000)
    properties = {"rate": "1", "per_transaction_min_amount": "5", "per_transaction_max_amount": "50"}
    assert charge_amount("percentage", properties, values) == Decimal(101)  # ignored, as Lago does
    assert charge_amount("percentage", properties, values, premium=True) == Decimal(5 + 50)


def _plan_of(lago: LagoStandIn, charges: list[dict[str, Any]]) -> None:
    client = Client(api_key=lago.api_key, api_url=lago.url)
    metric = client.billable_metrics.create(
        BillableMetric(name="LLM tokens", code="llm_tokens", aggregation_type="sum_agg", field_name="total_tokens")
    )
    assert metric is not None
    plan = Plan(
        name="Tiers",
        code="tiers",
        interval="monthly",
        amount_cents=0,
        amount_currency="USD",
        pay_in_advance=False,
        charges=[Charge(billable_metric_id=metric.lago_id, **c) for c in charges],
    )
    client.plans.create(plan)
    client.customers.create(Customer(external_id="acme", currency="USD"))
    started = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    client.subscriptions.create(
        Subscription(external_customer_id="acme", plan_code="tiers", external_id="acme", subscription_at=started)
    )


def _send(lago: LagoStandIn, tid: str, tokens: int) -> None:
    Client(api_key=lago.api_key, api_url=lago.url).events.create(
        Event(
            transaction_id=tid,
            external_subscription_id="acme",
            code="llm_tokens",
            timestamp=datetime.now(UTC).timestamp(),
            properties={"total_tokens": tokens},
        )
    )


def test_current_usage_applies_the_plans_charge_models(lago: LagoStandIn) -> None:
    _plan_of(
        lago,
        [
            {"charge_model": "package", "properties": {"amount": "1", "package_size": 1000, "free_units": 100}},
            {"charge_model": "graduated", "properties": GRADUATED},
        ],
    )
    _send(lago, "a", 1050)  # package: 950 paid units = 1 package = 1.00; graduated: 10x10+2 + 10x5+3 + 1030x5+3
    usage = Client(api_key=lago.api_key, api_url=lago.url).customers.current_usage("acme", "acme")
    assert usage is not None
    assert [c.amount_cents for c in usage.charges_usage] == [100, (102 + 53 + 1030 * 5 + 3) * 100]
    assert usage.total_amount_cents == 100 + (102 + 53 + 5153) * 100


def test_a_charge_model_with_wrong_properties_is_refused(lago: LagoStandIn) -> None:
    with pytest.raises(LagoApiError) as e:
        _plan_of(lago, [{"charge_model": "package", "properties": {"amount": 1, "package_size": 10}}])
    assert e.value.status_code == 422 and e.value.response["error_details"] == {"amount": ["invalid_amount"]}


def test_estimate_fees_prices_one_event_on_pay_in_advance_charges(lago: LagoStandIn) -> None:
    _plan_of(
        lago,
        [{"charge_model": "package", "pay_in_advance": True, "properties": {"amount": "2", "package_size": 100}}],
    )
    client = Client(api_key=lago.api_key, api_url=lago.url)
    _send(lago, "before", 150)  # 2 packages so far
    estimate = Event(
        transaction_id="e", code="llm_tokens", external_subscription_id="acme", properties={"total_tokens": 100}
    )
    (fee,) = client.events.estimate_fees(estimate)["fees"]
    assert fee.amount_cents == 200 and fee.units == "100.0" and fee.pay_in_advance is True  # a 3rd package
    assert fee.item.type == "charge" and fee.item.code == "llm_tokens"  # type: ignore[union-attr]
    assert lago.transaction_ids() == ["before"]  # an estimate stores nothing

    with pytest.raises(LagoApiError) as e:
        client.events.estimate_fees(
            Event(transaction_id="e", code="llm_tokens", external_subscription_id="nope", properties={})
        )
    assert e.value.status_code == 404 and e.value.response["code"] == "subscription_not_found"
    with pytest.raises(LagoApiError) as e:
        client.events.estimate_fees(
            Event(transaction_id="e", code="nope", external_subscription_id="acme", properties={})
        )
    assert e.value.status_code == 404 and e.value.response["code"] == "billable_metric_not_found"


def test_estimate_fees_without_an_instant_charge_is_422(lago: LagoStandIn) -> None:
    _plan_of(lago, [{"charge_model": "standard", "properties": {"amount": "0.001"}}])
    client = Client(api_key=lago.api_key, api_url=lago.url)
    with pytest.raises(LagoApiError) as e:
        client.events.estimate_fees(
            Event(transaction_id="e", code="llm_tokens", external_subscription_id="acme", properties={})
        )
    assert e.value.status_code == 422
    assert e.value.response["error_details"] == {"code": ["does_not_match_an_instant_charge"]}
