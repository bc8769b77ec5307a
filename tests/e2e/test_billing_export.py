"""Usage exported to the Lago stand-in over real HTTP: every billable row once, whatever Lago does.

Each scenario ends the same way: the transaction ids in Lago are exactly the billable ledger
rows' uids, none twice."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import orjson

from meterway.billing.sender import NOT_LISTED
from tests.lago.standin import LagoStandIn
from tests.support.cli import run_meterway
from tests.support.gateway import RunningGateway, run_gateway
from tests.support.models import priced
from tests.support.wait import eventually
from tests.upstreams.standin import StandIn

HI: Any = [{"role": "user", "content": "hi"}]


def _config(standin: StandIn, lago: LagoStandIn) -> dict[str, Any]:
    return {
        "model_list": [priced(standin.base_url)],
        "billing": {"api_base": lago.url, "api_key": lago.api_key, "charge_by": "end_user_id"},
    }


def _sql(gw: RunningGateway, query: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(gw.settings.database_url.reveal().removeprefix("sqlite:///")) as db:
        return db.execute(query).fetchall()


def _settled(gw: RunningGateway, within_s: float = 15) -> None:
    pending = "SELECT count(*) FROM mw_billing_outbox WHERE status = 'pending'"
    eventually(lambda: _sql(gw, pending)[0][0] == 0, within_s, "every export settled")


def _traffic(gw: RunningGateway, n: int, user: str | None = "acme") -> None:
    extra = {"user": user} if user else {}
    with openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as client:
        for i in range(n):
            if i % 2:
                list(client.chat.completions.create(model="priced", messages=HI, stream=True, **extra))
            else:
                client.chat.completions.create(model="priced", messages=HI, **extra)


def _exact(gw: RunningGateway, lago: LagoStandIn) -> None:
    expected = {r[0] for r in _sql(gw, "SELECT uid FROM mw_ledger WHERE customer_id = 'acme' AND total_tokens > 0")}
    got = lago.transaction_ids()
    assert len(got) == len(set(got)), "a transaction id reached Lago twice"
    assert set(got) == expected


def test_every_billable_row_reaches_lago_once(upstream: StandIn, lago: LagoStandIn) -> None:
    with run_gateway(_config(upstream, lago)) as gw:
        _traffic(gw, 20)
        _settled(gw)
        _exact(gw, lago)
        event = lago.events[0]
        assert event.code == "llm_tokens" and event.external_subscription_id == "acme"
        assert set(event.properties) == {
            "model",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "cost",
            "response_cost",
        }
        assert event.properties["response_cost"] == event.properties["cost"]  # LiteLLM's name beside ours


def test_lago_failing_and_losing_answers_bills_nothing_twice(upstream: StandIn, lago: LagoStandIn) -> None:
    lago.fail_next(2, 500)
    lago.drop_next(1, after_commit=True)  # stored, but the sender never hears it
    lago.drop_next(1, after_commit=False)
    with run_gateway(_config(upstream, lago)) as gw:
        _traffic(gw, 12)
        _settled(gw, within_s=30)
        _exact(gw, lago)


def test_a_batch_with_an_already_stored_event_still_delivers_the_others(upstream: StandIn, lago: LagoStandIn) -> None:
    with run_gateway(_config(upstream, lago)) as gw:
        _traffic(gw, 3)
        _settled(gw)
        # as if an earlier send had been stored but not acknowledged: put one row back to pending
        uid = lago.transaction_ids()[0]
        with sqlite3.connect(gw.settings.database_url.reveal().removeprefix("sqlite:///")) as db:
            db.execute("UPDATE mw_billing_outbox SET status = 'pending', sent_at = NULL WHERE ledger_uid = ?", (uid,))
        _traffic(gw, 3)
        _settled(gw)
        _exact(gw, lago)


def test_a_request_naming_no_customer_is_parked_with_its_reason(upstream: StandIn, lago: LagoStandIn) -> None:
    with run_gateway(_config(upstream, lago)) as gw:
        _traffic(gw, 1, user=None)
        _traffic(gw, 1)
        _settled(gw)
        parked = _sql(gw, "SELECT reason FROM mw_billing_outbox WHERE status = 'parked'")
        assert parked == [("no customer (the request's `user` field) on the request while charging by customer",)]
        _exact(gw, lago)


def test_a_customer_without_a_lago_subscription_is_parked_then_delivered_after_mapping(
    upstream: StandIn, lago: LagoStandIn
) -> None:
    with run_gateway(_config(upstream, lago)) as gw:
        admin = {"Authorization": f"Bearer {gw.key}"}
        httpx.post(gw.url + "/customer/new", json={"user_id": "bob"}, headers=admin).raise_for_status()
        _traffic(gw, 2, user="bob")  # Lago has no subscription 'bob': it would take the events and never bill them
        _settled(gw)
        status = httpx.get(gw.url + "/billing/status", headers=admin).json()
        assert status["parked"] == 2 and status["parked_by_reason"] == {
            f"no active Lago subscription 'bob' {NOT_LISTED}": 2
        }
        assert lago.transaction_ids() == []
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "meterway",
                "billing",
                "status",
                "--database-url",
                gw.settings.database_url.reveal(),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={
                **{k: v for k, v in os.environ.items() if k not in ("METERWAY_CONFIG", "CONFIG_FILE_PATH")},
                "LAGO_API_BASE": lago.url,  # billing export is on for the CLI as for the gateway
                "LAGO_API_KEY": lago.api_key,
            },
        )
        assert cli.returncode == 0 and "no active Lago subscription 'bob'" in cli.stdout
        # map bob onto acme's subscription, then send the parked events again
        update = {"user_id": "bob", "billing_external_subscription_id": "acme"}
        httpx.post(gw.url + "/customer/update", json=update, headers=admin).raise_for_status()
        again = httpx.post(gw.url + "/billing/reprocess", json={"reason": "subscription"}, headers=admin).json()
        assert again == {"reprocessed": 2, "parks_again": {}}  # Lago, asked at once, has bob's (acme's) subscription
        _settled(gw)
        bob = {r[0] for r in _sql(gw, "SELECT uid FROM mw_ledger WHERE customer_id = 'bob'")}
        assert set(lago.transaction_ids()) == bob and len(lago.transaction_ids()) == 2
        assert {e.external_subscription_id for e in lago.events} == {"acme"}


def test_reprocess_right_after_subscribing_in_lago_sends_at_once(upstream: StandIn, lago: LagoStandIn) -> None:
    """The operator creates the missing subscription in Lago and runs `meterway billing reprocess`
    (the CLI, another process than the gateway): the gateway's sender asks Lago again before it
    would park a row, so the rows go now, not parked again by a listing cached a moment before."""
    from lago_python_client.client import Client
    from lago_python_client.models import Customer, Subscription

    with run_gateway(_config(upstream, lago)) as gw:
        _traffic(gw, 2, user="carol")
        _settled(gw)
        assert (
            _sql(gw, "SELECT reason FROM mw_billing_outbox WHERE status = 'parked'")
            == [(f"no active Lago subscription 'carol' {NOT_LISTED}",)] * 2
        )
        env = {k: v for k, v in os.environ.items() if k not in ("METERWAY_CONFIG", "CONFIG_FILE_PATH")}
        env |= {"LAGO_API_BASE": lago.url, "LAGO_API_KEY": lago.api_key}  # billing on for the CLI too
        reprocess = ["billing", "reprocess", "--database-url", gw.settings.database_url.reveal()]
        early = run_meterway([*reprocess, "--format", "json"], env)  # before the fix: says they park again
        assert early.returncode == 0, early.stderr
        reason = f"no active Lago subscription 'carol' {NOT_LISTED}"
        assert orjson.loads(early.stdout) == {"reprocessed": 2, "parks_again": {reason: 2}}
        _settled(gw)
        assert _sql(gw, "SELECT status, count(*) FROM mw_billing_outbox GROUP BY status") == [("parked", 2)]

        client = Client(api_key=lago.api_key, api_url=lago.url)  # the plan `payg` is the fixture's
        since = (datetime.now(UTC) - timedelta(days=1)).isoformat()
        client.customers.create(Customer(external_id="carol", currency="USD"))
        client.subscriptions.create(
            Subscription(external_customer_id="carol", plan_code="payg", external_id="carol", subscription_at=since)
        )
        cli = run_meterway(reprocess, env)
        assert cli.returncode == 0 and "reprocessed: 2" in cli.stdout and "park again" not in cli.stdout, cli.stdout
        _settled(gw, within_s=20)  # a row parked again by a cached listing is settled too: the status tells
        assert _sql(gw, "SELECT status, count(*) FROM mw_billing_outbox GROUP BY status") == [("sent", 2)]
        carol = {r[0] for r in _sql(gw, "SELECT uid FROM mw_ledger WHERE customer_id = 'carol'")}
        assert set(lago.transaction_ids()) >= carol


def test_reconcile_matches_then_reports_an_event_lago_lost(upstream: StandIn, lago: LagoStandIn) -> None:
    with run_gateway(_config(upstream, lago)) as gw:
        _traffic(gw, 6)
        _settled(gw)
        admin = {"Authorization": f"Bearer {gw.key}"}
        period = datetime.now(UTC).strftime("%Y-%m")
        report = httpx.get(gw.url + "/billing/reconcile", params={"period": period}, headers=admin).json()
        (sub,) = report["subscriptions"]
        assert report["match"] is True and sub["ledger_events"] == sub["lago_events"] == 6
        assert sub["ledger_tokens"] == sub["lago_tokens"] > 0

        def cli() -> subprocess.CompletedProcess[str]:
            env = {k: v for k, v in os.environ.items() if k not in ("METERWAY_CONFIG", "CONFIG_FILE_PATH")}
            env.update(LAGO_API_BASE=lago.url, LAGO_API_KEY=lago.api_key)
            database = gw.settings.database_url.reveal()
            command = ["billing", "reconcile", "--period", period, "--database-url", database]
            return subprocess.run(
                [sys.executable, "-m", "meterway", *command], capture_output=True, text=True, timeout=60, env=env
            )

        ok = cli()
        assert ok.returncode == 0 and "everything matches" in ok.stdout, ok.stdout + ok.stderr
        lost = lago.transaction_ids()[2]
        lago.lose(lost)
        report = httpx.get(gw.url + "/billing/reconcile", params={"period": period}, headers=admin).json()
        assert report["match"] is False and report["subscriptions"][0]["missing_in_lago"] == [lost]
        bad = cli()
        assert bad.returncode == 1 and lost in bad.stdout


def test_default_tags_and_request_tags_reach_the_lago_event(upstream: StandIn, lago: LagoStandIn) -> None:
    config = {**_config(upstream, lago), "litellm_settings": {"default_tags": ["owui"]}}
    with run_gateway(config) as gw:
        with openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as client:
            client.chat.completions.create(model="priced", messages=HI, user="acme")
            client.chat.completions.create(model="priced", messages=HI, user="acme", extra_body={"tags": ["batch"]})
        _settled(gw)
        _exact(gw, lago)
    assert sorted(e.properties["tags"] for e in lago.events) == ["owui", "owui,batch"]
