"""Serves OpenAI's Responses API from a provider that speaks only chat, and chat from a model that
speaks only the Responses API.

`ResponsesAdapter` wraps a deployment's own provider the way `MessagesAdapter` does: the Responses
request becomes a chat request, the chat answer (or each chat chunk) becomes a Response (or
Responses events). `ChatFromResponses` is the reverse, for a deployment marked
`model_info.mode: responses` (LiteLLM's marker for a Responses-only model): chat requests go
upstream to `/responses` and come back as chat. The inner provider does everything else as usual.

Both stay pure: the only outside fact they need, the time a Response was created, comes from the
clock they are given.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from meterway.errors import BadRequest
from meterway.providers import billed as billed_out
from meterway.providers import responses_format as fmt
from meterway.providers import responses_reverse as reverse
from meterway.providers import sse
from meterway.providers.base import (
    Api,
    Bridge,
    Call,
    Parsed,
    Provider,
    RequestHead,
    StreamRelay,
    UpstreamRequest,
    Usage,
    decode_object,
)
from meterway.providers.common import named_json_events

Clock = Callable[[], float]


def response_id(call: Call) -> str:
    """The id of the Response a bridged call produces: the gateway's request id is already unique
    per request (and is what the ledger row carries), so the two can be matched."""
    return "resp_" + call.request_id


def _translated(request: dict[str, Any], upstream_model: str) -> dict[str, Any]:
    try:
        return fmt.responses_to_chat(request, upstream_model)
    except fmt.TranslationError as e:
        raise BadRequest(str(e), param=e.param) from None


class ResponsesFromChatRelay:
    """Chat chunks from the inner relay in, Responses events out. The inner relay finds (and holds)
    the upstream's `[DONE]`; the closing events, `response.completed` last, come from `finish`,
    so the ledger row is written before the client sees the end. `response` is the final Response
    once finished; `sequence_number` the number the next event would get (an error event the
    gateway adds after a failure takes it)."""

    __slots__ = ("_inner", "_split", "_started", "_stream", "response", "usage")

    def __init__(
        self, inner: StreamRelay, request: dict[str, Any], response_id: str, created_at: int, model: str | None = None
    ) -> None:
        self._inner = inner
        self._split = sse.EventSplitter()
        self._stream = fmt.ChatToResponsesStream(request, response_id, created_at, model)
        self._started = False
        self.usage: Usage | None = None
        self.response: dict[str, Any] | None = None

    @property
    def sequence_number(self) -> int:
        return self._stream.sequence_number

    def _translate(self, data: bytes) -> bytes:
        events: list[fmt.Event] = []
        chunks = [chunk for _, chunk in named_json_events(self._split, data)]
        if not self._started:
            # the Response names the model that answered: the first chunk's, when it came with these bytes
            self._started = True
            answered = next((c["model"] for c in chunks if isinstance(c.get("model"), str) and c["model"]), None)
            if answered is not None:
                self._stream.model = answered
            events.extend(self._stream.start())
        for chunk in chunks:
            events.extend(self._stream.feed(chunk))
        return b"".join(fmt.sse(e) for e in events)

    @property
    def done(self) -> bool:
        return self._inner.done

    def feed(self, data: bytes) -> bytes:
        return self._translate(self._inner.feed(data))

    def finish(self) -> bytes:
        head = self._translate(self._inner.finish())
        tail = b"".join(fmt.sse(e) for e in self._stream.finish())
        self.response = self._stream.response
        reported = fmt.usage_of(self.response) if self.response and self.response.get("usage") else None
        self.usage = self._inner.usage or reported
        return head + tail

    def settle(self, billed: Usage, closing: bytes) -> bytes:
        """A Response always carries its usage: one the upstream reported none for gets the billed
        figures in the terminal event the relay holds (which the gateway also stores)."""
        return billed_out.response_event_with_usage(closing, billed)


class ResponsesAdapter(Bridge):
    """A provider for `Api.RESPONSES` (and only that) built on another provider's `Api.CHAT`."""

    serves = Api.RESPONSES

    def __init__(self, inner: Provider, clock: Clock = time.time) -> None:
        super().__init__(inner)
        self._clock = clock

    def _inner_call(self, call: Call, body: bytes = b"") -> Call:
        # The translated body always asks for usage, so the inner relay never strips it.
        head = RequestHead(self.upstream_model, call.head.stream, True, call.head.user)
        return Call(Api.CHAT, body, head, call.request_id)

    def build_request(self, call: Call) -> UpstreamRequest:
        chat = _translated(decode_object(call.body), self.upstream_model)
        return self.inner.build_request(self._inner_call(call, orjson.dumps(chat)))

    def parse_response(self, call: Call, body: bytes) -> Parsed:
        parsed = self.inner.parse_response(self._inner_call(call), body)
        response = fmt.chat_to_response(
            orjson.loads(parsed.body),
            decode_object(call.body),
            response_id(call),
            int(self._clock()),
            self.upstream_model,
        )
        return Parsed(orjson.dumps(response), parsed.usage)

    def open_stream(self, call: Call) -> StreamRelay:
        inner = self.inner.open_stream(self._inner_call(call))
        return ResponsesFromChatRelay(
            inner, decode_object(call.body), response_id(call), int(self._clock()), self.upstream_model
        )


