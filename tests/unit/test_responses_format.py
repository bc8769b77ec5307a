"""The Responses <-> chat bridge, checked against the `openai` SDK's own types: every Response,
event, item and chat answer it builds must be what the SDK parses, and a stream must accumulate
(in the SDK's `responses.stream()` state) into the same Response the bridge reports."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai._types import NOT_GIVEN
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseItem, ResponseStreamEvent
from openai.types.responses.response_input_item import ResponseInputItem
from pydantic import TypeAdapter

from meterway.providers import responses_format as fmt
from meterway.providers import responses_reverse as reverse
from meterway.providers.base import NOT_A_COUNT, Usage

EVENT = TypeAdapter(ResponseStreamEvent)
ITEM = TypeAdapter(ResponseItem)
INPUT_ITEM = TypeAdapter(ResponseInputItem)
RID = "resp_abc123"
NOW = 1_760_000_000
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a place",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}
USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 7,
    "total_tokens": 19,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 2},
}


def _chat(message: dict[str, Any], finish: str = "stop", usage: Any = USAGE) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": NOW,
        "model": "up",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


# ---------------------------------------------------------------- requests


def test_string_input_and_instructions_become_system_then_user() -> None:
    chat = fmt.responses_to_chat({"model": "client", "input": "Hi", "instructions": "Be brief"}, "upstream")
    assert chat == {
        "model": "upstream",
        "messages": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi"}],
    }


def test_items_carry_roles_parts_calls_and_outputs() -> None:
    request = {
        "model": "m",
        "input": [
            {"role": "developer", "content": "Rules"},  # no type: a message
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Look:"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
                    {"type": "input_file", "file_data": "data:application/pdf;base64,BBBB", "filename": "a.pdf"},
                ],
            },
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "xyz"},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Let me check.", "annotations": []}],
            },
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
            {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": '{"city":"Rome"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"},
            {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "Rain"}]},
        ],
    }
    messages = fmt.responses_to_chat(request, "up")["messages"]
    assert messages[0] == {"role": "system", "content": "Rules"}
    assert messages[1]["content"] == [
        {"type": "text", "text": "Look:"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,BBBB", "filename": "a.pdf"}},
    ]
    # the assistant's text and both calls are one turn; the reasoning item is not carried
    assert messages[2] == {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}},
        ],
    }
    assert messages[3:] == [
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "Rain"},
    ]


def test_settings_translate_and_gateway_fields_stay_home() -> None:
    chat = fmt.responses_to_chat(
        {
            "model": "m",
            "input": "x",
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "text": {"format": {"type": "json_schema", "name": "city", "schema": {"type": "object"}, "strict": True}},
            "max_output_tokens": 100,
            "reasoning": {"effort": "low", "summary": "auto"},
            "temperature": 0.2,
            "top_p": 0.9,
            "user": "u1",
            "parallel_tool_calls": False,
            "metadata": {"team": "a"},
            "store": True,
            "background": False,
            "previous_response_id": "resp_old",
            "truncation": "auto",
            "stream": True,
        },
        "up",
    )
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a place",
                "parameters": WEATHER["parameters"],
                "strict": True,
            },
        }
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "city", "schema": {"type": "object"}, "strict": True},
    }
    assert chat["max_completion_tokens"] == 100 and chat["reasoning_effort"] == "low"
    assert (chat["temperature"], chat["top_p"], chat["user"], chat["parallel_tool_calls"]) == (0.2, 0.9, "u1", False)
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    for gateway_only in ("metadata", "store", "background", "previous_response_id", "truncation", "input"):
        assert gateway_only not in chat


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("required", "required"),
        ("none", "none"),
        (
            {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "a"}]},
            {
                "type": "allowed_tools",
                "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "a"}}]},
            },
        ),
    ],
)
def test_tool_choice_forms(choice: Any, expected: Any) -> None:
    assert fmt.responses_to_chat({"input": "x", "tool_choice": choice}, "up")["tool_choice"] == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [({"format": {"type": "json_object"}}, {"type": "json_object"}), ({"format": {"type": "text"}}, None)],
)
def test_text_formats(text: Any, expected: Any) -> None:
    assert fmt.responses_to_chat({"input": "x", "text": text}, "up").get("response_format") == expected


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0]"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]},
            "input[0].content[0]",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]},
            "input[0].content[0]",
        ),
        ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0]"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
        ({"input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
        ({"input": "x", "conversation": "conv_1"}, "conversation"),
        ({"input": "x", "prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"input": "x", "tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        ({"input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"input": 42}, "input"),
        ({"input": []}, "input"),
    ],
)
def test_what_cannot_be_carried_is_refused_naming_the_param(request_: dict[str, Any], param: str) -> None:
    with pytest.raises(fmt.TranslationError) as e:
        fmt.responses_to_chat(request_, "up")
    assert e.value.param == param and str(e.value)


_text = st.text(max_size=20)
_part = st.one_of(
    st.fixed_dictionaries({"type": st.just("input_text"), "text": _text}),
    st.fixed_dictionaries({"type": st.just("input_image"), "image_url": st.just("https://x/y.png")}),
    st.fixed_dictionaries({"type": st.sampled_from(["input_audio", "weird"])}),
)
_item = st.one_of(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "developer", "assistant", "tool"])},
        optional={"type": st.just("message"), "content": st.one_of(_text, st.lists(_part, max_size=3))},
    ),
    st.fixed_dictionaries(
        {"type": st.just("function_call"), "call_id": _text, "name": _text}, optional={"arguments": _text}
    ),
    st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": _text, "output": _text}),
    st.dictionaries(st.sampled_from(["type", "id", "x"]), st.one_of(_text, st.integers(), st.none()), max_size=3),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_item, max_size=6))
def test_any_item_list_translates_or_is_refused_by_name(items: list[Any]) -> None:
    try:
        chat = fmt.responses_to_chat({"input": items}, "up")
    except fmt.TranslationError as e:
        assert e.param is not None and e.param.startswith("input")
        return
    assert chat["messages"] and all(m["role"] in ("system", "user", "assistant", "tool") for m in chat["messages"])


# ---------------------------------------------------------------- answers


def test_answer_is_a_response_the_sdk_parses_with_echoed_settings() -> None:
    request = {
        "model": "client-model",
        "input": "Hi",
        "instructions": "Be brief",
        "tools": [WEATHER],
        "metadata": {"team": "a"},
        "previous_response_id": "resp_old",
        "temperature": 0.3,
        "store": False,
        "reasoning": {"effort": "low"},
    }
    body = fmt.chat_to_response(_chat({"content": "Hello!"}), request, RID, NOW)
    r = Response.model_validate(body)
    assert r.id == RID and r.object == "response" and r.status == "completed" and r.output_text == "Hello!"
    # the model that answered, as the chat answer names it (not the name asked for)
    assert r.model == "up" and r.instructions == "Be brief" and r.metadata == {"team": "a"}
    assert r.previous_response_id == "resp_old" and r.temperature == 0.3 and r.store is False
    assert r.reasoning is not None and r.reasoning.effort == "low"
    assert r.tools[0].type == "function" and r.tools[0].name == "get_weather"
    assert r.background is False and r.error is None and r.created_at == NOW
    assert r.usage is not None and r.usage.model_dump(exclude_none=True) == {
        "input_tokens": 12,
        "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
        "output_tokens": 7,
        "output_tokens_details": {"reasoning_tokens": 2},
        "total_tokens": 19,
    }
    assert fmt.usage_of(body) == Usage(12, 7, 19, cached_tokens=4, reasoning_tokens=2)


def test_tool_calls_reasoning_and_refusal_become_output_items() -> None:
    message = {
        "content": None,
        "reasoning_content": "Thinking about weather",
        "tool_calls": [
            {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
        ],
    }
    r = Response.model_validate(fmt.chat_to_response(_chat(message, "tool_calls"), {"input": "x"}, RID, NOW))
    assert [i.type for i in r.output] == ["reasoning", "function_call"]
    call = r.output[1]
    assert call.type == "function_call" and call.call_id == "call_9" and call.id and call.id.startswith("fc_")
    assert call.arguments == '{"city":"Oslo"}'
    refused = Response.model_validate(fmt.chat_to_response(_chat({"refusal": "No."}), {"input": "x"}, RID, NOW))
    assert refused.output[0].content[0].type == "refusal"  # type: ignore[union-attr]


@pytest.mark.parametrize(("finish", "reason"), [("length", "max_output_tokens"), ("content_filter", "content_filter")])
def test_cut_answers_are_incomplete(finish: str, reason: str) -> None:
    r = Response.model_validate(fmt.chat_to_response(_chat({"content": "Hal"}, finish), {"input": "x"}, RID, NOW))
    assert r.status == "incomplete" and r.incomplete_details is not None and r.incomplete_details.reason == reason


def test_billed_usage_in_responses_form_round_trips() -> None:
    billed = Usage(10, 4, 14, cached_tokens=3, reasoning_tokens=1)
    body = fmt.chat_to_response(_chat({"content": "x"}, usage=None), {"input": "x"}, RID, NOW)
    assert "usage" not in body  # the upstream reported none: the gateway fills in what it bills
    body["usage"] = fmt.responses_usage(billed)
    assert Response.model_validate(body).usage is not None and fmt.usage_of(body) == billed


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"input_tokens": -5, "output_tokens": 3, "total_tokens": -2}, Usage(-5, 3, -2)),
        ({"input_tokens": "12", "output_tokens": 1.5}, Usage(NOT_A_COUNT, NOT_A_COUNT, NOT_A_COUNT * 2)),
        ({"input_tokens": 2**60, "output_tokens": True, "total_tokens": 1}, Usage(NOT_A_COUNT, NOT_A_COUNT, 1)),
        (
            {"input_tokens": 5, "output_tokens": 2, "input_tokens_details": {"cached_tokens": "x"}},
            Usage(5, 2, 7, cached_tokens=NOT_A_COUNT),
        ),
        ("lots", Usage(NOT_A_COUNT, NOT_A_COUNT, NOT_A_COUNT)),
        (None, None),
    ],
)
def test_hostile_usage_is_kept_as_reported(usage: Any, expected: Usage | None) -> None:
    assert fmt.usage_of({"usage": usage}) == expected


# ---------------------------------------------------------------- streams


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _run(chunks: list[dict[str, Any]], request: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], Any]:
    stream = fmt.ChatToResponsesStream(request or {"model": "m", "input": "x"}, RID, NOW)
    events = stream.start()
    for chunk in chunks:
        events.extend(stream.feed(chunk))
    events.extend(stream.finish())
    return events, stream


def _accumulated(events: list[dict[str, Any]]) -> Response:
    """What `client.responses.stream(...)` makes of the events: each must parse as the SDK's event
    type, be numbered in order, and the SDK's state must reach the final Response."""
    state = ResponseStreamState(input_tools=NOT_GIVEN, text_format=NOT_GIVEN)
    for n, event in enumerate(events):
        assert event["sequence_number"] == n
        state.handle_event(EVENT.validate_python(event))
    final = state._completed_response
    assert final is not None
    return final


