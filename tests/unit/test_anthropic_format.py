"""Unit tests for the OpenAI Chat <-> Anthropic Messages translation (pure functions, no I/O)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from meterway.providers.anthropic_format import (
    DEFAULT_MAX_TOKENS,
    ChatToMessagesStream,
    MessagesToChatStream,
    TranslationError,
    UpstreamStreamError,
    chat_response_to_messages,
    chat_to_messages_request,
    messages_response_to_chat,
    messages_to_chat_request,
    messages_usage_to_chat,
    to_anthropic_sse,
)

JSON = dict[str, Any]

WEATHER_TOOL: JSON = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def _chat(*messages: JSON, **params: Any) -> JSON:
    return {"model": "claude", "messages": list(messages), **params}


def _anthropic(*messages: JSON, **params: Any) -> JSON:
    return {"model": "gpt", "max_tokens": 100, "messages": list(messages), **params}


# ---------------------------------------------------------------------------------------------------------
# chat request -> messages request
# ---------------------------------------------------------------------------------------------------------


def test_system_messages_become_top_level_system() -> None:
    request = chat_to_messages_request(
        _chat(
            {"role": "system", "content": "Be terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Hi"},
            {"role": "system", "content": "Never apologise."},
        ),
        "claude-sonnet-4-5",
    )
    assert request["system"] == "Be terse.\n\nAnswer in French.\n\nNever apologise."
    assert request["messages"] == [{"role": "user", "content": "Hi"}]
    assert request["model"] == "claude-sonnet-4-5"


def test_system_parts_with_cache_control_stay_blocks() -> None:
    cache = {"type": "ephemeral"}
    request = chat_to_messages_request(
        _chat(
            {"role": "system", "content": [{"type": "text", "text": "Long prompt", "cache_control": cache}]},
            {"role": "user", "content": "Hi"},
        ),
        "m",
    )
    assert request["system"] == [{"type": "text", "text": "Long prompt", "cache_control": cache}]


def test_no_system_key_without_system_messages() -> None:
    request = chat_to_messages_request(_chat({"role": "user", "content": "Hi"}), "m")
    assert "system" not in request


def test_user_text_parts_become_text_blocks() -> None:
    request = chat_to_messages_request(
        _chat({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}), "m"
    )
    assert request["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]


def test_image_data_url_becomes_base64_image_source() -> None:
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}}
    request = chat_to_messages_request(
        _chat({"role": "user", "content": [{"type": "text", "text": "What is this?"}, part]}), "m"
    )
    assert request["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
    ]


def test_image_http_url_becomes_url_image_source() -> None:
    part = {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
    request = chat_to_messages_request(_chat({"role": "user", "content": [part]}), "m")
    assert request["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
    ]


def test_non_base64_data_url_is_rejected() -> None:
    part = {"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}
    with pytest.raises(TranslationError) as info:
        chat_to_messages_request(_chat({"role": "user", "content": [part]}), "m")
    assert info.value.param == "messages[0].content[0].image_url.url"


def test_pdf_file_part_becomes_document_block() -> None:
    part = {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}}
    request = chat_to_messages_request(_chat({"role": "user", "content": [part]}), "m")
    assert request["messages"][0]["content"] == [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}
    ]


def test_unsupported_content_part_raises_with_field_path() -> None:
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    with pytest.raises(TranslationError) as info:
        chat_to_messages_request(
            _chat(
                {"role": "system", "content": "s"},
                {"role": "user", "content": "hi"},
                {"role": "user", "content": [audio]},
            ),
            "m",
        )
    assert info.value.param == "messages[2].content[0].type"
    assert str(info.value) == "messages[2].content[0].type: unsupported part 'input_audio'"
    assert isinstance(info.value, ValueError)


def test_unknown_role_raises() -> None:
    with pytest.raises(TranslationError) as info:
        chat_to_messages_request(_chat({"role": "function", "name": "f", "content": "x"}), "m")
    assert info.value.param == "messages[0].role"


def test_messages_must_be_a_list() -> None:
    with pytest.raises(TranslationError) as info:
        chat_to_messages_request({"model": "m", "messages": "hi"}, "m")
    assert info.value.param == "messages"


def test_assistant_tool_calls_become_tool_use_blocks() -> None:
    request = chat_to_messages_request(
        _chat(
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                    },
                ],
            },
        ),
        "m",
    )
    assert request["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}},
        ],
    }


def test_assistant_null_content_with_tool_calls_has_only_tool_use() -> None:
    request = chat_to_messages_request(
        _chat(
            {"role": "user", "content": "now"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c", "type": "function", "function": {"name": "clock", "arguments": ""}}],
            },
        ),
        "m",
    )
    assert request["messages"][1]["content"] == [{"type": "tool_use", "id": "c", "name": "clock", "input": {}}]


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]"])
def test_invalid_tool_call_arguments_raise(arguments: str) -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    with pytest.raises(TranslationError) as info:
        chat_to_messages_request(
            _chat({"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [call]}), "m"
        )
    assert info.value.param == "messages[1].tool_calls[0].function.arguments"


def test_tool_messages_become_tool_results_in_one_user_turn() -> None:
    request = chat_to_messages_request(
        _chat(
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "w", "arguments": "{}"}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "rainy"}]},
            {"role": "user", "content": "Thanks, summarise."},
        ),
        "m",
    )
    assert [m["role"] for m in request["messages"]] == ["user", "assistant", "user"]
    assert request["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
        {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "rainy"}]},
        {"type": "text", "text": "Thanks, summarise."},
    ]


def test_consecutive_same_role_messages_are_merged() -> None:
    request = chat_to_messages_request(
        _chat(
            {"role": "user", "content": "one"},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": "three"},
            {"role": "assistant", "content": "four"},
        ),
        "m",
    )
    assert request["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "three"}, {"type": "text", "text": "four"}]},
    ]


def test_empty_messages_are_dropped_so_roles_still_alternate() -> None:
    request = chat_to_messages_request(
        _chat(
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "two"},
        ),
        "m",
    )
    assert request["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}
    ]


def test_function_tools_become_input_schema_tools() -> None:
    bare = {"type": "function", "function": {"name": "now"}}
    request = chat_to_messages_request(_chat({"role": "user", "content": "x"}, tools=[WEATHER_TOOL, bare]), "m")
    assert request["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather for a city",
            "input_schema": WEATHER_TOOL["function"]["parameters"],
        },
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in request


def test_non_function_tool_is_rejected() -> None:
    with pytest.raises(TranslationError) as info:
        chat_to_messages_request(_chat({"role": "user", "content": "x"}, tools=[{"type": "custom", "custom": {}}]), "m")
    assert info.value.param == "tools[0].type"


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        ({"type": "function", "function": {"name": "get_weather"}}, {"type": "tool", "name": "get_weather"}),
    ],
)
def test_tool_choice_maps_to_anthropic(tool_choice: Any, expected: JSON) -> None:
    request = chat_to_messages_request(
        _chat({"role": "user", "content": "x"}, tools=[WEATHER_TOOL], tool_choice=tool_choice), "m"
    )
    assert request["tool_choice"] == expected


def test_parallel_tool_calls_false_disables_parallel_tool_use() -> None:
    base = _chat({"role": "user", "content": "x"}, tools=[WEATHER_TOOL], parallel_tool_calls=False)
    assert chat_to_messages_request(base, "m")["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    forced = {**base, "tool_choice": "required"}
    assert chat_to_messages_request(forced, "m")["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    parallel = {**base, "parallel_tool_calls": True}
    assert "tool_choice" not in chat_to_messages_request(parallel, "m")


def test_max_tokens_comes_from_either_field_with_default() -> None:
    user = {"role": "user", "content": "x"}
    assert chat_to_messages_request(_chat(user), "m")["max_tokens"] == DEFAULT_MAX_TOKENS == 4096
    assert chat_to_messages_request(_chat(user, max_tokens=50), "m")["max_tokens"] == 50
    assert chat_to_messages_request(_chat(user, max_completion_tokens=60), "m")["max_tokens"] == 60
    assert chat_to_messages_request(_chat(user, max_tokens=50, max_completion_tokens=60), "m")["max_tokens"] == 60


def test_stop_becomes_stop_sequences() -> None:
    user = {"role": "user", "content": "x"}
    assert chat_to_messages_request(_chat(user, stop="END"), "m")["stop_sequences"] == ["END"]
    assert chat_to_messages_request(_chat(user, stop=["a", "b"]), "m")["stop_sequences"] == ["a", "b"]
    assert "stop_sequences" not in chat_to_messages_request(_chat(user, stop=None), "m")


def test_sampling_stream_and_user_pass_through() -> None:
    request = chat_to_messages_request(
        _chat({"role": "user", "content": "x"}, temperature=0.2, top_p=0.9, stream=True, user="u-42"), "m"
    )
    assert request["temperature"] == 0.2
    assert request["top_p"] == 0.9
    assert request["stream"] is True
    assert request["metadata"] == {"user_id": "u-42"}


def test_openai_only_params_are_dropped() -> None:
    request = chat_to_messages_request(
        _chat(
            {"role": "user", "content": "x"},
            n=2,
            logprobs=True,
            top_logprobs=3,
            frequency_penalty=0.5,
            presence_penalty=0.5,
            seed=7,
            response_format={"type": "text"},  # json_object and json_schema become a tool
            stream_options={"include_usage": True},
            logit_bias={"1": 2},
        ),
        "m",
    )
    assert set(request) == {"model", "messages", "max_tokens"}


def test_anthropic_extras_in_chat_body_pass_through() -> None:
    thinking = {"type": "enabled", "budget_tokens": 2048}
    request = chat_to_messages_request(
        _chat({"role": "user", "content": "x"}, thinking=thinking, top_k=5, metadata={"user_id": "abc"}), "m"
    )
    assert request["thinking"] == thinking
    assert request["top_k"] == 5
    assert request["metadata"] == {"user_id": "abc"}


def test_chat_metadata_keys_anthropic_rejects_are_not_sent() -> None:
    request = chat_to_messages_request(_chat({"role": "user", "content": "x"}, metadata={"team": "a"}), "m")
    assert "metadata" not in request


# ---------------------------------------------------------------------------------------------------------
# messages response -> chat response
# ---------------------------------------------------------------------------------------------------------


def _anthropic_message(content: list[JSON], stop_reason: str = "end_turn", **usage: int) -> JSON:
    return {
        "id": "msg_01ABC",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5, **usage},
    }


def test_messages_response_text_becomes_chat_completion() -> None:
    msg = _anthropic_message([{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}])
    chat = messages_response_to_chat(msg, "my-alias")
    assert chat["id"] == "msg_01ABC"
    assert chat["object"] == "chat.completion"
    assert isinstance(chat["created"], int)
    assert chat["model"] == "my-alias"
    assert chat["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]


def test_messages_response_tool_use_becomes_tool_calls() -> None:
    msg = _anthropic_message(
        [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        ],
        stop_reason="tool_use",
    )
    choice = messages_response_to_chat(msg, "m")["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
        ],
    }


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("pause_turn", "stop"),
        ("refusal", "content_filter"),
        ("model_context_window_exceeded", "length"),
    ],
)
def test_stop_reason_maps_to_finish_reason(stop_reason: str, finish_reason: str) -> None:
    msg = _anthropic_message([{"type": "text", "text": "x"}], stop_reason=stop_reason)
    assert messages_response_to_chat(msg, "m")["choices"][0]["finish_reason"] == finish_reason


def test_usage_counts_cache_tokens_inside_prompt_tokens() -> None:
    msg = _anthropic_message(
        [{"type": "text", "text": "x"}], cache_read_input_tokens=100, cache_creation_input_tokens=20
    )
    assert messages_response_to_chat(msg, "m")["usage"] == {
        "prompt_tokens": 130,
        "completion_tokens": 5,
        "total_tokens": 135,
        "prompt_tokens_details": {"cached_tokens": 100},
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 20,
    }


def test_usage_without_cache_fields_reports_zero_cache() -> None:
    assert messages_usage_to_chat({"input_tokens": 3, "output_tokens": 4}) == {
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "total_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 0},
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }


# ---------------------------------------------------------------------------------------------------------
# Anthropic stream -> chat chunks
# ---------------------------------------------------------------------------------------------------------

ANTHROPIC_EVENTS: list[tuple[str, JSON]] = [
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_01XYZ",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5-20250929",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 472,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 1000,
                    "output_tokens": 2,
                },
            },
        },
    ),
    ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ("ping", {"type": "ping"}),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me check"}},
    ),
    ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "."}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {}},
        },
    ),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}},
    ),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"city": '}},
    ),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}},
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 89},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
]


def _run_anthropic_stream(stream: MessagesToChatStream, events: list[tuple[str, JSON]]) -> list[JSON]:
    chunks: list[JSON] = []
    for name, data in events:
        chunks.extend(stream.feed(name, data))
    return chunks


def test_messages_stream_text_and_tool_use_gives_exact_chunk_sequence() -> None:
    """Every chunk names the model that answered, as message_start names it (not the client's alias)."""
    stream = MessagesToChatStream("my-alias", include_usage=True, created=1700000000)
    chunks = _run_anthropic_stream(stream, ANTHROPIC_EVENTS)

    def chunk(delta: JSON, finish: str | None = None) -> JSON:
        return {
            "id": "msg_01XYZ",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "claude-sonnet-4-5-20250929",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            "usage": None,
        }

    usage = {
        "prompt_tokens": 1472,
        "completion_tokens": 89,
        "total_tokens": 1561,
        "prompt_tokens_details": {"cached_tokens": 1000},
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 0,
    }
    assert chunks == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Let me check"}),
        chunk({"content": "."}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "toolu_01A",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk({}, "tool_calls"),
        {
            "id": "msg_01XYZ",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "claude-sonnet-4-5-20250929",
            "choices": [],
            "usage": usage,
        },
    ]
    assert stream.usage == usage
    assert stream.done is True


def test_messages_stream_numbers_tool_calls_apart_from_blocks() -> None:
    stream = MessagesToChatStream("m", include_usage=False, created=1)
    stream.feed("message_start", {"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 1}}})
    names = []
    for block_index, name in [(1, "a"), (3, "b")]:
        start = {
            "type": "content_block_start",
            "index": block_index,
            "content_block": {"type": "tool_use", "id": f"t{block_index}", "name": name, "input": {}},
        }
        (chunk,) = stream.feed("content_block_start", start)
        names.append(chunk["choices"][0]["delta"]["tool_calls"][0]["index"])
    delta = {"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": "{}"}}
    (chunk,) = stream.feed("content_block_delta", delta)
    assert names == [0, 1]
    assert chunk["choices"][0]["delta"] == {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}


def test_messages_stream_without_include_usage_sends_no_usage_chunk() -> None:
    stream = MessagesToChatStream("m", include_usage=False, created=1)
    chunks = _run_anthropic_stream(stream, ANTHROPIC_EVENTS)
    assert all(c["choices"] for c in chunks)
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert stream.usage is not None
    assert stream.usage["completion_tokens"] == 89
    assert stream.done


def test_messages_stream_usage_unknown_until_message_start() -> None:
    stream = MessagesToChatStream("m", include_usage=True, created=1)
    assert stream.usage is None
    assert stream.done is False
    stream.feed(*ANTHROPIC_EVENTS[0])
    assert stream.usage is not None
    assert stream.usage["prompt_tokens"] == 1472
    assert stream.usage["completion_tokens"] == 2


def test_messages_stream_ping_and_block_stop_emit_nothing() -> None:
    stream = MessagesToChatStream("m", include_usage=True, created=1)
    assert stream.feed("ping", {"type": "ping"}) == []
    assert stream.feed("content_block_stop", {"type": "content_block_stop", "index": 0}) == []
    assert stream.feed("some_future_event", {"type": "some_future_event"}) == []


def test_messages_stream_thinking_deltas_are_not_surfaced() -> None:
    stream = MessagesToChatStream("m", include_usage=False, created=1)
    start = {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}}
    assert stream.feed("content_block_start", start) == []
    assert stream.feed("content_block_delta", delta) == []


def test_messages_stream_error_event_raises_upstream_stream_error() -> None:
    stream = MessagesToChatStream("m", include_usage=True, created=1)
    stream.feed(*ANTHROPIC_EVENTS[0])
    with pytest.raises(UpstreamStreamError) as info:
        stream.feed("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert info.value.message == "Overloaded"
    assert info.value.error_type == "overloaded_error"


def test_messages_stream_message_delta_input_tokens_override_start() -> None:
    stream = MessagesToChatStream("m", include_usage=True, created=1)
    stream.feed("message_start", {"type": "message_start", "message": {"id": "x", "usage": {"input_tokens": 0}}})
    stream.feed(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"input_tokens": 40, "cache_read_input_tokens": 10, "output_tokens": 7},
        },
    )
    assert stream.usage is not None
    assert stream.usage["prompt_tokens"] == 50
    assert stream.usage["completion_tokens"] == 7


