"""Prepaid readings under load and faults: what the request path asks of Lago (entities without
wallets or without a subscription cost no Lago call per request, and invented ids are not
stored), forged jwt webhooks that cannot make the gateway fetch Lago's key each, and a client
that leaves while its entity is being read, which must not abort the others' requests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from meterway.billing.prepaid import Prepaid
from meterway.config.billing import Billing
from meterway.config.billing import Prepaid as PrepaidConfig
from meterway.config.secret import Secret
from meterway.store.runtime import Store
from tests.billing.test_prepaid import CREDITS, _plan, ask, config, customer, gateways, info, post_webhook, webhook_body
from tests.lago.standin import LagoStandIn, prepaid_ready
from tests.support.wait import eventually


@pytest.fixture
def lago() -> Iterator[LagoStandIn]:
    with LagoStandIn() as stand_in:
        yield stand_in


def reads(lago: LagoStandIn) -> list[str]:
    """The readings' calls to Lago (the sender's event posts and look-ups aside)."""
    kinds = ("/api/v1/subscriptions/", "/api/v1/plans/", "/api/v1/billable_metrics/", "/api/v1/wallets")
    return [p for m, p in list(lago.requests) if m == "GET" and p.startswith(kinds)]


def test_entities_without_wallets_or_subscription_cost_at_most_their_first_reading(
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
        for user in ("bob", "invented-id"):
            before = len(reads(lago))
            assert ask(gw, user) == 200
            first = len(reads(lago))
            assert first > before  # its first reading
            for _ in range(19):
                assert ask(gw, user) == 200
            assert len(reads(lago)) == first, reads(lago)[first:]

        assert info(gw, "bob")["prepaid"]["wallets"] == []  # stored

        async def stored(entity: str) -> bool:
            opened = await Store.open(pg_url, wait_s=10, run_migrations=False)
            try:
                return await opened.prepaid.get(entity) is not None
            finally:
                await opened.close()

        assert asyncio.run(stored("bob")) and not asyncio.run(stored("invented-id"))  # never stored


def test_forged_jwt_webhooks_fetch_lagos_key_at_most_once_even_with_lago_away(
    lago: LagoStandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    wallet = prepaid_ready(lago, "acme", CREDITS, plan=_plan(lago))
    with gateways(config(lago, pg_url, redis_url, redis_prefix)) as (gw,):
        body = webhook_body(lago, wallet.lago_id)

        def forged(key: str) -> int:
            headers = {"X-Lago-Signature": "e30.e30.bad", "X-Lago-Signature-Algorithm": "jwt", "X-Lago-Unique-Key": key}
            return post_webhook(gw, body, headers).status_code

        def fetches() -> int:
            return len([p for _, p in list(lago.requests) if p.endswith("/json_public_key")])

        lago.down()  # the key cannot be read: each webhook is let go (503), Lago is asked once
        assert [forged(f"d{i}") for i in range(5)] == [503] * 5
        assert fetches() <= 2  # one fetch (aiohttp sends a GET again once when a pooled connection is cut)
        lago.up()
        eventually(lambda: forged("u") == 401, 15, "the key read once Lago answers")
        before = fetches()
        assert [forged(f"f{i}") for i in range(5)] == [401] * 5  # known key: forged, no fetch each
        assert fetches() == before


async def test_a_caller_that_leaves_does_not_abort_the_others_reading(lago: LagoStandIn, tmp_path: Path) -> None:
    billing, store = await _opened(lago, tmp_path)
    try:
        async with aiohttp.ClientSession() as session:
            prepaid = Prepaid(billing, store, session)
            leaving = asyncio.create_task(prepaid.current("acme"))
            staying = asyncio.create_task(prepaid.current("acme"))
            for _ in range(100):  # both are waiting on the one reading
                await asyncio.sleep(0)
                if "acme" in prepaid._pending and not leaving.done():
                    break
            leaving.cancel()
            priced = await staying
            assert priced is not None and priced.reading.has_wallets
            assert leaving.cancelled()
    finally:
        await store.close()


async def _opened(lago: LagoStandIn, tmp_path: Path) -> tuple[Billing, Store]:
    await asyncio.to_thread(prepaid_ready, lago, "acme", CREDITS, plan=_plan(lago))
    billing = Billing(
        api_base=lago.url, api_key=Secret(lago.api_key), charge_by="customer", prepaid=PrepaidConfig(mode="enforce")
    )
    return billing, await Store.open(f"sqlite:///{tmp_path / 'p.db'}", wait_s=10, run_migrations=True, export=True)


async def test_webhooks_about_one_customer_coalesce_into_at_most_two_rereads(lago: LagoStandIn, tmp_path: Path) -> None:
    billing, store = await _opened(lago, tmp_path)
    try:
        async with aiohttp.ClientSession() as session:
            prepaid = Prepaid(billing, store, session)
            assert await prepaid.current("acme") is not None
            before = len([p for p in reads(lago) if p.startswith("/api/v1/wallets")])
            answers = await asyncio.gather(*(prepaid.customer_changed("acme", "webhook") for _ in range(6)))
            assert answers == [["acme"]] * 6
            wallet_reads = len([p for p in reads(lago) if p.startswith("/api/v1/wallets")]) - before
            assert 1 <= wallet_reads <= 2  # the one in flight, and one after it for those that came meanwhile
    finally:
        await store.close()


async def test_a_failed_first_reading_is_not_stored_and_not_retried_by_every_request(
    lago: LagoStandIn, tmp_path: Path
) -> None:
    billing, store = await _opened(lago, tmp_path)
    try:
        async with aiohttp.ClientSession() as session:
            prepaid = Prepaid(billing, store, session)
            lago.down()
            assert await prepaid.current("acme") is None
            asked = len(reads(lago))
            for _ in range(10):
                prepaid._cache.pop("acme", None)
                assert await prepaid.current("acme") is None
            assert len(reads(lago)) == asked  # remembered for NEGATIVE_RETRY_S: no Lago call
            assert await store.prepaid.get("acme") is None  # nothing stored for an id never read
    finally:
        await store.close()
