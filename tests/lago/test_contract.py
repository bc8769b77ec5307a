"""The Lago stand-in, driven by the real `lago-python-client`, answers as the contract says: auth,
root keys, the batch limit, duplicate transaction ids (single and batch, all or nothing),
validation errors, and current usage priced per filter."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from lago_python_client.client import Client
from lago_python_client.exceptions import LagoApiError
from lago_python_client.models import (
    BatchEvent,
    BillableMetric,
    BillableMetricFilter,
    ChargeFilter,
    Customer,
    Event,
    Subscription,
)

from tests.lago.standin import LagoStandIn, payg_plan

START = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())


@pytest.fixture
def lago() -> Iterator[LagoStandIn]:
    with LagoStandIn() as stand_in:
        yield stand_in


def _client(lago: LagoStandIn, key: str | None = None) -> Client:
    return Client(api_key=key or lago.api_key, api_url=lago.url)


def _setup(client: Client) -> None:
    metric = client.billable_metrics.create(
        BillableMetric(
            name="LLM tokens",
            code="llm_tokens",
            aggregation_type="sum_agg",
            field_name="tokens",
            filters=[
                BillableMetricFilter(key="model", values=["gpt-4o"]),
                BillableMetricFilter(key="type", values=["input", "output"]),
            ],
        )
    )
    assert metric is not None
    client.plans.create(
        payg_plan(
            metric.lago_id,
            "0.00001",
            [
                ChargeFilter(values={"model": ["gpt-4o"], "type": ["input"]}, properties={"amount": "0.0025"}),
                ChargeFilter(values={"model": ["gpt-4o"], "type": ["output"]}, properties={"amount": "0.01"}),
            ],
        )
    )
    client.customers.create(Customer(external_id="acme", name="Acme", currency="USD"))
    client.subscriptions.create(
        Subscription(
            external_customer_id="acme",
            plan_code="payg",
            external_id="sub_1",
            subscription_at=datetime.fromtimestamp(START, UTC).isoformat(),
        )
    )


def _event(tid: str, tokens: int, type_: str = "input", model: str = "gpt-4o", ts: float = START + 60) -> Event:
    return Event(
        transaction_id=tid,
        external_subscription_id="sub_1",
        code="llm_tokens",
        timestamp=ts,
        properties={"tokens": tokens, "model": model, "type": type_},
    )


def test_a_wrong_key_is_401_and_an_unrouted_path_404(lago: LagoStandIn) -> None:
    with pytest.raises(LagoApiError) as e:
        _client(lago, "wrong").customers.find("acme")
    assert e.value.status_code == 401 and e.value.response == {"status": 401, "error": "Unauthorized"}
    r = httpx.get(lago.url + "/api/v1/nowhere")
    assert r.status_code == 404 and r.json() == {"status": 404, "error": "Not Found", "code": "resource_not_found"}


def test_setup_objects_are_created_found_and_idempotent(lago: LagoStandIn) -> None:
    client = _client(lago)
    _setup(client)
    found = client.billable_metrics.find("llm_tokens")
    assert found is not None and found.code == "llm_tokens"
    with pytest.raises(LagoApiError) as dup:
        client.billable_metrics.create(
            BillableMetric(name="x", code="llm_tokens", aggregation_type="sum_agg", field_name="t")
        )
    assert dup.value.status_code == 422 and dup.value.response["error_details"] == {"code": ["value_already_exist"]}
    first = client.customers.find("acme")
    again = client.customers.create(Customer(external_id="acme", name="Acme Inc"))
    assert first is not None and again is not None and again.lago_id == first.lago_id
    client.subscriptions.create(Subscription(external_customer_id="acme", plan_code="payg", external_id="sub_1"))
    assert len(lago.subscriptions) == 1
    with pytest.raises(LagoApiError) as missing:
        client.plans.find("nope")
    assert missing.value.response["code"] == "plan_not_found"


def test_a_duplicate_transaction_id_is_422_and_stored_once(lago: LagoStandIn) -> None:
    client = _client(lago)
    _setup(client)
    created = client.events.create(_event("req-1:input", 1000))
    assert created is not None and created.transaction_id == "req-1:input" and created.lago_customer_id is None
    with pytest.raises(LagoApiError) as e:
        client.events.create(_event("req-1:input", 1000))
    assert e.value.status_code == 422
    assert e.value.response["error_details"] == {"transaction_id": ["value_already_exist"]}
    assert lago.transaction_ids() == ["req-1:input"]
    assert client.events.find("req-1:input") is not None


def test_a_batch_is_all_or_nothing_and_lists_the_duplicates(lago: LagoStandIn) -> None:
    client = _client(lago)
    _setup(client)
    client.events.batch_create(BatchEvent(events=[_event(f"b-{i}", 10) for i in range(3)]))
    assert len(lago.transaction_ids()) == 3
    with pytest.raises(LagoApiError) as e:
        client.events.batch_create(BatchEvent(events=[_event("new-1", 5), _event("b-1", 10), _event("new-2", 5)]))
    assert e.value.response["error_details"] == {"1": {"transaction_id": ["value_already_exist"]}}
    assert "new-1" not in lago.transaction_ids(), "nothing of a rejected batch is stored"
    with pytest.raises(LagoApiError) as too_many:
        client.events.batch_create(BatchEvent(events=[_event(f"m-{i}", 1) for i in range(101)]))
    assert too_many.value.response["error_details"] == {"events": ["too_many_events"]}
    bad = httpx.post(
        lago.url + "/api/v1/events/batch",
        json={"events": [{"transaction_id": "t", "timestamp": "yesterday", "code": "llm_tokens"}]},
        headers={"Authorization": f"Bearer {lago.api_key}"},
    )
    assert bad.status_code == 422 and bad.json()["error_details"] == {"0": {"timestamp": ["invalid_format"]}}
    unwrapped = httpx.post(
        lago.url + "/api/v1/events", json={"transaction_id": "t"}, headers={"Authorization": f"Bearer {lago.api_key}"}
    )
    assert unwrapped.status_code == 400 and unwrapped.json()["error"].startswith("BadRequest")


def test_current_usage_prices_each_filter_and_ignores_events_before_the_start(lago: LagoStandIn) -> None:
    client = _client(lago)
    _setup(client)
    client.events.create(_event("u-1", 2000, "input"))
    client.events.create(_event("u-2", 1000, "input"))
    client.events.create(_event("u-3", 500, "output"))
    client.events.create(_event("u-4", 300, "input", model="llama-3"))  # no filter: the default price
    client.events.create(_event("u-5", 9999, "input", ts=START - 3600))  # before the subscription started
    usage = client.customers.current_usage("acme", "sub_1")
    assert usage is not None
    (charge,) = usage.charges_usage
    assert charge.events_count == 4 and charge.units == "3800.0"
    amounts = {tuple(sorted((k, tuple(v)) for k, v in f.values.items())): f.amount_cents for f in charge.filters}
    assert amounts[(("model", ("gpt-4o",)), ("type", ("input",)))] == 750
    assert amounts[(("model", ("gpt-4o",)), ("type", ("output",)))] == 500
    assert usage.total_amount_cents == 1250
    with pytest.raises(LagoApiError) as e:
        client.customers.current_usage("acme", "sub_unknown")
    assert e.value.status_code == 405 and e.value.response["code"] == "no_active_subscription"


def test_faults_fail_drop_and_down(lago: LagoStandIn) -> None:
    client = _client(lago)
    _setup(client)
    lago.fail_next(1, 500)
    with pytest.raises(LagoApiError) as e:
        client.events.create(_event("f-1", 1))
    assert e.value.status_code == 500 and lago.transaction_ids() == []
    lago.drop_next(after_commit=True)
    with pytest.raises(httpx.HTTPError):
        client.events.create(_event("f-2", 1))
    assert lago.transaction_ids() == ["f-2"], "stored although the answer was lost"
    with pytest.raises(LagoApiError) as dup:
        client.events.create(_event("f-2", 1))
    assert dup.value.status_code == 422, "the resend is recognised"
    lago.down()
    with pytest.raises(httpx.HTTPError):
        client.events.create(_event("f-3", 1))
    lago.up()
    assert client.events.create(_event("f-3", 1)) is not None