# ---------------------------------------------------------------------------------------------------------
# messages request -> chat request
# ---------------------------------------------------------------------------------------------------------


def test_anthropic_system_becomes_system_message() -> None:
    as_string = messages_to_chat_request(_anthropic({"role": "user", "content": "hi"}, system="Be terse."), "gpt-4o")
    assert as_string["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "hi"},
    ]
    assert as_string["model"] == "gpt-4o"
    blocks = [{"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "B"}]
    as_blocks = messages_to_chat_request(_anthropic({"role": "user", "content": "hi"}, system=blocks), "m")
    assert as_blocks["messages"][0] == {"role": "system", "content": "A\n\nB"}


def test_anthropic_images_become_image_url_parts() -> None:
    content = [
        {"type": "text", "text": "Compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/b.png"}},
    ]
    request = messages_to_chat_request(_anthropic({"role": "user", "content": content}), "m")
    assert request["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/b.png"}},
            ],
        }
    ]


def test_anthropic_tool_use_becomes_tool_calls() -> None:
    request = messages_to_chat_request(
        _anthropic(
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "need tool", "signature": "s"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
                ],
            },
        ),
        "m",
    )
    assert request["messages"][1] == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
        ],
    }


def test_anthropic_tool_only_assistant_turn_has_null_content() -> None:
    request = messages_to_chat_request(
        _anthropic(
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]},
        ),
        "m",
    )
    assert request["messages"][1]["content"] is None
    assert request["messages"][1]["tool_calls"][0]["function"]["arguments"] == "{}"


