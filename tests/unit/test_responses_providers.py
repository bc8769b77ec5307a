"""Which provider serves /v1/responses for each kind of deployment, and what the adapters and the
native relay do with real wire bytes (no network: providers are pure translation)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseErrorEvent, ResponseStreamEvent
from pydantic import TypeAdapter

from meterway.api.errors import stream_error_event
from meterway.config.load import parse_config
from meterway.errors import BadRequest, UpstreamRejected
from meterway.providers import sse
from meterway.providers.base import NOT_A_COUNT, Api, Call, RequestHead, ResponsesResources, Usage
from meterway.providers.messages_adapter import MessagesAdapter
from meterway.providers.openai import OpenAIProvider
from meterway.providers.responses_adapter import ChatFromResponses, ResponsesAdapter
from meterway.providers.responses_native import ResponsesPassthroughRelay

EVENT = TypeAdapter(ResponseStreamEvent)


def _deployments() -> dict[str, Any]:
    entries = [
        ("gpt", {"model": "openai/gpt-4o", "api_key": "sk-o"}, {}),
        ("vllm", {"model": "hosted_vllm/llama", "api_base": "http://127.0.0.1:9/v1"}, {}),
        ("pro", {"model": "openai/o1-pro", "api_key": "sk-o"}, {"mode": "responses"}),
        ("vllm-resp", {"model": "hosted_vllm/gpt-oss", "api_base": "http://127.0.0.1:9/v1"}, {"mode": "responses"}),
        ("az", {"model": "azure/my-dep", "api_base": "https://res.openai.azure.com", "api_key": "k" * 20}, {}),
        ("claude", {"model": "anthropic/claude-x", "api_key": "sk-a"}, {}),
        ("demo", {"model": "mock/demo"}, {}),
    ]
    data = {
        "model_list": [
            {"model_name": name, "litellm_params": params, "model_info": info} for name, params, info in entries
        ]
    }
    settings = parse_config(data, source=None, env={})
    return {d.model_name: d for d in settings.deployments}


def _call(api: Api, body: dict[str, Any], model: str = "client-model", stream: bool = False) -> Call:
    raw = orjson.dumps({"model": model, **body, **({"stream": True} if stream else {})})
    return Call(api, raw, RequestHead(model, stream), "req123")


def test_each_deployment_gets_the_responses_provider_its_upstream_allows() -> None:
    d = _deployments()
    gpt = d["gpt"]
    assert gpt.responses_provider is gpt.provider and gpt.provider.supports(Api.RESPONSES)
    assert gpt.apis == frozenset(Api)
    assert str(gpt.provider.urls[Api.RESPONSES]) == "https://api.openai.com/v1/responses"
    for name in ("vllm", "claude", "demo"):  # chat only: bridged
        dep = d[name]
        assert isinstance(dep.responses_provider, ResponsesAdapter) and Api.RESPONSES in dep.apis
        assert dep.responses_provider.inner is dep.provider and not dep.provider.supports(Api.RESPONSES)
    for name in ("pro", "vllm-resp"):  # Responses only: chat is bridged the other way
        dep = d[name]
        native = dep.responses_provider
        assert isinstance(native, OpenAIProvider) and list(native.urls) == [Api.RESPONSES]
        assert isinstance(dep.provider, ChatFromResponses) and dep.provider.inner is native
        assert isinstance(dep.messages_provider, MessagesAdapter)
        # completions too: the completions bridge rides on the chat served over Responses
        assert dep.apis == frozenset({Api.CHAT, Api.COMPLETIONS, Api.MESSAGES, Api.RESPONSES})
    az = d["az"].responses_provider
    assert isinstance(az, OpenAIProvider) and az is d["az"].provider
    assert str(az.urls[Api.RESPONSES]) == "https://res.openai.azure.com/openai/v1/responses"
    assert str(az.urls[Api.CHAT]).endswith("/openai/deployments/my-dep/chat/completions?api-version=2024-10-21")


def test_native_passes_the_body_with_the_upstream_model_and_resource_calls_reach_the_same_upstream() -> None:
    d = _deployments()
    az = d["az"].responses_provider
    request = az.build_request(_call(Api.RESPONSES, {"input": "hi", "metadata": {"a": "b"}}))
    assert orjson.loads(request.body) == {"model": "my-dep", "input": "hi", "metadata": {"a": "b"}}
    assert request.headers["api-key"] == "k" * 20
    assert isinstance(az, ResponsesResources)
    replay = az.resource_request("GET", "/responses/resp_1", "stream=true&starting_after=2")
    assert str(replay.url) == "https://res.openai.azure.com/openai/v1/responses/resp_1?stream=true&starting_after=2"
    assert replay.stream and replay.method == "GET"
    gpt = d["gpt"].responses_provider
    assert isinstance(gpt, ResponsesResources)
    cancel = gpt.resource_request("POST", "/responses/resp_1/cancel")
    assert str(cancel.url) == "https://api.openai.com/v1/responses/resp_1/cancel" and not cancel.stream
    assert cancel.headers["Authorization"] == "Bearer sk-o"
    with pytest.raises(BadRequest):
        OpenAIProvider.resource_request(d["vllm"].provider, "GET", "/responses/x")  # type: ignore[arg-type]


def test_native_answer_usage_is_read_from_the_response() -> None:
    gpt = _deployments()["gpt"].responses_provider
    body = orjson.dumps(
        {"id": "resp_1", "object": "response", "usage": {"input_tokens": 9, "output_tokens": "x", "total_tokens": 4}}
    )
    parsed = gpt.parse_response(_call(Api.RESPONSES, {"input": "x"}), body)
    assert parsed.body is body and parsed.usage == Usage(9, NOT_A_COUNT, 4)
    # a background response answered `queued`: nothing generated yet, so nothing to count (not "missing")
    queued = gpt.parse_response(_call(Api.RESPONSES, {}), b'{"id":"resp_2","status":"queued","usage":null}')
    assert queued.usage == Usage()
    finished = gpt.parse_response(_call(Api.RESPONSES, {}), b'{"id":"resp_3","status":"completed","usage":null}')
    assert finished.usage is None


def test_bridge_sends_chat_asking_for_usage_and_answers_a_response() -> None:
    adapter = ResponsesAdapter(_deployments()["vllm"].provider, clock=lambda: 1_700_000_000.5)
    call = _call(Api.RESPONSES, {"input": "hi", "instructions": "short"}, stream=True)
    request = adapter.build_request(call)
    assert str(request.url) == "http://127.0.0.1:9/v1/chat/completions"
    sent = orjson.loads(request.body)
    assert sent["model"] == "llama" and sent["stream_options"] == {"include_usage": True}
    assert sent["messages"][0] == {"role": "system", "content": "short"}
    chat = {
        "id": "c",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    plain = _call(Api.RESPONSES, {"input": "hi"})
    parsed = adapter.parse_response(plain, orjson.dumps(chat))
    r = Response.model_validate_json(parsed.body)
    # the model that answered: the chat answer names none, so the deployment's upstream model
    assert (r.id, r.created_at, r.model, r.output_text) == ("resp_req123", 1_700_000_000, "llama", "Hello")
    assert parsed.usage == Usage(3, 1, 4)
    with pytest.raises(BadRequest) as e:
        adapter.build_request(_call(Api.RESPONSES, {"input": "x", "tools": [{"type": "web_search"}]}))
    assert e.value.param == "tools[0]"


def _chat_sse(*chunks: dict[str, Any]) -> bytes:
    return b"".join(sse.format_data(orjson.dumps(c)) for c in chunks) + sse.DONE


def test_bridged_stream_holds_the_terminal_event_until_finish() -> None:
    adapter = ResponsesAdapter(_deployments()["demo"].provider, clock=lambda: 5.0)
    relay = adapter.open_stream(_call(Api.RESPONSES, {"input": "hi"}, stream=True))
    wire = _chat_sse(
        {"id": "c", "choices": [{"index": 0, "delta": {"content": "Hi "}}]},
        {"id": "c", "choices": [{"index": 0, "delta": {"content": "there"}, "finish_reason": "stop"}]},
        {"id": "c", "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}},
    )
    out = b"".join(relay.feed(wire[i : i + 7]) for i in range(0, len(wire), 7))  # split anywhere
    assert relay.done and b"response.completed" not in out and b"response.output_text.delta" in out
    tail = relay.finish()
    events = [orjson.loads(sse.parse_event(raw).data) for raw in sse.EventSplitter().feed(out + tail)]
    assert events[-1]["type"] == "response.completed" and tail.count(b"event: response.completed") == 1
    assert [EVENT.validate_python(e).sequence_number for e in events] == list(range(len(events)))
    assert relay.usage == Usage(2, 2, 4)
    response = relay.response  # type: ignore[attr-defined]
    assert Response.model_validate(response).output_text == "Hi there"
    assert relay.sequence_number == len(events)  # type: ignore[attr-defined]


def _responses_sse(*events: dict[str, Any]) -> bytes:
    return b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps({**e, "sequence_number": n}) + b"\n\n"
        for n, e in enumerate(events)
    )


_USAGE = {
    "input_tokens": 5,
    "input_tokens_details": {"cached_tokens": 2},
    "output_tokens": 3,
    "output_tokens_details": {"reasoning_tokens": 1},
    "total_tokens": 8,
}
_DONE = {"id": "resp_u", "created_at": 7, "status": "completed", "output": [], "usage": _USAGE}
_STREAM = _responses_sse(
    {"type": "response.created", "response": {**_DONE, "status": "in_progress", "usage": None}},
    {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": "Hi"},
    {"type": "response.completed", "response": _DONE},
)


def test_native_stream_passes_through_and_holds_its_end() -> None:
    relay = ResponsesPassthroughRelay()
    junk = b'event: response.output_text.delta\ndata: {"delta":"after the end"}\n\n'
    wire = _STREAM + junk
    out = b"".join(relay.feed(wire[i : i + 11]) for i in range(0, len(wire), 11))
    end = _STREAM.index(b"event: response.completed")
    assert out == _STREAM[:end] and relay.done
    assert relay.finish() == _STREAM[end:]
    assert relay.usage == Usage(5, 3, 8, cached_tokens=2, reasoning_tokens=1)
    assert relay.response == _DONE and relay.sequence_number == 3


def test_native_stream_hostile_usage_and_error_event() -> None:
    hostile = ResponsesPassthroughRelay()
    hostile.feed(_responses_sse({"type": "response.incomplete", "response": {"usage": {"input_tokens": -3}}}))
    hostile.finish()
    assert hostile.usage == Usage(-3, 0, -3)
    errored = ResponsesPassthroughRelay()
    assert errored.feed(_responses_sse({"type": "error", "code": "server_error", "message": "x"})) == b""
    assert errored.done and errored.finish().startswith(b"event: error") and errored.usage is None


def test_chat_over_a_responses_only_model() -> None:
    provider = _deployments()["pro"].provider
    call = _call(Api.CHAT, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 9}, stream=True)
    request = provider.build_request(call)
    assert str(request.url) == "https://api.openai.com/v1/responses"
    assert orjson.loads(request.body) == {
        "model": "o1-pro",
        "input": [{"type": "message", "role": "user", "content": "hi"}],
        "store": False,
        "max_output_tokens": 9,
        "stream": True,
    }
    answer = {
        "id": "resp_u",
        "created_at": 7,
        "status": "completed",
        "output": [{"type": "message", "content": [{"type": "output_text", "text": "Hello"}]}],
        "usage": _USAGE,
    }
    parsed = provider.parse_response(_call(Api.CHAT, {"messages": []}), orjson.dumps(answer))
    chat = ChatCompletion.model_validate_json(parsed.body)
    assert chat.choices[0].message.content == "Hello" and chat.model == "client-model"
    assert parsed.usage == Usage(5, 3, 8, cached_tokens=2, reasoning_tokens=1)
    relay = provider.open_stream(Call(Api.CHAT, call.body, RequestHead("client-model", True, include_usage=True), "r1"))
    out = relay.feed(_STREAM)
    assert b"[DONE]" not in out
    out += relay.finish()
    chunks = [sse.parse_event(raw).data for raw in sse.EventSplitter().feed(out)]
    assert chunks[-1] == b"[DONE]"
    parsed_chunks = [ChatCompletionChunk.model_validate_json(c) for c in chunks[:-1]]
    assert "".join(c.choices[0].delta.content or "" for c in parsed_chunks if c.choices) == "Hi"
    assert parsed_chunks[-1].usage is not None and parsed_chunks[-1].usage.total_tokens == 8
    assert relay.usage == Usage(5, 3, 8, cached_tokens=2, reasoning_tokens=1)
    with pytest.raises(BadRequest):
        provider.build_request(_call(Api.CHAT, {"messages": [{"role": "user", "content": "x"}], "n": 3}))


def test_upstream_errors_map_as_for_chat() -> None:
    adapter = _deployments()["vllm"].responses_provider
    err = adapter.map_error(_call(Api.RESPONSES, {}), 404, b'{"detail":"Not Found"}')
    assert isinstance(err, UpstreamRejected) and err.upstream_status == 404


def test_responses_stream_error_event_is_openais() -> None:
    raw = stream_error_event(UpstreamRejected("went wrong", deployment="d", upstream_status=400), Api.RESPONSES, 12)
    assert raw.startswith(b"event: error\ndata: ")
    event = ResponseErrorEvent.model_validate_json(sse.parse_event(raw.strip()).data)
    assert event.sequence_number == 12 and event.message == "went wrong" and event.type == "error"
