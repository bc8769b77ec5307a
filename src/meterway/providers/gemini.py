"""Google's Gemini API (generativelanguage.googleapis.com) as an upstream, with API-key auth.

Chat goes to `models/{model}:generateContent`, streams to `:streamGenerateContent?alt=sse` (each
event a partial `GenerateContentResponse`), embeddings to `:embedContent` (one input) or
`:batchEmbedContents` (several). OpenAI's messages become `contents` (assistant -> `model`, tool
results -> `functionResponse` parts named after the call they answer) and `systemInstruction`;
tools become `functionDeclarations`. Usage comes from `usageMetadata`: thinking tokens count as
output (they are billed so) and as reasoning; cached content as cached prompt tokens. Gemini's
embedding answers carry no usage, so the ledger counts those tokens itself (marked estimated).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from meterway.errors import BadRequest
from meterway.providers import sse
from meterway.providers.base import Api, Call, Parsed, StreamRelay, Usage, decode_object, tokens
from meterway.providers.common import (
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

DEFAULT_API_BASE = "https://generativelanguage.googleapis.com/v1beta"

FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
}
GENERATION = {
    "temperature": "temperature",
    "top_p": "topP",
    "max_tokens": "maxOutputTokens",
    "max_completion_tokens": "maxOutputTokens",
    "n": "candidateCount",
    "seed": "seed",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
}


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    parts: list[dict[str, Any]] = []
    for p in content if isinstance(content, list) else []:
        if not isinstance(p, dict):
            continue
        if p.get("type") == "text":
            parts.append({"text": p.get("text", "")})
        elif p.get("type") == "image_url":
            url = (p.get("image_url") or {}).get("url", "")
            if url.startswith("data:") and ";base64," in url:
                mime, _, data = url[5:].partition(";base64,")
                parts.append({"inlineData": {"mimeType": mime, "data": data}})
            else:
                parts.append({"fileData": {"fileUri": url}})
    return parts


def chat_request(request: Mapping[str, Any]) -> dict[str, Any]:
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> function name, for the results that answer them

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        if contents and contents[-1]["role"] == role:  # Gemini wants turns to alternate
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})

    for m in request.get("messages") or []:
        if not isinstance(m, dict):
            raise BadRequest("Each message must be an object.", param="messages")
        role = m.get("role")
        if role in ("system", "developer"):
            system.append({"text": text_of(m.get("content"))})
        elif role == "user":
            add("user", _parts(m.get("content")))
        elif role == "assistant":
            parts: list[dict[str, Any]] = [{"text": t}] if (t := text_of(m.get("content"))) else []
            for c in m.get("tool_calls") or []:
                function = c.get("function") or {}
                names[str(c.get("id"))] = function.get("name", "")
                try:
                    args = orjson.loads(function.get("arguments") or "{}")
                except orjson.JSONDecodeError:
                    raise BadRequest("tool_calls arguments must be JSON.", param="messages") from None
                parts.append({"functionCall": {"name": function.get("name"), "args": args}})
            add("model", parts)
        elif role == "tool":
            text = text_of(m.get("content"))
            try:
                result = orjson.loads(text)
            except orjson.JSONDecodeError:
                result = None
            response = result if isinstance(result, dict) else {"content": text}
            name = names.get(str(m.get("tool_call_id")), m.get("name") or "")
            add("user", [{"functionResponse": {"name": name, "response": response}}])
        else:
            raise BadRequest(f"Message role '{role}' is not supported by Gemini.", param="messages")
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    config: dict[str, Any] = {
        theirs: request[ours] for ours, theirs in GENERATION.items() if request.get(ours) is not None
    }
    stop = request.get("stop")
    if stop is not None:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    fmt = request.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = (fmt.get("json_schema") or {}).get("schema")
        if schema:
            config["responseJsonSchema"] = schema
    if config:
        body["generationConfig"] = config
    tools = [t["function"] for t in request.get("tools") or [] if isinstance(t, dict) and "function" in t]
    if tools:
        body["tools"] = [{"functionDeclarations": tools}]
    choice = request.get("tool_choice")
    if choice in ("none", "auto", "required") or isinstance(choice, dict):
        mode = {"none": "NONE", "auto": "AUTO"}.get(choice, "ANY") if isinstance(choice, str) else "ANY"
        calling: dict[str, Any] = {"mode": mode}
        if isinstance(choice, dict):
            calling["allowedFunctionNames"] = [(choice.get("function") or {}).get("name")]
        body["toolConfig"] = {"functionCallingConfig": calling}
    return body


def usage_of(meta: Any) -> Usage | None:
    if not isinstance(meta, dict):
        return None
    prompt = tokens(meta.get("promptTokenCount"))
    thoughts = tokens(meta.get("thoughtsTokenCount"))
    candidates = tokens(meta.get("candidatesTokenCount"))
    # a figure that is no count (`base.tokens`) leaves the sum no count either
    completion = candidates + thoughts if min(candidates, thoughts) >= 0 else min(candidates, thoughts)
    total = tokens(meta.get("totalTokenCount")) or (
        prompt + completion if min(prompt, completion) >= 0 else min(prompt, completion)
    )
    return Usage(
        prompt,
        completion,
        total,
        cached_tokens=tokens(meta.get("cachedContentTokenCount")),
        reasoning_tokens=thoughts,
    )


def _openai_usage(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def _message(parts: list[Any], first_call: int) -> tuple[str, list[dict[str, Any]]]:
    """A candidate's text (thoughts left out) and its function calls as OpenAI tool calls."""
    text = "".join(p.get("text", "") for p in parts if isinstance(p, dict) and "text" in p and not p.get("thought"))
    calls = [
        {
            "index": first_call + i,
            "id": p["functionCall"].get("id") or f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {
                "name": p["functionCall"].get("name"),
                "arguments": orjson.dumps(p["functionCall"].get("args") or {}).decode(),
            },
        }
        for i, p in enumerate(q for q in parts if isinstance(q, dict) and "functionCall" in q)
    ]
    return text, calls


