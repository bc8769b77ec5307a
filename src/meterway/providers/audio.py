"""Audio: OpenAI's transcriptions and translations (a multipart upload) and speech (JSON in,
audio bytes out), as an OpenAI-compatible upstream serves them.

An upload is read whole within its bound (`Settings.max_audio_bytes`, OpenAI's 25 MB by default)
and its parts parsed with python-multipart: the gateway needs `model` to route, and the file to
measure. The upstream is sent the same form rebuilt with its own model name. Streaming the parts
upstream as they arrive would save the buffer, but the route (and so the upstream) is only known
once `model` has come, and clients send it after the file as often as before.

A transcription is priced per second of audio: the seconds the upstream reported (`usage` of type
`duration`, or verbose_json's `duration`), else measured from the file's header (WAV with the
standard library's `wave`, other formats with mutagen) where the bytes fit it, else the most the
file's size may hold, flagged (`billed_ms`): an upload is never free; by tokens where the upstream
reported tokens (gpt-4o-transcribe). A speech request is priced per character of its `input`.
"""

from __future__ import annotations

import io
import math
import os
import wave
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from meterway.errors import BadRequest
from meterway.providers import sse
from meterway.providers.base import Parsed, Part, Usage, tokens

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

MAX_BOUNDARY = 70  # RFC 2046's longest boundary
TEXT_FORMATS = frozenset({"text", "srt", "vtt"})  # answered as plain text, the others as JSON
TRANSCRIPTION_FORMATS = frozenset({"json", "verbose_json", *TEXT_FORMATS})
# A file whose duration cannot be read from its header is reserved for as if it were this sparse:
# 8 kbit/s, below any speech codec's usual rate, so a budget reserves at least what it will pay.
LOWEST_BYTES_PER_SECOND = 1000
# A header's duration is believed only when the file's bytes fit it at no more than this rate
# (1,536 kbit/s: 48 kHz 16-bit stereo PCM, above any compressed format): a header that reads 27 ms
# for 25 MB (an MP3 whose Xing tag says one frame) is forged, or broken, and billed as unread.
HIGHEST_BYTES_PER_SECOND = 192_000
AUDIO_ESTIMATED = "audio_estimated"  # the row's flag: the audio billed is the file's most, not measured
# bounds on a form's shape: OpenAI's forms have a dozen fields; a body of empty parts or endless
# headers is refused before it costs more than its bytes
MAX_PARTS = 32
MAX_HEADER_BYTES = 1024  # one part header's name or value
MAX_PART_HEADERS = 8
REPEATABLE = "[]"  # a name ending so is a list (`timestamp_granularities[]`, `image[]`): it may repeat


