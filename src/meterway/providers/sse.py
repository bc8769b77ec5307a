"""Server-sent events, split incrementally.

Upstreams write events in whatever pieces the network gives them; a relay that must look inside
events (to translate them, or to drop one) cuts the byte stream at blank lines and keeps the
unfinished tail for the next read. Relays that only pass bytes through never use this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_MESSAGE_STOP = re.compile(rb'"type"\s*:\s*"message_stop"')


class EventTooLarge(ValueError):
    """An event went on past the splitter's limit without ending (a blank line)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"an event of more than {limit} bytes")
        self.limit = limit


class EventSplitter:
    """Feed raw bytes, get back the complete events (without their separator) seen so far. With a
    `limit`, an unfinished event longer than it raises `EventTooLarge` instead of being held on:
    an upstream that never ends an event cannot make the gateway buffer without bound."""

    __slots__ = ("_buf", "_limit")

    def __init__(self, limit: int | None = None) -> None:
        self._buf = b""
        self._limit = limit

    def feed(self, data: bytes) -> list[bytes]:
        buf, spans = self.frames(data)
        limit = self._limit
        events: list[bytes] = []
        for start, cut, _ in spans:
            if limit is not None and cut - start > limit:
                raise EventTooLarge(limit)
            if cut > start:
                events.append(buf[start:cut])
        if limit is not None and len(self._buf) > limit:
            raise EventTooLarge(limit)
        return events

    def rest(self) -> bytes:
        """Bytes after the last separator: an event the upstream never finished (or ended without a blank line)."""
        rest, self._buf = self._buf, b""
        return rest.strip()

    def frames(self, data: bytes) -> tuple[bytes, list[tuple[int, int, int]]]:
        """Like `feed`, for a relay that passes events on as they came: the buffer the events are
        in and, per complete event, where it starts, where its separator starts and where that ends,
        so the relay can hand on `buf[:end]` untouched (separators and empty events included)
        and look inside each event without searching the bytes again."""
        buf = self._buf + data if self._buf else data
        spans: list[tuple[int, int, int]] = []
        start = 0
        # Each separator is searched for from where the last one ended, and `\r\n\r\n` (rare) only
        # again once passed: searching both from every event would scan the buffer once per event.
        crlf = buf.find(b"\r\n\r\n")
        while True:
            lf = buf.find(b"\n\n", start)
            if 0 <= crlf < start:
                crlf = buf.find(b"\r\n\r\n", start)
            if crlf >= 0 and (lf < 0 or crlf < lf):
                cut, width = crlf, 4
            elif lf >= 0:
                cut, width = lf, 2
            else:
                break
            spans.append((start, cut, cut + width))
            start = cut + width
        self._buf = buf[start:]
        return buf, spans

    def tail(self) -> bytes:
        """The unfinished event as it came (not stripped): what a pass-through relay still owes."""
        rest, self._buf = self._buf, b""
        return rest


class EventBound:
    """Watches a byte stream for an event longer than `limit` bytes, complete or not, without
    splitting it: the relays that pass bytes through hold none, and the others hold an unfinished
    event until it ends. Usually one search from the end of each read; the reads are only scanned
    event by event when they could hold one that long."""

    __slots__ = ("_limit", "_open")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._open = 0  # bytes since the last event ended

    def over(self, data: bytes) -> bool:
        """Whether `data` (the next read) makes an event longer than the limit."""
        if self._open + len(data) <= self._limit:
            last = _last_boundary(data)
            self._open = len(data) - last if last else self._open + len(data)
            return False
        start, length = 0, self._open
        while True:
            cut, width = _first_separator(data, start)
            if cut < 0:
                self._open = length + len(data) - start
                return self._open > self._limit
            if length + cut - start > self._limit:
                return True
            start, length = cut + width, 0


def _first_separator(data: bytes, start: int) -> tuple[int, int]:
    a = data.find(b"\n\n", start)
    b = data.find(b"\r\n\r\n", start)
    if a < 0 or (0 <= b < a):
        return b, 4
    return a, 2


@dataclass(frozen=True, slots=True)
class Event:
    name: str  # the `event:` field; "message" when absent, as the SSE spec says
    data: bytes  # the `data:` lines joined by newlines


def parse_event(raw: bytes) -> Event:
    if raw.startswith(b"data: ") and b"\n" not in raw:  # one data line: nearly every event, read at once
        return Event("message", raw[6:])
    name = "message"
    data: list[bytes] = []
    for line in raw.splitlines():
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
        elif line.startswith(b"event:"):
            name = line[6:].strip().decode("utf-8", "replace")
    return Event(name, b"\n".join(data))


