"""Lago made ready for meterway's events (`billing check`, `billing setup`), the other event shapes
(split by token type, charged by user with its own mapping), the sender on its own (`billing
worker`), and export turned on by LiteLLM's `LAGO_*` variables alone: all against the Lago
stand-in over real HTTP."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from lago_python_client.client import Client
from lago_python_client.models import BillableMetric, Customer, Subscription

from tests.lago.standin import LagoStandIn, billing_ready, payg_plan
from tests.support.cli import run_meterway
from tests.support.gateway import RunningGateway, run_gateway
from tests.support.models import priced
from tests.support.serve import serve
from tests.support.wait import eventually
from tests.upstreams.standin import StandIn

HI: Any = [{"role": "user", "content": "hi"}]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("METERWAY_CONFIG", "CONFIG_FILE_PATH") and "LAGO" not in k}


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_meterway(args, env or _env())


def _config(upstream: StandIn, lago: LagoStandIn, **billing: Any) -> dict[str, Any]:
    second = {**priced(upstream.base_url), "model_name": "priced-mini"}
    return {
        "model_list": [priced(upstream.base_url), second],
        "billing": {"api_base": lago.url, "api_key": lago.api_key, "charge_by": "end_user_id", **billing},
    }


def _sql(gw: RunningGateway, query: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(gw.settings.database_url.reveal().removeprefix("sqlite:///")) as db:
        return db.execute(query).fetchall()


def _settled(database: str, within_s: float = 15) -> None:
    path = database.removeprefix("sqlite:///")

    def pending() -> int:
        with sqlite3.connect(path) as db:
            return int(db.execute("SELECT count(*) FROM mw_billing_outbox WHERE status = 'pending'").fetchone()[0])

    eventually(lambda: pending() == 0, within_s, "every export settled")


def _chat(base_url: str, key: str, n: int, user: str | None = "acme", model: str = "priced") -> None:
    extra = {"user": user} if user else {}
    with openai.OpenAI(base_url=base_url, api_key=key, max_retries=0) as client:
        for _ in range(n):
            client.chat.completions.create(model=model, messages=HI, **extra)


def _since() -> str:
    return datetime(2020, 1, 1, tzinfo=UTC).isoformat()


def _cents(units: Decimal, amount: str) -> int:
    return int((units * Decimal(amount) * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _subscribe(lago: LagoStandIn, customer: str) -> None:
    billing_ready(lago, [customer], metric=False)  # the metric is setup's (or the test's) own


@pytest.fixture
def lago() -> Iterator[LagoStandIn]:
    with LagoStandIn() as stand_in:
        yield stand_in


def test_setup_creates_the_metric_check_then_passes_and_a_new_model_is_added(
    upstream: StandIn, lago: LagoStandIn, tmp_path: Path
) -> None:
    config = _config(upstream, lago)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    db = ["--config", str(path), "--database-url", f"sqlite:///{tmp_path}/meterway.db"]
    assert _cli("migrate", *db).returncode == 0  # the one command that migrates

    before = _cli("billing", "check", *db)
    assert before.returncode == 1 and "no billable metric 'llm_tokens'" in before.stdout, before.stdout + before.stderr
    created = _cli("billing", "setup", *db)
    assert created.returncode == 0 and "created 'llm_tokens'" in created.stdout, created.stdout + created.stderr
    metric = lago.metrics["llm_tokens"]
    assert metric["aggregation_type"] == "sum_agg" and metric["field_name"] == "total_tokens"
    assert metric["filters"] == [{"key": "model", "values": ["priced", "priced-mini"]}]
    assert _cli("billing", "check", *db).returncode == 0

    again = _cli("billing", "setup", "--format", "json", *db)  # idempotent: nothing to change
    assert again.returncode == 0 and "added to the metric" not in again.stdout
    assert lago.metrics["llm_tokens"]["lago_id"] == metric["lago_id"]

    config["model_list"].append({**priced(upstream.base_url), "model_name": "priced-large"})
    path.write_text(yaml.safe_dump(config))
    stale = _cli("billing", "check", *db)
    assert stale.returncode == 1 and "does not list priced-large" in stale.stdout, stale.stdout
    fixed = _cli("billing", "setup", *db)
    assert fixed.returncode == 0 and "model: priced-large" in fixed.stdout, fixed.stdout
    assert lago.metrics["llm_tokens"]["filters"] == [
        {"key": "model", "values": ["priced", "priced-large", "priced-mini"]}
    ]


def test_check_names_a_wrong_key_and_an_unreachable_lago(upstream: StandIn, lago: LagoStandIn, tmp_path: Path) -> None:
    env = {**_env(), "LAGO_API_BASE": lago.url, "LAGO_API_KEY": "not-the-key"}
    db = ["--database-url", f"sqlite:///{tmp_path}/meterway.db"]
    assert _cli("migrate", *db).returncode == 0  # the one command that migrates
    wrong = _cli("billing", "check", *db, env=env)
    assert wrong.returncode == 1 and "Lago refused the API key (401)" in wrong.stdout, wrong.stdout + wrong.stderr
    lago.down()
    gone = _cli("billing", "check", *db, env={**env, "LAGO_API_KEY": lago.api_key})
    assert gone.returncode == 1 and "did not answer" in gone.stdout, gone.stdout + gone.stderr


def test_setup_subscribes_customers_with_a_plan_and_their_usage_is_billed(upstream: StandIn, lago: LagoStandIn) -> None:
    with run_gateway(_config(upstream, lago)) as gw:
        admin = {"Authorization": f"Bearer {gw.key}"}
        assert httpx.get(gw.url + "/billing/check", headers=admin).json()["ok"] is False
        assert httpx.post(gw.url + "/billing/setup", json={}, headers=admin).json()["ok"] is True
        client = Client(api_key=lago.api_key, api_url=lago.url)
        client.plans.create(payg_plan(lago.metrics["llm_tokens"]["lago_id"], "0.001"))
        new = {"user_id": "globex", "alias": "Globex", "billing_plan_code": "payg"}
        httpx.post(gw.url + "/customer/new", json=new, headers=admin).raise_for_status()
        for _ in range(2):  # the second run finds everything in place
            done = httpx.post(gw.url + "/billing/setup", json={"customers": True}, headers=admin).json()
            assert done["ok"] is True, done
        subs = [s for s in lago.subscriptions.values() if s["external_customer_id"] == "globex"]
        assert len(subs) == 1 and subs[0]["external_id"] == "globex" and subs[0]["plan_code"] == "payg"
        assert lago.customers["globex"]["name"] == "Globex"
        _chat(gw.v1, gw.key, 3, user="globex")
        _settled(gw.settings.database_url.reveal())
        uids = {r[0] for r in _sql(gw, "SELECT uid FROM mw_ledger WHERE customer_id = 'globex'")}
        assert set(lago.transaction_ids()) == uids and len(uids) == 3


def test_events_split_by_token_type_carry_one_event_per_type(upstream: StandIn, lago: LagoStandIn) -> None:
    with run_gateway(_config(upstream, lago, split_by_token_type=True)) as gw:
        admin = {"Authorization": f"Bearer {gw.key}"}
        assert httpx.post(gw.url + "/billing/setup", json={}, headers=admin).json()["ok"] is True
        metric = lago.metrics["llm_tokens"]
        assert metric["field_name"] == "tokens"
        assert metric["filters"] == [
            {"key": "model", "values": ["priced", "priced-mini"]},
            {"key": "type", "values": ["cache_write", "cached_input", "input", "output", "reasoning"]},
        ]
        _subscribe(lago, "acme")
        _chat(gw.v1, gw.key, 4)
        _settled(gw.settings.database_url.reveal())
        rows = _sql(gw, "SELECT uid, prompt_tokens, completion_tokens FROM mw_ledger WHERE customer_id = 'acme'")
        expected = {}
        for uid, prompt, completion in rows:
            expected[f"{uid}:input"] = prompt
            expected[f"{uid}:output"] = completion
        got = {e.transaction_id: e for e in lago.events}
        assert set(got) == set(expected) and len(lago.transaction_ids()) == len(expected)
        for tid, event in got.items():
            kind = tid.rsplit(":", 1)[1]
            assert event.properties == {"type": kind, "model": "priced", "tokens": expected[tid]}
        period = datetime.now(UTC).strftime("%Y-%m")
        report = httpx.get(gw.url + "/billing/reconcile", params={"period": period}, headers=admin).json()
        assert report["match"] is True and report["subscriptions"][0]["lago_events"] == len(expected)


def test_charging_by_user_uses_the_users_own_subscription(upstream: StandIn, lago: LagoStandIn) -> None:
    with run_gateway(_config(upstream, lago, charge_by="user_id")) as gw:
        admin = {"Authorization": f"Bearer {gw.key}"}
        httpx.post(gw.url + "/billing/setup", json={}, headers=admin).raise_for_status()
        _subscribe(lago, "initech")
        user = {"user_id": "peter", "billing_external_subscription_id": "initech", "auto_create_key": False}
        httpx.post(gw.url + "/user/new", json=user, headers=admin).raise_for_status()
        key = httpx.post(gw.url + "/key/generate", json={"user_id": "peter"}, headers=admin).json()["key"]
        _chat(gw.v1, key, 2, user=None)
        _settled(gw.settings.database_url.reveal())
        assert {e.external_subscription_id for e in lago.events} == {"initech"} and len(lago.events) == 2


@contextmanager
def _config_file(config: dict[str, Any]) -> Iterator[str]:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(config, f)
    try:
        yield f.name
    finally:
        os.unlink(f.name)


def test_the_worker_sends_what_gateways_without_a_sender_recorded(upstream: StandIn, lago: LagoStandIn) -> None:
    with run_gateway(_config(upstream, lago, run_sender=False)) as gw:
        admin = {"Authorization": f"Bearer {gw.key}"}
        httpx.post(gw.url + "/billing/setup", json={}, headers=admin).raise_for_status()
        _subscribe(lago, "acme")
        _chat(gw.v1, gw.key, 5)
        billing = httpx.get(gw.url + "/billing/status", headers=admin).json()
        assert "sender" not in billing, "this gateway runs no sender of its own"
        assert lago.events == [] and len(_sql(gw, "SELECT 1 FROM mw_billing_outbox WHERE status = 'pending'")) == 5
        database = gw.settings.database_url.reveal()
        with _config_file(_config(upstream, lago)) as path:
            worker = subprocess.Popen(
                [sys.executable, "-m", "meterway", "billing", "worker", "--config", path, "--database-url", database],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_env(),
            )
            try:
                _settled(database, within_s=30)
            finally:
                worker.send_signal(signal.SIGTERM)
                _, err = worker.communicate(timeout=30)
        assert worker.returncode == 0, err
        assert "5 events delivered" in err
        uids = {r[0] for r in _sql(gw, "SELECT uid FROM mw_ledger")}
        assert set(lago.transaction_ids()) == uids and len(lago.transaction_ids()) == 5


def test_litellm_lago_variables_alone_turn_export_on(upstream: StandIn, lago: LagoStandIn) -> None:
    billing_ready(lago, ["acme"])
    with _config_file({"model_list": [priced(upstream.base_url)]}) as path:
        env = {
            **_env(),
            "LAGO_API_BASE": lago.url,
            "LAGO_API_KEY": lago.api_key,
            "LAGO_API_EVENT_CODE": "llm_tokens",
            "LAGO_API_CHARGE_BY": "end_user_id",
            "METERWAY_MASTER_KEY": "sk-master-env",
        }
        for served in serve(["--config", path], env):
            _chat(served.url + "/v1", "sk-master-env", 3)
            eventually(lambda: len(lago.events) >= 3, 15, "three events reaching Lago")
            assert {e.external_subscription_id for e in lago.events} == {"acme"} and len(lago.events) == 3


def test_a_litellm_users_metric_on_response_cost_keeps_counting(upstream: StandIn, lago: LagoStandIn) -> None:
    """LiteLLM's Lago callback sends `response_cost`; a metric that sums it, made by a LiteLLM user
    before moving over, passes `billing check` and adds up exactly what the ledger charged. A metric
    on a figure the events do not carry is named as such."""
    client = Client(api_key=lago.api_key, api_url=lago.url)
    client.billable_metrics.create(
        BillableMetric(name="LLM spend", code="llm_tokens", aggregation_type="sum_agg", field_name="response_cost")
    )
    _subscribe(lago, "acme")
    with run_gateway(_config(upstream, lago)) as gw:
        admin = {"Authorization": f"Bearer {gw.key}"}
        checked = httpx.get(gw.url + "/billing/check", headers=admin).json()
        assert checked["ok"] is True, checked
        _chat(gw.v1, gw.key, 3)
        _settled(gw.settings.database_url.reveal())
        (charged,) = _sql(gw, "SELECT sum(cost) FROM mw_ledger WHERE customer_id = 'acme'")[0]
        summed = sum(Decimal(str(e.properties["response_cost"])) for e in lago.events)
        assert len(lago.events) == 3 and summed == Decimal(charged) / 10**10 > 0

    # the acceptance: what Lago bills from that metric is the ledger's cost (a cent per 1e-4 USD here)
    client.plans.create(payg_plan(lago.metrics["llm_tokens"]["lago_id"], "100"))
    client.customers.create(Customer(external_id="globex", currency="USD"))
    client.subscriptions.create(
        Subscription(external_customer_id="globex", plan_code="payg", external_id="globex", subscription_at=_since())
    )
    with run_gateway(_config(upstream, lago)) as gw:
        _chat(gw.v1, gw.key, 4, user="globex")
        _settled(gw.settings.database_url.reveal())
        (charged,) = _sql(gw, "SELECT sum(cost) FROM mw_ledger WHERE customer_id = 'globex'")[0]
    usage = client.customers.current_usage("globex", "globex")
    assert usage is not None and usage.charges_usage[0].events_count == 4
    assert usage.amount_cents == _cents(Decimal(charged) / 10**10, "100") > 0

    lago.metrics["llm_tokens"]["field_name"] = "spend"  # a name no event carries
    with run_gateway(_config(upstream, lago)) as gw:
        checked = httpx.get(gw.url + "/billing/check", headers={"Authorization": f"Bearer {gw.key}"}).json()
        (step,) = [s for s in checked["steps"] if s["name"] == "billable_metric"]
        assert checked["ok"] is False and "'spend'" in step["detail"] and "'response_cost'" in step["detail"]


def test_billing_properties_rename_add_and_drop_what_events_carry(upstream: StandIn, lago: LagoStandIn) -> None:
    """`billing.properties` renames the cost to a user's own name, adds a request-metadata key and
    drops a default: the events carry exactly that, `billing check` takes a metric on the new name
    (and names the dropped one as not carried), and Lago bills the renamed figure."""
    properties = {"cost_usd": "cost", "cost": None, "response_cost": None, "project": "metadata.project", "model": None}
    client = Client(api_key=lago.api_key, api_url=lago.url)
    client.billable_metrics.create(
        BillableMetric(name="LLM spend", code="llm_tokens", aggregation_type="sum_agg", field_name="cost_usd")
    )
    client.plans.create(payg_plan(lago.metrics["llm_tokens"]["lago_id"], "100"))
    client.customers.create(Customer(external_id="acme", currency="USD"))
    client.subscriptions.create(
        Subscription(external_customer_id="acme", plan_code="payg", external_id="acme", subscription_at=_since())
    )
    with run_gateway(_config(upstream, lago, properties=properties)) as gw:
        admin = {"Authorization": f"Bearer {gw.key}"}
        checked = httpx.get(gw.url + "/billing/check", headers=admin).json()
        assert checked["ok"] is True, checked
        with openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as sdk:
            for _ in range(3):
                sdk.chat.completions.create(
                    model="priced", messages=HI, user="acme", extra_body={"metadata": {"project": "apollo"}}
                )
        _settled(gw.settings.database_url.reveal())
        (charged,) = _sql(gw, "SELECT sum(cost) FROM mw_ledger WHERE customer_id = 'acme'")[0]
    assert len(lago.events) == 3
    for event in lago.events:
        assert set(event.properties) == {"prompt_tokens", "completion_tokens", "total_tokens", "cost_usd", "project"}
        assert event.properties["project"] == "apollo"
    assert sum(Decimal(str(e.properties["cost_usd"])) for e in lago.events) == Decimal(charged) / 10**10
    usage = client.customers.current_usage("acme", "acme")
    assert usage is not None and usage.amount_cents == _cents(Decimal(charged) / 10**10, "100") > 0

    lago.metrics["llm_tokens"]["field_name"] = "response_cost"  # dropped by the mapping: not carried
    with run_gateway(_config(upstream, lago, properties=properties)) as gw:
        checked = httpx.get(gw.url + "/billing/check", headers={"Authorization": f"Bearer {gw.key}"}).json()
        (step,) = [s for s in checked["steps"] if s["name"] == "billable_metric"]
        assert checked["ok"] is False and "'response_cost'" in step["detail"] and "'cost_usd'" in step["detail"]


def _steps(gw: RunningGateway, action: str) -> tuple[bool, dict[str, str]]:
    admin = {"Authorization": f"Bearer {gw.key}"}
    if action == "check":
        done = httpx.get(gw.url + "/billing/check", headers=admin).json()
    else:
        done = httpx.post(gw.url + "/billing/setup", json={}, headers=admin).json()
    return done["ok"], {s["name"]: s["detail"] for s in done["steps"]}


def test_the_model_filter_follows_the_property_that_carries_the_model_group(
    upstream: StandIn, lago: LagoStandIn
) -> None:
    """Setup lists the models on the property `billing.properties` puts the model group in; a
    metric filtering on `model` fails check when the events carry no `model` or carry another
    value there, since Lago would bill every event at the charge's default price."""
    with run_gateway(_config(upstream, lago)) as gw:
        assert _steps(gw, "setup")[0] is True
    assert lago.metrics["llm_tokens"]["filters"] == [{"key": "model", "values": ["priced", "priced-mini"]}]
    with run_gateway(_config(upstream, lago, properties={"model": None})) as gw:
        ok, steps = _steps(gw, "check")
        assert ok is False and "no event carries it" in steps["filter:model"], steps
    with run_gateway(_config(upstream, lago, properties={"model": "upstream_model"})) as gw:
        ok, steps = _steps(gw, "check")
        assert ok is False and "fills 'model' from upstream_model" in steps["filter:model"], steps

    del lago.metrics["llm_tokens"]
    renamed = {"model": None, "model_group": "model"}
    with run_gateway(_config(upstream, lago, properties=renamed)) as gw:
        assert _steps(gw, "setup")[0] is True
        assert lago.metrics["llm_tokens"]["filters"] == [{"key": "model_group", "values": ["priced", "priced-mini"]}]
        assert _steps(gw, "check")[0] is True


def test_setup_refuses_to_create_a_metric_when_no_property_carries_total_tokens(
    upstream: StandIn, lago: LagoStandIn
) -> None:
    """Dropping `total_tokens` leaves setup nothing to sum: it says so and creates nothing, where
    it created a metric summing `prompt_tokens` and called it LLM tokens."""
    with run_gateway(_config(upstream, lago, properties={"total_tokens": None})) as gw:
        ok, steps = _steps(gw, "setup")
    assert ok is False and "no event property carries total tokens" in steps["billable_metric"], steps
    assert "llm_tokens" not in lago.metrics


def test_check_fails_a_metric_summing_a_figure_the_client_sets(upstream: StandIn, lago: LagoStandIn) -> None:
    """A metric summing a property taken from request metadata bills what each caller says."""
    client = Client(api_key=lago.api_key, api_url=lago.url)
    client.billable_metrics.create(
        BillableMetric(name="Units", code="llm_tokens", aggregation_type="sum_agg", field_name="units")
    )
    with run_gateway(_config(upstream, lago, properties={"units": "metadata.units"})) as gw:
        ok, steps = _steps(gw, "check")
    assert ok is False and "the client sets it" in steps["billable_metric"], steps