def _finish(reason: str | None, calls: bool) -> str | None:
    if reason is None:
        return None
    return "tool_calls" if calls and reason == "STOP" else FINISH.get(reason, "stop")


def chat_response(answer: Mapping[str, Any], model: str) -> tuple[dict[str, Any], Usage | None]:
    choices = []
    for i, candidate in enumerate(answer.get("candidates") or []):
        text, calls = _message((candidate.get("content") or {}).get("parts") or [], 0)
        # refusal and logprobs: OpenAI's spec requires both (null here), and strict clients validate against it
        message: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
        if calls:
            message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in calls]
        choices.append(
            {
                "index": candidate.get("index", i),
                "message": message,
                "logprobs": None,
                "finish_reason": _finish(candidate.get("finishReason") or "STOP", bool(calls)),
            }
        )
    usage = usage_of(answer.get("usageMetadata"))
    return {
        "id": answer.get("responseId") or f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": _openai_usage(usage) if usage else None,
    }, usage


def _answered_by(answer: Any, upstream_model: str) -> str:
    """The reply's `model`, one rule for every family (docs/migrating-from-litellm.md): Gemini's
    `modelVersion` (the model that answered), else the deployment's upstream model."""
    named = answer.get("modelVersion") if isinstance(answer, dict) else None
    return named if isinstance(named, str) and named else upstream_model.removeprefix("models/")


