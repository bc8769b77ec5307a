"""With billing on, every billable ledger row enqueues its export in the row's own transaction."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import openai
import pytest

from meterway.store.runtime import Store
from tests.lago.standin import LagoStandIn
from tests.support.gateway import RunningGateway, run_gateway
from tests.support.models import priced
from tests.upstreams.standin import StandIn

HI: Any = [{"role": "user", "content": "hi"}]


def _config(standin: StandIn, billing: dict[str, Any] | None) -> dict[str, Any]:
    config: dict[str, Any] = {"model_list": [priced(standin.base_url)]}
    if billing is not None:
        config["billing"] = billing
    return config


def _rows(gw: RunningGateway, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(gw.settings.database_url.reveal().removeprefix("sqlite:///")) as db:
        return db.execute(sql).fetchall()


@pytest.mark.parametrize("billing_on", [True, False])
def test_billable_rows_and_only_they_are_enqueued(upstream: StandIn, billing_on: bool) -> None:
    with LagoStandIn() as lago:
        billing = {"api_base": lago.url, "api_key": lago.api_key, "run_sender": False} if billing_on else None
        with run_gateway(_config(upstream, billing)) as gw:
            with openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as client:
                client.chat.completions.create(model="priced", messages=HI, user="acme")
                list(client.chat.completions.create(model="priced", messages=HI, user="acme", stream=True))
                upstream.script_fail(500, {"error": {"message": "boom"}})
                with pytest.raises(openai.APIStatusError):
                    client.chat.completions.create(model="priced", messages=HI, user="acme")
            ledger = _rows(gw, "SELECT uid, status FROM mw_ledger ORDER BY id")
            outbox = _rows(gw, "SELECT ledger_uid, status, attempts FROM mw_billing_outbox")
    assert [status for _, status in ledger] == ["success", "success", "upstream_error"]
    assert all(uid and len(uid) == 32 for uid, _ in ledger) and len({uid for uid, _ in ledger}) == 3
    if billing_on:
        assert sorted(outbox) == sorted((uid, "pending", 0) for uid, status in ledger if status == "success")
    else:
        assert outbox == []


def test_the_reprocess_forecast_counts_rows_by_who_is_charged_in_sql(upstream: StandIn) -> None:
    """`billing reprocess` says what would park again from one count per charged entity, read in
    the reprocessing transaction: not from every parked row's full ledger row."""

    async def reprocess(url: str) -> tuple[int, dict[str | None, int]]:
        store = await Store.open(url, wait_s=5, run_migrations=False)
        try:
            return await store.outbox.reprocess_counted(charged="customer_id", reason="subscription")
        finally:
            await store.engine.dispose()

    with LagoStandIn() as lago:
        billing = {"api_base": lago.url, "api_key": lago.api_key, "run_sender": False}
        with run_gateway(_config(upstream, billing)) as gw:
            with openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as client:
                for user in ("acme", "acme", "acme", "globex", "globex"):
                    client.chat.completions.create(model="priced", messages=HI, user=user)
            _rows(gw, "UPDATE mw_billing_outbox SET status = 'parked', reason = 'no subscription'")
            assert asyncio.run(reprocess(gw.settings.database_url.reveal())) == (5, {"acme": 3, "globex": 2})
            assert _rows(gw, "SELECT status, count(*) FROM mw_billing_outbox GROUP BY status") == [("pending", 5)]
