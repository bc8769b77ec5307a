"""Serves the Anthropic Messages API from any provider that speaks OpenAI chat.

Wraps the deployment's own provider: the Messages request becomes a chat request, the chat answer
(or each chat chunk) becomes a Messages answer (or Messages events). The inner provider does
everything else as usual, so an OpenAI-compatible, Azure or mock deployment answers `/v1/messages`.
"""

from __future__ import annotations

import orjson

from meterway.errors import BadRequest
from meterway.providers import anthropic_format as fmt
from meterway.providers import billed as billed_out
from meterway.providers import sse
from meterway.providers.anthropic import usage_from_openai_dict
from meterway.providers.base import (
    Api,
    Bridge,
    Call,
    Parsed,
    RequestHead,
    StreamRelay,
    UpstreamRequest,
    Usage,
)


class MessagesFromChatRelay:
    """Chat chunks from the inner relay in, Anthropic events out. The inner relay finds the
    upstream's `[DONE]` (and holds it: it is not translated); `message_stop` comes from `finish`."""

    __slots__ = ("_head", "_inner", "_split", "_stream", "_tail", "usage")

    def __init__(self, inner: StreamRelay, model: str, message_id: str) -> None:
        self._inner = inner
        self._split = sse.EventSplitter()
        self._stream = fmt.ChatToMessagesStream(model, message_id)
        self.usage: Usage | None = None
        self._head = b""  # what `finish` translated of the inner relay's last bytes
        self._tail: list[tuple[str, fmt.JSON]] = []  # and the closing events, kept for `settle`

    def _translate(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for raw in self._split.feed(data):
            event = sse.parse_event(raw)
            if not event.data or event.data == b"[DONE]":
                continue
            try:
                chunk = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(chunk, dict):
                out.extend(fmt.to_anthropic_sse(name, data) for name, data in self._stream.feed(chunk))
        return b"".join(out)

    @property
    def done(self) -> bool:
        return self._inner.done

    def feed(self, data: bytes) -> bytes:
        return self._translate(self._inner.feed(data))

    def finish(self) -> bytes:
        self._head = head = self._translate(self._inner.finish())
        self._tail = self._stream.finish()
        self.usage = self._inner.usage or usage_from_openai_dict(self._stream.usage)
        return head + b"".join(fmt.to_anthropic_sse(name, data) for name, data in self._tail)

    def settle(self, billed: Usage, closing: bytes) -> bytes:
        """The closing message_delta with the billed figures (it carried 0/0: the upstream sent none)."""
        if not self._tail:
            return closing
        out = [self._head]
        for name, data in self._tail:
            event = fmt.to_anthropic_sse(name, data)
            out.append(billed_out.message_delta_with_usage(event, billed) if name == "message_delta" else event)
        return b"".join(out)


class MessagesAdapter(Bridge):
    """A provider for `Api.MESSAGES` (and only that) built on another provider's `Api.CHAT`."""

    serves = Api.MESSAGES

    def _inner_call(self, call: Call, body: bytes = b"") -> Call:
        # The translated body always asks for usage, so the inner relay never strips it.
        head = RequestHead(self.upstream_model, call.head.stream, True, call.head.user)
        return Call(Api.CHAT, body, head, call.request_id)

    def build_request(self, call: Call) -> UpstreamRequest:
        try:
            chat = fmt.messages_to_chat_request(orjson.loads(call.body), self.upstream_model)
        except fmt.TranslationError as e:
            raise BadRequest(str(e), param=e.param) from None
        return self.inner.build_request(self._inner_call(call, orjson.dumps(chat)))

    def parse_response(self, call: Call, body: bytes) -> Parsed:
        parsed = self.inner.parse_response(self._inner_call(call), body)
        chat = orjson.loads(parsed.body)
        named = chat.get("model") if isinstance(chat, dict) else None
        model = named if isinstance(named, str) and named else self.upstream_model  # the model that answered
        message = fmt.chat_response_to_messages(chat, model)
        return Parsed(orjson.dumps(message), parsed.usage)

    def open_stream(self, call: Call) -> StreamRelay:
        inner = self.inner.open_stream(self._inner_call(call))
        return MessagesFromChatRelay(inner, self.upstream_model, "msg_" + call.request_id)