def test_text_stream_has_the_full_sequence_and_accumulates() -> None:
    chunks = [
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "Hel"}),
        _chunk({"content": "lo"}),
        _chunk({}, "stop"),
        {"id": "c", "choices": [], "usage": USAGE},
    ]
    events, stream = _run(chunks)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    delta = events[4]
    assert delta["item_id"] == events[2]["item"]["id"] and delta["output_index"] == 0 and delta["logprobs"] == []
    final = _accumulated(events)
    assert final.output_text == "Hello" and final.usage is not None and final.usage.output_tokens == 7
    reported = Response.model_validate(stream.response)  # what the relay hands the store: the same answer
    assert (reported.id, reported.output_text, reported.usage) == (final.id, final.output_text, final.usage)
    assert stream.usage == USAGE


def test_tool_call_stream_with_text_and_parallel_calls() -> None:
    chunks = [
        _chunk({"content": "Checking."}),
        _chunk({"tool_calls": [{"index": 0, "id": "call_a", "function": {"name": "get_weather", "arguments": ""}}]}),
        _chunk(
            {"tool_calls": [{"index": 1, "id": "call_b", "function": {"name": "get_weather", "arguments": '{"ci'}}]}
        ),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":"Oslo"}'}}]}),
        _chunk({"tool_calls": [{"index": 1, "function": {"arguments": 'ty":"Rome"}'}}]}),
        _chunk({}, "tool_calls"),
    ]
    events, _ = _run(chunks, {"model": "m", "input": "x", "tools": [WEATHER]})
    final = _accumulated(events)
    assert [i.type for i in final.output] == ["message", "function_call", "function_call"]
    calls = [i for i in final.output if i.type == "function_call"]
    assert [(c.call_id, c.arguments) for c in calls] == [("call_a", '{"city":"Oslo"}'), ("call_b", '{"city":"Rome"}')]
    assert final.usage is None  # the upstream reported none: the gateway counts it
    kinds = [e["type"] for e in events]
    assert kinds.count("response.function_call_arguments.done") == 2 and kinds[-1] == "response.completed"
    # the text item closed before the first call opened
    assert kinds.index("response.output_item.done") < kinds.index("response.function_call_arguments.delta")


