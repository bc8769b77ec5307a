"""Structured output from Claude through the OpenAI API, with the clients people use for it: `openai`'s
`parse`, a raw `response_format` json_schema, and instructor's JSON, JSON_SCHEMA and TOOLS modes. On a
Claude 4.5 deployment the stand-in Anthropic upstream must receive Anthropic's own structured output
(`output_config.format`, refused there as Anthropic refuses it); on an older model the forced answer
tool. Either way the content parses and validates against the schema the client sent."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import jsonschema
import openai
import orjson
import pydantic
import pytest

from meterway.providers.anthropic_format import JSON_TOOL_NAME
from tests.e2e.conftest import ANTHROPIC_KEY
from tests.support.gateway import RunningGateway, run_gateway
from tests.upstreams.standin import TOOL_ARGUMENT_VALUE, StandIn, structured_answer

NATIVE = "claude-sonnet"  # anthropic/claude-sonnet-4-5-20250929: takes output_config.format
TOOL = "claude-opus-41"  # anthropic/claude-opus-4-1-20250805: does not; gets the forced answer tool
GPT = "gpt"  # an OpenAI-compatible deployment, for the Anthropic SDK's side

ORDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 2, "description": "Where to deliver"},
        "quantity": {"type": "integer", "minimum": 1, "maximum": 10},
        "when": {"type": "string", "format": "date"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "gift": {"anyOf": [{"type": "boolean"}, {"type": "null"}]},
        "size": {"enum": ["S", "M", "L"]},
    },
    "required": ["city", "quantity", "when", "tags", "gift", "size"],
    "additionalProperties": False,
}
ORDER_FORMAT: Any = {"type": "json_schema", "json_schema": {"name": "order", "schema": ORDER_SCHEMA, "strict": True}}
ASK: Any = [{"role": "user", "content": "Order three shirts to Paris"}]


class City(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    city: str
    country: str
    population: int = pydantic.Field(ge=0)


@pytest.fixture(scope="module")
def gw(standin: StandIn) -> Iterator[RunningGateway]:
    def claude(name: str, model: str) -> dict[str, Any]:
        params = {"model": f"anthropic/{model}", "api_base": standin.base_url, "api_key": ANTHROPIC_KEY}
        return {"model_name": name, "litellm_params": params}

    gpt = {"model": "openai/gpt-upstream", "api_base": standin.base_url + "/v1", "api_key": ANTHROPIC_KEY}
    deployments = [
        claude(NATIVE, "claude-sonnet-4-5-20250929"),
        claude(TOOL, "claude-opus-4-1-20250805"),
        {"model_name": GPT, "litellm_params": gpt},
    ]
    with run_gateway({"model_list": deployments}) as gateway:
        yield gateway


@pytest.fixture
def oai(gw: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as client:
        yield client


def _sent(upstream: StandIn) -> dict[str, Any]:
    assert upstream.last.path == "/v1/messages"
    sent = upstream.last.json
    assert isinstance(sent, dict)
    return sent


def _assert_native(upstream: StandIn) -> dict[str, Any]:
    """The request carried Anthropic's structured output and no answer tool; returns its schema."""
    sent = _sent(upstream)
    assert "tools" not in sent and "tool_choice" not in sent and "response_format" not in sent
    fmt = sent["output_config"]["format"]
    assert fmt["type"] == "json_schema"
    return fmt["schema"]  # type: ignore[no-any-return]


def _assert_forced_tool(upstream: StandIn) -> None:
    sent = _sent(upstream)
    assert "output_config" not in sent and sent["tool_choice"] == {"type": "tool", "name": JSON_TOOL_NAME}


def test_json_schema_on_claude_4_5_is_native_and_the_answer_validates(oai: openai.OpenAI, upstream: StandIn) -> None:
    r = oai.chat.completions.create(model=NATIVE, messages=ASK, response_format=ORDER_FORMAT, user="u-9")
    choice = r.choices[0]
    answer = orjson.loads(choice.message.content or "")
    jsonschema.validate(answer, ORDER_SCHEMA)
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    sent_schema = _assert_native(upstream)
    # the constraints Anthropic does not enforce went to the description (the stand-in refuses them)
    city = sent_schema["properties"]["city"]
    assert "minLength" not in city and city["description"].startswith("Where to deliver")
    assert answer == structured_answer(sent_schema)
    assert _sent(upstream)["metadata"] == {"user_id": "u-9"}


