"""LangChain's `ChatOpenAI(use_responses_api=True)` and pydantic-ai's `OpenAIResponsesModel` against
the gateway, unchanged but for the base URL and key: invoke, stream, `with_structured_output` and a
tool call round trip on the Responses API, on the demo model (bridged in process), Claude on the
Anthropic stand-in (bridged) and the OpenAI stand-in (native). The usage each library reports is
the ledger row's."""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, create_model

from tests.e2e.conftest import ANTHROPIC_KEY, UPSTREAM_KEY
from tests.support.gateway import RunningGateway, ledger_row, run_gateway
from tests.support.models import client_library_models
from tests.upstreams.standin import TOOL_ARGUMENT_VALUE, StandIn, reply_for

PROMPT = "Name a city on the Seine"
MODELS = ["demo", "claude", "gpt"]
UPSTREAM_PATH = {"claude": "/v1/messages", "gpt": "/v1/responses"}
# The string field each upstream fills when asked for a JSON schema (see tests/e2e/test_ai_sdk.py),
# and the value each gives a tool's required argument.
OBJECT_FIELD = {"demo": "reply", "claude": "city", "gpt": "answer"}
TOOL_VALUE = {"demo": "demo", "claude": TOOL_ARGUMENT_VALUE, "gpt": TOOL_ARGUMENT_VALUE}


@pytest.fixture(scope="module")
def gw(standin: StandIn) -> Iterator[RunningGateway]:
    config = {
        "model_list": client_library_models(standin.base_url, anthropic_key=ANTHROPIC_KEY, openai_key=UPSTREAM_KEY)
    }
    with run_gateway(config) as running:
        yield running


def _chat(gw: RunningGateway, model: str) -> ChatOpenAI:
    """ChatOpenAI as an application configures it for the Responses API; response headers are kept
    only to find the request's ledger row."""
    return ChatOpenAI(
        base_url=gw.v1,
        api_key=gw.key,  # type: ignore[arg-type]
        model=model,
        use_responses_api=True,
        include_response_headers=True,
        max_retries=0,
    )


def _reply(model: str) -> str:
    return reply_for(PROMPT) if model != "demo" else "This is the meterway demo model answering. You said: " + PROMPT


def _billed_as_seen(gw: RunningGateway, message: BaseMessage) -> None:
    assert isinstance(message, AIMessage) and message.usage_metadata is not None
    request_id = message.response_metadata["headers"]["x-request-id"]
    row = ledger_row(gw.url, gw.key, request_id)
    usage = message.usage_metadata
    assert row["call_type"] == "responses" and row["status"] == "success"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage["input_tokens"], usage["output_tokens"])
    assert row["total_tokens"] == usage["total_tokens"] and usage["output_tokens"] > 0
    assert row["tokens_estimated"] is False


@pytest.mark.parametrize("model", MODELS)
def test_invoke_answers_on_the_responses_api(gw: RunningGateway, upstream: StandIn, model: str) -> None:
    answer = _chat(gw, model).invoke(PROMPT)
    assert answer.text == _reply(model)
    assert answer.response_metadata["id"].startswith("resp_")
    if model in UPSTREAM_PATH:
        assert upstream.last.path == UPSTREAM_PATH[model]
    _billed_as_seen(gw, answer)


@pytest.mark.parametrize("model", MODELS)
def test_stream_arrives_in_pieces_with_usage_at_the_end(gw: RunningGateway, upstream: StandIn, model: str) -> None:
    chunks = list(_chat(gw, model).stream(PROMPT))
    assert len([c for c in chunks if c.text]) > 1, "the answer is relayed as it is generated"
    whole: AIMessageChunk = functools.reduce(operator.add, chunks)
    assert whole.text == _reply(model)
    _billed_as_seen(gw, whole)


@pytest.mark.parametrize("model", MODELS)
def test_with_structured_output_returns_the_pydantic_model(gw: RunningGateway, upstream: StandIn, model: str) -> None:
    field = OBJECT_FIELD[model]
    schema: type[BaseModel] = create_model("Answer", **{field: (str, ...)})  # type: ignore[call-overload]
    structured = _chat(gw, model).with_structured_output(schema, include_raw=True)
    out: dict[str, Any] = structured.invoke(PROMPT)  # type: ignore[assignment]
    assert out["parsing_error"] is None
    parsed = out["parsed"]
    assert isinstance(parsed, schema) and getattr(parsed, field)
    if model == "claude":
        assert getattr(parsed, field) == TOOL_ARGUMENT_VALUE
        assert upstream.last.json["tool_choice"]["type"] == "tool", "the schema reached Claude as a forced tool"
    _billed_as_seen(gw, out["raw"])


