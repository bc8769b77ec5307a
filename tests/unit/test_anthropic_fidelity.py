"""Issue 17's translation fidelity, OpenAI chat -> Anthropic: response_format as a forced answer tool,
reasoning_effort as extended thinking, and the fields OpenAI's spec requires in every reply."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from meterway.providers.anthropic_format import (
    JSON_TOOL_NAME,
    THINKING_BUDGETS,
    MessagesToChatStream,
    TranslationError,
    chat_to_messages_request,
    messages_response_to_chat,
)

JSON = dict[str, Any]

PERSON_SCHEMA: JSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
JSON_SCHEMA_FORMAT: JSON = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA}}
WEATHER_TOOL: JSON = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}


def _chat(**params: Any) -> JSON:
    return {"model": "claude", "messages": [{"role": "user", "content": "Who?"}], **params}


def _message(content: list[JSON], stop_reason: str) -> JSON:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": content,
        "stop_reason": stop_reason,
        "usage": {"input_tokens": 3, "output_tokens": 4},
    }


def test_json_schema_becomes_a_forced_tool_with_the_schema() -> None:
    request = chat_to_messages_request(_chat(response_format=JSON_SCHEMA_FORMAT), "claude-x")
    (tool,) = request["tools"]
    assert tool["name"] == JSON_TOOL_NAME and tool["input_schema"] == PERSON_SCHEMA
    assert request["tool_choice"] == {"type": "tool", "name": JSON_TOOL_NAME}
    assert "response_format" not in request


def test_json_object_becomes_a_forced_tool_taking_any_object() -> None:
    request = chat_to_messages_request(_chat(response_format={"type": "json_object"}), "m")
    assert request["tools"][0]["input_schema"] == {"type": "object"}
    assert request["tool_choice"] == {"type": "tool", "name": JSON_TOOL_NAME}
    assert "tools" not in chat_to_messages_request(_chat(response_format={"type": "text"}), "m")


def test_response_format_beside_client_tools_lets_the_model_pick_a_tool() -> None:
    request = chat_to_messages_request(
        _chat(response_format=JSON_SCHEMA_FORMAT, tools=[WEATHER_TOOL], parallel_tool_calls=False), "m"
    )
    assert [t["name"] for t in request["tools"]] == ["get_weather", JSON_TOOL_NAME]
    assert request["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    named = {"type": "function", "function": {"name": "get_weather"}}
    kept = chat_to_messages_request(
        _chat(response_format=JSON_SCHEMA_FORMAT, tools=[WEATHER_TOOL], tool_choice=named), "m"
    )
    assert kept["tool_choice"] == {"type": "tool", "name": "get_weather"}


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "array"}}}},
            "response_format.json_schema.schema",
        ),
        (
            {
                "response_format": {"type": "json_object"},
                "tools": [{"type": "function", "function": {"name": JSON_TOOL_NAME}}],
            },
            "tools",
        ),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
    ],
)
def test_untranslatable_parameters_are_named_in_the_error(params: JSON, param: str) -> None:
    with pytest.raises(TranslationError) as e:
        chat_to_messages_request(_chat(**params), "m")
    assert e.value.param == param


@pytest.mark.parametrize(("effort", "budget"), sorted(THINKING_BUDGETS.items()))
def test_reasoning_effort_becomes_thinking_with_max_tokens_above_the_budget(effort: str, budget: int) -> None:
    request = chat_to_messages_request(_chat(reasoning_effort=effort, max_completion_tokens=500), "m")
    assert request["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert request["max_tokens"] == budget + 500 > budget
    roomy = chat_to_messages_request(_chat(reasoning_effort=effort, max_tokens=budget + 1), "m")
    assert roomy["max_tokens"] == budget + 1


def test_reasoning_effort_gives_way_to_explicit_thinking_none_and_a_forced_answer() -> None:
    assert "thinking" not in chat_to_messages_request(_chat(reasoning_effort="none"), "m")
    explicit = {"type": "enabled", "budget_tokens": 9000}
    assert chat_to_messages_request(_chat(reasoning_effort="low", thinking=explicit), "m")["thinking"] == explicit
    # Anthropic refuses thinking while a tool is forced; the JSON answer is what the client asked for.
    forced = chat_to_messages_request(_chat(reasoning_effort="high", response_format=JSON_SCHEMA_FORMAT), "m")
    assert "thinking" not in forced and forced["max_tokens"] == 4096


def test_carried_and_dropped_parameters() -> None:
    request = chat_to_messages_request(
        _chat(
            stop="END",
            top_p=0.9,
            safety_identifier="u-7",
            presence_penalty=1.0,
            frequency_penalty=1.0,
            logit_bias={"1": 2},
            seed=4,
            n=1,
            logprobs=True,
            service_tier="auto",
            store=True,
        ),
        "m",
    )
    assert request == {
        "model": "m",
        "messages": [{"role": "user", "content": "Who?"}],
        "max_tokens": 4096,
        "stop_sequences": ["END"],
        "top_p": 0.9,
        "metadata": {"user_id": "u-7"},
    }
    assert chat_to_messages_request(_chat(user="u-1", safety_identifier="u-7"), "m")["metadata"] == {"user_id": "u-1"}


def test_answer_tool_reply_is_json_content_with_finish_stop() -> None:
    answer = {"name": "Ada", "age": 36}
    msg = _message([{"type": "tool_use", "id": "toolu_1", "name": JSON_TOOL_NAME, "input": answer}], "tool_use")
    chat = messages_response_to_chat(msg, "alias")
    (choice,) = chat["choices"]
    assert choice == {
        "index": 0,
        "message": {"role": "assistant", "content": orjson.dumps(answer).decode(), "refusal": None},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert orjson.loads(choice["message"]["content"]) == answer


def test_client_tool_call_beside_a_response_format_stays_a_tool_call() -> None:
    msg = _message([{"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}}], "tool_use")
    choice = messages_response_to_chat(msg, "m")["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["tool_calls"][0]["id"] == "toolu_2"


def test_answer_tool_stream_becomes_content_deltas() -> None:
    stream = MessagesToChatStream("alias", include_usage=False, created=1)
    events: list[tuple[str, JSON]] = [
        ("message_start", {"message": {"id": "msg_1", "usage": {"input_tokens": 3}}}),
        (
            "content_block_start",
            {"index": 0, "content_block": {"type": "tool_use", "id": "t", "name": JSON_TOOL_NAME, "input": {}}},
        ),
        ("content_block_delta", {"index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"name": '}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "input_json_delta", "partial_json": '"Ada"}'}}),
        ("content_block_stop", {"index": 0}),
        ("message_delta", {"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 4}}),
        ("message_stop", {}),
    ]
    chunks = [chunk for name, data in events for chunk in stream.feed(name, data)]
    choices = [chunk["choices"][0] for chunk in chunks]
    assert all(choice["logprobs"] is None for choice in choices)
    assert all("tool_calls" not in choice["delta"] for choice in choices)
    assert "".join(choice["delta"].get("content", "") for choice in choices) == '{"name": "Ada"}'
    assert [choice["finish_reason"] for choice in choices][-1] == "stop"


def test_replies_validate_against_openai_sdk_models() -> None:
    chat_types = pytest.importorskip("openai.types.chat")
    msg = _message([{"type": "tool_use", "id": "t", "name": JSON_TOOL_NAME, "input": {"a": 1}}], "tool_use")
    completion = chat_types.ChatCompletion.model_validate(messages_response_to_chat(msg, "m"))
    assert completion.choices[0].message.refusal is None and completion.choices[0].logprobs is None
