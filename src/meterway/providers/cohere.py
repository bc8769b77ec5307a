"""Cohere's v2 API as an upstream: `/v2/chat` (plain, streamed, with tools), `/v2/embed` and
`/v2/rerank` (clients speak Cohere's rerank shape already: `providers.rerank`).

Clients speak OpenAI's chat and embeddings; this module translates the request, the answer and
each stream event (Cohere's `message-start`, `content-delta`, `tool-call-*`, `message-end`) both
ways. Usage is read from `usage.billed_units` (what Cohere bills), else `usage.tokens`. For
embeddings, LiteLLM's `input_type` field picks Cohere's input type (`search_document` unless set).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from meterway.errors import BadRequest
from meterway.providers import rerank, sse
from meterway.providers.base import Api, Call, Parsed, StreamRelay, Usage, decode_object, not_counts, tokens
from meterway.providers.common import (
    JSON_HEADERS,
    ChatChunks,
    Endpoint,
    HttpProvider,
    Route,
    embedding_items,
    json_events,
    text_of,
    wants_base64,
)
from meterway.providers.token_input import embedding_texts

DEFAULT_API_BASE = "https://api.cohere.com"
INPUT_TYPES = ("search_document", "search_query", "classification", "clustering", "image")

FINISH = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
    "ERROR_TOXIC": "content_filter",
}
# OpenAI chat parameters and their Cohere names; others are not sent
PARAMS = {
    "temperature": "temperature",
    "top_p": "p",
    "seed": "seed",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "max_tokens": "max_tokens",
    "max_completion_tokens": "max_tokens",
}


def _content(content: Any) -> Any:
    """User content: a string, or Cohere's parts (text and image_url take OpenAI's shape)."""
    if not isinstance(content, list):
        return content if isinstance(content, str) else ""
    parts = [p for p in content if isinstance(p, dict) and p.get("type") in ("text", "image_url")]
    return parts


def chat_request(request: Mapping[str, Any], model: str, stream: bool) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    for m in request.get("messages") or []:
        if not isinstance(m, dict):
            raise BadRequest("Each message must be an object.", param="messages")
        role = m.get("role")
        if role in ("system", "developer"):
            messages.append({"role": "system", "content": text_of(m.get("content"))})
        elif role == "user":
            messages.append({"role": "user", "content": _content(m.get("content"))})
        elif role == "assistant":
            out: dict[str, Any] = {"role": "assistant"}
            text = text_of(m.get("content"))
            if text:
                out["content"] = text
            calls = m.get("tool_calls")
            if calls:
                out["tool_calls"] = [
                    {
                        "id": c.get("id") or f"call_{uuid.uuid4().hex[:24]}",  # the spec requires one
                        "type": "function",
                        "function": {
                            "name": c.get("function", {}).get("name"),
                            "arguments": c.get("function", {}).get("arguments") or "{}",
                        },
                    }
                    for c in calls
                ]
            messages.append(out)
        elif role == "tool":
            messages.append(
                {"role": "tool", "tool_call_id": m.get("tool_call_id"), "content": text_of(m.get("content"))}
            )
        else:
            raise BadRequest(f"Message role '{role}' is not supported by Cohere.", param="messages")
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
    for name, theirs in PARAMS.items():
        if request.get(name) is not None:
            body[theirs] = request[name]
    stop = request.get("stop")
    if stop is not None:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if request.get("tools"):
        body["tools"] = [
            {"type": "function", "function": t["function"]}
            for t in request["tools"]
            if isinstance(t, dict) and "function" in t
        ]
    choice = request.get("tool_choice")
    if choice == "required" or isinstance(choice, dict):
        body["tool_choice"] = "REQUIRED"
    elif choice == "none":
        body["tool_choice"] = "NONE"
    fmt = request.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        wanted: dict[str, Any] = {"type": "json_object"}
        schema = (fmt.get("json_schema") or {}).get("schema")
        if schema:
            wanted["json_schema"] = schema
        body["response_format"] = wanted
    return body


def usage_of(u: Any) -> Usage | None:
    if not isinstance(u, dict):
        return None
    counts = u.get("billed_units") or u.get("tokens") or {}
    if not isinstance(counts, dict):
        return not_counts()
    prompt, completion = tokens(counts.get("input_tokens")), tokens(counts.get("output_tokens"))
    total = prompt + completion if min(prompt, completion) >= 0 else min(prompt, completion)
    return Usage(prompt, completion, total)


def _openai_usage(usage: Usage | None) -> dict[str, int] | None:
    if usage is None:
        return None
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def chat_response(answer: Mapping[str, Any], model: str) -> tuple[dict[str, Any], Usage | None]:
    message = answer.get("message") or {}
    text = "".join(p.get("text", "") for p in message.get("content") or [] if p.get("type") == "text")
    # refusal and logprobs: OpenAI's spec requires both (null here), and strict clients validate against it
    out: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
    calls = message.get("tool_calls")
    if calls:
        out["tool_calls"] = [
            {
                "id": c.get("id") or f"call_{uuid.uuid4().hex[:24]}",  # the spec requires one
                "type": "function",
                "function": {"name": c["function"]["name"], "arguments": c["function"].get("arguments") or "{}"},
            }
            for c in calls
        ]
    usage = usage_of(answer.get("usage"))
    chat = {
        "id": answer.get("id") or f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": out,
                "logprobs": None,
                "finish_reason": FINISH.get(answer.get("finish_reason", ""), "stop"),
            }
        ],
        "usage": _openai_usage(usage),
    }
    return chat, usage


class ChatRelay:
    """Cohere's events in, OpenAI chat chunks out, one state per stream."""

    __slots__ = ("_chunks", "_include_usage", "_split", "usage")
    done = False  # `[DONE]` is written by `finish` alone: nothing `feed` returns is searched for it

    def __init__(self, model: str, include_usage: bool) -> None:
        self._split = sse.EventSplitter()
        self._chunks = ChatChunks(model)
        self._include_usage = include_usage
        self.usage: Usage | None = None

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return self._chunks.chunk([{"index": 0, "delta": delta, "finish_reason": finish}])

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for payload in json_events(self._split, data):
            out += self._translate(payload)
        return b"".join(out)

    def _translate(self, e: dict[str, Any]) -> list[bytes]:
        kind = e.get("type")
        message = (e.get("delta") or {}).get("message") or {}
        if kind == "message-start":
            self._chunks.id = e.get("id") or self._chunks.id
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content-delta":
            text = (message.get("content") or {}).get("text")
            return [self._chunk({"content": text})] if text else []
        if kind in ("tool-call-start", "tool-call-delta"):
            call = message.get("tool_calls") or {}
            function = call.get("function") or {}
            item: dict[str, Any] = {"index": e.get("index", 0)}
            if kind == "tool-call-start":
                item.update(id=call.get("id"), type="function")
                item["function"] = {"name": function.get("name"), "arguments": function.get("arguments") or ""}
            else:
                item["function"] = {"arguments": function.get("arguments") or ""}
            return [self._chunk({"tool_calls": [item]})]
        if kind == "message-end":
            delta = e.get("delta") or {}
            self.usage = usage_of(delta.get("usage"))
            out = [self._chunk({}, FINISH.get(delta.get("finish_reason", ""), "stop"))]
            if self._include_usage and self.usage is not None:
                out.append(self._chunks.chunk([], _openai_usage(self.usage)))
            return out
        return []

    def finish(self) -> bytes:
        return sse.DONE

    def settle(self, billed: Usage, closing: bytes) -> bytes:
        if not self._include_usage or self.usage is not None:
            return closing
        return self._chunks.usage_chunk(billed) + closing