def test_length_stream_ends_incomplete_and_reasoning_is_streamed() -> None:
    chunks = [_chunk({"reasoning_content": "hmm"}), _chunk({"content": "Par"}), _chunk({}, "length")]
    events, stream = _run(chunks)
    assert events[-1]["type"] == "response.incomplete"
    assert "response.reasoning_text.delta" in [e["type"] for e in events]
    final = _accumulated([*events[:-1], {**events[-1], "type": "response.completed"}])
    assert [i.type for i in final.output] == ["reasoning", "message"]
    r = Response.model_validate(stream.response)
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"


def test_empty_stream_still_answers_one_message_and_failed_closes() -> None:
    events, _ = _run([])
    assert _accumulated(events).output_text == ""
    stream = fmt.ChatToResponsesStream({"input": "x"}, RID, NOW)
    events = [*stream.start(), *stream.feed(_chunk({"content": "partial"}))]
    events.extend(stream.failed({"code": "server_error", "message": "upstream went away"}))
    for n, event in enumerate(events):
        assert EVENT.validate_python(event).sequence_number == n
    assert events[-1]["type"] == "response.failed" and events[-1]["response"]["error"]["code"] == "server_error"


def test_an_error_chunk_fails_the_response_and_ends_the_stream() -> None:
    events, stream = _run([_chunk({"content": "Hi"}), {"error": {"message": "overloaded", "type": "server_error"}}])
    assert events[-1]["type"] == "response.failed" and [e["type"] for e in events].count("response.failed") == 1
    assert stream.response is not None and stream.response["error"] == {"code": "server_error", "message": "overloaded"}
    for n, event in enumerate(events):
        assert EVENT.validate_python(event).sequence_number == n


