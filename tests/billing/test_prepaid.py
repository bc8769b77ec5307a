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
from decimal import Decimal
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.lago.standin import LagoStandIn, billing_ready, prepaid_ready
from tests.support.gateway import RunningGateway, run_gateway
from tests.support.wait import eventually

HI: Any = [{"role": "user", "content": "hi"}]
PRICE = "0.01"  # USD per request
N = 5
CREDITS = "0.05"  # N requests' worth


def _plan(lago: LagoStandIn, *, in_advance: bool = False) -> Any:
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
                pay_in_advance=in_advance,
                invoiceable=True,
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


def ask(gw: RunningGateway, user: str = "acme", **extra: Any) -> int:
    """One chat request for `user`: its HTTP status (200, or the error's)."""
    with openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as client:
        try:
            client.chat.completions.create(model="demo", messages=HI, user=user, **extra)
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
    r = httpx.get(
        gw.url + "/customer/info", params={"end_user_id": user}, headers={"Authorization": f"Bearer {gw.key}"}
    )
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
        with (
            openai.OpenAI(base_url=b.v1, api_key=b.key, max_retries=0) as client,
            pytest.raises(openai.APIStatusError) as refused,
        ):
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


def webhook_body(lago: LagoStandIn, wallet_id: str) -> bytes:
    """A `wallet_transaction.created` payload about the wallet, as Lago sends it."""
    view = lago._wallet_view(lago.wallets[wallet_id])
    payload = {
        "webhook_type": "wallet_transaction.created",
        "object_type": "wallet_transaction",
        "organization_id": lago.organization_id,
        "wallet_transaction": {"lago_id": "t-1", "lago_wallet_id": wallet_id, "wallet": view},
    }
    return orjson.dumps(payload)


