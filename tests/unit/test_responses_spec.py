"""The Responses API bodies meterway builds, checked against OpenAI's published spec (its component
schemas, `tests/fixtures/openai-responses/`): the bridge's Response objects, stream events, stored
and replayed items, the stream error event, and the stand-in's answers, so tests against the
stand-in prove what they claim. The SDK's pydantic types are lenient where the spec is not (a
`user` of null, a text part without `logprobs`); this catches those."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from meterway.api.errors import stream_error_event
from meterway.errors import UpstreamUnavailable
from meterway.providers import responses_format as fmt
from meterway.providers import sse
from meterway.providers.base import Api
from tests.upstreams.responses import ResponsesApi
from tests.upstreams.standin import StandIn

SCHEMAS = json.loads((Path(__file__).parent.parent / "fixtures" / "openai-responses" / "schemas.json").read_text())


def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}", **SCHEMAS})


RESPONSE = _validator("Response")
EVENT = _validator("ResponseStreamEvent")
ITEM = _validator("ItemResource")
INPUT = _validator("InputItem")


def _valid(validator: jsonschema.Draft202012Validator, value: Any) -> None:
    errors = list(validator.iter_errors(value))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        pytest.fail(f"{list(best.absolute_path)}: {best.message[:400]}")


REQUEST = {
    "model": "client-model",
    "input": "Weather in Oslo?",
    "instructions": "Be brief",
    "tools": [
        {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}, "strict": True}
    ],
    "metadata": {"team": "a"},
    "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": True}},
    "reasoning": {"effort": "low"},
    "max_output_tokens": 50,
}
USAGE = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
MESSAGES = [
    {"content": "Sunny."},
    {"content": None, "refusal": "I can't."},
    {
        "content": "Checking.",
        "reasoning_content": "The user wants weather.",
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}],
    },
]


@pytest.mark.parametrize("message", MESSAGES)
@pytest.mark.parametrize("finish", ["stop", "length", "tool_calls"])
def test_bridged_responses_and_their_items_match_the_spec(message: dict[str, Any], finish: str) -> None:
    chat = {"choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}]}
    response = fmt.chat_to_response({**chat, "usage": USAGE}, REQUEST, "resp_s1", 1_760_000_000)
    _valid(RESPONSE, response)
    _valid(RESPONSE, fmt.chat_to_response(chat, {"input": "x"}, "resp_s2", 1))  # no usage, bare request
    for item in response["output"]:
        _valid(ITEM, item)
    for item in fmt.output_as_input(response):
        _valid(INPUT, item)


CHUNKS = [
    {"choices": [{"index": 0, "delta": {"reasoning_content": "Hm."}}]},
    {"choices": [{"index": 0, "delta": {"content": "Let me "}}]},
    {"choices": [{"index": 0, "delta": {"content": "check."}}]},
    {"choices": [{"index": 0, "delta": {"refusal": "Partly refused."}}]},
    {
        "choices": [
            {"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "get_weather"}}]}}
        ]
    },
    {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}}]},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    {"choices": [], "usage": USAGE},
]


@pytest.mark.parametrize("ending", ["finish", "failed", "error chunk"])
def test_every_bridged_stream_event_matches_the_spec(ending: str) -> None:
    stream = fmt.ChatToResponsesStream(REQUEST, "resp_s3", 1_760_000_000)
    events = stream.start()
    for chunk in CHUNKS[:-2] if ending != "finish" else CHUNKS:
        events.extend(stream.feed(chunk))
    if ending == "finish":
        events.extend(stream.finish())
    elif ending == "failed":
        events.extend(stream.failed({"code": "server_error", "message": "The upstream went away."}))
    else:
        events.extend(stream.feed({"error": {"message": "overloaded"}}))
    for event in events:
        _valid(EVENT, event)
    assert stream.response is not None
    _valid(RESPONSE, stream.response)


def test_stored_input_items_and_the_error_event_match_the_spec() -> None:
    request = {
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
            {"role": "developer", "content": "Rules"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello"}]},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "Sunny"},
        ]
    }
    for item in fmt.input_items(request):
        _valid(ITEM, item)
    raw = stream_error_event(UpstreamUnavailable("down", deployment="d", upstream_status=503), Api.RESPONSES, 7)
    _valid(EVENT, json.loads(sse.parse_event(raw.strip()).data))


@pytest.mark.parametrize(
    "payload",
    [
        {"model": "m", "input": "Hi there", "instructions": "Be brief", "user": "u1"},
        {"model": "m", "input": "Weather?", "tools": REQUEST["tools"]},
        {"model": "m", "input": "long story please", "max_output_tokens": 1},
        {"model": "m", "input": "json", "text": REQUEST["text"]},
    ],
)
def test_the_stand_in_answers_as_the_spec_says(payload: dict[str, Any]) -> None:
    api = ResponsesApi(StandIn())  # its answers are pure: no server needed
    final = api._answer(payload, [{"type": "message", "role": "user", "content": payload["input"]}], "resp_x")
    _valid(RESPONSE, final)
    for event in api._events(final):
        _valid(EVENT, event)