def test_tool_results_become_tool_messages_before_user_text() -> None:
    request = messages_to_chat_request(
        _anthropic(
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "t1", "name": "w", "input": {}},
                    {"type": "tool_use", "id": "t2", "name": "w", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "t2",
                        "content": [{"type": "text", "text": "rain"}, {"type": "text", "text": "later"}],
                        "is_error": False,
                    },
                    {"type": "text", "text": "Summarise please."},
                ],
            },
        ),
        "m",
    )
    assert request["messages"][2:] == [
        {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "t2", "content": "rain\nlater"},
        {"role": "user", "content": "Summarise please."},
    ]


def test_tool_result_images_move_to_following_user_message() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}}
    request = messages_to_chat_request(
        _anthropic(
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "shot", "input": {}}]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "ok"}, image]}
                ],
            },
        ),
        "m",
    )
    assert request["messages"][1:] == [
        {"role": "tool", "tool_call_id": "t1", "content": "ok"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}}]},
    ]


def test_anthropic_tools_become_function_tools() -> None:
    tool = {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {}}}
    request = messages_to_chat_request(_anthropic({"role": "user", "content": "x"}, tools=[tool]), "m")
    assert request["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather",
                "parameters": {"type": "object", "properties": {}},
            },
        }
    ]


def test_anthropic_server_tools_are_rejected() -> None:
    tool = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
    with pytest.raises(TranslationError) as info:
        messages_to_chat_request(_anthropic({"role": "user", "content": "x"}, tools=[tool]), "m")
    assert info.value.param == "tools[0].type"


