"""Server-sent events, split incrementally.

Upstreams write events in whatever pieces the network gives them; a relay that must look inside
events (to translate them, or to drop one) cuts the byte stream at blank lines and keeps the
unfinished tail for the next read. Relays that only pass bytes through never use this.
"""

from __future__ import annotations

from dataclasses import dataclass

_SEPARATORS = (b"\n\n", b"\r\n\r\n")


class EventSplitter:
    """Feed raw bytes, get back the complete events (without their separator) seen so far."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf + data if self._buf else data
        events: list[bytes] = []
        start = 0
        while True:
            cut = -1
            width = 0
            for sep in _SEPARATORS:
                i = buf.find(sep, start)
                if i >= 0 and (cut < 0 or i < cut):
                    cut, width = i, len(sep)
            if cut < 0:
                break
            if cut > start:
                events.append(buf[start:cut])
            start = cut + width
        self._buf = buf[start:]
        return events

    def rest(self) -> bytes:
        """Bytes after the last separator: an event the upstream never finished (or ended without a blank line)."""
        rest, self._buf = self._buf, b""
        return rest.strip()


@dataclass(frozen=True, slots=True)
class Event:
    name: str  # the `event:` field; "message" when absent, as the SSE spec says
    data: bytes  # the `data:` lines joined by newlines


def parse_event(raw: bytes) -> Event:
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