def post_webhook(gw: RunningGateway, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(gw.url + "/webhooks/lago", content=body, headers={"Content-Type": "application/json", **headers})


def test_forged_unsigned_and_almost_right_webhooks_are_refused_and_change_nothing(
    lago: LagoStandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    wallet = prepaid_ready(lago, "acme", CREDITS, plan=_plan(lago))
    with gateways(config(lago, pg_url, redis_url, redis_prefix)) as (gw,):
        customer(gw)
        assert ask(gw) == 200
        before = info(gw)["prepaid"]
        reads = len(lago.requests)
        body = webhook_body(lago, wallet.lago_id)
        good = lago.sign_hmac(body)
        almost = good[:-3] + ("A" if good[-3] != "A" else "B") + good[-2:]
        tampered = body.replace(b"acme", b"acmf")
        import jwt
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        foreign_jwt = jwt.encode({"data": body.decode(), "iss": lago.url}, other, algorithm="RS256")
        wrong_iss = jwt.encode({"data": body.decode(), "iss": "http://evil"}, lago._private_key, algorithm="RS256")
        other_body = lago.sign_jwt(body.replace(b"t-1", b"t-2"))
        cases = [
            ({}, 400),  # no signature headers at all
            ({"X-Lago-Signature": good, "X-Lago-Unique-Key": "k1"}, 400),  # no algorithm
            ({"X-Lago-Signature": good, "X-Lago-Signature-Algorithm": "md5", "X-Lago-Unique-Key": "k2"}, 401),
            ({"X-Lago-Signature": almost, "X-Lago-Signature-Algorithm": "hmac", "X-Lago-Unique-Key": "k3"}, 401),
            ({"X-Lago-Signature": "", "X-Lago-Signature-Algorithm": "hmac", "X-Lago-Unique-Key": "k4"}, 400),
            ({"X-Lago-Signature": foreign_jwt, "X-Lago-Signature-Algorithm": "jwt", "X-Lago-Unique-Key": "k5"}, 401),
            ({"X-Lago-Signature": wrong_iss, "X-Lago-Signature-Algorithm": "jwt", "X-Lago-Unique-Key": "k6"}, 401),
            ({"X-Lago-Signature": other_body, "X-Lago-Signature-Algorithm": "jwt", "X-Lago-Unique-Key": "k7"}, 401),
            # signed, but a unique key longer than any Lago sends (and than its column): 400, not a 5xx
            ({"X-Lago-Signature": good, "X-Lago-Signature-Algorithm": "hmac", "X-Lago-Unique-Key": "k" * 256}, 400),
        ]
        for headers, status in cases:
            r = post_webhook(gw, body, headers)
            assert r.status_code == status, (headers, r.text)
            assert r.json()["error"]["type"] in ("invalid_request_error", "authentication_error")
        r = post_webhook(
            gw, tampered, {"X-Lago-Signature": good, "X-Lago-Signature-Algorithm": "hmac", "X-Lago-Unique-Key": "k8"}
        )
        assert r.status_code == 401
        after = info(gw)["prepaid"]
        assert after["read_at"] == before["read_at"] and after["history"] == before["history"]
        assert not [p for m, p in lago.requests[reads:] if "/wallets" in p], "a refused webhook made a Lago call"


def test_a_signed_webhook_is_taken_once_by_its_unique_key_with_hmac_or_jwt(
    lago: LagoStandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    wallet = prepaid_ready(lago, "acme", CREDITS, plan=_plan(lago))
    with gateways(config(lago, pg_url, redis_url, redis_prefix)) as (gw,):
        customer(gw)
        assert ask(gw) == 200
        body = webhook_body(lago, wallet.lago_id)
        hmac_headers = {"X-Lago-Signature": lago.sign_hmac(body), "X-Lago-Signature-Algorithm": "hmac"}
        first = post_webhook(gw, body, {**hmac_headers, "X-Lago-Unique-Key": "same"})
        assert first.status_code == 200 and first.json()["refreshed"] == ["acme"]
        read_at = info(gw)["prepaid"]["read_at"]
        reads = len(lago.requests)
        again = post_webhook(gw, body, {**hmac_headers, "X-Lago-Unique-Key": "same"})
        assert again.status_code == 200 and again.json()["duplicate"] is True
        assert not [p for _, p in lago.requests[reads:] if "/wallets" in p]  # no second reading
        assert info(gw)["prepaid"]["read_at"] == read_at
        jwt_headers = {"X-Lago-Signature": lago.sign_jwt(body), "X-Lago-Signature-Algorithm": "jwt"}
        signed = post_webhook(gw, body, {**jwt_headers, "X-Lago-Unique-Key": "other"})
        assert signed.status_code == 200 and signed.json()["refreshed"] == ["acme"]
        assert info(gw)["prepaid"]["read_at"] != read_at
        ignored = orjson.dumps({"webhook_type": "invoice.created", "object_type": "invoice", "invoice": {}})
        r = post_webhook(
            gw,
            ignored,
            {
                "X-Lago-Signature": lago.sign_hmac(ignored),
                "X-Lago-Signature-Algorithm": "hmac",
                "X-Lago-Unique-Key": "i",
            },
        )
        assert r.status_code == 200 and r.json()["ignored"] == "invoice.created"


def test_observe_mode_serves_everything_and_counts_what_it_would_have_refused(
    lago: LagoStandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    prepaid_ready(lago, "acme", CREDITS, plan=_plan(lago))
    with gateways(config(lago, pg_url, redis_url, redis_prefix, mode="observe")) as (gw,):
        for _ in range(N + 3):
            assert ask(gw) == 200
        metrics = httpx.get(gw.url + "/metrics").text
        line = next(x for x in metrics.splitlines() if x.startswith('meterway_prepaid_refusals_total{mode="observe"}'))
        assert float(line.split()[-1]) >= 2
        assert 'meterway_prepaid_available{entity="acme"}' in metrics


def test_a_customer_without_wallets_is_never_held_to_credits(
    lago: LagoStandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    prepaid_ready(lago, "acme", CREDITS, plan=_plan(lago))
    from lago_python_client.client import Client
    from lago_python_client.models import Customer, Subscription

    client = Client(api_key=lago.api_key, api_url=lago.url)
    client.customers.create(Customer(external_id="bob", currency="USD"))
    client.subscriptions.create(Subscription(external_customer_id="bob", plan_code="prepaid", external_id="bob"))
    with gateways(config(lago, pg_url, redis_url, redis_prefix)) as (gw,):
        customer(gw, "bob")
        for _ in range(N + 3):
            assert ask(gw, "bob") == 200
        assert ask(gw, "nobody-in-lago") == 200
        import redis

        keys = list(redis.Redis.from_url(redis_url).scan_iter(match=redis_prefix + "limits:prepaid:*"))
        assert keys == []  # no ask was made for them
        shown = info(gw, "bob")["prepaid"]
        assert shown["wallets"] == [] and shown["funded"] == "0"


@pytest.mark.parametrize("when_stale", ["open", "closed"])
def test_lago_down_at_first_use_serves_or_refuses_as_when_stale_says(
    lago: LagoStandIn, pg_url: str, redis_url: str, redis_prefix: str, when_stale: str
) -> None:
    prepaid_ready(lago, "acme", CREDITS, plan=_plan(lago))
    lago.down()
    with gateways(config(lago, pg_url, redis_url, redis_prefix, when_stale=when_stale)) as (gw,):
        with openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as client:
            if when_stale == "open":
                client.chat.completions.create(model="demo", messages=HI, user="acme")
            else:
                with pytest.raises(openai.APIStatusError) as e:
                    client.chat.completions.create(model="demo", messages=HI, user="acme")
                assert e.value.status_code == 503 and e.value.code == "credits_unknown"
        lago.up()
        # Lago is back: the next request reads the wallets (the failed first reading is retried)
        eventually(lambda: ask(gw) == 200, 10, "served once Lago answers")


@pytest.mark.parametrize("when_stale", ["open", "closed"])
def test_a_reading_gone_stale_with_lago_down_serves_or_refuses_as_when_stale_says(
    lago: LagoStandIn, pg_url: str, redis_url: str, redis_prefix: str, when_stale: str
) -> None:
    prepaid_ready(lago, "acme", "1.00", plan=_plan(lago))
    cfg = config(lago, pg_url, redis_url, redis_prefix, when_stale=when_stale, refresh_interval=1, stale_after=1)
    with gateways(cfg) as (gw,):
        customer(gw)
        assert ask(gw) == 200
        lago.down()
        eventually(lambda: (p := info(gw)["prepaid"])["stale"] and p["last_error"], 15, "stale, and why")
        assert ask(gw) == (200 if when_stale == "open" else 503)


def test_terminated_and_expired_wallets_are_ignored_and_several_wallets_are_summed(
    lago: LagoStandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    from lago_python_client.client import Client
    from lago_python_client.models import Wallet

    first = prepaid_ready(lago, "acme", "0.02", plan=_plan(lago), name="first", priority=2)
    client = Client(api_key=lago.api_key, api_url=lago.url)
    second = client.wallets.create(
        Wallet(
            external_customer_id="acme",
            rate_amount="1.0",
            granted_credits="0.03",
            currency="USD",
            priority=1,
            code="second",
        )
    )
    gone = client.wallets.create(
        Wallet(external_customer_id="acme", rate_amount="1.0", granted_credits="5", currency="USD", code="gone")
    )
    client.wallets.destroy(gone.lago_id)
    expired = client.wallets.create(
        Wallet(external_customer_id="acme", rate_amount="1.0", granted_credits="5", currency="USD", code="expired")
    )
    lago.wallets[expired.lago_id].expiration_at = "2020-01-01T00:00:00Z"  # expired, not yet terminated by Lago's job
    with gateways(config(lago, pg_url, redis_url, redis_prefix)) as (gw,):
        customer(gw)
        assert N <= served_until_refused([gw], N + 3) <= N + 1  # 0.02 + 0.03: the two active wallets
        shown = info(gw)["prepaid"]
        usable = {w["lago_id"]: w["usable"] for w in shown["wallets"]}
        assert usable == {second.lago_id: True, first.lago_id: True, gone.lago_id: False, expired.lago_id: False}
        assert [w["lago_id"] for w in shown["wallets"]][:2] == [second.lago_id, first.lago_id]  # Lago's priority
        assert shown["funded"] == "0.05"


def test_lagos_own_refresh_moves_usage_from_balance_to_counted_and_leaves_available_alone(
    lago: LagoStandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    prepaid_ready(lago, "acme", "1.00")  # pay as you go: 0.001 USD a token, summed by Lago
    with gateways(config(lago, pg_url, redis_url, redis_prefix, refresh_interval=1)) as (gw,):
        customer(gw)
        for _ in range(3):
            assert ask(gw, max_tokens=20) == 200
        eventually(lambda: len(lago.transaction_ids()) == 3, 20, "the usage reached Lago")
        before = eventually(lambda: (p := info(gw)["prepaid"])["priced_usage"] != "0" and p, 10, "priced")
        assert before["lago_counted_usage"] == "0" and before["funded"] == "1"
        lago.refresh_ongoing_balances()  # Lago's periodic job: B falls, U_L rises by as much
        after = eventually(
            lambda: (p := info(gw)["prepaid"])["lago_counted_usage"] != "0" and p, 15, "a reading after the refresh"
        )
        assert Decimal(after["lago_balance"]) < Decimal(before["lago_balance"])
        # what Lago counted (rounded to cents per fee) replaces what we priced: the same, within a cent
        assert abs(Decimal(after["available"]) - Decimal(before["available"])) < Decimal("0.01")
        assert Decimal(after["uncounted"]) < Decimal("0.01")
        assert ask(gw, max_tokens=20) == 200


def test_on_sqlite_with_the_in_process_limiter_the_wallet_pays_for_n_requests(lago: LagoStandIn, tmp_path: Any) -> None:
    wallet = prepaid_ready(lago, "acme", CREDITS, plan=_plan(lago))
    cfg = config(lago, f"sqlite:///{tmp_path / 'one.db'}", "", "")
    cfg["general_settings"] = {"database_url": cfg["general_settings"]["database_url"]}
    with gateways(cfg) as (gw,):
        customer(gw)
        lago.add_webhook(gw.url + "/webhooks/lago", "jwt")
        assert N <= served_until_refused([gw], N + 3) <= N + 1
        top_up(lago, wallet.lago_id, "0.02")
        eventually(lambda: ask(gw) == 200, 10, "served after a jwt-signed top-up")
        shown = info(gw)["prepaid"]
        assert shown["reserved"] == "0" and Decimal(shown["available"]) <= Decimal("0.01")


def test_charged_by_key_the_keys_wallet_holds_it_and_key_info_shows_it(
    lago: LagoStandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    prepaid_ready(lago, "acme", CREDITS, plan=_plan(lago))
    cfg = config(lago, pg_url, redis_url, redis_prefix)
    cfg["billing"]["charge_by"] = "key"
    with gateways(cfg) as (gw,):
        admin = {"Authorization": f"Bearer {gw.key}"}
        made = httpx.post(
            gw.url + "/key/generate", json={"billing_external_subscription_id": "acme"}, headers=admin
        ).json()
        key = made["key"]
        with openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0) as client:
            served = 0
            for _ in range(N + 3):
                try:
                    client.chat.completions.create(model="demo", messages=HI)
                except openai.APIStatusError as e:
                    assert e.status_code == 402
                    break
                served += 1
        assert N <= served <= N + 1
        shown = httpx.get(gw.url + "/key/info", params={"key": key}, headers=admin).json()["info"]["prepaid"]
        assert shown["charged_as"] == "key" and shown["entity_id"] == made["token"]
        assert shown["lago_customer_id"] == "acme" and shown["funded"] == CREDITS
        assert Decimal(shown["available"]) < Decimal(PRICE)


def test_pay_in_advance_fees_lago_takes_from_the_balance_are_not_counted_twice(
    lago: LagoStandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    from lago_python_client.models import Charge, Plan

    billing_ready(lago, [])  # the token metric
    plan = Plan(
        name="In advance",
        code="in_advance",
        interval="monthly",
        amount_cents=0,
        amount_currency="USD",
        pay_in_advance=False,
        charges=[
            Charge(
                billable_metric_id=lago.metrics["llm_tokens"]["lago_id"],
                charge_model="standard",
                properties={"amount": "0.001"},
                pay_in_advance=True,
                invoiceable=True,
            )
        ],
    )
    wallet = prepaid_ready(lago, "acme", "1.00", plan=plan)
    with gateways(config(lago, pg_url, redis_url, redis_prefix)) as (gw,):
        customer(gw)
        lago.add_webhook(gw.url + "/webhooks/lago", "hmac")
        for _ in range(3):
            assert ask(gw, max_tokens=20) == 200
        before = info(gw)["prepaid"]
        assert Decimal(before["priced_usage"]) > 0
        # Lago receives the events and takes each fee from the wallet at once (not as ongoing usage);
        # its webhook makes the gateway read the wallet again
        eventually(lambda: lago.wallets[wallet.lago_id].balance_cents < 100, 20, "Lago debited the wallet")
        after = eventually(
            lambda: (p := info(gw)["prepaid"])["lago_balance"] != "1" and p, 10, "a reading after the debit"
        )
        assert after["lago_counted_usage"] == "0"
        assert abs(Decimal(after["available"]) - Decimal(before["available"])) < Decimal("0.01")


def test_credits_low_and_exhausted_reach_the_alert_webhook_once_each(
    lago: LagoStandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    from tests.alerts.receiver import running_receiver

    prepaid_ready(lago, "acme", CREDITS, plan=_plan(lago))
    cfg = config(lago, pg_url, redis_url, redis_prefix, low_balance=0.025)
    cfg["general_settings"] |= {
        "alerting": ["webhook"],
        "alerting_args": {"webhook_url": "", "budget_alert_scan_interval": 0.2},
    }
    with running_receiver() as receiver:
        cfg["general_settings"]["alerting_args"]["webhook_url"] = receiver.url + "/hook"
        with gateways(cfg, 2) as (a, b):
            served_until_refused([a, b], N + 3)
            for gw in (a, b):
                assert ask(gw) == 402
            events = eventually(
                lambda: (
                    (e := sorted(x["event"] for x in receiver.bodies("/hook"))) == ["credits_exhausted", "credits_low"]
                    and e
                ),
                15,
                "one credits_low and one credits_exhausted",
            )
            assert events == ["credits_exhausted", "credits_low"]
            body = next(x for x in receiver.bodies("/hook") if x["event"] == "credits_exhausted")
            assert body["customer_id"] == "acme" and body["max_budget"] == pytest.approx(0.05)
