"""`POST /v1/messages/count_tokens` with the real `anthropic` SDK: passed to an Anthropic deployment
(the stand-in counts), counted locally for an OpenAI-compatible one, never charged; and every
error on /v1/messages* in Anthropic's shape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from meterway.api.count_tokens import count_locally
from meterway.ledger.tokens import TokenCounter
from tests.e2e.conftest import ANTHROPIC_KEY
from tests.support.gateway import RunningGateway
from tests.upstreams.standin import StandIn

MESSAGES: list[Any] = [{"role": "user", "content": "How many tokens are in this question?"}]
TOOLS: list[Any] = [
    {
        "name": "get_weather",
        "description": "The weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]


@pytest.fixture
def claude_client(gateway: RunningGateway) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0) as c:
        yield c


def _no_ledger_row(gateway: RunningGateway, request_id: str) -> None:
    """A row would be committed before the answer's bytes, so its absence now is final."""
    r = httpx.get(
        gateway.url + "/spend/logs",
        params={"request_id": request_id},
        headers={"Authorization": f"Bearer {gateway.key}"},
    )
    assert r.status_code == 200 and r.json()["data"] == [], r.text


def test_anthropic_deployment_passes_to_upstream(
    claude_client: anthropic.Anthropic, gateway: RunningGateway, upstream: StandIn
) -> None:
    raw = claude_client.messages.with_raw_response.count_tokens(
        model="claude", system="Be brief.", messages=MESSAGES, tools=TOOLS
    )
    counted = raw.parse()
    sent = upstream.last
    assert isinstance(sent.json, dict)
    assert sent.path == "/v1/messages/count_tokens"
    assert sent.json["model"] == "claude-upstream" and sent.json["tools"] == TOOLS
    assert sent.headers["x-api-key"] == ANTHROPIC_KEY and sent.headers["anthropic-version"]
    # the stand-in's own count: words of system and content, plus its per-message tokens
    assert counted.input_tokens == orjson.loads(raw.http_response.content)["input_tokens"] > 0
    _no_ledger_row(gateway, raw.headers["x-request-id"])


def test_openai_compatible_deployment_counted_locally(
    claude_client: anthropic.Anthropic, gateway: RunningGateway, upstream: StandIn
) -> None:
    raw = claude_client.messages.with_raw_response.count_tokens(
        model="gpt-test", system="Be brief.", messages=MESSAGES, tools=TOOLS
    )
    sent = orjson.dumps({"model": "gpt-test", "system": "Be brief.", "messages": MESSAGES, "tools": TOOLS})
    assert raw.parse().input_tokens == count_locally(TokenCounter(), sent, TOOLS)
    without_tools = claude_client.messages.count_tokens(model="gpt-test", messages=MESSAGES)
    assert 0 < without_tools.input_tokens < raw.parse().input_tokens
    assert upstream.received == []  # nothing went upstream
    _no_ledger_row(gateway, raw.headers["x-request-id"])


def test_wrong_key_and_model_outside_the_key_in_anthropic_shape(
    gateway: RunningGateway, admin: httpx.Client, upstream: StandIn
) -> None:
    with (
        anthropic.Anthropic(base_url=gateway.url, api_key="sk-wrong", max_retries=0) as wrong,
        pytest.raises(anthropic.AuthenticationError) as denied,
    ):
        wrong.messages.count_tokens(model="claude", messages=MESSAGES)
    assert denied.value.status_code == 401
    assert isinstance(denied.value.body, dict) and denied.value.body["type"] == "error"
    assert denied.value.body["error"]["type"] == "authentication_error"
    key = admin.post("/key/generate", json={"models": ["gpt-test"]}).json()["key"]
    with anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0) as limited:
        assert limited.messages.count_tokens(model="gpt-test", messages=MESSAGES).input_tokens > 0
        with pytest.raises(anthropic.PermissionDeniedError) as refused:
            limited.messages.count_tokens(model="claude", messages=MESSAGES)
    assert isinstance(refused.value.body, dict) and refused.value.body["type"] == "error"
    assert refused.value.body["error"]["type"] == "permission_error"
    assert upstream.received == []


def test_upstream_error_relayed_in_anthropic_shape(claude_client: anthropic.Anthropic, upstream: StandIn) -> None:
    limited = {"type": "error", "error": {"type": "rate_limit_error", "message": "Too many count requests"}}
    upstream.script_fail(429, limited, {"retry-after": "7"}, path="/v1/messages/count_tokens")
    with pytest.raises(anthropic.RateLimitError) as refused:
        claude_client.messages.count_tokens(model="claude", messages=MESSAGES)
    assert refused.value.response.headers["retry-after"] == "7"
    assert isinstance(refused.value.body, dict) and refused.value.body["type"] == "error"
    assert refused.value.body["error"]["type"] == "rate_limit_error"
    assert "Too many count requests" in refused.value.body["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path", "status", "kind"),
    [
        ("POST", "/v1/messages/xyz", 404, "not_found_error"),
        ("GET", "/messages/count_tokens/extra", 404, "not_found_error"),
        ("GET", "/v1/messages/count_tokens", 405, "api_error"),
        ("GET", "/v1/messages", 405, "api_error"),
        ("POST", "/v1/messages/count_tokens", 400, "invalid_request_error"),  # no messages
    ],
)
def test_errors_on_messages_paths_in_anthropic_shape(
    gateway: RunningGateway, method: str, path: str, status: int, kind: str
) -> None:
    r = httpx.request(method, gateway.url + path, headers={"x-api-key": gateway.key}, json={"model": "claude"})
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == kind and body["error"]["message"]
    assert set(body) == {"type", "error"} and r.headers["x-request-id"]
    if status == 405:
        assert "POST" in r.headers["allow"]