def embed_request(request: Mapping[str, Any], model: str, client_model: str) -> dict[str, Any]:
    """`client_model` (the name the client used) picks the encoding of token-id input (`token_input`)."""
    texts = embedding_texts(request.get("input"), client_model, "Cohere")
    input_type = request.get("input_type") or "search_document"
    if input_type not in INPUT_TYPES:
        raise BadRequest(f"input_type must be one of {', '.join(INPUT_TYPES)}.", param="input_type")
    body: dict[str, Any] = {"model": model, "texts": texts, "input_type": input_type, "embedding_types": ["float"]}
    if request.get("dimensions"):
        body["output_dimension"] = request["dimensions"]
    return body


def embed_response(answer: Mapping[str, Any], model: str, base64_out: bool) -> tuple[dict[str, Any], Usage | None]:
    vectors = answer.get("embeddings") or {}
    if isinstance(vectors, dict):
        vectors = vectors.get("float") or []
    data = embedding_items(vectors, base64_out)
    billed = ((answer.get("meta") or {}).get("billed_units") or {}).get("input_tokens")
    usage = Usage(tokens(billed), 0, tokens(billed)) if billed is not None else None
    counted = max(usage.prompt_tokens, 0) if usage else 0
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": counted, "total_tokens": counted},
    }, usage


ENDPOINT = Endpoint(
    {Api.CHAT: "/chat", Api.EMBEDDINGS: "/embed", Api.RERANK: "/rerank"},
    default_base=DEFAULT_API_BASE,
    versions=("/v2",),
    headers={**JSON_HEADERS, "Accept": "application/json"},
)


class CohereProvider(HttpProvider):
    family = "cohere"
    endpoint = ENDPOINT

    def encode(self, call: Call) -> tuple[Route, bytes]:
        request = decode_object(call.body)
        if call.api is Api.RERANK:
            return call.api, orjson.dumps(rerank.cohere_request(request, self.upstream_model))
        if call.api is Api.EMBEDDINGS:
            return call.api, orjson.dumps(embed_request(request, self.upstream_model, call.head.model))
        return call.api, orjson.dumps(chat_request(request, self.upstream_model, call.head.stream))

    def parse_response(self, call: Call, body: bytes) -> Parsed:
        answer = orjson.loads(body)
        if call.api is Api.RERANK:
            out, ranked = rerank.response(answer, decode_object(call.body))
            return Parsed(orjson.dumps(out), ranked)
        if call.api is Api.EMBEDDINGS:
            out, usage = embed_response(answer, self.upstream_model, wants_base64(call))
        else:
            out, usage = chat_response(answer, self.upstream_model)
        return Parsed(orjson.dumps(out), usage)

    def open_stream(self, call: Call) -> StreamRelay:
        return ChatRelay(self.upstream_model, call.head.include_usage)