class ChatFromResponsesRelay:
    """Responses events from the inner (native) relay in, chat chunks out. The inner relay holds
    the terminal event until its `finish`; the last chunks and `[DONE]` come from ours."""

    __slots__ = ("_inner", "_split", "_stream", "usage")

    def __init__(self, inner: StreamRelay, model: str, include_usage: bool) -> None:
        self._inner = inner
        self._split = sse.EventSplitter()
        self._stream = reverse.ResponsesToChatStream(model, include_usage)
        self.usage: Usage | None = None

    def _translate(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for _, event in named_json_events(self._split, data):
            out.extend(sse.format_data(orjson.dumps(c)) for c in self._stream.feed(event))
        return b"".join(out)

    @property
    def done(self) -> bool:
        return self._inner.done

    def feed(self, data: bytes) -> bytes:
        return self._translate(self._inner.feed(data))

    def finish(self) -> bytes:
        head = self._translate(self._inner.finish())
        tail = b"".join(sse.format_data(orjson.dumps(c)) for c in self._stream.finish())
        self.usage = self._inner.usage
        return head + tail + sse.DONE

    def settle(self, billed: Usage, closing: bytes) -> bytes:
        """A chat client that asked for usage, over an upstream that reported none: OpenAI's usage
        chunk with the billed figures, before `[DONE]`."""
        if self.usage is not None or not self._stream.include_usage or not closing.endswith(sse.DONE):
            return closing
        chunk = billed_out.usage_chunk(billed_out.last_chunk(closing), billed)
        return closing[: -len(sse.DONE)] + chunk + sse.DONE


class ChatFromResponses(Bridge):
    """A provider for `Api.CHAT` built on another provider's (native) `Api.RESPONSES`."""

    serves = Api.CHAT

    def _inner_call(self, call: Call, body: bytes = b"") -> Call:
        head = RequestHead(self.upstream_model, call.head.stream, True, call.head.user, call.head.max_tokens)
        return Call(Api.RESPONSES, body, head, call.request_id)

    def build_request(self, call: Call) -> UpstreamRequest:
        try:
            request = reverse.chat_to_responses(decode_object(call.body), self.upstream_model)
        except fmt.TranslationError as e:
            raise BadRequest(str(e), param=e.param) from None
        return self.inner.build_request(self._inner_call(call, orjson.dumps(request)))

    def parse_response(self, call: Call, body: bytes) -> Parsed:
        parsed = self.inner.parse_response(self._inner_call(call), body)
        return Parsed(orjson.dumps(reverse.response_to_chat(orjson.loads(parsed.body), call.head.model)), parsed.usage)

    def open_stream(self, call: Call) -> StreamRelay:
        inner = self.inner.open_stream(self._inner_call(call))
        return ChatFromResponsesRelay(inner, call.head.model, call.head.include_usage)
