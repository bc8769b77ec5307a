"""Prepaid credits held at the gateway from Lago wallets, end to end: real gateways on PostgreSQL
and Redis, the Lago stand-in (wallets, transactions, signed webhooks) set up and topped up with
lago-python-client, the openai SDK as the client, the built-in mock model as the upstream.

The plan charges 0.01 USD per event (a `count_agg` metric on meterway's event code), so a
request's most expensive outcome and its real price are the same, and a wallet of 0.05 credits
pays for exactly N = 5 requests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.lago.standin import LagoStandIn, prepaid_ready
from tests.support.gateway import RunningGateway, run_gateway
from tests.support.wait import eventually

HI: Any = [{"role": "user", "content": "hi"}]
PRICE = "0.01"  # USD per request
N = 5
CREDITS = "0.05"  # N requests' worth


def _plan(lago: LagoStandIn) -> Any:
    from lago_python_client.client import Client
    from lago_python_client.models import BillableMetric, Charge, Plan

    client = Client(api_key=lago.api_key, api_url=lago.url)
    client.billable_metrics.create(BillableMetric(name="Requests", code="llm_tokens", aggregation_type="count_agg"))
    return Plan(
        name="Prepaid",
        code="prepaid",
        interval="monthly",
        amount_cents=0,
        amount_currency="USD",
        pay_in_advance=False,
        charges=[
            Charge(
                billable_metric_id=lago.metrics["llm_tokens"]["lago_id"],
                charge_model="standard",
                properties={"amount": PRICE},
            )
        ],
    )


@pytest.fixture
def lago() -> Iterator[LagoStandIn]:
    with LagoStandIn() as stand_in:
        yield stand_in


def config(lago: LagoStandIn, pg_url: str, redis_url: str, prefix: str, **prepaid: Any) -> dict[str, Any]:
    return {
        "model_list": [{"model_name": "demo", "litellm_params": {"model": "mock/demo"}}],
        "general_settings": {"database_url": pg_url, "redis_url": redis_url, "redis_prefix": prefix},
        "billing": {
            "api_base": lago.url,
            "api_key": lago.api_key,
            "charge_by": "end_user_id",
            "prepaid": {"mode": "enforce", **prepaid},
        },
    }


@contextlib.contextmanager
def gateways(cfg: dict[str, Any], n: int = 1) -> Iterator[list[RunningGateway]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(run_gateway(cfg)) for _ in range(n)]


def ask(gw: RunningGateway, user: str = "acme") -> int:
    """One chat request for `user`: its HTTP status (200, or the error's)."""
    with openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as client:
        try:
            client.chat.completions.create(model="demo", messages=HI, user=user)
        except openai.APIStatusError as e:
            return e.status_code
    return 200


def served_until_refused(gws: list[RunningGateway], most: int, user: str = "acme") -> int:
    """Requests served, alternating over `gws`, until one is refused with 402 (at most `most`)."""
    served = 0
    for i in range(most):
        status = ask(gws[i % len(gws)], user)
        if status == 402:
            return served
        assert status == 200, status
        served += 1
    return served


def top_up(lago: LagoStandIn, wallet_id: str, credits: str) -> None:
    from lago_python_client.client import Client
    from lago_python_client.models import WalletTransaction

    Client(api_key=lago.api_key, api_url=lago.url).wallet_transactions.create(
        WalletTransaction(wallet_id=wallet_id, granted_credits=credits)
    )


def info(gw: RunningGateway, user: str = "acme") -> dict[str, Any]:
    r = httpx.get(gw.url + "/customer/info", params={"end_user_id": user}, headers={"Authorization": f"Bearer {gw.key}"})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def customer(gw: RunningGateway, user: str = "acme") -> None:
    r = httpx.post(gw.url + "/customer/new", json={"user_id": user}, headers={"Authorization": f"Bearer {gw.key}"})
    assert r.status_code == 200, r.text


def test_a_wallet_pays_for_n_requests_then_402_until_a_signed_top_up_lets_both_replicas_through(
    lago: LagoStandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    wallet = prepaid_ready(lago, "acme", CREDITS, plan=_plan(lago))
    with gateways(config(lago, pg_url, redis_url, redis_prefix), 2) as (a, b):
        customer(a)
        lago.add_webhook(a.url + "/webhooks/lago", "hmac")
        served = served_until_refused([a, b], N + 3)
        assert N <= served <= N + 1
        with openai.OpenAI(base_url=b.v1, api_key=b.key, max_retries=0) as client:
            with pytest.raises(openai.APIStatusError) as refused:
                client.chat.completions.create(model="demo", messages=HI, user="acme")
        assert refused.value.status_code == 402
        assert refused.value.code == "insufficient_credits"
        assert refused.value.body["type"] == "insufficient_quota"  # type: ignore[index]
        assert "top up" in refused.value.message.lower()
        # Lago's own ongoing balance never moved: the gateway counted the usage itself
        assert lago.wallets[wallet.lago_id].ongoing_usage_cents == 0
        # Lago refreshes (its periodic job), after the sender delivered the events: nothing changes
        eventually(lambda: len(lago.transaction_ids()) >= served, 20, "the usage reached Lago")
        lago.refresh_ongoing_balances()
        for gw in (a, b):
            assert ask(gw) == 402
        # a top-up, made in Lago with its client: the signed webhook re-reads; both replicas serve again
        top_up(lago, wallet.lago_id, "0.03")
        eventually(lambda: ask(a) == 200, 10, "replica a serves after the top-up")
        eventually(lambda: ask(b) == 200, 10, "replica b serves after the top-up")
        more = served_until_refused([a, b], 6)
        assert 3 <= 2 + more <= 3 + 1  # the top-up paid for 3 (at most one over)
        shown = info(a)["prepaid"]
        assert shown["mode"] == "enforce" and shown["charged_as"] == "customer" and shown["currency"] == "USD"
        assert shown["funded"] == "0.08" and not shown["stale"]  # the wallets' 0.08 in all, counted or not
        assert [w["usable"] for w in shown["wallets"]] == [True]
        assert shown["history"][0]["reason"] in ("top_up", "webhook")
