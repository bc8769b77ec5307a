"""Audio: OpenAI's transcriptions and translations (a multipart upload) and speech (JSON in,
audio bytes out), as an OpenAI-compatible upstream serves them.

An upload is read whole within its bound (`Settings.max_audio_bytes`, OpenAI's 25 MB by default)
and its parts parsed with python-multipart: the gateway needs `model` to route, and the file to
measure. The upstream is sent the same form rebuilt with its own model name. Streaming the parts
upstream as they arrive would save the buffer, but the route (and so the upstream) is only known
once `model` has come, and clients send it after the file as often as before.

A transcription is priced per second of audio: the seconds the upstream reported (`usage` of type
`duration`, or verbose_json's `duration`), else measured from the file's header (WAV with the
standard library's `wave`, other formats with mutagen); by tokens where the upstream reported
tokens (gpt-4o-transcribe). A speech request is priced per character of its `input`.
"""

from __future__ import annotations

import io
import math
import os
import wave
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from meterway.errors import BadRequest
from meterway.providers import sse
from meterway.providers.base import Parsed, Usage, tokens

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

MAX_BOUNDARY = 70  # RFC 2046's longest boundary
TEXT_FORMATS = frozenset({"text", "srt", "vtt"})  # answered as plain text, the others as JSON
TRANSCRIPTION_FORMATS = frozenset({"json", "verbose_json", *TEXT_FORMATS})
# A file whose duration cannot be read from its header is reserved for as if it were this sparse:
# 8 kbit/s, below any speech codec's usual rate, so a budget reserves at least what it will pay.
LOWEST_BYTES_PER_SECOND = 1000


@dataclass(frozen=True, slots=True)
class Part:
    """One part of a multipart form: a field (`filename` None) or the uploaded file."""

    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None