def test_streamed_json_schema_on_claude_4_5_validates(oai: openai.OpenAI, upstream: StandIn) -> None:
    chunks = list(oai.chat.completions.create(model=NATIVE, messages=ASK, response_format=ORDER_FORMAT, stream=True))
    jsonschema.validate(
        orjson.loads("".join(c.choices[0].delta.content or "" for c in chunks if c.choices)), ORDER_SCHEMA
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    _assert_native(upstream)


def test_json_schema_on_an_older_claude_is_the_forced_tool(oai: openai.OpenAI, upstream: StandIn) -> None:
    r = oai.chat.completions.create(model=TOOL, messages=ASK, response_format=ORDER_FORMAT)
    jsonschema.validate(orjson.loads(r.choices[0].message.content or ""), ORDER_SCHEMA)
    _assert_forced_tool(upstream)


@pytest.mark.parametrize("model", [NATIVE, TOOL])
def test_openai_parse_returns_the_pydantic_object(oai: openai.OpenAI, upstream: StandIn, model: str) -> None:
    parsed = oai.chat.completions.parse(model=model, messages=ASK, response_format=City)
    got = parsed.choices[0].message.parsed
    assert isinstance(got, City) and got.city == TOOL_ARGUMENT_VALUE and got.population >= 0
    if model == NATIVE:
        _assert_native(upstream)
    else:
        _assert_forced_tool(upstream)


def test_reasoning_effort_beside_native_json_still_thinks(oai: openai.OpenAI, upstream: StandIn) -> None:
    r = oai.chat.completions.create(
        model=NATIVE, messages=ASK, response_format=ORDER_FORMAT, reasoning_effort="medium", max_tokens=500
    )
    jsonschema.validate(orjson.loads(r.choices[0].message.content or ""), ORDER_SCHEMA)
    sent = _sent(upstream)
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2048} and sent["max_tokens"] == 2548


def test_chat_parameters_reach_claude_as_anthropic_names_them(oai: openai.OpenAI, upstream: StandIn) -> None:
    tool: Any = {"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}
    oai.chat.completions.create(
        model=NATIVE,
        messages=ASK,
        tools=[tool],
        parallel_tool_calls=False,
        stop=["END"],
        top_p=0.5,
        user="u-1",
        seed=7,
        presence_penalty=0.1,
        logit_bias={"1": 2},
    )
    sent = _sent(upstream)
    assert sent["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert sent["stop_sequences"] == ["END"] and sent["top_p"] == 0.5 and sent["metadata"] == {"user_id": "u-1"}
    assert not {"seed", "presence_penalty", "logit_bias", "user", "parallel_tool_calls", "stop"} & set(sent)


@pytest.mark.parametrize("model", [GPT, NATIVE])
def test_anthropic_parse_works_on_any_deployment(gw: RunningGateway, upstream: StandIn, model: str) -> None:
    """The other way round: the `anthropic` SDK's structured output reaches an OpenAI-compatible
    deployment as `response_format` json_schema (and a Claude 4.5 one as it was sent)."""
    with anthropic.Anthropic(base_url=gw.url, api_key=gw.key, max_retries=0) as claude:
        message = claude.messages.parse(model=model, max_tokens=200, messages=ASK, output_format=City)
    assert message.parsed_output == City(city=TOOL_ARGUMENT_VALUE, country=TOOL_ARGUMENT_VALUE, population=1)
    sent = _sent(upstream) if model == NATIVE else upstream.last.json
    assert isinstance(sent, dict)
    if model == GPT:
        assert sent["response_format"]["type"] == "json_schema" and "output_config" not in sent
        assert sent["response_format"]["json_schema"]["schema"]["required"] == ["city", "country", "population"]
    else:
        assert sent["output_config"]["format"]["type"] == "json_schema"


# ---------------------------------------------------------------------------------------------- instructor


@pytest.fixture
def instructor() -> Any:
    """instructor caps jiter below what the `openai` SDK under test needs, so it cannot be a test
    dependency (pip would downgrade openai for every test); installed with --no-deps, it runs here."""
    return pytest.importorskip("instructor", reason="instructor is not installed (pip install --no-deps instructor)")


@pytest.mark.parametrize("mode", ["JSON", "JSON_SCHEMA", "TOOLS"])
@pytest.mark.parametrize("model", [NATIVE, TOOL])
def test_instructor_returns_a_validated_model(
    oai: openai.OpenAI, upstream: StandIn, instructor: Any, mode: str, model: str
) -> None:
    client = instructor.from_openai(oai, mode=getattr(instructor.Mode, mode))
    city = client.chat.completions.create(model=model, response_model=City, messages=ASK, max_retries=0)
    assert isinstance(city, City) and city.country == TOOL_ARGUMENT_VALUE
    if mode == "JSON_SCHEMA" and model == NATIVE:
        _assert_native(upstream)
