"""The `openai` SDK, sync and async, pointed at the gateway, which forwards to the stand-in."""

from __future__ import annotations

import base64
import struct

import openai
import orjson
import pytest

from tests.e2e.conftest import TOOLS, UPSTREAM_KEY
from tests.support.gateway import RunningGateway
from tests.upstreams.standin import StandIn, embedding_for, reply_for

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the weather in Paris?"}]


def test_chat_completion_is_forwarded_with_upstream_model_and_key(client: openai.OpenAI, upstream: StandIn) -> None:
    r = client.chat.completions.create(model="gpt-test", messages=MESSAGES, temperature=0.2)  # type: ignore[arg-type]
    assert r.choices[0].message.content == reply_for("What is the weather in Paris?")
    assert r.usage is not None and r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    got = upstream.last
    assert got.path == "/v1/chat/completions"
    assert got.json["model"] == "gpt-upstream" and got.json["temperature"] == 0.2
    assert got.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_body_passes_through_byte_for_byte_when_model_names_match(gateway: RunningGateway, upstream: StandIn) -> None:
    import httpx

    body = b'{"model": "same-name", "messages": [{"role": "user", "content": "hi"}], "x_custom": {"keep": [1, 2]}}'
    r = httpx.post(
        gateway.v1 + "/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {gateway.key}", "Content-Type": "application/json"},
    )
    assert r.status_code == 200
    assert upstream.last.body == body


def test_unknown_fields_reach_the_upstream_untouched(client: openai.OpenAI, upstream: StandIn) -> None:
    client.chat.completions.create(
        model="gpt-test",
        messages=MESSAGES,  # type: ignore[arg-type]
        extra_body={"guided_json": {"type": "object"}, "top_k": 5, "repetition_penalty": 1.1},
    )
    sent = upstream.last.json
    assert sent["guided_json"] == {"type": "object"} and sent["top_k"] == 5 and sent["repetition_penalty"] == 1.1


def test_stream_without_include_usage_carries_no_usage_to_the_client(client: openai.OpenAI, upstream: StandIn) -> None:
    chunks = list(client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True))  # type: ignore[arg-type]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply_for("What is the weather in Paris?")
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks), "the usage-only chunk the gateway asked for must not reach the client"
    # the gateway still asked the upstream for usage, to meter the stream
    assert upstream.last.json["stream_options"] == {"include_usage": True}


def test_stream_with_include_usage_ends_with_the_usage_chunk(client: openai.OpenAI, upstream: StandIn) -> None:
    chunks = list(
        client.chat.completions.create(
            model="gpt-test",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},  # type: ignore[arg-type]
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == upstream.last.usage["total_tokens"]  # type: ignore[index]
    assert [c for c in chunks[:-1] if c.usage is not None] == []


def test_tool_call_round_trip(client: openai.OpenAI, upstream: StandIn) -> None:
    r = client.chat.completions.create(model="gpt-test", messages=MESSAGES, tools=TOOLS, tool_choice="auto")  # type: ignore[arg-type]
    call = r.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and orjson.loads(call.function.arguments) == {"location": "Paris"}
    assert upstream.last.json["tools"] == TOOLS


def test_json_mode_is_forwarded(client: openai.OpenAI, upstream: StandIn) -> None:
    r = client.chat.completions.create(model="gpt-test", messages=MESSAGES, response_format={"type": "json_object"})  # type: ignore[arg-type]
    assert isinstance(orjson.loads(r.choices[0].message.content or ""), dict)
    assert upstream.last.json["response_format"] == {"type": "json_object"}


def test_legacy_completions(client: openai.OpenAI, upstream: StandIn) -> None:
    r = client.completions.create(model="gpt-test", prompt="Say hello", max_tokens=5)
    assert r.choices[0].text and r.usage is not None
    assert upstream.last.path == "/v1/completions" and upstream.last.json["model"] == "gpt-upstream"


def test_embeddings_float_and_base64(client: openai.OpenAI, upstream: StandIn) -> None:
    floats = client.embeddings.create(model="gpt-test", input=["alpha", "beta"], encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(embedding_for("alpha"), abs=1e-6)
    assert floats.data[1].embedding == pytest.approx(embedding_for("beta"), abs=1e-6)
    raw = client.embeddings.with_raw_response.create(model="gpt-test", input="alpha", encoding_format="base64")
    data = orjson.loads(raw.content)["data"][0]["embedding"]
    decoded = list(struct.unpack("<8f", base64.b64decode(data)))
    assert decoded == pytest.approx(embedding_for("alpha"), abs=1e-6)


def test_embeddings_accept_token_arrays(client: openai.OpenAI, upstream: StandIn) -> None:
    r = client.embeddings.create(model="gpt-test", input=[[1, 2, 3], [4, 5]])
    assert len(r.data) == 2
    assert upstream.last.json["input"] == [[1, 2, 3], [4, 5]]


def test_models_list_and_retrieve(client: openai.OpenAI, gateway: RunningGateway) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == gateway.settings.model_names()
    assert client.models.retrieve("claude").id == "claude"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


async def test_async_client_chat_and_stream(gateway: RunningGateway, upstream: StandIn) -> None:
    client = openai.AsyncOpenAI(base_url=gateway.v1, api_key=gateway.key, max_retries=0)
    r = await client.chat.completions.create(model="gpt-test", messages=MESSAGES)  # type: ignore[arg-type]
    assert r.choices[0].message.content == reply_for("What is the weather in Paris?")
    stream = await client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == reply_for("What is the weather in Paris?")
    await client.close()


def test_demo_model_answers_without_any_upstream(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "ping"}])
    assert "ping" in (r.choices[0].message.content or "") and r.usage is not None
    chunks = list(
        client.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "ping"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    e = client.embeddings.create(model="demo", input="ping")
    assert len(e.data[0].embedding) == 64