def format_data(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


DONE = b"data: [DONE]\n\n"


_DONE_EVENTS = (b"data: [DONE]", b"data:[DONE]")


def is_done(event: bytes) -> bool:
    """Whether one event (without its separator) is OpenAI's final `[DONE]`; a length check first,
    so an ordinary event costs no search."""
    return len(event) <= 64 and event.strip() in _DONE_EVENTS


def first_line_name(event: bytes) -> bytes | None:
    """The event's name when its first line gives it (`event: ...`, as Anthropic writes every
    event): read from that line alone, not the whole event. None when it does not start so."""
    if not event.startswith(b"event:"):
        return None
    nl = event.find(b"\n", 6)
    return (event[6:nl] if nl >= 0 else event[6:]).strip()


def is_message_stop(event: bytes) -> bool:
    """Whether one event (without its separator) is Anthropic's final `message_stop`: by the name
    on its first line, else (an event written another way) by its name or its type, however spaced."""
    name = first_line_name(event)
    if name is not None:
        return name == b"message_stop"
    return parse_event(event.strip()).name == "message_stop" or _MESSAGE_STOP.search(event) is not None


class Finale:
    """Holds back a stream's final event (`data: [DONE]` for OpenAI clients, `message_stop` for
    Anthropic ones) until `finish`, so the gateway can commit the request's ledger row before the
    client sees its stream end. Only a relay that passes bytes through without splitting them uses
    it (its one search of each read); a relay that splits events tells the final one apart itself.
    It also holds an unfinished trailing event until the read that completes it (a client can do
    nothing with half an event), so a final event split across reads is still caught."""

    __slots__ = ("_anthropic", "_held", "_marker", "done")

    def __init__(self, anthropic: bool) -> None:
        self._anthropic = anthropic
        self._marker = b"message_stop" if anthropic else b"[DONE]"
        self._held = b""
        # The final event has been seen whole: whatever an upstream sends after it is not for the
        # client (it is dropped, and the relay may stop reading: an upstream that keeps the stream
        # open, or goes on writing, after its end cannot hold the client or grow what is held).
        self.done = False

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return b""
        if self._held:
            data = self._held + data
            self._held = b""
        at = data.find(self._marker)
        while at >= 0:
            start = _event_start(data, at)
            end = _event_end(data, at)
            if self._is_final(data[start:end]):
                width = 4 if data.startswith(b"\r\n\r\n", end) else 2 if data.startswith(b"\n\n", end) else 0
                if width:  # ended: held as it came, nothing after it
                    self.done = True
                    self._held = data[start : end + width]
                else:
                    self._held = data[start:]
                return data[:start]
            at = data.find(self._marker, end)
        cut = _last_boundary(data)
        if cut < len(data):
            self._held = data[cut:]
            return data[:cut]
        return data

    def finish(self, closing: bytes = b"") -> bytes:
        """The held bytes and the relay's closing bytes: what goes out last (only the final event,
        once it was seen whole: a relay's closing bytes are then what came after it)."""
        held, self._held = self._held, b""
        return held if self.done else held + closing

    def _is_final(self, event: bytes) -> bool:
        event = event.strip()
        if self._anthropic:  # named by its `event:` line, or by its type alone, however spaced
            return parse_event(event).name == "message_stop" or _MESSAGE_STOP.search(event) is not None
        return event in _DONE_EVENTS


def _event_start(data: bytes, at: int) -> int:
    a = data.rfind(b"\n\n", 0, at)
    b = data.rfind(b"\r\n\r\n", 0, at)
    return max(a + 2 if a >= 0 else 0, b + 4 if b >= 0 else 0)


def _event_end(data: bytes, at: int) -> int:
    ends = [i for i in (data.find(b"\n\n", at), data.find(b"\r\n\r\n", at)) if i >= 0]
    return min(ends) if ends else len(data)


def _last_boundary(data: bytes) -> int:
    """Where the last complete event ends (0 if none has). `\r\n\r\n` is looked for only after
    the last `\n\n` (one that ends later can only start there): a read without one is not
    searched whole for it."""
    a = data.rfind(b"\n\n")
    b = data.rfind(b"\r\n\r\n", a if a > 0 else 0)
    return max(a + 2 if a >= 0 else 0, b + 4 if b >= 0 else 0)