@pytest.mark.parametrize(
    ("tool_choice", "expected", "parallel"),
    [
        ({"type": "auto"}, "auto", None),
        ({"type": "any"}, "required", None),
        ({"type": "none"}, "none", None),
        ({"type": "tool", "name": "w"}, {"type": "function", "function": {"name": "w"}}, None),
        ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
        (
            {"type": "tool", "name": "w", "disable_parallel_tool_use": True},
            {"type": "function", "function": {"name": "w"}},
            False,
        ),
    ],
)
def test_anthropic_tool_choice_maps_to_chat(tool_choice: JSON, expected: Any, parallel: bool | None) -> None:
    tool = {"name": "w", "input_schema": {"type": "object"}}
    request = messages_to_chat_request(
        _anthropic({"role": "user", "content": "x"}, tools=[tool], tool_choice=tool_choice), "m"
    )
    assert request["tool_choice"] == expected
    assert request.get("parallel_tool_calls") == parallel


def test_anthropic_params_map_to_chat_params() -> None:
    request = messages_to_chat_request(
        _anthropic(
            {"role": "user", "content": "x"},
            max_tokens=321,
            temperature=0.3,
            top_p=0.8,
            stop_sequences=["###"],
            metadata={"user_id": "user-7"},
        ),
        "m",
    )
    assert request == {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 321,
        "temperature": 0.3,
        "top_p": 0.8,
        "stop": ["###"],
        "user": "user-7",
    }