class ChatRelay:
    """Partial GenerateContentResponses in, OpenAI chat chunks out; usage from the last that has it."""

    __slots__ = ("_calls", "_chunks", "_include_usage", "_split", "_started", "usage")
    done = False  # `[DONE]` is written by `finish` alone: nothing `feed` returns is searched for it

    def __init__(self, model: str, include_usage: bool) -> None:
        self._split = sse.EventSplitter()
        self._chunks = ChatChunks(model)
        self._include_usage = include_usage
        self._started: set[int] = set()
        self._calls: dict[int, int] = {}  # candidate -> tool calls sent so far
        self.usage: Usage | None = None

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for payload in json_events(self._split, data):
            out += self._translate(payload)
        return b"".join(out)

    def _translate(self, e: dict[str, Any]) -> list[bytes]:
        if not self._started:  # before the first chunk: every chunk names the model that answered
            self._chunks.model = _answered_by(e, self._chunks.model)
        if e.get("usageMetadata"):
            self.usage = usage_of(e["usageMetadata"])
        choices = []
        for i, candidate in enumerate(e.get("candidates") or []):
            index = candidate.get("index", i)
            sent = self._calls.get(index, 0)
            text, calls = _message((candidate.get("content") or {}).get("parts") or [], sent)
            delta: dict[str, Any] = {}
            if index not in self._started:
                self._started.add(index)
                delta["role"] = "assistant"
            if text:
                delta["content"] = text
            if calls:
                delta["tool_calls"] = calls
                self._calls[index] = sent + len(calls)
            finish = _finish(candidate.get("finishReason"), bool(self._calls.get(index)))
            if delta or finish:
                choices.append({"index": index, "delta": delta, "finish_reason": finish})
        return [self._chunks.chunk(choices)] if choices else []

    def finish(self) -> bytes:
        if self._include_usage and self.usage is not None:
            return self._chunks.chunk([], _openai_usage(self.usage)) + sse.DONE
        return sse.DONE

    def settle(self, billed: Usage, closing: bytes) -> bytes:
        if not self._include_usage or self.usage is not None:
            return closing
        return self._chunks.usage_chunk(billed) + closing


ENDPOINT = Endpoint(
    {
        Api.CHAT: ":generateContent",
        "stream": ":streamGenerateContent?alt=sse",
        Api.EMBEDDINGS: ":embedContent",
        "batch": ":batchEmbedContents",
    },
    default_base=DEFAULT_API_BASE,
    versions=("/v1beta", "/v1"),
    root="/models/{model}",
    model_prefix="models/",
    auth=("x-goog-api-key", ""),
)


class GeminiProvider(HttpProvider):
    family = "gemini"
    endpoint = ENDPOINT

    def encode(self, call: Call) -> tuple[Route, bytes]:
        request = decode_object(call.body)
        if call.api is not Api.EMBEDDINGS:
            return ("stream" if call.head.stream else call.api), orjson.dumps(chat_request(request))
        texts = embedding_texts(request.get("input"), call.head.model, "Gemini")  # token ids decoded
        extra: dict[str, Any] = {}
        if request.get("dimensions"):
            extra["outputDimensionality"] = request["dimensions"]
        if request.get("task_type"):
            extra["taskType"] = request["task_type"]
        if isinstance(request.get("input"), str):
            return call.api, orjson.dumps({"content": {"parts": [{"text": texts[0]}]}, **extra})
        resource = "models/" + self.upstream_model.removeprefix("models/")
        requests = [{"model": resource, "content": {"parts": [{"text": t}]}, **extra} for t in texts]
        return "batch", orjson.dumps({"requests": requests})

    def parse_response(self, call: Call, body: bytes) -> Parsed:
        answer = orjson.loads(body)
        if call.api is not Api.EMBEDDINGS:
            out, usage = chat_response(answer, _answered_by(answer, self.upstream_model))
            return Parsed(orjson.dumps(out), usage)
        found = answer.get("embeddings") or ([answer["embedding"]] if "embedding" in answer else [])
        out = {
            "object": "list",
            "data": embedding_items((e.get("values") or [] for e in found), wants_base64(call)),
            "model": self.upstream_model,  # Gemini's embedding answers name no model
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
        }
        return Parsed(orjson.dumps(out), None)

    def open_stream(self, call: Call) -> StreamRelay:
        return ChatRelay(self.upstream_model, call.head.include_usage)
