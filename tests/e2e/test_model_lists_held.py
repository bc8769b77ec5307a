"""A key's, team's and customer's model lists hold on every route that reaches an upstream: the
token counts (which call the model's upstream) and fallbacks, which must not serve a group the
caller may not call when the group it asked for fails."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.e2e.test_routing import HI, dep
from tests.support.gateway import RunningGateway, run_gateway
from tests.upstreams.standin import Script, StandIn

OVERLOADED = Script(status=503, body={"error": {"message": "overloaded", "type": "server_error"}})


def _admin(gw: RunningGateway) -> httpx.Client:
    return httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {gw.key}"}, timeout=20)


def test_token_counts_hold_the_customers_model_list(gateway: RunningGateway, upstream: StandIn) -> None:
    with _admin(gateway) as admin:
        admin.post("/customer/delete", json={"user_ids": ["counts-only-gpt"]})
        made = admin.post("/customer/new", json={"user_id": "counts-only-gpt", "models": ["gpt-test"]})
        assert made.status_code == 200, made.text
        key = admin.post("/key/generate", json={"customer_id": "counts-only-gpt"}).json()["key"]
    upstream.reset()
    with (
        anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0) as client,
        pytest.raises(anthropic.PermissionDeniedError) as refused,
    ):
        client.messages.count_tokens(model="claude", messages=[{"role": "user", "content": "hi"}])
    assert "Customer 'counts-only-gpt' may not use model 'claude'" in str(refused.value.body)
    counted = httpx.post(
        gateway.url + "/v1/responses/input_tokens",
        json={"model": "claude", "input": "hi"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert counted.status_code == 403 and counted.json()["error"]["code"] == "model_not_allowed", counted.text
    assert upstream.received == []  # neither reached the upstream
    allowed = httpx.post(
        gateway.url + "/v1/responses/input_tokens",
        json={"model": "gpt-test", "input": "hi"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert allowed.status_code == 200, allowed.text


@pytest.fixture
def failing_primary() -> Iterator[tuple[RunningGateway, StandIn, StandIn]]:
    with StandIn() as a, StandIn() as b:
        a.set_default(OVERLOADED)
        config: dict[str, Any] = {
            "model_list": [dep("primary", a, "p1"), dep("backup", b, "b1")],
            "router_settings": {"num_retries": 0, "retry_after": 0.01, "fallbacks": [{"primary": ["backup"]}]},
        }
        with run_gateway(config) as gw:
            yield gw, a, b


def _chat(gw: RunningGateway, key: str, **extra: Any) -> httpx.Response:
    body = {"model": "primary", "messages": HI, **extra}
    return httpx.post(gw.v1 + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def test_a_fallback_the_caller_may_not_call_is_skipped_not_served(
    failing_primary: tuple[RunningGateway, StandIn, StandIn],
) -> None:
    gw, _a, b = failing_primary
    with _admin(gw) as admin:
        assert admin.post("/team/new", json={"team_id": "primary-team", "models": ["primary"]}).status_code == 200
        assert admin.post("/customer/new", json={"user_id": "primary-cust", "models": ["primary"]}).status_code == 200
        anyone = admin.post("/key/generate", json={}).json()["key"]
        by_key = admin.post("/key/generate", json={"models": ["primary"]}).json()["key"]
        by_team = admin.post("/key/generate", json={"team_id": "primary-team"}).json()["key"]
    served = _chat(gw, anyone)
    assert served.status_code == 200 and served.headers["x-meterway-deployment"] == "b1", served.text
    b.reset()
    for key, extra in ((by_key, {}), (by_team, {}), (anyone, {"user": "primary-cust"})):
        refused = _chat(gw, key, **extra)
        # the primary's own error, as when no fallback is configured: the backup is never called
        assert refused.status_code == 502, (extra, refused.text)
        assert "Upstream deployment 'p1' failed with HTTP 503" in refused.json()["error"]["message"]
    assert b.received == []
