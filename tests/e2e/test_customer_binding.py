"""Who may charge whom. A key (or its team) bound to a customer has every request charged, limited
and billed to that customer whatever the request's `user` says; that `user` is kept on the row as
the end user, nothing more. Unbound keys keep LiteLLM's behaviour (`user` is the customer) unless
`general_settings.require_customer_binding` is on: then naming an existing customer is a 403.

Real gateway, stand-in upstream, the real OpenAI SDK; SQLite with in-process limits, and once
PostgreSQL with limits in Redis."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.test_budgets import COST, HI, priced_config
from tests.lago.standin import LagoStandIn
from tests.support.gateway import RunningGateway, ledger_row, run_gateway
from tests.support.models import priced
from tests.support.wait import eventually
from tests.upstreams.standin import StandIn


@pytest.fixture(scope="module")
def gw(standin: StandIn) -> Iterator[RunningGateway]:
    with run_gateway(priced_config(standin.base_url)) as running:
        yield running


@pytest.fixture(scope="module")
def strict(standin: StandIn) -> Iterator[RunningGateway]:
    with run_gateway(priced_config(standin.base_url, require_customer_binding=True)) as running:
        yield running


def _admin(gw: RunningGateway) -> httpx.Client:
    return httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {gw.key}"}, timeout=10)


def _ok(r: httpx.Response) -> Any:
    assert r.status_code == 200, r.text
    return r.json()


def _customer(gw: RunningGateway, prefix: str, **fields: Any) -> str:
    customer_id = f"{prefix}-{time.time_ns()}"
    with _admin(gw) as admin:
        _ok(admin.post("/customer/new", json={"user_id": customer_id, **fields}))
    return customer_id


def _spend(gw: RunningGateway, customer_id: str) -> Decimal:
    with _admin(gw) as admin:
        return Decimal(str(_ok(admin.get("/customer/info", params={"end_user_id": customer_id}))["spend"]))


def _chat(gw: RunningGateway, key: str, **extra: Any) -> tuple[Any, str]:
    with openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(model="priced", messages=HI, **extra)
    return raw.parse(), raw.headers["x-request-id"]


def test_a_bound_key_charges_its_own_customer_whatever_user_says(gw: RunningGateway) -> None:
    own, victim = _customer(gw, "cust-own"), _customer(gw, "cust-victim")
    with _admin(gw) as admin:
        made = _ok(admin.post("/key/generate", json={"customer_id": own}))
        assert made["customer_id"] == own
        assert _ok(admin.get("/key/info", params={"key": made["token"]}))["info"]["customer_id"] == own
        listed = _ok(admin.get("/key/list", params={"return_full_object": "true", "size": 100}))["keys"]
        assert [k["customer_id"] for k in listed if k["token"] == made["token"]] == [own]
    _, rid = _chat(gw, made["key"], user=victim)
    with openai.OpenAI(base_url=gw.v1, api_key=made["key"], max_retries=0) as client:
        assert list(client.chat.completions.create(model="priced", messages=HI, user=victim, stream=True))
    assert _spend(gw, victim) == 0
    assert _spend(gw, own) == 2 * COST
    row = ledger_row(gw.url, gw.key, rid)
    assert row["customer_id"] == own and row["end_user"] == victim


def test_a_team_bound_key_charges_the_teams_customer_and_its_own_binding_wins(gw: RunningGateway) -> None:
    teams, own, victim = _customer(gw, "cust-team"), _customer(gw, "cust-key"), _customer(gw, "cust-victim")
    with _admin(gw) as admin:
        team = _ok(admin.post("/team/new", json={"customer_id": teams}))
        assert team["customer_id"] == teams
        info = _ok(admin.get("/team/info", params={"team_id": team["team_id"]}))
        assert info["team_info"]["customer_id"] == teams
        by_team = _ok(admin.post("/key/generate", json={"team_id": team["team_id"]}))["key"]
        by_key = _ok(admin.post("/key/generate", json={"team_id": team["team_id"], "customer_id": own}))["key"]
    _, rid = _chat(gw, by_team, user=victim)
    row = ledger_row(gw.url, gw.key, rid)
    assert row["customer_id"] == teams and row["end_user"] == victim
    _chat(gw, by_key, user=victim)
    assert (_spend(gw, teams), _spend(gw, own), _spend(gw, victim)) == (COST, COST, 0)


def test_a_bound_key_without_user_is_charged_to_its_customer(gw: RunningGateway) -> None:
    own = _customer(gw, "cust-plain")
    with _admin(gw) as admin:
        key = _ok(admin.post("/key/generate", json={"customer_id": own}))["key"]
    _, rid = _chat(gw, key)
    row = ledger_row(gw.url, gw.key, rid)
    assert row["customer_id"] == own and row["end_user"] == own  # LiteLLM's end_user: whom it is for
    assert _spend(gw, own) == COST


def test_an_unbound_key_keeps_litellms_behaviour(gw: RunningGateway) -> None:
    """Without the setting, `user` names the customer: the threat the binding closes."""
    customer = _customer(gw, "cust-open")
    with _admin(gw) as admin:
        key = _ok(admin.post("/key/generate", json={}))["key"]
    _, rid = _chat(gw, key, user=customer)
    assert _spend(gw, customer) == COST
    assert ledger_row(gw.url, gw.key, rid)["customer_id"] == customer


def test_the_bound_customers_budget_applies(gw: RunningGateway) -> None:
    own = _customer(gw, "cust-tiny", max_budget=0.01)  # less than one request's reservation
    with _admin(gw) as admin:
        key = _ok(admin.post("/key/generate", json={"customer_id": own}))["key"]
    with pytest.raises(openai.BadRequestError) as e:
        _chat(gw, key, user="someone-with-money", max_tokens=10)
    assert e.value.code == "budget_exceeded" and "customer max_budget is 0.01 USD" in e.value.message


def test_a_binding_names_an_existing_customer_and_only_admins_bind(gw: RunningGateway) -> None:
    own = _customer(gw, "cust-admin")
    with _admin(gw) as admin:
        r = admin.post("/key/generate", json={"customer_id": "no-such-customer"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "customer_id"
        assert admin.post("/team/new", json={"customer_id": "no-such-customer"}).status_code == 400
        made = _ok(admin.post("/key/generate", json={}))
        assert _ok(admin.post("/key/update", json={"key": made["token"], "customer_id": own}))["customer_id"] == own
        assert _ok(admin.post("/key/update", json={"key": made["token"], "rpm_limit": 5}))["customer_id"] == own
        assert _ok(admin.post("/key/update", json={"key": made["token"], "customer_id": ""}))["customer_id"] is None
        user_key = _ok(admin.post("/user/new", json={"user_id": f"ivy-{time.time_ns()}", "user_role": "internal_user"}))
    with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {user_key['key']}"}) as ivy:
        r = ivy.post("/key/generate", json={"customer_id": own})
        assert r.status_code == 403 and r.json()["error"]["param"] == "customer_id"


def test_a_rebound_key_charges_its_new_customer_at_once(gw: RunningGateway) -> None:
    first, second = _customer(gw, "cust-first"), _customer(gw, "cust-second")
    with _admin(gw) as admin:
        made = _ok(admin.post("/key/generate", json={"customer_id": first}))
        _chat(gw, made["key"])
        _ok(admin.post("/key/update", json={"key": made["token"], "customer_id": second}))
    _chat(gw, made["key"])
    assert (_spend(gw, first), _spend(gw, second)) == (COST, COST)


def test_with_bindings_required_an_unbound_key_naming_a_customer_gets_403(strict: RunningGateway) -> None:
    victim = _customer(strict, "cust-victim")
    with _admin(strict) as admin:
        key = _ok(admin.post("/key/generate", json={}))["key"]
    with pytest.raises(openai.PermissionDeniedError) as e:
        _chat(strict, key, user=victim)
    assert e.value.code == "customer_not_bound" and victim in e.value.message
    body = e.value.body
    assert isinstance(body, dict) and body["param"] == "user" and body["type"] == "permission_error"
    with openai.OpenAI(base_url=strict.v1, api_key=key, max_retries=0) as client, pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="priced", messages=HI, user=victim, stream=True))
    assert _spend(strict, victim) == 0


def test_with_bindings_required_a_user_that_is_no_customer_is_only_an_end_user(strict: RunningGateway) -> None:
    with _admin(strict) as admin:
        key = _ok(admin.post("/key/generate", json={}))["key"]
    _, rid = _chat(strict, key, user="just-an-end-user")
    row = ledger_row(strict.url, strict.key, rid)
    assert row["customer_id"] is None and row["end_user"] == "just-an-end-user"
    with _admin(strict) as admin:  # no customer was made or charged by it
        assert admin.get("/customer/info", params={"end_user_id": "just-an-end-user"}).status_code == 404


def test_with_bindings_required_bound_keys_and_the_master_key_still_charge(strict: RunningGateway) -> None:
    own, victim = _customer(strict, "cust-own"), _customer(strict, "cust-victim")
    with _admin(strict) as admin:
        key = _ok(admin.post("/key/generate", json={"customer_id": own}))["key"]
    _chat(strict, key, user=victim)
    _, rid = _chat(strict, strict.key, user=victim)  # the master key is exempt
    assert (_spend(strict, own), _spend(strict, victim)) == (COST, COST)
    assert ledger_row(strict.url, strict.key, rid)["customer_id"] == victim


def test_on_postgresql_with_redis_limits_a_bound_key_cannot_charge_another_customer(
    standin: StandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    config = priced_config(
        standin.base_url,
        database_url=pg_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        require_customer_binding=True,
    )
    with run_gateway(config) as pg:
        # one request reserves about 0.06 USD (its body and max_tokens) and costs 0.018: one fits
        own = _customer(pg, "cust-own", max_budget=0.07, rpm_limit=100)
        victim = _customer(pg, "cust-victim")
        with _admin(pg) as admin:
            bound = _ok(admin.post("/key/generate", json={"customer_id": own}))["key"]
            unbound = _ok(admin.post("/key/generate", json={}))["key"]
        _, rid = _chat(pg, bound, user=victim, max_tokens=10)
        with pytest.raises(openai.PermissionDeniedError):
            _chat(pg, unbound, user=victim, max_tokens=10)
        assert (_spend(pg, own), _spend(pg, victim)) == (COST, 0)
        row = ledger_row(pg.url, pg.key, rid)
        assert row["customer_id"] == own and row["end_user"] == victim
        with pytest.raises(openai.BadRequestError) as e:  # the bound customer's budget, whoever `user` names
            _chat(pg, bound, user=victim, max_tokens=10)
        assert e.value.code == "budget_exceeded" and "customer max_budget" in e.value.message


def test_a_bound_keys_usage_is_billed_to_its_customer_in_lago(upstream: StandIn, lago: LagoStandIn) -> None:
    config = {
        "model_list": [priced(upstream.base_url)],
        "billing": {"api_base": lago.url, "api_key": lago.api_key, "charge_by": "end_user_id"},
    }
    with run_gateway(config) as billed:
        own = "acme"  # the customer the Lago stand-in has a subscription for
        with _admin(billed) as admin:
            _ok(admin.post("/customer/new", json={"user_id": own}))
            _ok(admin.post("/customer/new", json={"user_id": "cust-victim"}))
            key = _ok(admin.post("/key/generate", json={"customer_id": own}))["key"]
        with openai.OpenAI(base_url=billed.v1, api_key=key, max_retries=0) as client:
            client.chat.completions.create(model="priced", messages=HI, user="cust-victim")
        eventually(lambda: lago.events, 15, "an event reaching Lago")
        assert [e.external_subscription_id for e in lago.events] == [own]


def test_the_ui_binds_keys_and_teams(gw: RunningGateway) -> None:
    own = _customer(gw, "cust-ui")
    with httpx.Client(base_url=gw.url, timeout=10) as browser:
        form = browser.get("/ui/login")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert token is not None
        assert browser.post("/ui/login", data={"csrf": token.group(1), "key": gw.key}).status_code == 303
        page = browser.get("/ui/keys")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None and 'name="customer_id"' in page.text
        shown = browser.post("/ui/keys/new", data={"csrf": csrf.group(1), "key_alias": "ui-bound", "customer_id": own})
        assert shown.status_code == 200, shown.text
        team_id = f"team-ui-{time.time_ns()}"
        saved = browser.post("/ui/teams/save", data={"csrf": csrf.group(1), "team_id": team_id, "customer_id": own})
        assert saved.status_code == 303, saved.text
        assert f"charges {own}" in browser.get("/ui/teams").text
        assert f"charges {own}" in browser.get("/ui/keys", params={"q": "ui-bound"}).text
        unbind = {"csrf": csrf.group(1), "team_id": team_id, "existing": "1", "customer_id": ""}
        assert browser.post("/ui/teams/save", data=unbind).status_code == 303
    with _admin(gw) as admin:
        assert _ok(admin.get("/team/info", params={"team_id": team_id}))["team_info"]["customer_id"] is None


def test_a_customer_with_bound_keys_or_teams_is_not_deleted(gw: RunningGateway) -> None:
    own = _customer(gw, "cust-kept")
    with _admin(gw) as admin:
        made = _ok(admin.post("/key/generate", json={"customer_id": own}))
        team = _ok(admin.post("/team/new", json={"customer_id": own}))
        refused = admin.post("/customer/delete", json={"user_ids": [own]})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "customer_bound"
        assert team["team_id"] in refused.json()["error"]["message"]
        _ok(admin.post("/key/update", json={"key": made["token"], "customer_id": ""}))
        _ok(admin.post("/team/update", json={"team_id": team["team_id"], "customer_id": ""}))
        assert _ok(admin.post("/customer/delete", json={"user_ids": [own]}))["deleted_customers"] == [own]