_piece = st.text(min_size=1, max_size=6)
_delta = st.one_of(
    st.builds(lambda t: {"content": t}, _piece),
    st.builds(lambda t: {"reasoning_content": t}, _piece),
    st.builds(lambda t: {"refusal": t}, _piece),
    st.builds(
        lambda i, a, first: {
            "tool_calls": [
                {"index": i, "function": {"arguments": a}, **({"id": f"call_{i}", "type": "function"} if first else {})}
            ]
        },
        st.integers(0, 2),
        _piece,
        st.booleans(),
    ),
)
_stream_chunk = st.one_of(
    _delta.map(_chunk),
    st.sampled_from(["stop", "length", "tool_calls", "content_filter"]).map(lambda f: _chunk({}, f)),
    st.just({"id": "c", "choices": [], "usage": USAGE}),
    st.sampled_from([{"choices": None}, {"choices": [None]}, {"choices": [{"index": 1, "delta": {"content": "x"}}]}]),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_stream_chunk, max_size=12))
def test_any_chunk_sequence_gives_a_valid_stream_the_sdk_accumulates(chunks: list[dict[str, Any]]) -> None:
    events, stream = _run(chunks)
    if events[-1]["type"] == "response.incomplete":  # the SDK's state ends on either; it keys on completed
        events[-1] = {**events[-1], "type": "response.completed"}
    final = _accumulated(events)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if _is_first_choice(c))
    assert final.output_text == text
    calls = {item.call_id: item.arguments for item in final.output if item.type == "function_call"}
    for i in range(3):
        sent = "".join(
            t["function"]["arguments"]
            for c in chunks
            if _is_first_choice(c)
            for t in c["choices"][0]["delta"].get("tool_calls", [])
            if t["index"] == i
        )
        assert not sent or sent in calls.values()
    Response.model_validate(stream.response)


