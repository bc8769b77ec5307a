"""Prepaid admission and arithmetic, end to end (real gateways on PostgreSQL and Redis, the Lago
stand-in set up with lago-python-client, the openai SDK as the client): entities sharing one Lago
customer share its wallets, spent or ended wallets refuse, a request naming no max_tokens is held
to the model's maximum output, and requests sent together across replicas never spend past the
wallet by more than one request."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from tests.billing.test_prepaid import CREDITS, HI, PRICE, N, _plan, ask, config, customer, gateways, info
from tests.lago.standin import LagoStandIn, prepaid_ready
from tests.upstreams.standin import Script, StandIn


@pytest.fixture
def lago() -> Iterator[LagoStandIn]:
    with LagoStandIn() as stand_in:
        yield stand_in


def _statuses(gws: list[Any], n: int, user: str = "acme", **extra: Any) -> list[int]:
    """`n` requests sent together (at most 8 at once), spread over `gws`: their statuses."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda i: ask(gws[i % len(gws)], user, **extra), range(n)))


def test_two_keys_of_one_lago_customer_share_its_wallet_and_never_spend_it_twice(
    lago: LagoStandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    prepaid_ready(lago, "acme", CREDITS, plan=_plan(lago))
    cfg = config(lago, pg_url, redis_url, redis_prefix)
    cfg["billing"]["charge_by"] = "key"
    with gateways(cfg, 2) as (a, b):
        admin = {"Authorization": f"Bearer {a.key}"}
        made = [
            httpx.post(a.url + "/key/generate", json={"billing_external_subscription_id": "acme"}, headers=admin).json()
            for _ in range(2)
        ]
        clients = [
            openai.OpenAI(base_url=gw.v1, api_key=m["key"], max_retries=0) for gw, m in zip((a, b), made, strict=True)
        ]
        served = 0
        for i in range(3 * N):  # alternating keys and replicas
            try:
                clients[i % 2].chat.completions.create(model="demo", messages=HI)
            except openai.APIStatusError as e:
                assert e.status_code == 402, e
                continue
            served += 1
        for c in clients:
            c.close()
        assert N <= served <= N + 1  # one wallet of N requests, not N per key
        shown = httpx.get(a.url + "/key/info", params={"key": made[0]["key"]}, headers=admin).json()["info"]["prepaid"]
        assert shown["shared_with"] == [made[1]["token"]] and shown["funded"] == CREDITS
        assert Decimal(shown["available"]) < Decimal(PRICE)


@pytest.mark.parametrize("ended", ["terminated", "expired"])
def test_a_customer_whose_only_wallet_ended_is_refused_not_unlimited(
    lago: LagoStandIn, pg_url: str, redis_url: str, redis_prefix: str, ended: str
) -> None:
    from lago_python_client.client import Client

    wallet = prepaid_ready(lago, "acme", CREDITS, plan=_plan(lago))
    if ended == "terminated":
        Client(api_key=lago.api_key, api_url=lago.url).wallets.destroy(wallet.lago_id)
    else:
        lago.wallets[wallet.lago_id].expiration_at = "2020-01-01T00:00:00Z"  # not yet terminated by Lago's job
    with gateways(config(lago, pg_url, redis_url, redis_prefix)) as (gw,):
        customer(gw)
        assert ask(gw) == 402
        shown = info(gw)["prepaid"]
        assert shown["funded"] == "0" and [w["usable"] for w in shown["wallets"]] == [False]


def test_without_max_tokens_a_request_is_held_to_the_models_maximum_output(
    lago: LagoStandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    """The upstream answers 10,000 output tokens to a request that names no cap (more than the
    4,096 a budget assumes): the wallet of 20,000 tokens' worth pays for one, and the second,
    which may cost up to the model's 12,000, is refused instead of overdrawing it."""
    prepaid_ready(lago, "acme", "20")  # 0.001 USD a token (sum of total_tokens)
    with StandIn() as upstream:
        cfg = config(lago, pg_url, redis_url, redis_prefix)
        cfg["model_list"] = [
            {
                "model_name": "demo",
                "litellm_params": {
                    "model": "openai/standin-model",
                    "api_base": upstream.base_url + "/v1",
                    "api_key": "sk-up",
                },
                "model_info": {"max_output_tokens": 12_000},
            }
        ]
        usage = b'{"prompt_tokens": 10, "completion_tokens": 10000, "total_tokens": 10010}'
        upstream.script(Script(usage_raw=usage), times=3)
        with gateways(cfg) as (gw,):
            customer(gw)
            statuses = [ask(gw) for _ in range(3)]
            assert statuses == [200, 402, 402]
            shown = info(gw)["prepaid"]
            assert Decimal(shown["priced_usage"]) <= Decimal(shown["funded"])


def test_concurrent_requests_over_two_replicas_are_served_at_most_n_plus_one(
    lago: LagoStandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    prepaid_ready(lago, "acme", CREDITS, plan=_plan(lago))
    with gateways(config(lago, pg_url, redis_url, redis_prefix), 2) as (a, b):
        customer(a)
        assert ask(a) == 200  # the first reading, alone (see the test below for a first use raced)
        statuses = _statuses([a, b], 3 * N)
        assert set(statuses) <= {200, 402}
        assert N <= 1 + statuses.count(200) <= N + 1
        assert Decimal(info(a)["prepaid"]["reserved"]) == 0


def test_concurrent_first_use_over_two_replicas_is_served_at_most_n_plus_one(
    lago: LagoStandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    prepaid_ready(lago, "acme", CREDITS, plan=_plan(lago))
    with gateways(config(lago, pg_url, redis_url, redis_prefix), 2) as (a, b):
        customer(a)
        statuses = _statuses([a, b], 3 * N)
        assert N <= statuses.count(200) <= N + 1


def test_concurrent_per_token_requests_whose_estimate_exceeds_the_price_never_overdraw(
    lago: LagoStandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    """A per-token plan (sum of total_tokens, 0.001 USD a token): each request reserves its prompt's
    upper estimate plus max_tokens, and is priced at what it used, less."""
    prepaid_ready(lago, "acme", "0.10")  # a hundred tokens: a few requests
    with gateways(config(lago, pg_url, redis_url, redis_prefix), 2) as (a, b):
        customer(a)
        statuses = _statuses([a, b], 3 * N, max_tokens=20)
        assert set(statuses) <= {200, 402} and 402 in statuses and statuses.count(200) >= 1
        shown = info(a)["prepaid"]
        assert shown["reserved"] == "0"
        assert Decimal(shown["priced_usage"]) <= Decimal(shown["funded"])  # estimates are upper bounds: no overdraft


@pytest.mark.parametrize("limiter", ["redis", "memory"])
def test_on_a_volume_plan_a_request_crossing_into_a_cheaper_tier_reserves_and_settles_nothing_below_zero(
    lago: LagoStandIn, pg_url: str, redis_url: str, redis_prefix: str, limiter: str, tmp_path: Any
) -> None:
    """Volume tiers price the whole period at the tier reached: the request that crosses into the
    cheaper one lowers the period's price (its margin is negative). It reserves and settles 0:
    the counter never goes down and no reservation is given back by it."""
    from lago_python_client.models import Charge, Plan

    from tests.lago.standin import billing_ready

    billing_ready(lago, [])  # the token metric (sum of total_tokens)
    volume = [
        {"from_value": 0, "to_value": 30, "per_unit_amount": "0.01", "flat_amount": "0"},
        {"from_value": 31, "to_value": None, "per_unit_amount": "0.0001", "flat_amount": "0"},
    ]
    plan = Plan(
        name="Volume",
        code="volume",
        interval="monthly",
        amount_cents=0,
        amount_currency="USD",
        pay_in_advance=False,
        charges=[
            Charge(
                billable_metric_id=lago.metrics["llm_tokens"]["lago_id"],
                charge_model="volume",
                properties={"volume_ranges": volume},
            )
        ],
    )
    prepaid_ready(lago, "acme", "1.00", plan=plan)
    with StandIn() as upstream:
        cfg = config(lago, pg_url, redis_url, redis_prefix)
        if limiter == "memory":  # one gateway on SQLite, the in-process limiter
            cfg["general_settings"] = {"database_url": f"sqlite:///{tmp_path / 'one.db'}"}
        cfg["model_list"] = [
            {
                "model_name": "demo",
                "litellm_params": {
                    "model": "openai/standin-model",
                    "api_base": upstream.base_url + "/v1",
                    "api_key": "k",
                },
            }
        ]
        upstream.script(Script(usage_raw=b'{"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}'), 4)
        with gateways(cfg) as (gw,):
            customer(gw)
            assert ask(gw, max_tokens=20) == 200  # 20 tokens in the first tier: 0.20
            first = info(gw)["prepaid"]
            assert Decimal(first["priced_usage"]) == Decimal("0.2")
            for _ in range(3):  # 40 tokens: the whole period at 0.0001 (margin -0.196); then +0.002 each
                assert ask(gw, max_tokens=20) == 200
            shown = info(gw)["prepaid"]
            assert shown["reserved"] == "0"
            assert Decimal(shown["priced_usage"]) == Decimal("0.204")  # the crossing settled 0, not -0.196
