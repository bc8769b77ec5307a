"""OpenAI's Responses API relayed to an upstream that speaks it (OpenAI, Azure, or a server marked
`model_info.mode: responses`): the stream passes through as it came, and only its terminal event
is read.

A Responses stream has no `[DONE]`: it ends with `response.completed`, `response.incomplete` or
`response.failed` (whose `response` carries the usage), or with an `error` event. The relay holds
that event back until `finish`, as every relay holds its stream's end, so the ledger row is
committed before the client sees it.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from meterway.providers import billed as billed_out
from meterway.providers import sse
from meterway.providers.base import Usage
from meterway.providers.responses_format import usage_from_responses

TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})
_TERMINAL_NAMES = frozenset(name.encode() for name in TERMINAL)


class _Envelope(msgspec.Struct):
    """A Response's status and usage; every other field is skipped, not built."""

    usage: Any = None
    status: Any = None


_envelope = msgspec.json.Decoder(_Envelope)
# A Response still to be generated (`background: true` answers so at once): it has no usage because
# nothing was generated yet, not because the upstream failed to report it; the generation is
# metered when it ends.
NOT_STARTED = frozenset({"queued", "in_progress"})


def decode_usage(body: bytes) -> Usage | None:
    """The usage of a Response object's bytes: zero for one not yet generated, None when a
    finished one reports none (raises msgspec.DecodeError when the bytes are no JSON object)."""
    envelope = _envelope.decode(body)
    if envelope.usage is None and envelope.status in NOT_STARTED:
        return Usage()
    return usage_from_responses(envelope.usage)


def _type_of(raw: bytes) -> bytes | None:
    """An event's type: its `event:` line (OpenAI names every event so), else its data's `type`."""
    name = sse.first_line_name(raw)
    if name is not None:
        return name
    event = sse.parse_event(raw.strip())
    if event.name != "message":
        return event.name.encode()
    try:
        payload = orjson.loads(event.data)
    except orjson.JSONDecodeError:
        return None
    kind = payload.get("type") if isinstance(payload, dict) else None
    return kind.encode() if isinstance(kind, str) else None


class ResponsesPassthroughRelay:
    """Relays a Responses stream untouched but for its terminal event, held for `finish`; after
    it nothing is relayed (`done`). `response` is that event's Response (None for an `error`
    event or a stream that never ended); `usage` its usage; `sequence_number` the number an
    error event the gateway adds would take."""

    __slots__ = ("_held", "_split", "done", "response", "sequence_number", "usage")

    def __init__(self) -> None:
        self._split = sse.EventSplitter()
        self._held = b""
        self.done = False
        self.usage: Usage | None = None
        self.response: dict[str, Any] | None = None
        self.sequence_number = 0

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return b""
        buf, spans = self._split.frames(data)
        for start, cut, end in spans:
            self.sequence_number += 1
            kind = _type_of(buf[start:cut])
            if kind in _TERMINAL_NAMES:
                self._held = buf[start:end]
                self._terminal(kind, buf[start:cut])
                self.done = True
                self._split.tail()  # whatever came after the end is not for the client
                return buf[:start]
        return buf[: spans[-1][2]] if spans else b""

    def _terminal(self, kind: bytes | None, raw: bytes) -> None:
        try:
            payload = orjson.loads(sse.parse_event(raw.strip()).data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(payload, dict):
            return
        if isinstance(payload.get("sequence_number"), int):
            self.sequence_number = payload["sequence_number"] + 1
        response = payload.get("response")
        if kind != b"error" and isinstance(response, dict):
            self.response = response
            self.usage = usage_from_responses(response.get("usage"))

    def settle(self, billed: Usage, closing: bytes) -> bytes:
        """A Response always carries its usage: one the upstream reported none for gets the billed
        figures in the terminal event the relay holds (which the gateway also stores)."""
        return billed_out.response_event_with_usage(closing, billed)

    def finish(self) -> bytes:
        held, self._held = self._held, b""
        if self.done:
            return held
        rest = self._split.tail()  # an unfinished last event, passed on as it came
        return rest
