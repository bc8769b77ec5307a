"""Every way a request can fail, with the status and body the client receives."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from tests.e2e.conftest import ANTHROPIC_KEY, AZURE_KEY, UPSTREAM_KEY
from tests.support.gateway import RunningGateway
from tests.upstreams.standin import StandIn

SECRETS = (UPSTREAM_KEY, ANTHROPIC_KEY, AZURE_KEY)
CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def http(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.v1, headers={"Authorization": f"Bearer {gateway.key}"}, timeout=10) as c:
        yield c


def error_of(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert r.headers["x-request-id"], "every response carries x-request-id"
    for secret in SECRETS:
        assert secret not in r.text
    return body["error"]  # type: ignore[no-any-return]


def test_malformed_json_is_400(http: httpx.Client) -> None:
    r = http.post("/chat/completions", content=b'{"model": "gpt-test", "messages": [')
    assert r.status_code == 400 and "not valid JSON" in error_of(r)["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": "gpt-test"}, "messages"),
        ({"model": 42, "messages": []}, "model"),
        ({"model": "gpt-test", "messages": "hi"}, "messages"),
        ({"model": "gpt-test", "messages": [], "stream": "yes"}, "stream"),
        ({"model": "gpt-test", "messages": [{"role": "user", "content": "x"}], "user": 7}, "user"),
    ],
)
def test_missing_or_mistyped_field_is_400_naming_it(http: httpx.Client, body: dict[str, Any], param: str) -> None:
    r = http.post("/chat/completions", json=body)
    err = error_of(r)
    assert r.status_code == 400 and err["param"] == param and err["type"] == "invalid_request_error"
    assert param in err["message"]


def test_embeddings_without_input_and_with_bad_encoding_are_400(http: httpx.Client) -> None:
    assert error_of(http.post("/embeddings", json={"model": "gpt-test"}))["param"] == "input"
    r = http.post("/embeddings", json={"model": "gpt-test", "input": "x", "encoding_format": "hex"})
    assert r.status_code == 400 and error_of(r)["param"] == "encoding_format"


def test_unknown_model_is_404_listing_the_models(http: httpx.Client, gateway: RunningGateway) -> None:
    r = http.post("/chat/completions", json={**CHAT, "model": "gpt-5-imaginary"})
    err = error_of(r)
    assert r.status_code == 404 and err["code"] == "model_not_found" and err["param"] == "model"
    for name in gateway.settings.model_names():
        assert name in err["message"]


def test_body_over_the_limit_is_413(http: httpx.Client, upstream: StandIn) -> None:
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 60_000}]}
    r = http.post("/chat/completions", json=big)
    assert r.status_code == 413 and "limit" in error_of(r)["message"]
    assert upstream.received == []


def test_missing_or_wrong_key_is_401(gateway: RunningGateway) -> None:
    assert httpx.post(gateway.v1 + "/chat/completions", json=CHAT).status_code == 401
    r = httpx.post(gateway.v1 + "/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-wrong"})
    assert r.status_code == 401 and error_of(r)["type"] == "authentication_error"


@pytest.mark.parametrize("header", ["x-api-key", "api-key"])
def test_key_is_accepted_in_the_other_headers_clients_use(
    gateway: RunningGateway, upstream: StandIn, header: str
) -> None:
    r = httpx.post(gateway.v1 + "/chat/completions", json=CHAT, headers={header: gateway.key})
    assert r.status_code == 200


def test_client_request_id_is_kept_and_a_bad_one_replaced(http: httpx.Client) -> None:
    r = http.post("/chat/completions", json=CHAT, headers={"x-request-id": "client-abc.123"})
    assert r.headers["x-request-id"] == "client-abc.123"
    r = http.post("/chat/completions", json=CHAT, headers={"x-request-id": "bad id with spaces"})
    assert r.headers["x-request-id"] != "bad id with spaces" and len(r.headers["x-request-id"]) == 32
    assert http.post("/chat/completions", json={}).headers["x-request-id"]


def test_wrong_method_is_405_and_unknown_path_404(http: httpx.Client) -> None:
    r = http.get("/chat/completions")
    assert r.status_code == 405 and error_of(r)
    r = http.post("/no/such/route", json={})
    assert r.status_code == 404 and error_of(r)


def test_upstream_4xx_keeps_its_status_and_message(http: httpx.Client, upstream: StandIn) -> None:
    upstream.script_fail(
        422,
        {
            "error": {
                "message": "temperature must be <= 2",
                "type": "invalid_request_error",
                "param": "temperature",
                "code": "invalid_value",
            }
        },
    )
    r = http.post("/chat/completions", json={**CHAT, "temperature": 9})
    err = error_of(r)
    assert r.status_code == 422 and err["message"] == "temperature must be <= 2"
    assert err["param"] == "temperature" and err["code"] == "invalid_value"


def test_upstream_429_stays_a_429_with_its_retry_after(http: httpx.Client, upstream: StandIn) -> None:
    upstream.script_fail(
        429, {"error": {"message": "slow down", "type": "rate_limit_error"}}, headers={"Retry-After": "17"}
    )
    r = http.post("/chat/completions", json=CHAT)
    assert r.status_code == 429 and error_of(r)["message"] == "slow down"
    assert r.headers["retry-after"] == "17"


def test_upstream_5xx_is_502_naming_the_deployment(http: httpx.Client, upstream: StandIn) -> None:
    upstream.script_fail(503, {"error": {"message": "overloaded", "type": "server_error"}})
    r = http.post("/chat/completions", json=CHAT)
    err = error_of(r)
    assert r.status_code == 502 and "gpt-test" in err["message"] and "overloaded" in err["message"]


def test_upstream_timeout_is_504(http: httpx.Client, upstream: StandIn) -> None:
    upstream.script_delay(2.0)
    r = http.post("/chat/completions", json={**CHAT, "model": "slow"})
    err = error_of(r)
    assert r.status_code == 504 and err["type"] == "timeout" and "slow" in err["message"]


def test_unreachable_upstream_is_502_naming_deployment_not_key(http: httpx.Client, gateway: RunningGateway) -> None:
    r = http.post("/chat/completions", json={**CHAT, "model": "nowhere"})
    err = error_of(r)
    assert r.status_code == 502 and err["type"] == "upstream_unreachable"
    assert "'nowhere'" in err["message"] and "127.0.0.1" in err["message"]


def test_upstream_dropping_the_connection_is_502(http: httpx.Client, upstream: StandIn) -> None:
    upstream.script_drop()
    r = http.post("/chat/completions", json=CHAT)
    assert r.status_code == 502 and "gpt-test" in error_of(r)["message"]


def test_embeddings_on_an_anthropic_deployment_is_400(http: httpx.Client) -> None:
    r = http.post("/embeddings", json={"model": "claude", "input": "x"})
    assert r.status_code == 400 and "embeddings" in error_of(r)["message"]


def test_anthropic_upstream_error_reaches_openai_client_in_openai_format(http: httpx.Client, upstream: StandIn) -> None:
    upstream.script_fail(
        400, {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: too large"}}
    )
    r = http.post("/chat/completions", json={**CHAT, "model": "claude"})
    err = error_of(r)
    assert r.status_code == 400 and err["message"] == "max_tokens: too large"


def test_stream_broken_by_the_upstream_ends_with_an_error_event(gateway: RunningGateway, upstream: StandIn) -> None:
    upstream.script_break_stream(3)
    with httpx.stream(
        "POST",
        gateway.v1 + "/chat/completions",
        json={**CHAT, "stream": True},
        headers={"Authorization": f"Bearer {gateway.key}"},
        timeout=10,
    ) as r:
        assert r.status_code == 200
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert len(events) == 4, "the three events the upstream sent, then the error event"
    assert all("choices" in orjson.loads(e) for e in events[:3])
    last = orjson.loads(events[-1])
    assert last["error"]["type"] == "upstream_error" and "broke off" in last["error"]["message"]


def test_openai_sdk_raises_on_a_broken_stream(gateway: RunningGateway, upstream: StandIn) -> None:
    upstream.script_break_stream(3)
    with openai.OpenAI(base_url=gateway.v1, api_key=gateway.key, max_retries=0) as client:
        stream = client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        with pytest.raises(openai.APIError, match="broke off"):
            for _ in stream:
                pass


def test_anthropic_stream_broken_by_the_upstream_ends_with_an_anthropic_error_event(
    gateway: RunningGateway, upstream: StandIn
) -> None:
    upstream.script_break_stream(4)
    with (
        anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0) as client,
        pytest.raises(anthropic.APIStatusError, match="broke off"),
        client.messages.stream(model="claude", max_tokens=20, messages=[{"role": "user", "content": "hi"}]) as stream,
    ):
        for _ in stream:
            pass


def test_anthropic_route_validation_errors_use_anthropic_shape(gateway: RunningGateway) -> None:
    r = httpx.post(
        gateway.v1 + "/messages", json={"model": "claude", "messages": []}, headers={"x-api-key": gateway.key}
    )
    assert r.status_code == 400
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]