@pytest.mark.parametrize("model", ["claude", "gpt"])
def test_use_previous_response_id_continues_the_conversation(gw: RunningGateway, upstream: StandIn, model: str) -> None:
    """LangChain sends only the new message and the earlier response's id: on a bridged deployment
    meterway puts the stored earlier turns back in front; a native one resolves the id itself."""
    llm = ChatOpenAI(
        base_url=gw.v1,
        api_key=gw.key,  # type: ignore[arg-type]
        model=model,
        use_responses_api=True,
        use_previous_response_id=True,
        include_response_headers=True,
        max_retries=0,
    )
    history: list[BaseMessage] = [HumanMessage(PROMPT)]
    first = llm.invoke(history)
    again = "And one on the Loire"
    second = llm.invoke([*history, first, HumanMessage(again)])
    assert second.text == reply_for(again)
    sent = upstream.last.json
    if model == "claude":
        assert [(m["role"], m["content"]) for m in sent["messages"]] == [
            ("user", PROMPT),
            ("assistant", first.text),
            ("user", again),
        ]
    else:
        assert sent["previous_response_id"] == first.response_metadata["id"]
        assert [i["content"] for i in sent["input"]] == [again]
    _billed_as_seen(gw, second)


@tool
def get_weather(location: str) -> str:
    """The weather in a city."""
    return f"Sunny in {location}"


@pytest.mark.parametrize("model", MODELS)
def test_tool_call_round_trip(gw: RunningGateway, upstream: StandIn, model: str) -> None:
    llm = _chat(gw, model)
    asked = HumanMessage(PROMPT)
    first = llm.bind_tools([get_weather]).invoke([asked])
    assert [(c["name"], c["args"]) for c in first.tool_calls] == [("get_weather", {"location": TOOL_VALUE[model]})]
    _billed_as_seen(gw, first)

    result = get_weather.invoke(first.tool_calls[0])
    second = llm.bind_tools([get_weather], tool_choice="none").invoke([asked, first, result])
    assert second.text and not second.tool_calls
    _billed_as_seen(gw, second)
    if model == "claude":  # the call and its output reached Claude as tool_use and tool_result
        sent = upstream.last.json["messages"]
        uses = [b for m in sent if isinstance(m["content"], list) for b in m["content"] if b["type"] == "tool_use"]
        results = [
            b for m in sent if isinstance(m["content"], list) for b in m["content"] if b["type"] == "tool_result"
        ]
        assert [u["input"] for u in uses] == [{"location": TOOL_ARGUMENT_VALUE}]
        assert [r["tool_use_id"] for r in results] == [uses[0]["id"]]
        assert f"Sunny in {TOOL_ARGUMENT_VALUE}" in str(results[0]["content"])
    if model == "gpt":  # passed through: the output item reached OpenAI as sent
        items = upstream.last.json["input"]
        outputs = [i for i in items if i.get("type") == "function_call_output"]
        assert [o["output"] for o in outputs] == [f"Sunny in {TOOL_ARGUMENT_VALUE}"]


async def test_pydantic_ai_responses_model_runs_and_is_billed_as_seen(gw: RunningGateway, upstream: StandIn) -> None:
    import httpx2  # pydantic-ai's own HTTP client (a plain httpx client is deprecated there)
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIResponsesModel
    from pydantic_ai.providers.openai import OpenAIProvider

    request_ids: list[str] = []

    async def keep_request_id(response: httpx2.Response) -> None:
        request_ids.append(response.headers["x-request-id"])

    async with httpx2.AsyncClient(event_hooks={"response": [keep_request_id]}) as http:
        provider = OpenAIProvider(base_url=gw.v1, api_key=gw.key, http_client=http)
        result = await Agent(OpenAIResponsesModel("claude", provider=provider)).run(PROMPT)
    assert result.output == reply_for(PROMPT)
    assert upstream.last.path == "/v1/messages"
    [request_id] = request_ids
    row = ledger_row(gw.url, gw.key, request_id)
    usage = result.usage
    assert row["call_type"] == "responses" and row["tokens_estimated"] is False
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage.input_tokens, usage.output_tokens)
