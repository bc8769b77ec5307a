"""The Vercel AI SDK (npm `ai` + `@ai-sdk/openai`, tests/node) against the gateway, unchanged: the
provider's default model, `createOpenAI({baseURL, apiKey})(model)`, speaks the Responses API;
`.chat(model)` speaks chat completions and is the control. Each scenario is one node process
printing what the SDK returned to the application; the usage it saw must be the ledger's row.

Deployments: the demo model (bridged in process), Claude on the Anthropic stand-in (bridged to
/v1/messages), a chat-only OpenAI-compatible server (`hosted_vllm/`, bridged to
/v1/chat/completions) and the OpenAI stand-in (the Responses API passed through)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import ANTHROPIC_KEY, UPSTREAM_KEY
from tests.support.gateway import RunningGateway, ledger_row, run_gateway
from tests.support.models import client_library_models
from tests.support.node import NodeClients
from tests.upstreams.standin import TOOL_ARGUMENT_VALUE, StandIn, reply_for

PROMPT = "Name a city on the Seine"


@pytest.fixture(scope="module")
def gw(standin: StandIn) -> Iterator[RunningGateway]:
    config = {
        "model_list": client_library_models(standin.base_url, anthropic_key=ANTHROPIC_KEY, openai_key=UPSTREAM_KEY)
    }
    with run_gateway(config) as running:
        yield running


def _sdk(node_clients: NodeClients, gw: RunningGateway, script: str, model: str, **more: Any) -> dict[str, Any]:
    out = node_clients.run(script, baseURL=gw.v1, apiKey=gw.key, model=model, prompt=PROMPT, **more)
    assert "error" not in out, out
    return out


def _billed_as_seen(gw: RunningGateway, out: dict[str, Any], endpoint: str) -> dict[str, Any]:
    """The request's one ledger row carries the usage the SDK reported to the application, as the
    upstream reported it (not estimated)."""
    assert out["requestId"], "the gateway's x-request-id reaches the SDK's response headers"
    row = ledger_row(gw.url, gw.key, out["requestId"])
    usage = out["usage"]
    assert row["call_type"] == endpoint and row["status"] == "success"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage["inputTokens"], usage["outputTokens"])
    assert row["total_tokens"] == usage["totalTokens"] and usage["outputTokens"] > 0
    assert row["tokens_estimated"] is False
    return row


def _text_reply(model: str) -> str:
    """What each deployment answers PROMPT with: the stand-in's echo, or the demo model's."""
    return reply_for(PROMPT) if model != "demo" else "This is the meterway demo model answering. You said: " + PROMPT


UPSTREAM_PATH = {"claude": "/v1/messages", "gpt": "/v1/responses", "vllm": "/v1/chat/completions"}
# The string field each upstream fills when asked for a JSON schema: the demo model answers
# {"reply": ...}, the OpenAI stand-in {"answer": ...}, and the Anthropic stand-in calls the forced
# answer tool with every required property set to TOOL_ARGUMENT_VALUE.
OBJECT_FIELDS = {"demo": ["reply"], "claude": ["city"], "gpt": ["answer"], "vllm": ["answer"]}
MODELS = ["demo", "claude", "gpt", "vllm"]


def test_chat_model_generate_text_is_the_control(
    node_clients: NodeClients,
    gw: RunningGateway,
    upstream: StandIn,
) -> None:
    out = _sdk(node_clients, gw, "chat_generate_text.mjs", "claude")
    assert out["text"] == reply_for(PROMPT) and out["finishReason"] == "stop"
    assert upstream.last.path == "/v1/messages"
    _billed_as_seen(gw, out, "chat")


@pytest.mark.parametrize("model", MODELS)
def test_default_model_generate_text_speaks_the_responses_api(
    node_clients: NodeClients,
    gw: RunningGateway,
    upstream: StandIn,
    model: str,
) -> None:
    out = _sdk(node_clients, gw, "generate_text.mjs", model)
    assert out["text"] == _text_reply(model) and out["finishReason"] == "stop"
    assert out["responseId"].startswith("resp_")
    if model in UPSTREAM_PATH:
        assert upstream.last.path == UPSTREAM_PATH[model]
    _billed_as_seen(gw, out, "responses")


@pytest.mark.parametrize("model", MODELS)
def test_default_model_stream_text_arrives_in_pieces_and_is_billed_as_seen(
    node_clients: NodeClients,
    gw: RunningGateway,
    upstream: StandIn,
    model: str,
) -> None:
    out = _sdk(node_clients, gw, "stream_text.mjs", model)
    assert out["text"] == _text_reply(model) and out["finishReason"] == "stop"
    assert out["deltas"] > 1, "the answer is relayed as it is generated, not in one piece"
    if model in UPSTREAM_PATH:
        assert upstream.last.path == UPSTREAM_PATH[model]
    row = _billed_as_seen(gw, out, "responses")
    assert row["stream"] is True


@pytest.mark.parametrize("model", MODELS)
def test_default_model_generate_object_returns_the_zod_schema(
    node_clients: NodeClients,
    gw: RunningGateway,
    upstream: StandIn,
    model: str,
) -> None:
    fields = OBJECT_FIELDS[model]
    out = _sdk(node_clients, gw, "generate_object.mjs", model, fields=fields)
    assert sorted(out["object"]) == fields and all(isinstance(v, str) and v for v in out["object"].values())
    if model == "claude":
        assert out["object"] == {"city": TOOL_ARGUMENT_VALUE}
        assert upstream.last.json["tool_choice"]["type"] == "tool", "json_schema reached Claude as a forced tool"
    if model == "gpt":
        assert upstream.last.json["text"]["format"]["type"] == "json_schema"
    if model == "vllm":
        assert upstream.last.json["response_format"]["type"] == "json_schema"
    _billed_as_seen(gw, out, "responses")


# The AI SDK sends an earlier assistant message back as `{"type": "item_reference", "id": "msg_…"}`
# while `store` is on (its default): a native upstream resolves the id from its own store, meterway
# from its store for a bridged deployment. With `store: false` the SDK sends the items themselves.
@pytest.mark.parametrize(
    ("model", "store"),
    [
        ("claude", None),
        ("gpt", None),
        ("claude", False),
    ],
)
def test_second_turn_carries_the_first_answer(
    node_clients: NodeClients, gw: RunningGateway, upstream: StandIn, model: str, store: bool | None
) -> None:
    again = "And one on the Loire"
    out = _sdk(node_clients, gw, "two_turns.mjs", model, again=again, **({} if store is None else {"store": store}))
    assert out["second"]["text"] == reply_for(again)
    sent = upstream.last.json
    if model == "claude":  # bridged: the first answer reached Claude as the assistant turn
        assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
        assert sent["messages"][1]["content"] == out["first"]["text"]
    for turn in (out["first"], out["second"]):
        _billed_as_seen(gw, turn, "responses")


@pytest.mark.parametrize(("model", "path"), [("claude", "/v1/messages"), ("gpt", "/v1/responses")])
def test_stream_broken_upstream_reaches_the_sdk_as_an_error(
    node_clients: NodeClients, gw: RunningGateway, upstream: StandIn, model: str, path: str
) -> None:
    """The SDK must report the failure as an error naming the deployment, never end with a short
    text as if complete. When the upstream breaks off before the bridge has emitted an event, the
    stream's first event is the error event; the SDK then reports it as a failed call
    (AI_APICallError, status 500 by its own mapping) instead of AI_StreamProviderError: which of the
    two depends on timing, and both carry the gateway's message."""
    upstream.script_break_stream(3, path=path)
    out = node_clients.run("stream_text.mjs", baseURL=gw.v1, apiKey=gw.key, model=model, prompt=PROMPT)
    error = out["error"]
    assert error["name"] in ("AI_StreamProviderError", "AI_APICallError"), error
    assert error["message"] == f"Upstream deployment '{model}' broke off its answer.", error
