"""Self-tests of the stand-in upstream, driven by the real `openai` and `anthropic` SDKs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import anthropic
import httpx
import openai
import pydantic
import pytest
from anthropic.types import ToolParam
from openai.types.chat import ChatCompletionFunctionToolParam

from .providers import ProviderStandIn
from .standin import (
    CACHE_READ_TOKENS,
    REPLY_PREFIX,
    STANDIN_MODEL,
    STRUCTURED_OUTPUTS_BETA,
    TOOL_ARGUMENT_VALUE,
    TOOL_CALL_ID,
    TOOL_USE_ID,
    Script,
    StandIn,
    count_words,
    decode_embedding_base64,
    embedding_for,
    reply_for,
    structured_answer,
)

OPENAI_KEY = "sk-standin-test"
ANTHROPIC_KEY = "sk-ant-standin-test"
WEATHER_TOOL: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a place",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["location"],
        },
    },
}
ANTHROPIC_WEATHER_TOOL: ToolParam = {
    "name": "get_weather",
    "description": "Current weather for a place",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["location"],
    },
}
CLAUDE_MODEL = "claude-standin-test"  # not in the SDK's deprecated-model table, so no DeprecationWarning
QUESTION = "What is the weather like in Paris today, and should I bring an umbrella?"


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with StandIn() as server:
        yield server


@pytest.fixture
def oai(standin: StandIn) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=standin.base_url + "/v1", api_key=OPENAI_KEY, max_retries=0, timeout=5) as client:
        yield client


@pytest.fixture
def claude(standin: StandIn) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=standin.base_url, api_key=ANTHROPIC_KEY, max_retries=0, timeout=5) as client:
        yield client


def _sse_data(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


# ---- lifecycle ---------------------------------------------------------------------------------------


def test_binds_loopback_and_stops() -> None:
    server = StandIn().start()
    try:
        assert server.base_url.startswith("http://127.0.0.1:")
        assert server.port > 0
    finally:
        server.stop()
    server.stop()  # idempotent


# ---- OpenAI chat -----------------------------------------------------------------------------------


def test_chat_plain(standin: StandIn, oai: openai.OpenAI) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": QUESTION},
    ]
    result = oai.chat.completions.create(model="gpt-4o-mini", messages=messages)

    expected = reply_for(QUESTION)
    assert expected == REPLY_PREFIX + QUESTION[:40]
    assert result.object == "chat.completion"
    assert result.model == "gpt-4o-mini"
    assert result.choices[0].message.content == expected
    assert result.choices[0].finish_reason == "stop"
    assert result.usage is not None
    assert result.usage.prompt_tokens == count_words("You are terse.") + count_words(QUESTION) + 2 * 3
    assert result.usage.completion_tokens == count_words(expected)
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens

    record = standin.last
    assert (record.method, record.path) == ("POST", "/v1/chat/completions")
    assert record.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert record.credential == OPENAI_KEY
    assert record.json is not None and record.json["model"] == "gpt-4o-mini"
    assert record.status == 200 and record.completed
    assert record.usage == result.usage.model_dump(exclude_none=True)


def test_chat_stream_without_usage(standin: StandIn, oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello stand-in"}], stream=True
        )
    )
    assert all(chunk.usage is None for chunk in chunks)
    assert all(len(chunk.choices) == 1 for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text == reply_for("hello stand-in")
    assert chunks[-1].choices[0].finish_reason == "stop"
    # one role chunk, one chunk per word, one finish chunk
    assert len(chunks) == 1 + count_words(text) + 1
    assert all("usage" not in event for event in standin.last.events)


def test_chat_stream_with_usage(standin: StandIn, oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hello stand-in"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    with_usage = [chunk for chunk in chunks if chunk.usage is not None]
    assert len(with_usage) == 1 and with_usage[0] is chunks[-1]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == count_words(reply_for("hello stand-in"))
    assert chunks[-1].usage.prompt_tokens == 2 + 3
    # OpenAI sends `"usage": null` on every earlier chunk when include_usage is on
    events = standin.last.events
    assert all("usage" in event and event["usage"] is None for event in events[:-1])


def test_chat_stream_wire_format(standin: StandIn) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    response = httpx.post(
        standin.url("/v1/chat/completions"), json=body, headers={"Authorization": f"Bearer {OPENAI_KEY}"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert response.text.endswith("data: [DONE]\n\n")
    data = _sse_data(response.text)
    assert data[-1] == "[DONE]"
    first = json.loads(data[0])
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_chat_tools(standin: StandIn, oai: openai.OpenAI) -> None:
    result = oai.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": QUESTION}], tools=[WEATHER_TOOL]
    )
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.id == TOOL_CALL_ID
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert call.function.arguments == '{"location": "Paris"}'
    assert result.usage is not None
    assert result.usage.completion_tokens == count_words("get_weather") + count_words('{"location": "Paris"}')

    declined = oai.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": QUESTION}], tools=[WEATHER_TOOL], tool_choice="none"
    )
    assert declined.choices[0].message.tool_calls is None
    assert declined.choices[0].message.content == reply_for(QUESTION)


def test_chat_tools_stream(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": QUESTION}],
        tools=[WEATHER_TOOL],
        stream=True,
        stream_options={"include_usage": True},
    )
    ids: list[str] = []
    names: list[str] = []
    arguments = ""
    finish: list[str] = []
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                assert delta.index == 0
                if delta.id:
                    ids.append(delta.id)
                if delta.function and delta.function.name:
                    names.append(delta.function.name)
                if delta.function and delta.function.arguments:
                    arguments += delta.function.arguments
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    assert ids == [TOOL_CALL_ID]
    assert names == ["get_weather"]
    assert json.loads(arguments) == {"location": "Paris"}
    assert finish == ["tool_calls"]


def test_chat_json_response_format(oai: openai.OpenAI) -> None:
    result = oai.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "give json"}], response_format={"type": "json_object"}
    )
    content = result.choices[0].message.content
    assert content is not None
    assert json.loads(content) == {"answer": reply_for("give json")}


def test_chat_json_schema_answer_conforms_to_the_schema(oai: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "rank": {"type": "integer"}},
        "required": ["city", "rank"],
    }
    result = oai.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "a city"}],
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    assert json.loads(result.choices[0].message.content or "") == {"city": TOOL_ARGUMENT_VALUE, "rank": 1}


# ---- OpenAI completions / embeddings / models ------------------------------------------------------


def test_completions(standin: StandIn, oai: openai.OpenAI) -> None:
    result = oai.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say this is a test")
    assert result.object == "text_completion"
    assert result.choices[0].text == reply_for("Say this is a test")
    assert result.usage is not None
    assert result.usage.prompt_tokens == count_words("Say this is a test") == 5

    chunks = list(
        oai.completions.create(
            model="gpt-3.5-turbo-instruct",
            prompt="Say this is a test",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(choice.text for chunk in chunks for choice in chunk.choices) == reply_for("Say this is a test")
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == result.usage.total_tokens
    assert standin.last.path == "/v1/completions"


def test_embeddings_float(standin: StandIn, oai: openai.OpenAI) -> None:
    result = oai.embeddings.create(
        model="text-embedding-3-small", input=["first text", "second one here"], encoding_format="float"
    )
    assert [item.index for item in result.data] == [0, 1]
    assert result.data[0].embedding == embedding_for("first text")
    assert len(result.data[1].embedding) == 8
    assert result.data[0].embedding != result.data[1].embedding
    assert result.usage.prompt_tokens == result.usage.total_tokens == 2 + 3

    sized = oai.embeddings.create(model="text-embedding-3-small", input="x", dimensions=16, encoding_format="float")
    assert len(sized.data[0].embedding) == 16
    assert standin.last.json == {
        "model": "text-embedding-3-small",
        "input": "x",
        "dimensions": 16,
        "encoding_format": "float",
    }


def test_embeddings_base64(standin: StandIn, oai: openai.OpenAI) -> None:
    # The SDK asks for base64 by default and decodes it back into floats.
    result = oai.embeddings.create(model="text-embedding-3-small", input="first text")
    record = standin.last
    assert record.json is not None and record.json["encoding_format"] == "base64"
    assert record.response is not None
    wire = record.response["data"][0]["embedding"]
    assert isinstance(wire, str)
    assert decode_embedding_base64(wire) == embedding_for("first text")
    assert result.data[0].embedding == embedding_for("first text")

    tokens = oai.embeddings.create(model="text-embedding-3-small", input=[[1, 2, 3], [4, 5]], encoding_format="float")
    assert tokens.data[1].embedding == embedding_for([4, 5])
    assert tokens.usage.prompt_tokens == 5


def test_models(oai: openai.OpenAI) -> None:
    oai.chat.completions.create(model="seen-model", messages=[{"role": "user", "content": "hi"}])
    ids = [model.id for model in oai.models.list()]
    assert ids[0] == STANDIN_MODEL
    assert "seen-model" in ids


def test_openai_auth_and_bad_json(standin: StandIn) -> None:
    missing = httpx.post(standin.url("/v1/chat/completions"), json={"model": "m", "messages": []})
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "invalid_request_error"
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}

    bad = httpx.post(
        standin.url("/v1/chat/completions"),
        content=b"{not json",
        headers={"Authorization": f"Bearer {OPENAI_KEY}", "Content-Type": "application/json"},
    )
    assert bad.status_code == 400
    assert "error" in bad.json()
    assert standin.last.body == b"{not json" and standin.last.json is None


def test_azure_shape(standin: StandIn) -> None:
    with openai.AzureOpenAI(
        azure_endpoint=standin.base_url, api_key="azure-key", api_version="2024-10-21", max_retries=0, timeout=5
    ) as client:
        result = client.chat.completions.create(model="my-deploy", messages=[{"role": "user", "content": "hi"}])
    assert result.choices[0].message.content == reply_for("hi")
    record = standin.last
    assert record.path == "/openai/deployments/my-deploy/chat/completions"
    assert record.deployment == "my-deploy"
    assert record.api_version == "2024-10-21"
    assert record.headers["api-key"] == "azure-key"


# ---- Anthropic -------------------------------------------------------------------------------------


def test_messages_plain(standin: StandIn, claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=256,
        system="Be brief.",
        messages=[{"role": "user", "content": QUESTION}],
    )
    assert message.id.startswith("msg_standin_")
    assert message.model == CLAUDE_MODEL
    assert message.stop_reason == "end_turn"
    assert message.content[0].type == "text"
    assert message.content[0].text == reply_for(QUESTION)
    assert message.usage.input_tokens == count_words("Be brief.") + count_words(QUESTION) + 3
    assert message.usage.output_tokens == count_words(reply_for(QUESTION))
    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.cache_creation_input_tokens == 0

    record = standin.last
    assert record.path == "/v1/messages"
    assert record.credential == ANTHROPIC_KEY  # x-api-key, or Authorization: Bearer with recent SDKs
    assert "anthropic-version" in record.headers


def test_messages_cache_control(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=64,
        system=[{"type": "text", "text": "Long shared prefix.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "hi"}],
    )
    assert message.usage.cache_read_input_tokens == CACHE_READ_TOKENS


def test_messages_stream(standin: StandIn, claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model=CLAUDE_MODEL, max_tokens=64, messages=[{"role": "user", "content": "stream this please"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == reply_for("stream this please")
    assert final.usage.output_tokens == count_words(text)
    assert final.usage.input_tokens == 3 + 3
    assert final.stop_reason == "end_turn"

    types = [event["type"] for event in standin.last.events]
    words = count_words(text)
    assert types == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * words,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_messages_stream_wire_format(standin: StandIn) -> None:
    response = httpx.post(
        standin.url("/anthropic/v1/messages"),
        json={"model": "c", "max_tokens": 8, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"},
    )
    assert response.headers["content-type"] == "text/event-stream"
    blocks = [block for block in response.text.split("\n\n") if block]
    for block in blocks:
        event_line, data_line = block.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        assert json.loads(data_line[len("data: ") :])["type"] == event_line[len("event: ") :]


def test_messages_tools(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=256,
        tools=[ANTHROPIC_WEATHER_TOOL],
        messages=[{"role": "user", "content": QUESTION}],
    )
    assert message.stop_reason == "tool_use"
    block = message.content[0]
    assert block.type == "tool_use"
    assert (block.id, block.name, block.input) == (TOOL_USE_ID, "get_weather", {"location": "Paris"})

    with claude.messages.stream(
        model=CLAUDE_MODEL,
        max_tokens=256,
        tools=[ANTHROPIC_WEATHER_TOOL],
        messages=[{"role": "user", "content": QUESTION}],
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use"
    assert final.content[0].input == {"location": "Paris"}


def test_messages_validation(standin: StandIn) -> None:
    body = {"model": "c", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    no_key = httpx.post(standin.url("/v1/messages"), json=body, headers={"anthropic-version": "2023-06-01"})
    assert no_key.status_code == 401
    assert no_key.json()["type"] == "error"
    assert no_key.json()["error"]["type"] == "authentication_error"

    no_version = httpx.post(standin.url("/v1/messages"), json=body, headers={"x-api-key": ANTHROPIC_KEY})
    assert no_version.status_code == 400
    assert no_version.json()["error"]["type"] == "invalid_request_error"

    no_max = httpx.post(
        standin.url("/v1/messages"),
        json={"model": "c", "messages": body["messages"]},
        headers={"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"},
    )
    assert no_max.status_code == 400
    assert "max_tokens" in no_max.json()["error"]["message"]


# ---- scripted behaviour --------------------------------------------------------------------------


def test_script_fail(standin: StandIn, oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    standin.script_fail(
        429,
        {"error": {"message": "slow down", "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}},
        headers={"Retry-After": "1"},
    )
    with pytest.raises(openai.RateLimitError) as caught:
        oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "1"
    assert standin.last.status == 429
    # the script is consumed: the next request is answered normally
    assert oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]).choices

    standin.script_fail(529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        claude.messages.create(model="c", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert overloaded.value.status_code == 529
    assert overloaded.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def test_script_path_default_and_reset(standin: StandIn, oai: openai.OpenAI) -> None:
    standin.script_fail(500, b"upstream exploded", path="/embeddings")
    ok = oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert ok.choices and standin.pending_scripts == 1
    with pytest.raises(openai.InternalServerError):
        oai.embeddings.create(model="e", input="x")
    assert (standin.last.path, standin.last.status) == ("/v1/embeddings", 500)
    assert standin.last.response is None  # not JSON: sent as text/plain
    assert standin.pending_scripts == 0

    standin.set_default(Script(status=503, body={"error": {"message": "down", "type": "server_error"}}))
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    standin.reset()
    assert standin.received == []
    assert oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]).choices


def test_script_delay(standin: StandIn) -> None:
    standin.script_delay(3.0)
    with (  # the client gives up first: the reply is held back, the stand-in still answers later
        openai.OpenAI(base_url=standin.base_url + "/v1", api_key=OPENAI_KEY, max_retries=0, timeout=0.3) as client,
        pytest.raises(openai.APITimeoutError),
    ):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert standin.wait_for_received(1)[0].script == Script(delay=3.0)


def test_script_break_stream(standin: StandIn, oai: openai.OpenAI) -> None:
    standin.script_break_stream(3)
    seen = []
    with pytest.raises((httpx.HTTPError, openai.APIError)):
        for chunk in oai.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "one two three four five"}], stream=True
        ):
            seen.append(chunk)
    assert len(seen) == 3
    assert len(standin.last.events) == 3
    assert not standin.last.completed


async def test_script_break_stream_anthropic_aiohttp(standin: StandIn) -> None:
    standin.script_break_stream(4)
    body = {"model": "c", "max_tokens": 8, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}
    received = b""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with session.post(standin.url("/v1/messages"), json=body, headers=headers) as response:
                assert response.status == 200
                async for data in response.content.iter_any():
                    received += data
    assert received.count(b"event: ") == 4


async def test_script_drop(standin: StandIn) -> None:
    standin.script_drop()
    async with aiohttp.ClientSession() as session:
        # POST: aiohttp transparently retries idempotent methods once on a dropped connection
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await session.post(standin.url("/v1/embeddings"), json={"input": "x"}, headers={"api-key": "k"})
        async with session.post(standin.url("/v1/embeddings"), json={"input": "x"}, headers={"api-key": "k"}) as r:
            assert r.status == 200
    dropped = standin.received[0]
    assert dropped.status is None and not dropped.completed


class Booking(pydantic.BaseModel):
    city: str
    guests: int = pydantic.Field(ge=1)
    nights: list[str]


STRUCTURED_MODEL = "claude-sonnet-4-5"
CLOSED = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}


def test_structured_output_answers_text_that_parses_as_the_schema(
    standin: StandIn, claude: anthropic.Anthropic
) -> None:
    message = claude.messages.parse(
        model=STRUCTURED_MODEL, max_tokens=100, messages=[{"role": "user", "content": "Book"}], output_format=Booking
    )
    assert message.parsed_output == Booking(city=TOOL_ARGUMENT_VALUE, guests=1, nights=[TOOL_ARGUMENT_VALUE])
    assert message.stop_reason == "end_turn"
    assert standin.last.json["output_config"]["format"]["schema"]["additionalProperties"] is False


@pytest.mark.parametrize(
    ("model", "schema", "refusal"),
    [
        (CLAUDE_MODEL, CLOSED, "does not support"),
        (STRUCTURED_MODEL, {**CLOSED, "additionalProperties": True}, "additionalProperties"),
        (STRUCTURED_MODEL, {**CLOSED, "properties": {"city": {"type": "string", "minLength": 2}}}, "minLength"),
        (STRUCTURED_MODEL, {**CLOSED, "properties": {"city": {"type": "string", "format": "zip"}}}, "format"),
    ],
)
def test_structured_output_is_refused_as_anthropic_refuses_it(
    claude: anthropic.Anthropic, model: str, schema: dict[str, Any], refusal: str
) -> None:
    with pytest.raises(anthropic.BadRequestError, match=refusal):
        claude.messages.create(
            model=model,
            max_tokens=100,
            messages=[{"role": "user", "content": "x"}],
            output_config={"format": {"type": "json_schema", "schema": schema}},
        )


def test_the_beta_output_format_needs_its_beta_header(claude: anthropic.Anthropic) -> None:
    legacy: Any = {"output_format": {"type": "json_schema", "schema": CLOSED}}
    ask: Any = {"model": STRUCTURED_MODEL, "max_tokens": 100, "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(anthropic.BadRequestError, match="output_format"):
        claude.messages.create(**ask, extra_body=legacy)
    beta = {"anthropic-beta": STRUCTURED_OUTPUTS_BETA}
    message = claude.messages.create(**ask, extra_body=legacy, extra_headers=beta)
    block = message.content[0]
    assert block.type == "text" and json.loads(block.text) == {"city": TOOL_ARGUMENT_VALUE}


def test_gemini_and_cohere_answer_json_to_the_schema_they_were_sent() -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}, "ok": {"type": "boolean"}},
        "required": ["answer", "ok"],
    }
    with ProviderStandIn() as server:
        gemini = httpx.post(
            server.url("/v1beta/models/gemini-x:generateContent"),
            headers={"x-goog-api-key": "k"},
            json={
                "contents": [{"role": "user", "parts": [{"text": "json please"}]}],
                "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": schema},
            },
        ).json()
        text = gemini["candidates"][0]["content"]["parts"][0]["text"]
        assert json.loads(text) == structured_answer(schema) == {"answer": TOOL_ARGUMENT_VALUE, "ok": True}
        cohere = httpx.post(
            server.url("/v2/chat"),
            headers={"Authorization": "Bearer k"},
            json={
                "model": "command",
                "messages": [{"role": "user", "content": "json please"}],
                "response_format": {"type": "json_object", "json_schema": schema},
            },
        ).json()
        assert json.loads(cohere["message"]["content"][0]["text"]) == structured_answer(schema)
