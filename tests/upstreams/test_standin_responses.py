"""Self-tests of the stand-in's Responses API, driven by the real `openai` SDK: it must behave as
OpenAI's does, or tests of the gateway against it prove nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai.types.responses import FunctionToolParam
from pydantic import BaseModel

from tests.support.wait import eventually

from .standin import (
    PER_MESSAGE_TOKENS,
    TOOL_ARGUMENT_VALUE,
    TOOL_CALL_ID,
    ChatOnlyStandIn,
    Script,
    StandIn,
    count_words,
    json_answer,
    reply_for,
)

KEY = "sk-standin-test"
WEATHER: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a place",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    "strict": True,
}


@pytest.fixture(scope="module")
def standin() -> Iterator[StandIn]:
    with StandIn() as server:
        yield server


@pytest.fixture
def oai(standin: StandIn) -> Iterator[openai.OpenAI]:
    standin.reset()
    with openai.OpenAI(base_url=standin.base_url + "/v1", api_key=KEY, max_retries=0, timeout=5) as client:
        yield client


def test_create_answers_with_text_and_usage(oai: openai.OpenAI, standin: StandIn) -> None:
    r = oai.responses.create(model="gpt-x", input="What is up there", instructions="Be brief")
    assert r.status == "completed" and r.output_text == reply_for("What is up there")
    assert r.model == "gpt-x" and r.instructions == "Be brief" and r.store is True
    assert r.usage is not None
    # instructions and the one input message, each its words + 3
    assert r.usage.input_tokens == 2 + PER_MESSAGE_TOKENS + 4 + PER_MESSAGE_TOKENS
    assert r.usage.output_tokens == count_words(r.output_text)
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert standin.last.path == "/v1/responses" and standin.last.credential == KEY


def test_stream_is_the_full_event_sequence(oai: openai.OpenAI) -> None:
    with oai.responses.stream(model="gpt-x", input="stream me please") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert final.output_text == reply_for("stream me please") and final.usage is not None


def test_function_call_round_trip(oai: openai.OpenAI, standin: StandIn) -> None:
    first = oai.responses.create(model="gpt-x", input="Weather in Paris?", tools=[WEATHER])
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id == TOOL_CALL_ID
    assert json.loads(call.arguments) == {"location": "Paris"}
    second = oai.responses.create(
        model="gpt-x",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21C"}],
        tools=[WEATHER],
        tool_choice="none",
    )
    assert second.output_text == reply_for("Weather in Paris?")
    assert second.previous_response_id == first.id


def test_streamed_function_call(oai: openai.OpenAI) -> None:
    with oai.responses.stream(model="gpt-x", input="Weather?", tools=[WEATHER]) as stream:
        deltas = [e.delta for e in stream if e.type == "response.function_call_arguments.delta"]
        final = stream.get_final_response()
    call = final.output[0]
    assert call.type == "function_call" and "".join(deltas) == call.arguments


def test_json_schema_answer_conforms(oai: openai.OpenAI) -> None:
    class City(BaseModel):
        name: str
        population: int
        coastal: bool

    parsed = oai.responses.parse(model="gpt-x", input="A city", text_format=City)
    assert parsed.output_parsed == City(name=TOOL_ARGUMENT_VALUE, population=1, coastal=True)
    assert json_answer(None, "x") == {"answer": "x"}


def test_max_output_tokens_cuts_the_answer(oai: openai.OpenAI) -> None:
    r = oai.responses.create(model="gpt-x", input="tell me a long story", max_output_tokens=3)
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens" and count_words(r.output_text) == 3


def test_retrieve_input_items_delete(oai: openai.OpenAI) -> None:
    r = oai.responses.create(
        model="gpt-x",
        input=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "second"},
        ],
    )
    assert oai.responses.retrieve(r.id).output_text == r.output_text
    items = oai.responses.input_items.list(r.id)
    assert [i.type for i in items.data] == ["message"] * 3
    assert items.data[0].content[0].text == "second"  # type: ignore[union-attr]  # newest first
    page = oai.responses.input_items.list(r.id, order="asc", limit=2)
    assert [i.content[0].text for i in page.data] == ["first", "ok"] and page.has_more  # type: ignore[union-attr]
    oai.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.delete(r.id)


def test_store_false_is_not_kept(oai: openai.OpenAI) -> None:
    r = oai.responses.create(model="gpt-x", input="forget me", store=False)
    with pytest.raises(openai.NotFoundError) as e:
        oai.responses.retrieve(r.id)
    assert e.value.body["message"] == f"Response with id '{r.id}' not found."  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        oai.responses.create(model="gpt-x", input="x", previous_response_id=r.id)
    assert bad.value.code == "previous_response_not_found"


def test_stream_replay_by_retrieve(oai: openai.OpenAI) -> None:
    r = oai.responses.create(model="gpt-x", input="replay this")
    events = list(oai.responses.retrieve(r.id, stream=True, starting_after=1))
    assert events[0].sequence_number == 2 and events[-1].type == "response.completed"


def test_background_goes_queued_then_completed(oai: openai.OpenAI) -> None:
    r = oai.responses.create(model="gpt-x", input="in the background", background=True)
    assert r.status == "queued" and r.background is True and r.usage is None
    done = eventually(lambda: (x := oai.responses.retrieve(r.id)).status == "completed" and x, within_s=5)
    assert done.output_text == reply_for("in the background") and done.usage is not None


def test_cancel_background_only(oai: openai.OpenAI, standin: StandIn) -> None:
    standin.responses.background_step_s = 5.0
    try:
        r = oai.responses.create(model="gpt-x", input="slow", background=True)
        assert oai.responses.cancel(r.id).status == "cancelled"
        assert oai.responses.retrieve(r.id).status == "cancelled"
    finally:
        standin.responses.background_step_s = 0.05
    done = oai.responses.create(model="gpt-x", input="fast")
    with pytest.raises(openai.BadRequestError):
        oai.responses.cancel(done.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.cancel("resp_unknown")


def test_input_tokens(oai: openai.OpenAI) -> None:
    counted = oai.responses.input_tokens.count(model="gpt-x", input="three words here")
    assert counted.input_tokens == 3 + PER_MESSAGE_TOKENS


def test_auth_and_scripted_failures(standin: StandIn, oai: openai.OpenAI) -> None:
    anonymous = httpx.post(standin.url("/v1/responses"), json={"model": "gpt-x", "input": "x"})
    assert anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "invalid_request_error"
    standin.script(Script(status=429, body={"error": {"message": "slow down", "type": "rate_limit"}}))
    with pytest.raises(openai.RateLimitError):
        oai.responses.create(model="gpt-x", input="x")
    standin.script(Script(usage_raw=b'{"input_tokens": -5, "output_tokens": "many"}'))
    raw = oai.responses.with_raw_response.create(model="gpt-x", input="x")
    assert json.loads(raw.http_response.content)["usage"] == {"input_tokens": -5, "output_tokens": "many"}


def test_scripted_missing_usage(oai: openai.OpenAI, standin: StandIn) -> None:
    standin.script(Script(no_usage=True), times=2)
    assert oai.responses.create(model="gpt-x", input="x").usage is None
    with oai.responses.stream(model="gpt-x", input="x") as stream:
        assert stream.get_final_response().usage is None


def test_azure_v1_path(standin: StandIn) -> None:
    with openai.OpenAI(base_url=standin.base_url + "/openai/v1", api_key=KEY, max_retries=0) as azure:
        assert azure.responses.create(model="my-deployment", input="hi").output_text == reply_for("hi")
    assert standin.last.path == "/openai/v1/responses"


def test_chat_only_server_has_no_responses_api() -> None:
    with (
        ChatOnlyStandIn() as server,
        openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0) as client,
    ):
        with pytest.raises(openai.NotFoundError):
            client.responses.create(model="m", input="hi")
        assert client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]).choices