class _Collector:
    """python-multipart's callbacks, collecting the parts (the body is in memory already)."""

    def __init__(self) -> None:
        self.parts: list[Part] = []
        self._names: set[str] = set()
        self._begun = 0  # parts begun, named or not
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
        self._begun += 1
        if self._begun > MAX_PARTS:
            raise BadRequest(f"The form has more than {MAX_PARTS} parts.")
        self._headers, self._data = {}, []

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._data.append(data[start:end])

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]
        if len(self._field) > MAX_HEADER_BYTES:
            raise BadRequest(f"A part's header name is longer than {MAX_HEADER_BYTES} bytes.")

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]
        if len(self._value) > MAX_HEADER_BYTES:
            raise BadRequest(f"A part's header value is longer than {MAX_HEADER_BYTES} bytes.")

    def _header_end(self) -> None:
        if len(self._headers) >= MAX_PART_HEADERS:
            raise BadRequest(f"A part has more than {MAX_PART_HEADERS} headers.")
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _end(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if name is None:
            return  # a part without a name is no field of the form
        text = name.decode("utf-8", "replace")
        if text in self._names and not text.endswith(REPEATABLE):
            # one value a field: what the gateway measured and checked is what the upstream reads
            raise BadRequest(f"The form has '{text}' more than once.", param=text)
        self._names.add(text)
        filename = options.get(b"filename")
        kind = self._headers.get(b"content-type")
        self.parts.append(
            Part(
                text,
                b"".join(self._data),
                filename.decode("utf-8", "replace") if filename is not None else None,
                kind.decode("latin-1") if kind is not None else None,
            )
        )


def parse_form(body: bytes) -> list[Part]:
    """The parts of a multipart/form-data body. Its boundary is its first line (clients send no
    preamble), so the form is read from the bytes alone; anything else is the client's error, as
    are more than `MAX_PARTS` parts, an oversized part header, and a field sent twice."""
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


def fields(parts: list[Part] | tuple[Part, ...]) -> dict[str, str]:
    """The form's text fields (the file not among them; a repeatable `name[]`, its last)."""
    return {p.name: p.data.decode("utf-8", "replace") for p in parts if p.filename is None}


def upload(parts: list[Part] | tuple[Part, ...]) -> Part | None:
    for p in parts:
        if p.name == "file":
            return p
    return None


def form_body(parts: list[Part] | tuple[Part, ...], model: str) -> tuple[bytes, str]:
    """The form for the upstream, with its model name in `model` (added where the client left it
    out and the gateway routed to a default), and its Content-Type. The pieces are joined once:
    the file is copied into the body and nowhere else."""
    boundary = "meterway-" + os.urandom(12).hex()
    out: list[bytes] = []
    if not any(p.name == "model" and p.filename is None for p in parts):
        parts = [*parts, Part("model", model.encode())]
    for p in parts:
        data = model.encode() if p.name == "model" and p.filename is None else p.data
        disposition = f'form-data; name="{_quoted(p.name)}"'
        if p.filename is not None:
            disposition += f'; filename="{_quoted(p.filename)}"'
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if p.content_type is not None:
            head += f"Content-Type: {p.content_type}\r\n".encode("latin-1", "replace")
        out += (head + b"\r\n", data, b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


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


def size_ms(data: bytes) -> int:
    """The most audio a file's bytes may hold: its size at the lowest rate (`LOWEST_BYTES_PER_SECOND`)."""
    return math.ceil(len(data) * 1000 / LOWEST_BYTES_PER_SECOND)


def most_ms(data: bytes) -> int:
    """The most audio a file may be billed, for a reservation: its header's duration, and never
    less than its size at the lowest rate (`size_ms`), since a header may be forged short."""
    return max(duration_ms(data) or 0, size_ms(data))


def billed_ms(data: bytes) -> Usage:
    """The audio to bill where the upstream reported none it can be believed on: the header's
    duration when the file's bytes fit it (`HIGHEST_BYTES_PER_SECOND`), else the file's most
    (`size_ms`), flagged `audio_estimated`: a file that cannot be measured is never free."""
    measured = duration_ms(data)
    if measured is not None and len(data) <= measured * HIGHEST_BYTES_PER_SECOND / 1000:
        return Usage(audio_ms=measured)
    return Usage(audio_ms=size_ms(data), flags=(AUDIO_ESTIMATED,))


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _seconds_ms(value: object) -> int | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return math.ceil(value * 1000)
    return None


def reported_usage(answer: Mapping[str, Any], file: bytes) -> Usage | None:
    """The usage an answer (or a stream's `transcript.text.done` event) reports: tokens where it
    reports tokens, else its seconds (`usage.seconds`, verbose_json's `duration`); None if neither.
    Tokens that are no counts (`base.tokens`) carry the file's audio (`billed_ms`) beside them:
    the ledger flags them `usage_invalid` and bills that audio, so the request is not free."""
    usage = _mapping(answer.get("usage"))
    if usage.get("type") == "tokens":
        prompt, completion = tokens(usage.get("input_tokens")), tokens(usage.get("output_tokens"))
        total = usage.get("total_tokens")
        counted = Usage(prompt, completion, tokens(total) if total is not None else prompt + completion)
        if min(counted.prompt_tokens, counted.completion_tokens, counted.total_tokens) >= 0:
            return counted
        fallback = billed_ms(file)
        counted.audio_ms, counted.flags = fallback.audio_ms, fallback.flags
        return counted
    reported = _seconds_ms(usage.get("seconds")) if usage.get("type") == "duration" else None
    if reported is None:
        reported = _seconds_ms(answer.get("duration"))
    return Usage(audio_ms=reported) if reported is not None else None


def transcription_usage(body: bytes, as_json: bool, file: bytes) -> Usage:
    """The usage of a transcription answer (`reported_usage`), else the file's audio (`billed_ms`)."""
    answer: Mapping[str, Any] = {}
    if as_json:
        try:
            answer = _mapping(orjson.loads(body))
        except orjson.JSONDecodeError:
            answer = {}
    return reported_usage(answer, file) or billed_ms(file)


def transcription_answer(parts: list[Part] | tuple[Part, ...], body: bytes) -> Parsed:
    """The client's answer to a transcription (the upstream's bytes as they came: JSON, or plain
    text for text/srt/vtt) and its usage (`transcription_usage`)."""
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
    the file's audio (`billed_ms`)."""

    __slots__ = ("_file", "_held", "_split", "done", "usage")

    def __init__(self, file: bytes) -> None:
        self._split = sse.EventSplitter()
        self._held = b""
        self._file = file
        self.done = False
        self.usage: Usage | None = billed_ms(file)

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
                self.usage = reported_usage(payload, self._file) or self.usage
                self.done = True
                self._split.tail()
                return buf[:start]
        return buf[: spans[-1][2]] if spans else b""

    def finish(self) -> bytes:
        held, self._held = self._held, b""
        return held if self.done else self._split.tail()

    def settle(self, billed: Usage, closing: bytes) -> bytes:
        return closing