def test_anthropic_stream_asks_upstream_for_usage() -> None:
    request = messages_to_chat_request(_anthropic({"role": "user", "content": "x"}, stream=True), "m")
    assert request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}
    assert "stream" not in messages_to_chat_request(_anthropic({"role": "user", "content": "x"}, stream=False), "m")


def test_anthropic_thinking_and_top_k_are_dropped() -> None:
    request = messages_to_chat_request(
        _anthropic({"role": "user", "content": "x"}, thinking={"type": "enabled", "budget_tokens": 1024}, top_k=3),
        "m",
    )
    assert "thinking" not in request
    assert "top_k" not in request


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "max_tokens": 1, "messages": {"role": "user"}}, "messages"),
        (
            {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"text": "x"}]}]},
            "messages[0].content[0].type",
        ),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "max_tokens": 1, "messages": [], "system": [{"type": "image"}]}, "system[0]"),
        (
            {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "video"}]}]},
            "messages[0].content[0].type",
        ),
    ],
)
def test_malformed_anthropic_request_raises_with_param(body: JSON, param: str) -> None:
    with pytest.raises(TranslationError) as info:
        messages_to_chat_request(body, "m")
    assert info.value.param == param
    assert str(info.value).startswith(f"{param}: ")


# ---------------------------------------------------------------------------------------------------------
# chat response -> messages response
# ---------------------------------------------------------------------------------------------------------


