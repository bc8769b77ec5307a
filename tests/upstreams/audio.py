"""A stand-in for OpenAI's audio endpoints, beside `StandIn`'s chat routes on the same port.

It checks what OpenAI checks (the bearer key, a multipart form with `file` and `model`; speech's
JSON) and answers as OpenAI does, its usage chosen by the model asked for:

* `whisper-1`: `usage: {type: "duration", seconds}`, the file's WAV duration rounded up to a second;
* `gpt-4o-transcribe`: token usage (`AUDIO_TOKENS` in, `TEXT_TOKENS` out);
* `bad-tokens`: token usage whose figures are no counts (`"input_tokens": "12"`);
* any other model (a self-hosted server): no usage at all;
* `broken`: a 500 in OpenAI's error format.

Speech answers `speech_bytes(input)` in `SPEECH_CHUNK`-byte pieces, as a chunked body.
"""

from __future__ import annotations

import io
import math
import wave
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import orjson
from aiohttp import web

from tests.upstreams.standin import StandIn, _Call

AUDIO_KEY = "audio-key"
TRANSCRIPT = "the quick brown fox"
AUDIO_TOKENS, TEXT_TOKENS = 40, 7
SPEECH_CHUNK = 4096


def wav(seconds: float, rate: int = 8000) -> bytes:
    """A WAV of silence (16-bit mono) lasting `seconds`."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * int(rate * seconds))
    return out.getvalue()


def mp3(frames: int) -> bytes:
    """An MP3 of silent frames (MPEG-1 Layer III, 128 kbit/s, 44.1 kHz: 1152 samples, 417 bytes each)."""
    return (bytes.fromhex("FFFB9064") + bytes(413)) * frames


def forged_mp3(frames: int) -> bytes:
    """`mp3(frames)` whose first frame carries a Xing tag claiming the file is one frame (26 ms)."""
    tag = b"Xing" + (1).to_bytes(4, "big") + (1).to_bytes(4, "big")
    first = bytes.fromhex("FFFB9064") + bytes(32) + tag
    return (first + bytes(417 - len(first))) + mp3(frames - 1)


def speech_bytes(text: str) -> bytes:
    """The audio answered for `text`: deterministic, not silent, several chunks long."""
    seed = text.encode() or b"-"
    return (seed * (50_000 // len(seed) + 1))[:50_000] + bytes(range(256)) * 40


def form_of(content_type: str, body: bytes) -> dict[str, tuple[bytes, str | None]]:
    """A multipart/form-data body's parts (name -> data, filename), read by the standard library."""
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    parts: dict[str, tuple[bytes, str | None]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            parts[name] = (payload if isinstance(payload, bytes) else b"", part.get_filename())
    return parts


class AudioStandIn(StandIn):
    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/audio/transcriptions", self._route(self._transcription))
        router.add_post("/v1/audio/translations", self._route(self._transcription))
        router.add_post("/v1/audio/speech", self._route(self._speech))
        super()._add_routes(router)

    @staticmethod
    def _refused(status: int, message: str, param: str | None = None) -> web.Response:
        error = {"message": message, "type": "invalid_request_error", "param": param, "code": None}
        return web.json_response({"error": error}, status=status)

    async def _transcription(self, call: _Call) -> web.StreamResponse:
        if call.record.headers.get("authorization") != f"Bearer {AUDIO_KEY}":
            return self._refused(401, "Incorrect API key provided.")
        kind = call.record.headers.get("content-type", "")
        if not kind.startswith("multipart/form-data"):
            return self._refused(400, "expected multipart/form-data")
        form = form_of(kind, call.record.body)
        if "file" not in form or form["file"][1] is None:
            return self._refused(400, "you must provide a file", "file")
        if "model" not in form:
            return self._refused(400, "you must provide a model parameter", "model")
        model = form["model"][0].decode()
        if model == "broken":
            return web.json_response(
                {"error": {"message": "The server had an error", "type": "server_error"}}, status=500
            )
        if form.get("stream", (b"", None))[0] == b"true":
            return await self._transcript_stream(call)
        fmt = form.get("response_format", (b"json", None))[0].decode()
        if fmt in ("text", "srt", "vtt"):
            return web.Response(text=TRANSCRIPT, content_type="text/plain")
        answer: dict[str, Any] = {"text": TRANSCRIPT}
        try:
            with wave.open(io.BytesIO(form["file"][0])) as w:
                seconds = w.getnframes() / w.getframerate()
        except (wave.Error, EOFError):
            seconds = 0.0  # this stand-in reads WAV only; the models that report usage are sent WAV
        if fmt == "verbose_json":
            answer.update(task="transcribe", language="english", duration=seconds, segments=[])
        elif model == "whisper-1":
            answer["usage"] = {"type": "duration", "seconds": math.ceil(seconds)}
        elif model == "gpt-4o-transcribe":
            answer["usage"] = {
                "type": "tokens",
                "input_tokens": AUDIO_TOKENS,
                "output_tokens": TEXT_TOKENS,
                "total_tokens": AUDIO_TOKENS + TEXT_TOKENS,
                "input_token_details": {"audio_tokens": AUDIO_TOKENS, "text_tokens": 0},
            }
        elif model == "bad-tokens":
            answer["usage"] = {"type": "tokens", "input_tokens": "12", "output_tokens": "x", "total_tokens": None}
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    async def _transcript_stream(self, call: _Call) -> web.StreamResponse:
        """gpt-4o-transcribe's stream: a delta a word, then `transcript.text.done` with the usage."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(call.request)
        words = TRANSCRIPT.split(" ")
        for i, word in enumerate(words):
            delta = {"type": "transcript.text.delta", "delta": word if i == 0 else " " + word}
            await resp.write(b"data: " + orjson.dumps(delta) + b"\n\n")
        usage = {"type": "tokens", "input_tokens": AUDIO_TOKENS, "output_tokens": TEXT_TOKENS}
        done = {"type": "transcript.text.done", "text": TRANSCRIPT, "usage": usage}
        await resp.write(b"data: " + orjson.dumps(done) + b"\n\n")
        await resp.write_eof()
        return resp

    async def _speech(self, call: _Call) -> web.StreamResponse:
        if call.record.headers.get("authorization") != f"Bearer {AUDIO_KEY}":
            return self._refused(401, "Incorrect API key provided.")
        p = call.payload
        if not isinstance(p.get("input"), str) or not p.get("voice") or not p.get("model"):
            return self._refused(400, "model, input and voice are required")
        data = speech_bytes(p["input"])
        resp = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        resp.enable_chunked_encoding()
        await resp.prepare(call.request)
        for i in range(0, len(data), SPEECH_CHUNK):
            await resp.write(data[i : i + SPEECH_CHUNK])
        await resp.write_eof()
        return resp
