"""The Anthropic Messages API both ways: the `anthropic` SDK served from an OpenAI-compatible
upstream, and the `openai` SDK served from an Anthropic upstream (the stand-in checks the format)."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import orjson
import pytest

from tests.e2e.conftest import ANTHROPIC_KEY, TOOLS
from tests.support.gateway import RunningGateway
from tests.upstreams.standin import CACHE_READ_TOKENS, StandIn, reply_for


@pytest.fixture
def claude_client(gateway: RunningGateway) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0) as c:
        yield c


def test_anthropic_sdk_on_openai_upstream(claude_client: anthropic.Anthropic, upstream: StandIn) -> None:
    msg = claude_client.messages.create(
        model="gpt-test",
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello there"}],
    )
    assert msg.content[0].type == "text" and msg.content[0].text == reply_for("Hello there")
    assert msg.stop_reason == "end_turn" and msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    sent = upstream.last
    assert sent.path == "/v1/chat/completions"
    assert sent.json["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent.json["model"] == "gpt-upstream" and sent.json["max_tokens"] == 100


def test_anthropic_sdk_streaming_on_openai_upstream(claude_client: anthropic.Anthropic, upstream: StandIn) -> None:
    with claude_client.messages.stream(
        model="gpt-test", max_tokens=100, messages=[{"role": "user", "content": "Stream to me"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == reply_for("Stream to me")
    assert final.usage.output_tokens == upstream.last.usage["completion_tokens"]  # type: ignore[index]
    assert final.stop_reason == "end_turn"


def test_anthropic_sdk_tool_use_on_openai_upstream(claude_client: anthropic.Anthropic, upstream: StandIn) -> None:
    msg = claude_client.messages.create(
        model="gpt-test",
        max_tokens=100,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[{"name": "get_weather", "description": "Weather", "input_schema": TOOLS[0]["function"]["parameters"]}],  # type: ignore[index]
    )
    block = msg.content[-1]
    assert msg.stop_reason == "tool_use" and block.type == "tool_use"
    assert block.name == "get_weather" and block.input == {"location": "Paris"}
    assert upstream.last.json["tools"][0]["function"]["name"] == "get_weather"


def test_anthropic_sdk_passes_through_to_anthropic_upstream(
    claude_client: anthropic.Anthropic, upstream: StandIn
) -> None:
    msg = claude_client.messages.create(
        model="claude",
        max_tokens=50,
        system=[{"type": "text", "text": "Long cached preamble", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "Hi"}],
    )
    assert msg.usage.cache_read_input_tokens == CACHE_READ_TOKENS
    sent = upstream.last
    assert sent.path == "/v1/messages" and sent.json["model"] == "claude-upstream"
    assert sent.headers["x-api-key"] == ANTHROPIC_KEY and sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.json["system"][0]["cache_control"] == {"type": "ephemeral"}


def test_openai_sdk_on_anthropic_upstream(client: openai.OpenAI, upstream: StandIn) -> None:
    r = client.chat.completions.create(
        model="claude",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello Claude"}],
        max_tokens=64,
        stop=["END"],
    )
    assert r.choices[0].message.content == reply_for("Hello Claude") and r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.prompt_tokens == upstream.last.usage["input_tokens"]  # type: ignore[index]
    sent = upstream.last
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == ANTHROPIC_KEY and "authorization" not in sent.headers
    assert sent.json["system"] == "Be brief." and sent.json["messages"] == [{"role": "user", "content": "Hello Claude"}]
    assert sent.json["max_tokens"] == 64 and sent.json["stop_sequences"] == ["END"]
    assert sent.json["model"] == "claude-upstream"


def test_openai_sdk_streams_from_anthropic_upstream(client: openai.OpenAI, upstream: StandIn) -> None:
    chunks = list(
        client.chat.completions.create(
            model="claude",
            messages=[{"role": "user", "content": "Stream please"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply_for("Stream please")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == upstream.last.usage["output_tokens"]  # type: ignore[index]
    assert upstream.last.json["stream"] is True


def test_openai_tools_and_tool_results_translate_to_anthropic(client: openai.OpenAI, upstream: StandIn) -> None:
    first = client.chat.completions.create(
        model="claude",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=TOOLS,  # type: ignore[arg-type]
    )
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert first.choices[0].finish_reason == "tool_calls" and orjson.loads(call.function.arguments) == {
        "location": "Paris"
    }
    assert upstream.last.json["tools"][0]["input_schema"]["required"] == ["location"]
    client.chat.completions.create(
        model="claude",
        tools=TOOLS,  # type: ignore[arg-type]
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21C"},
        ],
    )
    turns = upstream.last.json["messages"]
    assert turns[1]["content"][0]["type"] == "tool_use" and turns[1]["content"][0]["input"] == {"location": "Paris"}
    assert turns[2]["role"] == "user"
    assert turns[2]["content"][0]["type"] == "tool_result" and turns[2]["content"][0]["tool_use_id"] == call.id


def test_anthropic_errors_keep_anthropic_shape(claude_client: anthropic.Anthropic, upstream: StandIn) -> None:
    with pytest.raises(anthropic.NotFoundError) as e:
        claude_client.messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with (
        anthropic.Anthropic(base_url=str(claude_client.base_url), api_key="wrong", max_retries=0) as bad,
        pytest.raises(anthropic.AuthenticationError),
    ):
        bad.messages.create(model="claude", max_tokens=5, messages=[{"role": "user", "content": "x"}])
