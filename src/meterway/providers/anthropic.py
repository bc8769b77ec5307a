"""Anthropic's Messages API as an upstream.

A client on `/v1/messages` passes through (only the model name may change). A client on
`/v1/chat/completions` is translated both ways by `anthropic_format`: request, answer and each
stream event, with usage (including cache reads and writes) read from Anthropic's own figures.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import msgspec
import orjson
from yarl import URL

from meterway.config.secret import Secret
from meterway.errors import BadRequest, UpstreamError
from meterway.providers import anthropic_format as fmt
from meterway.providers import sse
from meterway.providers.base import Api, Call, Parsed, StreamRelay, UpstreamRequest, Usage, tokens
from meterway.providers.openai import error_from_body

DEFAULT_API_BASE = "https://api.anthropic.com"
API_VERSION = "2023-06-01"


class _WireUsage(msgspec.Struct):
    # plain values: odd figures are judged by the ledger (`base.tokens`), not refused here
    input_tokens: Any = 0
    output_tokens: Any = 0
    cache_read_input_tokens: Any = 0
    cache_creation_input_tokens: Any = 0


class _Envelope(msgspec.Struct):
    usage: _WireUsage | None = None


class _StartEvent(msgspec.Struct):
    message: _Envelope | None = None


_envelope = msgspec.json.Decoder(_Envelope)
_start = msgspec.json.Decoder(_StartEvent)


def usage_from_anthropic(u: _WireUsage | None, output_tokens: object = None) -> Usage | None:
    """Anthropic counts cache reads and writes apart from `input_tokens`; the prompt is their sum.
    A figure that is not a count (`base.tokens`) makes the sum one too, so the ledger sees it."""
    if u is None:
        return None
    figures = (tokens(u.input_tokens), tokens(u.cache_read_input_tokens), tokens(u.cache_creation_input_tokens))
    _, read, write = figures
    prompt = sum(figures) if min(figures) >= 0 else min(figures)
    completion = tokens(output_tokens if output_tokens is not None else u.output_tokens)
    total = prompt + completion if min(prompt, completion) >= 0 else min(prompt, completion)
    return Usage(prompt, completion, total, cached_tokens=read, cache_write_tokens=write)


def usage_from_openai_dict(u: dict[str, Any] | None) -> Usage | None:
    if not u:
        return None
    prompt, completion = tokens(u.get("prompt_tokens")), tokens(u.get("completion_tokens"))
    return Usage(
        prompt,
        completion,
        tokens(u.get("total_tokens")) or prompt + completion,
        cached_tokens=tokens(u.get("cache_read_input_tokens")),
        cache_write_tokens=tokens(u.get("cache_creation_input_tokens")),
    )


class MessagesPassthroughRelay:
    """Relays Anthropic events untouched, all but `message_stop` (held for `finish`; nothing after
    it is relayed), and reads usage from message_start and message_delta. Each read is searched
    once, for the ends of its events; an event is told apart by the name on its first line."""

    __slots__ = ("_final", "_input", "_output", "_split", "done", "usage")

    def __init__(self) -> None:
        self._split = sse.EventSplitter()
        self._input: _WireUsage | None = None
        self._output: object = None
        self._final = b""
        self.done = False
        self.usage: Usage | None = None

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return b""
        buf, spans = self._split.frames(data)
        if not spans:
            return b""
        for start, cut, end in spans:
            if cut == start:
                continue  # a stray blank line: passed on as it came
            raw = buf[start:cut]
            name = sse.first_line_name(raw)
            if name == b"message_start" or name == b"message_delta":
                self._meter(sse.parse_event(raw))
            elif (name == b"message_stop") if name is not None else sse.is_message_stop(raw):
                self._final, self.done = buf[start:end], True
                return buf[:start]
        return buf[: spans[-1][2]]

    def _meter(self, event: sse.Event) -> None:
        try:
            if event.name == "message_start":
                start = _start.decode(event.data).message
                self._input = start.usage if start else None
            elif event.name == "message_delta":
                u = _envelope.decode(event.data).usage
                if u is not None:
                    self._output = u.output_tokens
        except msgspec.DecodeError:
            return

    def finish(self) -> bytes:
        self.usage = usage_from_anthropic(self._input or _WireUsage(), self._output)
        return self._final if self.done else self._split.tail()


class ChatFromMessagesRelay:
    """Anthropic events in, OpenAI chat chunks out, one translator state per stream. `[DONE]` is
    written by `finish` alone, so nothing `feed` returns needs searching for it."""

    __slots__ = ("_split", "_stream", "usage")
    done = False

    def __init__(self, model: str, include_usage: bool, created: int) -> None:
        self._split = sse.EventSplitter()
        self._stream = fmt.MessagesToChatStream(model, include_usage, created)
        self.usage: Usage | None = None

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for raw in self._split.feed(data):
            event = sse.parse_event(raw)
            if not event.data:
                continue
            try:
                payload = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                continue
            for chunk in self._stream.feed(event.name, payload):
                out.append(sse.format_data(orjson.dumps(chunk)))
        return b"".join(out)

    def finish(self) -> bytes:
        self.usage = usage_from_openai_dict(self._stream.usage)
        return sse.DONE


class AnthropicProvider:
    family = "anthropic"
    local = False

    def __init__(
        self,
        *,
        label: str,
        upstream_model: str,
        api_base: str | None,
        api_key: Secret | None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.label = label
        self.upstream_model = upstream_model
        base = (api_base or DEFAULT_API_BASE).rstrip("/")
        self.url = URL(base + ("/messages" if base.endswith("/v1") else "/v1/messages"))
        headers = {"Content-Type": "application/json", "anthropic-version": API_VERSION}
        if api_key:
            headers["x-api-key"] = api_key.reveal()
        headers.update(extra_headers or {})
        self.headers = headers

    def supports(self, api: Api) -> bool:
        return api in (Api.CHAT, Api.MESSAGES)

    def build_request(self, call: Call) -> UpstreamRequest:
        if call.api is Api.MESSAGES:
            body = call.body
            if call.head.model != self.upstream_model:
                obj = orjson.loads(body)
                obj["model"] = self.upstream_model
                body = orjson.dumps(obj)
        else:
            try:
                body = orjson.dumps(fmt.chat_to_messages_request(orjson.loads(call.body), self.upstream_model))
            except fmt.TranslationError as e:
                raise BadRequest(str(e), param=e.param) from None
        return UpstreamRequest("POST", self.url, self.headers, body, call.head.stream)

    def parse_response(self, call: Call, body: bytes) -> Parsed:
        if call.api is Api.MESSAGES:
            try:
                usage = usage_from_anthropic(_envelope.decode(body).usage)
            except msgspec.DecodeError:
                usage = None
            return Parsed(body, usage)
        chat = fmt.messages_response_to_chat(orjson.loads(body), call.head.model)
        return Parsed(orjson.dumps(chat), usage_from_openai_dict(chat.get("usage")))

    def open_stream(self, call: Call) -> StreamRelay:
        if call.api is Api.MESSAGES:
            return MessagesPassthroughRelay()
        return ChatFromMessagesRelay(call.head.model, call.head.include_usage, int(time.time()))

    def map_error(self, call: Call, status: int, body: bytes) -> UpstreamError:
        return error_from_body(status, body, self.label)
