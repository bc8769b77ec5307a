"""Cohere and Gemini behind the OpenAI API: the `openai` SDK's chat (plain, streamed, with tools) and
embeddings through the gateway, checked at stand-ins that speak each provider's own wire format,
and metered from each provider's own usage figures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.support.gateway import RunningGateway, run_gateway
from tests.upstreams.providers import COHERE_TOOL_CALL_ID, ProviderStandIn
from tests.upstreams.standin import REPLY_PREFIX, TOOL_ARGUMENT_VALUE, count_words, embedding_for

TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
HI: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]
PROMPT_TOKENS = 2 + 3 + 2 + 3  # words + 3 per message


@pytest.fixture(scope="module")
def providers() -> Iterator[ProviderStandIn]:
    with ProviderStandIn() as s:
        yield s


@pytest.fixture(scope="module")
def gw(providers: ProviderStandIn) -> Iterator[RunningGateway]:
    prices = {"input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002}
    config = {
        "model_list": [
            {
                "model_name": "command",
                "litellm_params": {
                    "model": "cohere/command-a-03-2025",
                    "api_base": providers.base_url,
                    "api_key": "co-key",
                    **prices,
                },
            },
            {
                "model_name": "cohere-embed",
                "litellm_params": {
                    "model": "cohere/embed-v4.0",
                    "api_base": providers.base_url,
                    "api_key": "co-key",
                    **prices,
                },
            },
            {
                "model_name": "gemini",
                "litellm_params": {
                    "model": "gemini/gemini-2.5-flash",
                    "api_base": providers.base_url,
                    "api_key": "g-key",
                    **prices,
                },
            },
            {
                "model_name": "gemini-embed",
                "litellm_params": {
                    "model": "gemini/text-embedding-004",
                    "api_base": providers.base_url,
                    "api_key": "g-key",
                    **prices,
                },
            },
        ]
    }
    with run_gateway(config) as g:
        yield g


@pytest.fixture
def up(providers: ProviderStandIn) -> ProviderStandIn:
    providers.reset()
    return providers


@pytest.fixture
def client(gw: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as c:
        yield c


def row(gw: RunningGateway, request_id: str) -> dict[str, Any]:
    r = httpx.get(
        gw.url + "/spend/logs", params={"request_id": request_id}, headers={"Authorization": f"Bearer {gw.key}"}
    )
    (found,) = r.json()["data"]
    return found  # type: ignore[no-any-return]


@pytest.mark.parametrize("model", ["command", "gemini"])
def test_plain_chat_is_translated_and_metered(
    model: str, gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI
) -> None:
    raw = client.chat.completions.with_raw_response.create(model=model, messages=HI, max_tokens=50, temperature=0.2)
    answer = raw.parse()
    assert answer.choices[0].message.content == REPLY_PREFIX + "hello there"
    # the model that answered, as the upstream names it (Gemini's modelVersion); Cohere names none
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model == {"command": "command-a-03-2025", "gemini": "gemini-2.5-flash"}[model]
    completion = count_words(REPLY_PREFIX + "hello there")
    assert answer.usage is not None and (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (
        PROMPT_TOKENS,
        completion,
    )
    sent = up.last
    if model == "command":
        assert sent.path == "/v2/chat" and sent.headers["authorization"] == "Bearer co-key"
        assert sent.json["model"] == "command-a-03-2025" and sent.json["max_tokens"] == 50
        assert sent.json["messages"][0] == {"role": "system", "content": "Be brief."}
    else:
        assert (
            sent.path == "/v1beta/models/gemini-2.5-flash:generateContent" and sent.headers["x-goog-api-key"] == "g-key"
        )
        assert sent.json["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
        assert sent.json["contents"] == [{"role": "user", "parts": [{"text": "hello there"}]}]
        assert sent.json["generationConfig"] == {"maxOutputTokens": 50, "temperature": 0.2}
    r = row(gw, raw.headers["x-request-id"])
    assert (r["prompt_tokens"], r["completion_tokens"], r["tokens_estimated"]) == (PROMPT_TOKENS, completion, False)


@pytest.mark.parametrize("model", ["command", "gemini"])
def test_streamed_chat_arrives_as_openai_chunks_with_usage(
    model: str, gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI
) -> None:
    chunks = list(
        client.chat.completions.create(model=model, messages=HI, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY_PREFIX + "hello there"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == PROMPT_TOKENS
    sent = up.last
    assert sent.json.get("stream") is True if model == "command" else sent.query == {"alt": "sse"}
    assert sent.completed


@pytest.mark.parametrize("model", ["command", "gemini"])
@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_round_trip(
    model: str, stream: bool, gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI
) -> None:
    ask: Any = [{"role": "user", "content": "weather in Paris?"}]
    if stream:
        calls: dict[int, dict[str, str]] = {}
        finish = None
        for c in client.chat.completions.create(model=model, messages=ask, tools=TOOLS, stream=True):
            if not c.choices:
                continue
            finish = c.choices[0].finish_reason or finish
            for tc in c.choices[0].delta.tool_calls or []:
                entry = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] = tc.id or entry["id"]
                if tc.function is not None:
                    entry["name"] += tc.function.name or ""
                    entry["arguments"] += tc.function.arguments or ""
        (call,) = calls.values()
        call_id, name, arguments = call["id"], call["name"], call["arguments"]
    else:
        answer = client.chat.completions.create(model=model, messages=ask, tools=TOOLS)
        finish = answer.choices[0].finish_reason
        (tool_call,) = answer.choices[0].message.tool_calls or []
        assert tool_call.type == "function"
        call_id, name, arguments = tool_call.id, tool_call.function.name, tool_call.function.arguments
    assert finish == "tool_calls" and name == "get_weather"
    assert json.loads(arguments) == {"city": TOOL_ARGUMENT_VALUE}
    if model == "command":
        assert call_id == COHERE_TOOL_CALL_ID and up.last.json["tools"] == TOOLS
    else:
        assert up.last.json["tools"] == [{"functionDeclarations": [TOOLS[0]["function"]]}]

    # the result goes back; the provider sees it in its own shape and answers in text
    follow: Any = [
        *ask,
        {
            "role": "assistant",
            "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}],
        },
        {"role": "tool", "tool_call_id": call_id, "content": '{"temp": 21}'},
        {"role": "user", "content": "thanks"},
    ]
    final = client.chat.completions.create(model=model, messages=follow, tools=TOOLS, tool_choice="none")
    assert final.choices[0].message.content == REPLY_PREFIX + "thanks"
    sent = up.last.json
    if model == "command":
        assert sent["messages"][2] == {"role": "tool", "tool_call_id": call_id, "content": '{"temp": 21}'}
        assert sent["tool_choice"] == "NONE"
    else:
        assert sent["contents"][1] == {
            "role": "model",
            "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}],
        }
        assert sent["contents"][2]["parts"][0] == {
            "functionResponse": {"name": "get_weather", "response": {"temp": 21}}
        }
        assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "NONE"}}


def test_cohere_embeddings_take_the_input_type_and_report_billed_tokens(
    gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI
) -> None:
    raw = client.embeddings.with_raw_response.create(
        model="cohere-embed", input=["first text", "second one here"], extra_body={"input_type": "search_query"}
    )
    result = raw.parse()  # the SDK asked for base64 and decoded it
    assert [d.embedding for d in result.data] == [embedding_for("first text"), embedding_for("second one here")]
    assert up.last.path == "/v2/embed" and up.last.json["input_type"] == "search_query"
    assert up.last.json["texts"] == ["first text", "second one here"]
    client.embeddings.create(model="cohere-embed", input="default type")
    assert up.last.json["input_type"] == "search_document"
    r = row(gw, raw.headers["x-request-id"])
    assert r["prompt_tokens"] == 5 and r["tokens_estimated"] is False


def test_gemini_embeddings_use_embed_content_for_one_and_batch_for_many(
    gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI
) -> None:
    one = client.embeddings.create(model="gemini-embed", input="alpha", encoding_format="float")
    assert one.data[0].embedding == embedding_for("alpha")
    assert up.last.path == "/v1beta/models/text-embedding-004:embedContent"
    many = client.embeddings.create(model="gemini-embed", input=["alpha", "beta"])
    assert [d.embedding for d in many.data] == [embedding_for("alpha"), embedding_for("beta")]
    assert up.last.path.endswith(":batchEmbedContents")
    assert [r["model"] for r in up.last.json["requests"]] == ["models/text-embedding-004"] * 2
