"""The gateway's pure parts of the Responses API: the head decoder, the input-items listing, the
stream replayed from a stored Response (checked with the `openai` SDK's own event types), the
terminal event found in a stream's last bytes, and token counts of Responses bodies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from meterway.api import heads
from meterway.api.response_shapes import final_response, list_items, replay_events
from meterway.api.responses import target
from meterway.errors import BadRequest
from meterway.ledger.tokens import TokenCounter
from meterway.providers import billed
from meterway.providers import responses_format as fmt
from meterway.providers.base import Api, Usage

RESPONSE: dict[str, Any] = {
    "id": "resp_abc",
    "object": "response",
    "created_at": 1_700_000_000,
    "status": "completed",
    "model": "claude",
    "output": [
        {
            "type": "message",
            "id": "msg_1",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Hello there, friend.", "annotations": []}],
        },
        {
            "type": "function_call",
            "id": "fc_1",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
            "status": "completed",
        },
    ],
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
    "error": None,
    "incomplete_details": None,
    "instructions": None,
    "metadata": {},
    "temperature": None,
    "top_p": None,
    "usage": {
        "input_tokens": 5,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 9,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 14,
    },
}
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def test_the_response_fixture_is_a_valid_response() -> None:
    Response.model_validate(RESPONSE)


def test_replayed_events_are_the_sdk_s_events_in_order() -> None:
    events = replay_events(RESPONSE)
    parsed = [EVENTS.validate_python(e) for e in events]
    assert [e.sequence_number for e in parsed] == list(range(len(parsed)))
    assert parsed[0].type == "response.created" and parsed[-1].type == "response.completed"
    deltas = "".join(e.delta for e in parsed if e.type == "response.output_text.delta")
    assert deltas == "Hello there, friend."
    (arguments,) = [e for e in parsed if e.type == "response.function_call_arguments.done"]
    assert arguments.arguments == '{"city": "Paris"}'
    assert parsed[-1].response.output_text == "Hello there, friend."  # type: ignore[union-attr]


@pytest.mark.parametrize(("status", "last"), [("incomplete", "response.incomplete"), ("failed", "response.failed")])
def test_a_response_that_did_not_complete_ends_with_its_own_event(status: str, last: str) -> None:
    assert replay_events(dict(RESPONSE, status=status))[-1]["type"] == last


def test_the_final_response_is_found_in_a_stream_s_last_bytes_or_a_whole_body() -> None:
    completed = {"type": "response.completed", "sequence_number": 9, "response": RESPONSE}
    tail = b"event: response.output_item.done\ndata: {}\n\nevent: response.completed\ndata: " + orjson.dumps(completed)
    assert final_response(tail + b"\n\n") == RESPONSE
    assert final_response(orjson.dumps(RESPONSE)) == RESPONSE
    assert final_response(b'{"object": "list"}') is None
    assert final_response(b"data: [DONE]\n\n") is None


ITEMS = [
    {"id": f"msg_{n}", "type": "message", "role": "user", "content": [{"type": "input_text", "text": str(n)}]}
    for n in range(5)
]


def test_input_items_are_listed_newest_first_in_pages() -> None:
    first = list_items(ITEMS, {"limit": "2"})
    assert [i["id"] for i in first["data"]] == ["msg_4", "msg_3"]
    assert (first["object"], first["first_id"], first["last_id"], first["has_more"]) == ("list", "msg_4", "msg_3", True)
    rest = list_items(ITEMS, {"limit": "10", "after": "msg_3"})
    assert [i["id"] for i in rest["data"]] == ["msg_2", "msg_1", "msg_0"] and rest["has_more"] is False
    ascending = list_items(ITEMS, {"order": "asc", "after": "msg_3"})
    assert [i["id"] for i in ascending["data"]] == ["msg_4"]
    empty = list_items([], {})
    assert (empty["data"], empty["first_id"], empty["has_more"]) == ([], None, False)


@pytest.mark.parametrize(
    "query", [{"limit": "0"}, {"limit": "101"}, {"limit": "x"}, {"order": "up"}, {"after": "nope"}]
)
def test_bad_listing_parameters_are_400(query: dict[str, str]) -> None:
    with pytest.raises(BadRequest) as e:
        list_items(ITEMS, query)
    assert e.value.param == next(iter(query))


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/responses/resp_1", ("resp_1", "")),
        ("/responses/resp_1/cancel", ("resp_1", "cancel")),
        ("/v1/responses/resp_1/input_items", ("resp_1", "input_items")),
        ("/v1/responses/resp_1/other", None),
        ("/v1/responses/resp_1/cancel/more", None),
        ("/v1/responses/", None),
    ],
)
def test_resource_paths(path: str, expected: tuple[str, str] | None) -> None:
    found = target({"path": path, "query_string": b""})
    assert (None if found is None else (found.response_id, found.action)) == expected


def test_the_head_of_a_responses_request() -> None:
    head = heads.responses(b'{"model": "m", "input": "hi", "stream": true, "max_output_tokens": 50, "user": "u"}')
    assert (head.model, head.stream, head.include_usage, head.max_tokens, head.user) == ("m", True, True, 50, "u")
    options = heads.responses_options(b'{"model": "m", "input": [], "background": true, "previous_response_id": "r"}')
    assert (options.background, options.previous_response_id, options.store) == (True, "r", None)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "m"}', "input"),
        (b'{"input": "hi"}', "model"),
        (b'{"model": "m", "input": []}', "input"),
        (b'{"model": "m", "input": 3}', "input"),
        (b'{"model": "m", "input": "hi", "max_output_tokens": 0}', "max_output_tokens"),
        (b'{"model": "m", "input": "hi", "background": "yes"}', "background"),
    ],
)
def test_bad_responses_requests_are_400_naming_the_field(body: bytes, param: str) -> None:
    with pytest.raises(BadRequest) as e:
        heads.responses(body)
    assert e.value.param == param


def test_tokens_of_a_responses_request_answer_and_stream() -> None:
    counter = TokenCounter()
    plain = counter.prompt(Api.RESPONSES, b'{"model": "m", "input": "hello there", "instructions": "Be brief."}')
    as_chat = counter.prompt(
        Api.CHAT,
        b'{"model": "m", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]}',
    )
    assert plain == as_chat
    items = orjson.dumps(
        {
            "model": "m",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "hello there"}]},
                {"type": "function_call_output", "call_id": "c", "output": "Sunny"},
            ],
        }
    )
    assert counter.prompt(Api.RESPONSES, items) > counter.prompt(Api.RESPONSES, b'{"input": "hello there"}')
    answer = counter.completion(Api.RESPONSES, orjson.dumps(RESPONSE))
    assert answer == counter.count("Hello there, friend." + '{"city": "Paris"}')
    streamed = b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in replay_events(RESPONSE)
    )
    assert counter.streamed(Api.RESPONSES, [streamed]) == answer


def test_usage_is_filled_in_only_where_the_response_has_none() -> None:
    counted = Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7)
    billed_usage = fmt.responses_usage(counted)
    bare = dict(RESPONSE, usage=None)
    events = replay_events(bare)
    stream = b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events[-2:])
    filled = billed.response_event_with_usage(stream, counted)
    assert filled.endswith(b"\n\n") and filled.count(b"\n\n") == 2
    assert final_response(filled) == dict(bare, usage=billed_usage)
    assert b'"meterway":{"usage_estimated":true}' in filled
    whole = billed.body_with_usage(Api.RESPONSES, orjson.dumps(bare), counted)
    assert final_response(whole) == dict(bare, usage=billed_usage)
    own = b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in replay_events(RESPONSE)[-1:]
    )
    assert billed.response_event_with_usage(own, counted) == own  # the upstream's own usage stays


# ---- against OpenAI's published spec (the fixture H1a extracted from openai-openapi)

SPEC = json.loads((Path(__file__).parent.parent / "fixtures" / "openai-responses" / "schemas.json").read_text())


def _spec_errors(name: str, value: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}", **SPEC})
    return [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(value)]


BRIDGED_REQUEST: dict[str, Any] = {"model": "claude", "input": [{"role": "user", "content": "Weather in Oslo?"}]}
CHAT_ANSWER: dict[str, Any] = {
    "choices": [
        {
            "index": 0,
            "finish_reason": "tool_calls",
            "message": {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                ],
            },
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
}


def test_what_the_gateway_serves_from_the_store_matches_the_spec() -> None:
    response = fmt.chat_to_response(CHAT_ANSWER, BRIDGED_REQUEST, "resp_s1", 1_760_000_000)
    for event in replay_events(response):
        assert _spec_errors("ResponseStreamEvent", event) == [], event["type"]
    listing = list_items(fmt.input_items(BRIDGED_REQUEST), {})
    assert _spec_errors("ResponseItemList", listing) == []
    queued = dict(
        fmt.ChatToResponsesStream(BRIDGED_REQUEST, "resp_q", 1).start()[0]["response"], status="queued", background=True
    )
    assert _spec_errors("Response", queued) == []
    filled = billed.body_with_usage(Api.RESPONSES, orjson.dumps(dict(response, usage=None)), Usage(9, 4, 13))
    assert _spec_errors("Response", orjson.loads(filled)) == []
