"""`response_format` json_schema as Anthropic structured output: which models take it, and how a schema
is adapted to what it enforces (offline; the stand-in checks the same limits end to end)."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from meterway.providers.anthropic_format import (
    JSON_TOOL_NAME,
    TranslationError,
    chat_to_messages_request,
    messages_to_chat_request,
)
from meterway.providers.anthropic_schema import native_output_schema, supports_structured_output


@pytest.mark.parametrize(
    ("model", "supported"),
    [
        ("claude-sonnet-4-5", True),
        ("claude-sonnet-4-5-20250929", True),
        ("claude-haiku-4-5-20251001", True),
        ("claude-opus-4-5", True),
        ("claude-opus-4-6", True),
        ("claude-sonnet-4-6-latest", True),
        ("claude-sonnet-5", True),
        ("CLAUDE-OPUS-4-5", True),
        ("anthropic.claude-haiku-4-5-20251001-v1:0", True),
        ("claude-sonnet-4-5@20250929", True),
        ("claude-opus-4-1@20250805", False),
        ("claude-opus-4-1-20250805", False),
        ("claude-sonnet-4-20250514", False),
        ("claude-3-7-sonnet-20250219", False),
        ("claude-3-5-haiku-latest", False),
        ("claude-upstream", False),
        ("my-fine-tune", False),
    ],
)
def test_structured_output_from_claude_4_5_on(model: str, supported: bool) -> None:
    assert supports_structured_output(model) is supported


class Address(pydantic.BaseModel):
    street: str
    zip_code: str = pydantic.Field(pattern=r"^\d{5}$")


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(min_length=1, description="Full name")
    age: int = pydantic.Field(ge=0, le=150)
    email: str | None = None
    homes: list[Address] = pydantic.Field(min_length=1, max_length=3)
    kind: str = pydantic.Field(json_schema_extra={"format": "weird"})


def test_a_pydantic_schema_is_closed_and_its_unenforced_constraints_described() -> None:
    out = native_output_schema(Person.model_json_schema())
    assert out is not None
    assert out["additionalProperties"] is False and out["$defs"]["Address"]["additionalProperties"] is False
    props = out["properties"]
    assert props["name"]["description"].startswith("Full name\n\n") and '"minLength":1' in props["name"]["description"]
    assert "minLength" not in props["name"]
    assert "minimum" not in props["age"] and '"minimum":0' in props["age"]["description"]
    assert props["email"]["anyOf"] == [{"type": "string"}, {"type": "null"}]
    assert props["homes"]["minItems"] == 1 and '"maxItems":3' in props["homes"]["description"]
    assert props["homes"]["items"] == {"$ref": "#/$defs/Address"}
    assert "pattern" not in out["$defs"]["Address"]["properties"]["zip_code"]
    assert "format" not in props["kind"] and "weird" in props["kind"]["description"]


def test_one_of_becomes_any_of_and_type_lists_become_branches() -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "v": {"oneOf": [{"type": "string", "format": "date"}, {"type": "integer"}]},
            "w": {"type": ["string", "null"], "maxLength": 3},
            "e": {"enum": ["a", "b"], "type": "string"},
        },
        "required": ["v", "w", "e"],
        "additionalProperties": True,
    }
    out = native_output_schema(schema)
    assert out is not None and out["additionalProperties"] is False and out["required"] == ["v", "w", "e"]
    assert out["properties"]["v"] == {"anyOf": [{"type": "string", "format": "date"}, {"type": "integer"}]}
    w = out["properties"]["w"]["anyOf"]
    assert w[0]["type"] == "string" and "maxLength" in w[0]["description"] and w[1]["type"] == "null"
    assert out["properties"]["e"] == {"enum": ["a", "b"]}


@pytest.mark.parametrize(
    "schema",
    [
        {
            "type": "object",
            "properties": {"n": {"$ref": "#/$defs/Node"}},
            "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}},
        },
        {"type": "object", "properties": {"x": {"$ref": "https://example.com/x.json"}}},
        {"type": "object", "properties": {"anything": {}}},
        {"type": "array", "items": {"type": "string"}},
    ],
    ids=["recursive", "external-ref", "any-value", "not-an-object"],
)
def test_what_structured_output_cannot_express_is_left_to_the_tool(schema: dict[str, Any]) -> None:
    assert native_output_schema(schema) is None


CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "minLength": 2}},
    "required": ["city"],
    "additionalProperties": False,
}


def _request(model: str, response_format: Any, **extra: Any) -> dict[str, Any]:
    chat = {"messages": [{"role": "user", "content": "x"}], "response_format": response_format, **extra}
    return chat_to_messages_request(chat, model)


def test_json_schema_on_a_model_that_takes_it_is_output_config_and_no_tool() -> None:
    sent = _request("claude-sonnet-4-5", {"type": "json_schema", "json_schema": {"name": "c", "schema": CITY}})
    assert "tools" not in sent and "tool_choice" not in sent
    schema = sent["output_config"]["format"]["schema"]
    assert sent["output_config"]["format"]["type"] == "json_schema"
    assert schema["required"] == ["city"] and "minLength" not in schema["properties"]["city"]


def test_native_format_keeps_client_tools_free_and_allows_thinking() -> None:
    weather = {"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}
    sent = _request(
        "claude-opus-4-5",
        {"type": "json_schema", "json_schema": {"name": "c", "schema": CITY}},
        tools=[weather],
        reasoning_effort="low",
    )
    assert [t["name"] for t in sent["tools"]] == ["w"] and "tool_choice" not in sent
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024} and "output_config" in sent


@pytest.mark.parametrize(
    ("model", "response_format"),
    [
        ("claude-opus-4-1", {"type": "json_schema", "json_schema": {"name": "c", "schema": CITY}}),
        ("claude-sonnet-4-5", {"type": "json_object"}),
        (
            "claude-sonnet-4-5",
            {
                "type": "json_schema",
                "json_schema": {"name": "c", "schema": {"type": "object", "properties": {"any": {}}}},
            },
        ),
    ],
    ids=["older-model", "json-object", "inexpressible-schema"],
)
def test_otherwise_the_forced_answer_tool(model: str, response_format: Any) -> None:
    sent = _request(model, response_format)
    assert "output_config" not in sent and sent["tool_choice"] == {"type": "tool", "name": JSON_TOOL_NAME}


def test_anthropic_structured_output_becomes_response_format_for_chat_upstreams() -> None:
    ask: dict[str, Any] = {"max_tokens": 9, "messages": [{"role": "user", "content": "x"}]}
    for field in (
        {"output_config": {"format": {"type": "json_schema", "schema": CITY}}},
        {"output_format": {"type": "json_schema", "schema": CITY}},
    ):
        chat = messages_to_chat_request({**ask, **field}, "gpt")
        assert chat["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": CITY}}
    assert "response_format" not in messages_to_chat_request({**ask, "output_config": {"effort": "low"}}, "gpt")
    with pytest.raises(TranslationError, match=r"output_config\.format"):
        messages_to_chat_request({**ask, "output_config": {"format": {"type": "xml"}}}, "gpt")
