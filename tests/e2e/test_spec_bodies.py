"""Every body meterway returns on its OpenAI surface validates against OpenAI's own spec: chat answers,
stream chunks, embeddings, the model list and one model, and errors (the gateway's own, an upstream's
in each family's format, and the error event that ends a broken stream), on every provider family.

The schemas are OpenAI's published component schemas (tests/fixtures/openai-openapi/README.md says
which commit), validated with `jsonschema`; the SDKs are lenient, so a missing `logprobs` or a
numeric error `code` would pass them and fail a strict client. One gateway, one stand-in that speaks
every family's wire format."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jsonschema
import orjson
import pydantic
import pytest

from tests.e2e.conftest import closed_port
from tests.support.gateway import RunningGateway, run_gateway
from tests.support.wait import clear_of_minute_edge
from tests.upstreams.bedrock import ACCESS_KEY, REGION, SECRET_KEY, BedrockStandIn

SCHEMAS = Path(__file__).parents[1] / "fixtures" / "openai-openapi" / "schemas.json"
UPSTREAM_KEY = "sk-spec-upstream"

CHAT_FAMILIES = ("openai", "azure", "anthropic", "gemini", "cohere", "bedrock", "mock")
EMBEDDING_FAMILIES = ("openai", "azure", "gemini", "cohere", "bedrock", "mock")
TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
HI: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]


# ---------------------------------------------------------------------------------------------- the spec


def _or_null(schema: Any) -> Any:
    """OpenAPI 3.0's `nullable: true`, which this 3.1 spec still uses in places, as 3.1 says it:
    the schema or null (an `enum` without null would otherwise refuse null)."""
    if isinstance(schema, list):
        return [_or_null(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted = {key: _or_null(value) for key, value in schema.items() if key != "nullable"}
    if schema.get("nullable") is True:
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


@functools.cache
def _document() -> dict[str, Any]:
    spec = orjson.loads(SCHEMAS.read_bytes())
    return {"components": _or_null(spec["components"])}


@functools.cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = {**_document(), "$ref": f"#/components/schemas/{name}"}
    cls = jsonschema.Draft202012Validator
    cls.check_schema(schema)
    return cls(schema)


def assert_conforms(body: Any, name: str) -> None:
    errors = sorted(_validator(name).iter_errors(body), key=lambda e: list(e.absolute_path))
    assert not errors, (
        f"{name} violated: "
        + "; ".join(f"at {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors)
        + f"\nbody: {orjson.dumps(body).decode()[:2000]}"
    )


def test_the_spec_refuses_what_it_should() -> None:
    """The check can fail: a translated reply without `logprobs`, or an error with a numeric code."""
    reply = {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi", "refusal": None}}],
    }
    with pytest.raises(AssertionError, match="logprobs"):
        assert_conforms(reply, "CreateChatCompletionResponse")
    reply["choices"][0]["logprobs"] = None  # type: ignore[index]
    reply["choices"][0]["finish_reason"] = "stop"  # type: ignore[index]
    assert_conforms(reply, "CreateChatCompletionResponse")
    with pytest.raises(AssertionError, match="code"):
        assert_conforms({"error": {"message": "m", "type": "t", "param": None, "code": 400}}, "ErrorResponse")
    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": []}
    assert_conforms({**chunk, "usage": None}, "CreateChatCompletionStreamResponse")
    bad_finish = {"index": 0, "delta": {}, "finish_reason": "end_turn"}
    with pytest.raises(AssertionError, match="finish_reason"):
        assert_conforms({**chunk, "choices": [bad_finish]}, "CreateChatCompletionStreamResponse")


# ---------------------------------------------------------------------------------------------- the gateway


@pytest.fixture(scope="module")
def providers() -> Iterator[BedrockStandIn]:
    with BedrockStandIn() as s:
        yield s


def _config(base: str) -> dict[str, Any]:
    def entry(name: str, model: str, **params: Any) -> dict[str, Any]:
        return {"model_name": name, "litellm_params": {"model": model, "api_key": UPSTREAM_KEY, **params}}

    aws = {
        "aws_bedrock_runtime_endpoint": base,
        "aws_access_key_id": ACCESS_KEY,
        "aws_secret_access_key": SECRET_KEY,
        "aws_region_name": REGION,
    }

    return {
        "model_list": [
            entry("openai", "openai/gpt-upstream", api_base=base + "/v1"),
            entry("azure", "azure/spec-deployment", api_base=base, api_version="2024-06-01"),
            entry("anthropic", "anthropic/claude-upstream", api_base=base),
            entry("gemini", "gemini/gemini-2.5-flash", api_base=base),
            entry("cohere", "cohere/command-a-03-2025", api_base=base),
            entry("bedrock", "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0", **aws),
            {"model_name": "mock", "litellm_params": {"model": "mock/spec"}},
            entry("embed-openai", "openai/text-embedding-3-small", api_base=base + "/v1"),
            entry("embed-azure", "azure/spec-embeddings", api_base=base, api_version="2024-06-01"),
            entry("embed-gemini", "gemini/text-embedding-004", api_base=base),
            entry("embed-cohere", "cohere/embed-v4.0", api_base=base),
            entry("embed-bedrock", "bedrock/cohere.embed-english-v3", **aws),
            {"model_name": "embed-mock", "litellm_params": {"model": "mock/spec-embeddings"}},
            entry("slow", "openai/slow", api_base=base + "/v1", timeout=0.5),
            entry("nowhere", "openai/nowhere", api_base=f"http://127.0.0.1:{closed_port()}/v1"),
        ],
        "general_settings": {"max_request_size_mb": 0.05},
    }


@pytest.fixture(scope="module")
def gw(providers: BedrockStandIn) -> Iterator[RunningGateway]:
    with run_gateway(_config(providers.base_url)) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def http(gw: RunningGateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.v1, headers={"Authorization": f"Bearer {gw.key}"}, timeout=10) as client:
        yield client


@pytest.fixture
def upstream(providers: BedrockStandIn) -> BedrockStandIn:
    providers.reset()
    return providers


def _ok(r: httpx.Response) -> Any:
    assert r.status_code == 200, r.text
    return r.json()


def _events(client: httpx.Client, body: dict[str, Any]) -> list[Any]:
    """The JSON data of every event of a streamed answer, `[DONE]` checked and left out."""
    with client.stream("POST", "/chat/completions", json=body) as r:
        assert r.status_code == 200, r.read()
        data = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [orjson.loads(item) for item in data[:-1]]


# ---------------------------------------------------------------------------------------------- answers


@pytest.mark.parametrize("family", CHAT_FAMILIES)
def test_chat_answers_conform(http: httpx.Client, upstream: BedrockStandIn, family: str) -> None:
    text = _ok(http.post("/chat/completions", json={"model": family, "messages": HI}))
    assert_conforms(text, "CreateChatCompletionResponse")
    assert text["choices"][0]["message"]["content"]
    called = _ok(http.post("/chat/completions", json={"model": family, "messages": HI, "tools": TOOLS}))
    assert_conforms(called, "CreateChatCompletionResponse")
    if family != "mock":  # the mock answers in text
        assert called["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


@pytest.mark.parametrize("family", CHAT_FAMILIES)
def test_stream_chunks_conform(http: httpx.Client, upstream: BedrockStandIn, family: str) -> None:
    for usage in (True, False):
        for extra in ({}, {"tools": TOOLS}):
            body = {"model": family, "messages": HI, "stream": True, **extra}
            chunks = _events(http, {**body, "stream_options": {"include_usage": usage}})
            for chunk in chunks:
                assert_conforms(chunk, "CreateChatCompletionStreamResponse")
            if usage:
                assert chunks[-1]["usage"]["total_tokens"] > 0 and chunks[-1]["choices"] == []
            else:
                assert not any(c.get("usage") for c in chunks)
            assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] is not None


@pytest.mark.parametrize("family", EMBEDDING_FAMILIES)
def test_embeddings_conform(http: httpx.Client, upstream: BedrockStandIn, family: str) -> None:
    body = {"model": f"embed-{family}", "input": ["hello there", "general kenobi"], "encoding_format": "float"}
    answer = _ok(http.post("/embeddings", json=body))
    assert_conforms(answer, "CreateEmbeddingResponse")
    assert [item["index"] for item in answer["data"]] == [0, 1]


def test_model_list_and_each_model_conform(http: httpx.Client, gw: RunningGateway) -> None:
    listing = _ok(http.get("/models"))
    assert_conforms(listing, "ListModelsResponse")
    assert [m["id"] for m in listing["data"]] == gw.settings.model_names()
    for name in gw.settings.model_names():
        assert_conforms(_ok(http.get(f"/models/{name}")), "Model")


# ---------------------------------------------------------------------------------------------- errors


def _error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert_conforms(body, "ErrorResponse")
    return body["error"]  # type: ignore[no-any-return]


def test_gateway_errors_conform(http: httpx.Client, gw: RunningGateway, upstream: BedrockStandIn) -> None:
    chat = {"model": "openai", "messages": HI}
    _error(http.post("/chat/completions", content=b'{"model": "openai", "messages": ['), 400)
    _error(http.post("/chat/completions", json={"model": "openai"}), 400)
    _error(http.post("/embeddings", json={"model": "anthropic", "input": "x"}), 400)
    _error(httpx.post(gw.v1 + "/chat/completions", json=chat), 401)
    _error(httpx.post(gw.v1 + "/chat/completions", json=chat, headers={"Authorization": "Bearer sk-nope"}), 401)
    _error(http.post("/chat/completions", json={**chat, "model": "gpt-imaginary"}), 404)
    _error(http.get("/models/gpt-imaginary"), 404)
    _error(http.post("/no/such/route", json={}), 404)
    _error(http.get("/chat/completions"), 405)
    _error(http.post("/chat/completions", json={**chat, "messages": [{"role": "user", "content": "x" * 60_000}]}), 413)
    upstream.script_delay(2.0)
    _error(http.post("/chat/completions", json={**chat, "model": "slow"}), 504)
    _error(http.post("/chat/completions", json={**chat, "model": "nowhere"}), 502)


def test_key_refusals_conform(http: httpx.Client, gw: RunningGateway, upstream: BedrockStandIn) -> None:
    made = http.post(gw.url + "/key/generate", json={"models": ["mock"], "rpm_limit": 1})
    key = _ok(made)["key"]
    with httpx.Client(base_url=gw.v1, headers={"Authorization": f"Bearer {key}"}, timeout=10) as limited:
        _error(limited.post("/chat/completions", json={"model": "openai", "messages": HI}), 403)
        clear_of_minute_edge()  # rpm counts per calendar minute: both requests in one
        _ok(limited.post("/chat/completions", json={"model": "mock", "messages": HI}))
        _error(limited.post("/chat/completions", json={"model": "mock", "messages": HI}), 429)


UPSTREAM_ERRORS: Any = {
    "openai": {"error": {"message": "bad temperature", "type": "invalid_request_error", "param": None, "code": None}},
    "azure": {"error": {"code": "BadRequest", "message": "bad temperature"}},
    "anthropic": {"type": "error", "error": {"type": "invalid_request_error", "message": "bad temperature"}},
    "gemini": {"error": {"code": 400, "message": "bad temperature", "status": "INVALID_ARGUMENT"}},
    "cohere": {"message": "bad temperature"},
    "bedrock": {"message": "bad temperature"},
}


@pytest.mark.parametrize("family", list(UPSTREAM_ERRORS))
def test_upstream_errors_reach_the_client_in_openai_shape(
    http: httpx.Client, upstream: BedrockStandIn, family: str
) -> None:
    upstream.script_fail(400, UPSTREAM_ERRORS[family])
    err = _error(http.post("/chat/completions", json={"model": family, "messages": HI}), 400)
    assert "bad temperature" in err["message"]
    upstream.script_fail(429, UPSTREAM_ERRORS[family], headers={"Retry-After": "3"})
    _error(http.post("/chat/completions", json={"model": family, "messages": HI}), 429)
    upstream.script_fail(503, UPSTREAM_ERRORS[family])
    _error(http.post("/chat/completions", json={"model": family, "messages": HI}), 502)


@pytest.mark.parametrize("family", ["openai", "anthropic", "gemini", "cohere", "bedrock"])
def test_the_error_event_ending_a_broken_stream_conforms(
    http: httpx.Client, upstream: BedrockStandIn, family: str
) -> None:
    upstream.script_break_stream(2)
    with http.stream("POST", "/chat/completions", json={"model": family, "messages": HI, "stream": True}) as r:
        assert r.status_code == 200
        data = [orjson.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert "error" in data[-1], data
    assert_conforms(data[-1], "ErrorResponse")
    for chunk in data[:-1]:
        assert_conforms(chunk, "CreateChatCompletionStreamResponse")


# ---------------------------------------------------------------------------------------------- /v1/messages


def _anthropic_conforms(body: Any, kind: Any) -> None:
    """Anthropic publishes no OpenAPI file; its SDK's pydantic types are the reference: required fields
    and literal types are checked (extra fields are allowed, as the SDK allows them)."""
    _adapter(kind).validate_python(body, strict=False)


@functools.cache
def _adapter(kind: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(kind)


@pytest.mark.parametrize("family", CHAT_FAMILIES)
def test_messages_bodies_conform_to_the_anthropic_sdk_types(
    gw: RunningGateway, upstream: BedrockStandIn, family: str
) -> None:
    headers = {"x-api-key": gw.key, "anthropic-version": "2023-06-01"}
    body: Any = {"model": family, "max_tokens": 100, "messages": [{"role": "user", "content": "hello there"}]}
    with httpx.Client(base_url=gw.v1, headers=headers, timeout=10) as client:
        for extra in ({}, {"tools": [{"name": "get_weather", "input_schema": TOOLS[0]["function"]["parameters"]}]}):
            _anthropic_conforms(_ok(client.post("/messages", json={**body, **extra})), anthropic.types.Message)
            with client.stream("POST", "/messages", json={**body, **extra, "stream": True}) as r:
                assert r.status_code == 200
                events = [orjson.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
            assert [e["type"] for e in events][-1] == "message_stop"
            for event in events:
                if event["type"] != "ping":  # Anthropic's keep-alive, which the SDK's event union leaves out
                    _anthropic_conforms(event, anthropic.types.RawMessageStreamEvent)
        refused = client.post("/messages", json={"model": family})
        assert refused.status_code == 400
        _anthropic_conforms(refused.json(), anthropic.types.ErrorResponse)
        unknown = client.post("/messages", json={**body, "model": "claude-imaginary"})
        assert unknown.status_code == 404
        _anthropic_conforms(unknown.json(), anthropic.types.ErrorResponse)
    anonymous = httpx.post(gw.v1 + "/messages", json=body, headers={"anthropic-version": "2023-06-01"})
    assert anonymous.status_code == 401
    _anthropic_conforms(anonymous.json(), anthropic.types.ErrorResponse)
