"""Budgets and token limits through the real SDK: reserved before the upstream call, settled to
the cost the upstream reported, added to the spend of key, user, team and customer.

The stand-in answers "hi" with 4 prompt and 7 completion tokens; at the prices below that costs
4 x 0.001 + 7 x 0.002 = 0.018 USD. A request's reservation is its body's bytes / 3 prompt tokens
plus its max_tokens, priced the same way.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from tests.support.gateway import RunningGateway, run_gateway
from tests.support.wait import clear_of_minute_edge, eventually
from tests.upstreams.standin import StandIn

HI: Any = [{"role": "user", "content": "hi"}]
COST = Decimal("0.018")


def priced_config(base: str, **general: Any) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": "priced",
                "litellm_params": {
                    "model": "openai/priced-upstream",
                    "api_base": base + "/v1",
                    "api_key": "sk-upstream",
                    "input_cost_per_token": 0.001,
                    "output_cost_per_token": 0.002,
                },
            }
        ],
        "general_settings": general,
    }


@pytest.fixture(scope="module")
def priced(standin: StandIn) -> Iterator[RunningGateway]:
    with run_gateway(priced_config(standin.base_url)) as gw:
        yield gw


def _admin(gw: RunningGateway, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {gw.key}"}
    r = (
        httpx.post(gw.url + path, json=body, headers=headers)
        if body is not None
        else httpx.get(gw.url + path, headers=headers)
    )
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _sdk(gw: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0)


def _spend(info: dict[str, Any]) -> Decimal:
    record = info.get("info", info)
    return Decimal(str(record["spend"]))


def test_a_key_budget_admits_what_it_can_pay_for_then_answers_budget_exceeded(priced: RunningGateway) -> None:
    key = _admin(priced, "/key/generate", {"max_budget": 0.05})["key"]
    with _sdk(priced, key) as client:
        client.chat.completions.create(model="priced", messages=HI, max_tokens=10)
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="priced", messages=HI, max_tokens=10)
    assert e.value.code == "budget_exceeded" and e.value.status_code == 400
    assert e.value.body["type"] == "budget_exceeded"  # type: ignore[index]
    assert "key max_budget is 0.05 USD, spent 0.018 USD" in e.value.message
    assert "may cost up to" in e.value.message
    assert _spend(_admin(priced, f"/key/info?key={key}")) == COST


@pytest.mark.parametrize("owner", ["user", "team", "customer"])
def test_budgets_of_user_team_and_customer_are_enforced(priced: RunningGateway, owner: str) -> None:
    tiny = 0.01  # less than one request's reservation
    extra: dict[str, Any] = {}
    key_fields: dict[str, Any] = {}
    if owner == "user":
        user = _admin(priced, "/user/new", {"max_budget": tiny})
        key_fields["user_id"] = user["user_id"]
    elif owner == "team":
        team = _admin(priced, "/team/new", {"max_budget": tiny})
        key_fields["team_id"] = team["team_id"]
    else:
        customer = _admin(priced, "/customer/new", {"user_id": f"cust-{time.time_ns()}", "max_budget": tiny})
        extra["user"] = customer["user_id"]
    key = _admin(priced, "/key/generate", key_fields)["key"]
    with _sdk(priced, key) as client, pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="priced", messages=HI, max_tokens=10, **extra)
    assert e.value.code == "budget_exceeded" and f"{owner} max_budget is 0.01 USD" in e.value.message


def test_spend_is_added_to_key_user_team_and_customer(priced: RunningGateway) -> None:
    user = _admin(priced, "/user/new", {})["user_id"]
    team = _admin(priced, "/team/new", {})["team_id"]
    customer = _admin(priced, "/customer/new", {"user_id": f"cust-{time.time_ns()}"})["user_id"]
    key = _admin(priced, "/key/generate", {"user_id": user, "team_id": team})["key"]
    with _sdk(priced, key) as client:
        client.chat.completions.create(model="priced", messages=HI, user=customer)
        stream = client.chat.completions.create(model="priced", messages=HI, user=customer, stream=True)
        assert [c for c in stream]
    assert _spend(_admin(priced, f"/key/info?key={key}")) == 2 * COST
    assert _spend(_admin(priced, f"/user/info?user_id={user}")["user_info"]) == 2 * COST
    assert _spend(_admin(priced, f"/team/info?team_id={team}")["team_info"]) == 2 * COST
    assert _spend(_admin(priced, f"/customer/info?end_user_id={customer}")) == 2 * COST


def test_a_budget_resets_when_its_duration_has_passed(priced: RunningGateway) -> None:
    key = _admin(priced, "/key/generate", {"max_budget": 0.05, "budget_duration": "2s"})["key"]
    with _sdk(priced, key) as client:
        client.chat.completions.create(model="priced", messages=HI, max_tokens=10)
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="priced", messages=HI, max_tokens=10)
        assert "resets at" in e.value.message

        def served() -> bool:
            try:
                client.chat.completions.create(model="priced", messages=HI, max_tokens=10)
            except openai.BadRequestError:
                return False
            return True

        # the period ends within 2 s of the key's creation (the gateway's own wall clock)
        eventually(served, 6, "the budget reset", interval=0.1)
    info = _admin(priced, f"/key/info?key={key}")["info"]
    assert _spend(info) == COST, "the new period's spend starts from zero"


def test_a_tpm_limit_counts_the_tokens_used(priced: RunningGateway) -> None:
    clear_of_minute_edge()
    key = _admin(priced, "/key/generate", {"tpm_limit": 10})["key"]
    with _sdk(priced, key) as client:
        client.chat.completions.create(model="priced", messages=HI, max_tokens=10)  # 0 used: admitted, 11 used
        with pytest.raises(openai.RateLimitError) as e:
            client.chat.completions.create(model="priced", messages=HI, max_tokens=10)
    headers = e.value.response.headers
    assert headers["x-ratelimit-limit-tokens"] == "10" and headers["x-ratelimit-remaining-tokens"] == "0"
    assert 1 <= int(headers["retry-after"]) <= 60
    assert "tpm_limit is 10 tokens per minute, 11 used" in e.value.message


def test_with_clamping_a_request_is_lowered_to_what_the_budget_can_pay(standin: StandIn) -> None:
    with run_gateway(priced_config(standin.base_url, budget_clamp_max_tokens=True)) as gw:
        key = _admin(gw, "/key/generate", {"max_budget": 0.05})["key"]
        with _sdk(gw, key) as client:
            client.chat.completions.create(model="priced", messages=HI, max_tokens=10)
            client.chat.completions.create(model="priced", messages=HI, max_tokens=10)
            sent = standin.last.json
            # 0.032 left; the prompt may cost 0.025 (76 bytes / 3 tokens); 0.007 pays for 3 output tokens
            assert sent["max_tokens"] == 3, sent
            with pytest.raises(openai.BadRequestError):  # 0.014 left cannot pay for the prompt
                client.chat.completions.create(model="priced", messages=HI, max_tokens=10)