class _Collector:
    """python-multipart's callbacks, collecting the parts (the body is in memory already)."""

    def __init__(self) -> None:
        self.parts: list[Part] = []
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self._data: list[bytes] = []

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin,
            "on_part_data": self._part_data,
            "on_part_end": self._end,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
        }

    def _begin(self) -> None:
        self._headers, self._data = {}, []

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._data.append(data[start:end])

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _end(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if name is None:
            return  # a part without a name is no field of the form
        filename = options.get(b"filename")
        kind = self._headers.get(b"content-type")
        self.parts.append(
            Part(
                name.decode("utf-8", "replace"),
                b"".join(self._data),
                filename.decode("utf-8", "replace") if filename is not None else None,
                kind.decode("latin-1") if kind is not None else None,
            )
        )


def parse_form(body: bytes) -> list[Part]:
    """The parts of a multipart/form-data body. Its boundary is its first line (clients send no
    preamble), so the form is read from the bytes alone; anything else is the client's error."""
    first = body[: MAX_BOUNDARY + 4].split(b"\r\n", 1)[0]
    if not first.startswith(b"--") or len(first) < 3 or len(first) > MAX_BOUNDARY + 2 or b"\r\n" not in body:
        raise BadRequest("The request body must be multipart/form-data (a file and its fields).")
    # imported here: only uploads need it, and a gateway that takes none never loads it
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser

    collector = _Collector()
    parser = MultipartParser(first[2:], collector.callbacks())
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as e:
        raise BadRequest(f"The multipart/form-data body could not be read: {e}") from None
    return collector.parts


def fields(parts: list[Part]) -> dict[str, str]:
    """The form's text fields, the last of a repeated name (the file not among them)."""
    return {p.name: p.data.decode("utf-8", "replace") for p in parts if p.filename is None}


def upload(parts: list[Part]) -> Part | None:
    for p in parts:
        if p.name == "file":
            return p
    return None


def form_body(parts: list[Part], model: str) -> tuple[bytes, str]:
    """The form for the upstream, with its model name in `model` (added where the client left it
    out and the gateway routed to a default), and its Content-Type."""
    boundary = "meterway-" + os.urandom(12).hex()
    out = io.BytesIO()
    if not any(p.name == "model" and p.filename is None for p in parts):
        parts = [*parts, Part("model", model.encode())]
    for p in parts:
        data = model.encode() if p.name == "model" and p.filename is None else p.data
        disposition = f'form-data; name="{_quoted(p.name)}"'
        if p.filename is not None:
            disposition += f'; filename="{_quoted(p.filename)}"'
        out.write(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode())
        if p.content_type is not None:
            out.write(f"Content-Type: {p.content_type}\r\n".encode("latin-1", "replace"))
        out.write(b"\r\n")
        out.write(data)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def duration_ms(data: bytes) -> int | None:
    """The audio's duration from its header: WAV by `wave`, MP3, Ogg, FLAC, M4A and the rest that
    mutagen reads by theirs; None when neither can."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        try:
            with wave.open(io.BytesIO(data)) as w:
                rate = w.getframerate()
                return math.ceil(w.getnframes() * 1000 / rate) if rate > 0 else None
        except (wave.Error, EOFError):
            pass
    import mutagen  # only for files that are not WAV; a gateway that measures none never loads it

    try:
        found = mutagen.File(io.BytesIO(data))
    except Exception:  # mutagen raises its own errors and plain ones for broken headers alike
        return None
    length = getattr(getattr(found, "info", None), "length", None)
    if isinstance(length, int | float) and math.isfinite(length) and length > 0:
        return math.ceil(length * 1000)
    return None


def most_ms(data: bytes) -> int:
    """The most audio a file may hold, for a reservation: its duration, else its size at the
    lowest rate (`LOWEST_BYTES_PER_SECOND`)."""
    measured = duration_ms(data)
    if measured is not None:
        return measured
    return math.ceil(len(data) * 1000 / LOWEST_BYTES_PER_SECOND)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _seconds_ms(value: object) -> int | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return math.ceil(value * 1000)
    return None


def reported_usage(answer: Mapping[str, Any]) -> Usage | None:
    """The usage an answer (or a stream's `transcript.text.done` event) reports: tokens where it
    reports tokens, else its seconds (`usage.seconds`, verbose_json's `duration`); None if neither."""
    usage = _mapping(answer.get("usage"))
    if usage.get("type") == "tokens":
        prompt, completion = tokens(usage.get("input_tokens")), tokens(usage.get("output_tokens"))
        total = usage.get("total_tokens")
        return Usage(prompt, completion, tokens(total) if total is not None else prompt + completion)
    reported = _seconds_ms(usage.get("seconds")) if usage.get("type") == "duration" else None
    if reported is None:
        reported = _seconds_ms(answer.get("duration"))
    return Usage(audio_ms=reported) if reported is not None else None


def transcription_usage(body: bytes, as_json: bool, file: bytes) -> Usage:
    """The usage of a transcription answer (`reported_usage`), else the file's measured duration
    (0 when not even its header tells)."""
    answer: Mapping[str, Any] = {}
    if as_json:
        try:
            answer = _mapping(orjson.loads(body))
        except orjson.JSONDecodeError:
            answer = {}
    return reported_usage(answer) or Usage(audio_ms=duration_ms(file) or 0)


def transcription_answer(request: bytes, body: bytes) -> Parsed:
    """The client's answer to a transcription (the upstream's bytes as they came: JSON, or plain
    text for text/srt/vtt) and its usage (`transcription_usage`)."""
    parts = parse_form(request)
    kind = fields(parts).get("response_format", "json")
    file = upload(parts)
    as_json = kind not in TEXT_FORMATS
    if as_json and not isinstance(orjson.loads(body), dict):  # ValueError: the upstream's failure (a 502)
        raise ValueError("not a JSON object")
    usage = transcription_usage(body, as_json, file.data if file is not None else b"")
    return Parsed(body, usage, "application/json" if as_json else "text/plain; charset=utf-8")


_DONE = b"transcript.text.done"


class TranscriptionRelay:
    """A streamed transcription (`stream=true`, gpt-4o-transcribe): its `transcript.text.delta`
    events relayed as they came, its `transcript.text.done` (which carries the usage) held for
    `finish`, so the row is committed before the client sees the end; nothing after it is relayed.
    Until it reports its usage (and if it never does, or the client leaves first) it is billed
    the file's measured duration."""

    __slots__ = ("_held", "_split", "done", "usage")

    def __init__(self, file: bytes) -> None:
        self._split = sse.EventSplitter()
        self._held = b""
        self.done = False
        self.usage: Usage | None = Usage(audio_ms=duration_ms(file) or 0)

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return b""
        buf, spans = self._split.frames(data)
        for start, cut, end in spans:
            event = sse.parse_event(buf[start:cut].strip())
            try:
                payload = _mapping(orjson.loads(event.data)) if event.data else {}
            except orjson.JSONDecodeError:
                payload = {}
            if payload.get("type") == _DONE.decode() or event.name.encode() == _DONE:
                self._held = buf[start:end]
                self.usage = reported_usage(payload) or self.usage
                self.done = True
                self._split.tail()
                return buf[:start]
        return buf[: spans[-1][2]] if spans else b""

    def finish(self) -> bytes:
        held, self._held = self._held, b""
        return held if self.done else self._split.tail()

    def settle(self, billed: Usage, closing: bytes) -> bytes:
        return closing