def _chat_completion(message: JSON, finish_reason: str = "stop", usage: JSON | None = None) -> JSON:
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": usage or {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16},
    }


def test_chat_response_becomes_anthropic_message() -> None:
    chat = _chat_completion(
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": "call_9",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        finish_reason="tool_calls",
    )
    assert chat_response_to_messages(chat, "claude-alias") == {
        "id": "msg_chatcmpl-123",
        "type": "message",
        "role": "assistant",
        "model": "claude-alias",
        "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "call_9", "name": "get_weather", "input": {"city": "Oslo"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 4},
    }


def test_chat_response_empty_content_gives_no_text_block() -> None:
    chat = _chat_completion({"role": "assistant", "content": ""})
    assert chat_response_to_messages(chat, "m")["content"] == []


def test_chat_response_keeps_existing_msg_prefix() -> None:
    chat = {**_chat_completion({"role": "assistant", "content": "x"}), "id": "msg_abc"}
    assert chat_response_to_messages(chat, "m")["id"] == "msg_abc"


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"), ("content_filter", "refusal")],
)
def test_finish_reason_maps_to_stop_reason(finish_reason: str, stop_reason: str) -> None:
    chat = _chat_completion({"role": "assistant", "content": "x"}, finish_reason=finish_reason)
    assert chat_response_to_messages(chat, "m")["stop_reason"] == stop_reason


def test_chat_usage_cached_tokens_are_taken_out_of_input_tokens() -> None:
    usage = {
        "prompt_tokens": 1200,
        "completion_tokens": 30,
        "total_tokens": 1230,
        "prompt_tokens_details": {"cached_tokens": 1024},
    }
    chat = _chat_completion({"role": "assistant", "content": "x"}, usage=usage)
    assert chat_response_to_messages(chat, "m")["usage"] == {
        "input_tokens": 176,
        "output_tokens": 30,
        "cache_read_input_tokens": 1024,
    }


def test_chat_response_invalid_tool_arguments_raise() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
    chat = _chat_completion({"role": "assistant", "content": None, "tool_calls": [call]}, finish_reason="tool_calls")
    with pytest.raises(TranslationError) as info:
        chat_response_to_messages(chat, "m")
    assert info.value.param == "choices[0].message.tool_calls[0].function.arguments"


# ---------------------------------------------------------------------------------------------------------
# chat chunks -> Anthropic stream
# ---------------------------------------------------------------------------------------------------------


def _chunk(delta: JSON | None = None, finish: str | None = None, usage: JSON | None = None) -> JSON:
    chunk: JSON = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o",
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage is not None:
        chunk["usage"] = usage
    return chunk


