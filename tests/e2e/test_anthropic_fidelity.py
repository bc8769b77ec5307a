"""The `openai` SDK's structured outputs against an Anthropic deployment: the client gets JSON content that
validates against its schema, and the stand-in Anthropic upstream saw a forced tool carrying that schema."""

from __future__ import annotations

import openai
import orjson
import pydantic

from meterway.providers.anthropic_format import JSON_TOOL_NAME
from tests.upstreams.standin import TOOL_ARGUMENT_VALUE, StandIn, reply_for

CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
    "required": ["city", "country"],
    "additionalProperties": False,
}


class City(pydantic.BaseModel):
    """CITY_SCHEMA as a model, so an answer is validated against the schema the client sent."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True)
    city: str
    country: str


def _assert_forced_tool(upstream: StandIn) -> None:
    assert upstream.last.path == "/v1/messages"
    sent = upstream.last.json
    assert isinstance(sent, dict) and "response_format" not in sent
    assert sent["tool_choice"] == {"type": "tool", "name": JSON_TOOL_NAME}
    (tool,) = sent["tools"]
    assert tool["name"] == JSON_TOOL_NAME
    assert tool["input_schema"]["required"] == ["city", "country"]


def test_json_schema_answer_from_anthropic_is_content(client: openai.OpenAI, upstream: StandIn) -> None:
    r = client.chat.completions.create(
        model="claude",
        messages=[{"role": "user", "content": "Where is the Louvre?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True}},
        user="user-42",
    )
    choice = r.choices[0]
    answer = orjson.loads(choice.message.content or "")
    City.model_validate(answer)
    assert answer == {"city": TOOL_ARGUMENT_VALUE, "country": TOOL_ARGUMENT_VALUE}
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    assert choice.message.refusal is None and choice.logprobs is None
    _assert_forced_tool(upstream)
    assert isinstance(upstream.last.json, dict) and upstream.last.json["metadata"] == {"user_id": "user-42"}


def test_parse_and_stream_with_a_pydantic_model(client: openai.OpenAI, upstream: StandIn) -> None:
    parsed = client.chat.completions.parse(
        model="claude", messages=[{"role": "user", "content": "Where is the Louvre?"}], response_format=City
    )
    assert parsed.choices[0].message.parsed == City(city=TOOL_ARGUMENT_VALUE, country=TOOL_ARGUMENT_VALUE)
    _assert_forced_tool(upstream)

    chunks = list(
        client.chat.completions.create(
            model="claude",
            messages=[{"role": "user", "content": "Where is the Louvre?"}],
            response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA}},
            stream=True,
        )
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert City.model_validate_json(content) == City(city=TOOL_ARGUMENT_VALUE, country=TOOL_ARGUMENT_VALUE)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert not any(c.choices[0].delta.tool_calls for c in chunks if c.choices)
    _assert_forced_tool(upstream)


def test_reasoning_effort_reaches_anthropic_as_thinking(client: openai.OpenAI, upstream: StandIn) -> None:
    # the stand-in refuses, as Anthropic does, a budget not under max_tokens or thinking beside a forced tool
    r = client.chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "Think"}], reasoning_effort="high", max_tokens=100
    )
    assert r.choices[0].message.content == reply_for("Think")
    sent = upstream.last.json
    assert isinstance(sent, dict) and sent["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    assert sent["max_tokens"] == 4196
    client.chat.completions.create(
        model="claude",
        messages=[{"role": "user", "content": "Think"}],
        reasoning_effort="low",
        response_format={"type": "json_object"},
    )
    assert isinstance(upstream.last.json, dict) and "thinking" not in upstream.last.json