def _is_first_choice(chunk: dict[str, Any]) -> bool:
    choices = chunk.get("choices")
    return isinstance(choices, list) and bool(choices) and isinstance(choices[0], dict) and choices[0].get("index") == 0


def test_sse_names_each_event() -> None:
    raw = fmt.sse({"type": "response.created", "sequence_number": 0})
    assert raw == b'event: response.created\ndata: {"type":"response.created","sequence_number":0}\n\n'


# ---------------------------------------------------------------- stored items


def test_input_items_are_stored_items_with_ids() -> None:
    request = {
        "input": [
            {"role": "user", "content": "Weather?"},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"},
            {"id": "msg_kept", "role": "assistant", "content": "It is sunny."},
        ]
    }
    items = fmt.input_items(request)
    parsed = [ITEM.validate_python(i) for i in items]
    assert [p.type for p in parsed] == ["message", "function_call", "function_call_output", "message"]
    assert all(p.id for p in parsed) and parsed[3].id == "msg_kept"
    assert items[0]["content"] == [{"type": "input_text", "text": "Weather?"}]
    assert [i["id"] for i in fmt.input_items({"input": "x"})] != [i["id"] for i in fmt.input_items({"input": "x"})]


def test_output_goes_back_as_next_turn_input() -> None:
    message = {
        "content": "Calling.",
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}],
    }
    response = fmt.chat_to_response(_chat(message, "tool_calls"), {"input": "x"}, RID, NOW)
    items = fmt.output_as_input(response)
    for item in items:
        INPUT_ITEM.validate_python(item)
    follow = [*items, {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"}]
    messages = fmt.responses_to_chat({"input": follow}, "up")["messages"]
    assert messages[0]["tool_calls"][0]["id"] == "call_1" and messages[1]["role"] == "tool"


def test_item_references_resolve_to_the_bridge_s_own_output_items() -> None:
    first = fmt.chat_to_response(_chat({"content": "Paris."}), {"input": "Capital of France?"}, "resp_r1_x", NOW)
    (answer,) = first["output"]
    assert fmt.response_id_for_item(answer["id"]) == "resp_r1_x"
    assert fmt.response_id_for_item("msg_abc") is None and fmt.response_id_for_item("call_x_1") is None
    request = {
        "input": [
            {"role": "user", "content": "Capital of France?"},
            {"type": "item_reference", "id": answer["id"]},
            {"role": "user", "content": "And of Italy?"},
        ]
    }
    assert fmt.item_references(request) == [answer["id"]]
    messages = fmt.responses_to_chat(fmt.resolve_references(request, {answer["id"]: answer}), "up")["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"] and messages[1]["content"] == "Paris."
    with pytest.raises(fmt.TranslationError) as e:
        fmt.resolve_references(request, {})
    assert e.value.param == "input[1]"


# ---------------------------------------------------------------- the reverse bridge


def test_chat_request_to_responses_request() -> None:
    request = reverse.chat_to_responses(
        {
            "model": "client",
            "messages": [
                {"role": "system", "content": "Rules"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Hi"},
                        {"type": "image_url", "image_url": {"url": "https://i"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "ok"},
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}}},
            "max_tokens": 50,
            "reasoning_effort": "high",
            "stream": True,
        },
        "upstream",
    )
    assert request["model"] == "upstream" and request["store"] is False and request["stream"] is True
    assert [i["type"] for i in request["input"]] == ["message", "message", "function_call", "function_call_output"]
    assert request["input"][1]["content"][1] == {"type": "input_image", "image_url": "https://i", "detail": "auto"}
    assert request["tools"] == [{"type": "function", "name": "f", "parameters": {"type": "object"}}]
    assert request["tool_choice"] == {"type": "function", "name": "f"}
    assert request["text"] == {"format": {"type": "json_schema", "name": "n", "schema": {"type": "object"}}}
    assert request["max_output_tokens"] == 50 and request["reasoning"] == {"effort": "high"}
    for param, value in (("stop", ["x"]), ("n", 2), ("logit_bias", {"1": 2})):
        with pytest.raises(fmt.TranslationError) as e:
            reverse.chat_to_responses({"messages": [{"role": "user", "content": "x"}], param: value}, "up")
        assert e.value.param == param


def test_response_to_chat_and_stream_round_trip() -> None:
    message = {
        "content": "Calling.",
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}],
    }
    response = fmt.chat_to_response(_chat(message, "tool_calls"), {"model": "m", "input": "x"}, RID, NOW)
    chat = ChatCompletion.model_validate(reverse.response_to_chat(response, "client"))
    assert chat.model == "client" and chat.choices[0].finish_reason == "tool_calls"
    assert chat.choices[0].message.content == "Calling." and chat.choices[0].message.tool_calls is not None
    assert chat.usage is not None and (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (12, 7)

    chunks = [
        _chunk({"content": "Call"}),
        _chunk({"content": "ing."}),
        _chunk({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": '{"a"'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}),
        _chunk({}, "tool_calls"),
        {"id": "c", "choices": [], "usage": USAGE},
    ]
    events, _ = _run(chunks)
    back = reverse.ResponsesToChatStream("client", include_usage=True)
    out = [c for e in events for c in back.feed(e)] + back.finish()
    parsed = [ChatCompletionChunk.model_validate(c) for c in out]
    text = "".join(c.choices[0].delta.content or "" for c in parsed if c.choices)
    arguments = "".join(
        (t.function.arguments or "")
        for c in parsed
        if c.choices
        for t in c.choices[0].delta.tool_calls or []
        if t.function
    )
    assert text == "Calling." and arguments == '{"a":1}'
    assert [c.choices[0].finish_reason for c in parsed if c.choices][-1] == "tool_calls"
    assert parsed[-1].choices == [] and parsed[-1].usage is not None and parsed[-1].usage.total_tokens == 19
    quiet = reverse.ResponsesToChatStream("client", include_usage=False)
    assert all("usage" not in c for e in events for c in quiet.feed(e)) and quiet.usage is not None


def test_failed_response_becomes_a_chat_error_chunk() -> None:
    back = reverse.ResponsesToChatStream("client", include_usage=False)
    failed = {"id": RID, "status": "failed", "error": {"code": "server_error", "message": "boom"}, "usage": None}
    (chunk,) = back.feed({"type": "response.failed", "response": failed, "sequence_number": 3})
    assert chunk == {"error": {"message": "boom", "type": "api_error", "code": "server_error"}}
    assert json.loads(json.dumps(chunk)) == chunk


def test_usage_details_of_an_odd_type_are_no_details() -> None:
    odd = {"prompt_tokens": 3, "completion_tokens": 2, "prompt_tokens_details": 7, "completion_tokens_details": [1]}
    usage = fmt.usage_to_responses(odd)
    assert usage is not None and usage["input_tokens"] == 3 and usage["output_tokens"] == 2
    assert usage["input_tokens_details"]["cached_tokens"] == 0
    assert usage["output_tokens_details"]["reasoning_tokens"] == 0