OPENAI_CHUNKS: list[JSON] = [
    _chunk({"role": "assistant", "content": ""}),
    _chunk({"content": "Checking"}),
    _chunk({"content": " both."}),
    _chunk(
        {
            "tool_calls": [
                {"index": 0, "id": "call_A", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
            ]
        }
    ),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
    _chunk(
        {
            "tool_calls": [
                {"index": 1, "id": "call_B", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
            ]
        }
    ),
    _chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"city":"Rome"}'}}]}),
    _chunk({}, finish="tool_calls"),
    _chunk(
        usage={
            "prompt_tokens": 90,
            "completion_tokens": 40,
            "total_tokens": 130,
            "prompt_tokens_details": {"cached_tokens": 64},
        }
    ),
]


def test_chat_stream_text_and_tool_calls_gives_exact_event_sequence() -> None:
    """message_start names the model that answered, as the upstream's chunks name it."""
    stream = ChatToMessagesStream("claude-alias", "msg_gw_1")
    events: list[tuple[str, JSON]] = []
    for chunk in OPENAI_CHUNKS:
        events.extend(stream.feed(chunk))
    events.extend(stream.finish())

    def delta(index: int, body: JSON) -> tuple[str, JSON]:
        return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": body})

    def tool_start(index: int, tool_id: str) -> tuple[str, JSON]:
        block = {"type": "tool_use", "id": tool_id, "name": "get_weather", "input": {}}
        return ("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})

    assert events == [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_gw_1",
                    "type": "message",
                    "role": "assistant",
                    "model": "gpt-4o",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                },
            },
        ),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        delta(0, {"type": "text_delta", "text": "Checking"}),
        delta(0, {"type": "text_delta", "text": " both."}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        tool_start(1, "call_A"),
        delta(1, {"type": "input_json_delta", "partial_json": '{"city":'}),
        delta(1, {"type": "input_json_delta", "partial_json": '"Paris"}'}),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        tool_start(2, "call_B"),
        delta(2, {"type": "input_json_delta", "partial_json": '{"city":"Rome"}'}),
        ("content_block_stop", {"type": "content_block_stop", "index": 2}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": 40, "input_tokens": 26, "cache_read_input_tokens": 64},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    assert stream.usage == OPENAI_CHUNKS[-1]["usage"]


def test_chat_stream_whole_tool_calls_in_one_chunk_open_sequential_blocks() -> None:
    stream = ChatToMessagesStream("m", "msg_1")
    calls = [
        {"index": 0, "id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        {"index": 1, "id": "b", "type": "function", "function": {"name": "g", "arguments": '{"x":1}'}},
    ]
    events = stream.feed(_chunk({"role": "assistant", "tool_calls": calls}, finish="tool_calls"))
    assert [(name, data.get("index")) for name, data in events] == [
        ("message_start", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
    ]


def test_chat_stream_finish_without_usage_or_finish_reason() -> None:
    stream = ChatToMessagesStream("m", "msg_1")
    stream.feed(_chunk({"content": "partial"}))
    events = stream.finish()
    assert events == [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 0, "input_tokens": 0},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    assert stream.usage is None
    assert stream.finish() == []
    assert stream.feed(_chunk({"content": "late"})) == []


def test_chat_stream_empty_upstream_still_yields_a_complete_message() -> None:
    events = ChatToMessagesStream("m", "msg_1").finish()
    assert [name for name, _ in events] == ["message_start", "message_delta", "message_stop"]


def test_chat_stream_length_finish_maps_to_max_tokens() -> None:
    stream = ChatToMessagesStream("m", "msg_1")
    stream.feed(_chunk({"content": "abc"}, finish="length"))
    message_delta = stream.finish()[0][1]
    assert message_delta["delta"]["stop_reason"] == "max_tokens"


def test_chat_stream_error_chunk_raises_upstream_stream_error() -> None:
    stream = ChatToMessagesStream("m", "msg_1")
    with pytest.raises(UpstreamStreamError) as info:
        stream.feed({"error": {"message": "boom", "type": "server_error"}})
    assert (info.value.message, info.value.error_type) == ("boom", "server_error")


def test_to_anthropic_sse_formats_one_event() -> None:
    data = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hé"}}
    raw = to_anthropic_sse("content_block_delta", data)
    assert raw.startswith(b"event: content_block_delta\ndata: {")
    assert raw.endswith(b"}\n\n")
    assert orjson.loads(raw.split(b"data: ", 1)[1]) == data
    assert raw.count(b"\n") == 3


# ---------------------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------------------


def test_chat_request_round_trip_keeps_text_tools_and_tool_results() -> None:
    original = _chat(
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
        {"role": "assistant", "content": "18C and sunny."},
        {"role": "user", "content": "Thanks"},
        tools=[WEATHER_TOOL],
        tool_choice="auto",
        max_tokens=256,
        temperature=0.5,
        stop=["END"],
    )
    back = messages_to_chat_request(chat_to_messages_request(original, "claude"), "gpt")
    assert back["messages"] == original["messages"]
    assert back["tools"] == original["tools"]
    assert back["tool_choice"] == "auto"
    assert (back["max_tokens"], back["temperature"], back["stop"]) == (256, 0.5, ["END"])


def test_messages_request_round_trip_keeps_content() -> None:
    original = _anthropic(
        {"role": "user", "content": "Weather in Rome?"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Rome"}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "warm"}]},
        system="Be terse.",
        tools=[{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}],
        tool_choice={"type": "any"},
        stop_sequences=["END"],
    )
    back = chat_to_messages_request(messages_to_chat_request(original, "gpt"), "claude")
    assert back["system"] == "Be terse."
    assert back["messages"] == [
        original["messages"][0],
        original["messages"][1],
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "warm"}]},
    ]
    assert back["tools"] == original["tools"]
    assert back["tool_choice"] == {"type": "any"}
    assert back["stop_sequences"] == ["END"]
    assert back["max_tokens"] == 100


def test_response_round_trip_keeps_text_and_tool_calls() -> None:
    msg = _anthropic_message(
        [
            {"type": "text", "text": "On it."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        ],
        stop_reason="tool_use",
        cache_read_input_tokens=7,
    )
    back = chat_response_to_messages(messages_response_to_chat(msg, "alias"), "alias")
    assert back["content"] == msg["content"]
    assert back["stop_reason"] == "tool_use"
    assert back["id"] == "msg_01ABC"
    assert back["usage"] == {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 7}


def test_stream_round_trip_rebuilds_the_original_blocks() -> None:
    to_chat = MessagesToChatStream("alias", include_usage=True, created=1)
    to_messages = ChatToMessagesStream("alias", "msg_round")
    events: list[tuple[str, JSON]] = []
    for name, data in ANTHROPIC_EVENTS:
        for chunk in to_chat.feed(name, data):
            events.extend(to_messages.feed(chunk))
    events.extend(to_messages.finish())

    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta" and "text" in d["delta"])
    tool_json = "".join(
        d["delta"]["partial_json"] for n, d in events if n == "content_block_delta" and "partial_json" in d["delta"]
    )
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert text == "Let me check."
    assert orjson.loads(tool_json) == {"city": "Paris"}
    assert starts[1] == {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {}}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert events[-2][1]["usage"] == {"output_tokens": 89, "input_tokens": 472, "cache_read_input_tokens": 1000}


# ---------------------------------------------------------------------------------------------------------
# Output accepted by the official SDKs' models (the closest thing to the wire spec we can run offline)
# ---------------------------------------------------------------------------------------------------------


def test_chat_outputs_validate_against_openai_sdk_models() -> None:
    chat_types = pytest.importorskip("openai.types.chat")
    msg = _anthropic_message(
        [{"type": "text", "text": "a"}, {"type": "tool_use", "id": "t", "name": "f", "input": {"x": 1}}], "tool_use"
    )
    chat_types.ChatCompletion.model_validate(messages_response_to_chat(msg, "m"))
    for chunk in _run_anthropic_stream(MessagesToChatStream("m", True, 1), ANTHROPIC_EVENTS):
        chat_types.ChatCompletionChunk.model_validate(chunk)


def test_messages_outputs_validate_against_anthropic_sdk_models() -> None:
    anthropic_types = pytest.importorskip("anthropic.types")
    pydantic = pytest.importorskip("pydantic")
    chat = _chat_completion(
        {
            "role": "assistant",
            "content": "x",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        finish_reason="tool_calls",
    )
    anthropic_types.Message.model_validate(chat_response_to_messages(chat, "m"))
    adapter = pydantic.TypeAdapter(anthropic_types.RawMessageStreamEvent)
    stream = ChatToMessagesStream("m", "msg_1")
    events = [e for chunk in OPENAI_CHUNKS for e in stream.feed(chunk)] + stream.finish()
    for name, data in events:
        assert adapter.validate_python(data).type == name
