"""Serves OpenAI's legacy `/v1/completions` from a provider that speaks only chat (Anthropic,
Gemini, Cohere).

LlamaIndex's `OpenAILike` (and other clients of the older API) call `/v1/completions` by default;
a chat-only deployment answered 400. The prompt becomes one user message, the chat answer (or each
chat chunk) a `text_completion` with the same usage. What the chat APIs cannot do is refused by
name rather than silently answered otherwise: several prompts or `n` above 1, `echo`, `logprobs`,
`suffix` and `best_of` above 1 are 400s. Everything else is the inner provider's, as usual.
"""

from __future__ import annotations

from typing import Any

import orjson

from meterway.errors import BadRequest, UpstreamError
from meterway.providers import sse
from meterway.providers.base import (
    Api,
    Bridge,
    Call,
    Parsed,
    RequestHead,
    StreamRelay,
    UpstreamRequest,
    Usage,
    decode_object,
)

CARRIED = ("max_tokens", "temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty", "user")


def chat_request(request: dict[str, Any]) -> dict[str, Any]:
    """The chat request a completions request means, or the 400 that says what cannot be bridged."""
    prompt = request.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest(
            "This model serves /v1/completions through its chat API: 'prompt' must be one string.", param="prompt"
        )
    refused = [
        name
        for name, ok in (
            ("n", request.get("n") in (None, 1)),
            ("best_of", request.get("best_of") in (None, 1)),
            ("echo", not request.get("echo")),
            ("logprobs", request.get("logprobs") is None),
            ("suffix", not request.get("suffix")),
        )
        if not ok
    ]
    if refused:
        raise BadRequest(
            f"'{refused[0]}' cannot be honoured: this model serves /v1/completions through its chat API.",
            param=refused[0],
        )
    chat: dict[str, Any] = {"model": request.get("model"), "messages": [{"role": "user", "content": prompt}]}
    chat.update({name: request[name] for name in CARRIED if request.get(name) is not None})
    if request.get("stream"):
        chat["stream"] = True
        if isinstance(request.get("stream_options"), dict):
            chat["stream_options"] = request["stream_options"]
    return chat


def _choice(text: Any, finish: Any) -> dict[str, Any]:
    return {"text": text if isinstance(text, str) else "", "index": 0, "logprobs": None, "finish_reason": finish}


def completion_response(chat: dict[str, Any]) -> dict[str, Any]:
    choices = chat.get("choices") or [{}]
    first = choices[0] if isinstance(choices[0], dict) else {}
    message = first.get("message") or {}
    out: dict[str, Any] = {
        "id": chat.get("id"),
        "object": "text_completion",
        "created": chat.get("created"),
        "model": chat.get("model"),
        "choices": [_choice(message.get("content"), first.get("finish_reason"))],
    }
    if chat.get("usage") is not None:
        out["usage"] = chat["usage"]
    return out


def completion_chunk(chunk: dict[str, Any]) -> dict[str, Any] | None:
    """A chat chunk as a completions chunk; None for one with nothing to say (the role chunk)."""
    out: dict[str, Any] = {
        "id": chunk.get("id"),
        "object": "text_completion",
        "created": chunk.get("created"),
        "model": chunk.get("model"),
        "choices": [],
    }
    for choice in chunk.get("choices") or []:
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        text = (choice.get("delta") or {}).get("content")
        if text or choice.get("finish_reason"):
            out["choices"].append(_choice(text, choice.get("finish_reason")))
    if "usage" in chunk:
        out["usage"] = chunk["usage"]
    if not out["choices"] and not chunk.get("usage"):
        return None
    for key, value in chunk.items():  # what meterway adds (the estimate mark) stays
        if key not in out and key not in ("object", "choices", "system_fingerprint", "service_tier"):
            out[key] = value
    return out


class CompletionsFromChatRelay:
    """Chat chunks from the inner relay in, completions chunks out; `[DONE]` as it came."""

    __slots__ = ("_closing", "_inner", "_split", "usage")

    def __init__(self, inner: StreamRelay) -> None:
        self._inner = inner
        self._split = sse.EventSplitter()
        self._closing = b""
        self.usage: Usage | None = None

    @property
    def done(self) -> bool:
        return self._inner.done

    def _translate(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for raw in self._split.feed(data):
            event = sse.parse_event(raw)
            if event.data == b"[DONE]":
                out.append(sse.DONE)
                continue
            try:
                chunk = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                continue
            translated = completion_chunk(chunk) if isinstance(chunk, dict) else None
            if translated is not None:
                out.append(sse.format_data(orjson.dumps(translated)))
        return b"".join(out)

    def feed(self, data: bytes) -> bytes:
        out = self._translate(self._inner.feed(data))
        self.usage = self._inner.usage
        return out

    def finish(self) -> bytes:
        self._closing = self._inner.finish()
        self.usage = self._inner.usage
        return self._translate(self._closing)

    def settle(self, billed: Usage, closing: bytes) -> bytes:
        return self._translate(self._inner.settle(billed, self._closing))


class CompletionsAdapter(Bridge):
    """A provider for `Api.COMPLETIONS` (and only that) built on another provider's `Api.CHAT`."""

    serves = Api.COMPLETIONS

    def _inner_call(self, call: Call, body: bytes = b"") -> Call:
        head = call.head
        return Call(
            Api.CHAT, body, RequestHead(head.model, head.stream, head.include_usage, head.user), call.request_id
        )

    def build_request(self, call: Call) -> UpstreamRequest:
        chat = chat_request(decode_object(call.body))
        return self.inner.build_request(self._inner_call(call, orjson.dumps(chat)))

    def parse_response(self, call: Call, body: bytes) -> Parsed:
        parsed = self.inner.parse_response(self._inner_call(call), body)
        return Parsed(orjson.dumps(completion_response(orjson.loads(parsed.body))), parsed.usage)

    def open_stream(self, call: Call) -> StreamRelay:
        return CompletionsFromChatRelay(self.inner.open_stream(self._inner_call(call)))

    def map_error(self, call: Call, status: int, body: bytes) -> UpstreamError:
        return self.inner.map_error(self._inner_call(call), status, body)
