"""Anthropic's Messages API as an upstream.

A client on `/v1/messages` passes through (only the model name may change). A client on
`/v1/chat/completions` is translated both ways by `anthropic_format`: request, answer and each
stream event, with usage (including cache reads and writes) read from Anthropic's own figures.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import orjson

from meterway.errors import BadRequest
from meterway.providers import anthropic_format as fmt
from meterway.providers import billed as billed_out
from meterway.providers import sse
from meterway.providers.base import Api, Call, Parsed, StreamRelay, UpstreamRequest, Usage, tokens
from meterway.providers.common import JSON_HEADERS, Endpoint, HttpProvider, Route, named_json_events, unreadable

DEFAULT_API_BASE = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
COUNT_TOKENS = "count_tokens"  # the route of `/v1/messages/count_tokens` (no `Api`: it is not a generation)


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

    __slots__ = ("_delta", "_final", "_input", "_output", "_split", "done", "usage")

    def __init__(self) -> None:
        self._split = sse.EventSplitter()
        self._input: _WireUsage | None = None
        self._output: object = None
        self._final = b""
        self._delta = b""  # the message_delta, held with message_stop: `settle` may give it the billed usage
        self.done = False
        self.usage: Usage | None = None

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return b""
        buf, spans = self._split.frames(data)
        if not spans:
            return b""
        out: list[bytes] = []
        at = 0  # where the bytes not yet passed on begin
        for start, cut, end in spans:
            if cut == start:
                continue  # a stray blank line: passed on as it came
            raw = buf[start:cut]
            name = sse.first_line_name(raw)
            if name == b"message_start":
                self._meter(sse.parse_event(raw))
                if self._input is None:  # no usage: Anthropic's SDKs need the object; message_delta gets the figures
                    out.append(buf[at:start])
                    out.append(billed_out.message_start_with_usage(raw) + buf[cut:end])
                    at = end
            elif name == b"message_delta":
                self._meter(sse.parse_event(raw))
                out.append(buf[at:start])
                out.append(self._delta)  # only the last one is held: an earlier one goes on now
                self._delta = buf[start:end]
                at = end
            elif (name == b"message_stop") if name is not None else sse.is_message_stop(raw):
                self._final, self.done = buf[start:end], True
                out.append(buf[at:start])
                return b"".join(out)
        out.append(buf[at : spans[-1][2]])
        return b"".join(out)

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
        if self._input is not None or self._output is not None:  # else none came: the ledger counts
            self.usage = usage_from_anthropic(self._input or _WireUsage(), self._output)
        return self._delta + (self._final if self.done else self._split.tail())

    def settle(self, billed: Usage, closing: bytes) -> bytes:
        """The upstream's figures were missing or no counts: its message_delta carries the billed
        ones instead (one it never sent is not made up: its stop reason is unknown)."""
        if not self._delta.startswith(b"event:"):
            return closing
        rest = closing[len(self._delta) :]
        return billed_out.message_delta_with_usage(self._delta, billed) + rest


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
        for name, payload in named_json_events(self._split, data):
            for chunk in self._stream.feed(name, payload):
                out.append(sse.format_data(orjson.dumps(chunk)))
        return b"".join(out)

    def finish(self) -> bytes:
        self.usage = usage_from_openai_dict(self._stream.usage)
        return sse.DONE

    def settle(self, billed: Usage, closing: bytes) -> bytes:
        stream = self._stream
        if not stream.include_usage or stream.usage is not None:
            return closing
        template = {"id": stream.id, "created": stream.created, "model": stream.model}
        return billed_out.usage_chunk(template, billed) + closing


def _answered_by(answer: Any, upstream_model: str) -> str:
    """The reply's `model`, one rule for every family (docs/migrating-from-litellm.md): the model
    that answered as the upstream names it, else the deployment's upstream model."""
    named = answer.get("model") if isinstance(answer, dict) else None
    return named if isinstance(named, str) and named else upstream_model


def _is_object(body: bytes) -> bool:
    try:
        return isinstance(orjson.loads(body), dict)
    except orjson.JSONDecodeError:
        return False


ENDPOINT = Endpoint(
    {Api.CHAT: "/messages", Api.MESSAGES: "/messages", COUNT_TOKENS: "/messages/count_tokens"},
    default_base=DEFAULT_API_BASE,
    versions=("/v1",),
    auth=("x-api-key", ""),
    headers={**JSON_HEADERS, "anthropic-version": API_VERSION},
)


class AnthropicProvider(HttpProvider):
    family = "anthropic"
    endpoint = ENDPOINT

    def encode(self, call: Call) -> tuple[Route, bytes]:
        if call.api is Api.MESSAGES:
            body = call.body
            if call.head.model != self.upstream_model:
                obj = orjson.loads(body)
                obj["model"] = self.upstream_model
                body = orjson.dumps(obj)
            return call.api, body
        try:
            return call.api, orjson.dumps(fmt.chat_to_messages_request(orjson.loads(call.body), self.upstream_model))
        except fmt.TranslationError as e:
            raise BadRequest(str(e), param=e.param) from None

    def count_tokens_request(self, body: bytes, model: str) -> UpstreamRequest:
        """A `count_tokens` request as the client sent it (only the model renamed, as on
        /v1/messages), to the same upstream with the same headers as the deployment's messages."""
        if model != self.upstream_model:
            obj = orjson.loads(body)
            obj["model"] = self.upstream_model
            body = orjson.dumps(obj)
        return UpstreamRequest(self.endpoint.method, self.urls[COUNT_TOKENS], self.headers, body, False)

    def parse_response(self, call: Call, body: bytes) -> Parsed:
        if call.api is Api.MESSAGES:
            try:
                usage = usage_from_anthropic(_envelope.decode(body).usage)
            except msgspec.DecodeError:  # a usage that is no object is the ledger's to judge; no JSON object, ours
                if not _is_object(body):
                    raise unreadable(self.label, body) from None
                usage = None
            return Parsed(body, usage)
        message = orjson.loads(body)
        chat = fmt.messages_response_to_chat(message, _answered_by(message, self.upstream_model))
        reported = isinstance(message, dict) and message.get("usage") is not None  # else the ledger counts
        return Parsed(orjson.dumps(chat), usage_from_openai_dict(chat.get("usage")) if reported else None)

    def open_stream(self, call: Call) -> StreamRelay:
        if call.api is Api.MESSAGES:
            return MessagesPassthroughRelay()
        return ChatFromMessagesRelay(self.upstream_model, call.head.include_usage, int(time.time()))
