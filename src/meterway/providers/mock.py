"""The built-in demo provider: answers in process, with no network and no API key.

It exists so that `meterway serve` answers on a fresh machine, and so that tests and benchmarks
have an upstream that costs nothing. Replies are deterministic (the same request gives the same
answer), usage figures are realistic (about four characters a token), streams come as one chunk a
word, and embeddings have a fixed dimension. It speaks the OpenAI format, so everything after it
(metering, stream relays, the Anthropic adapter) runs exactly as for a real upstream.

The provider is the OpenAI one; only its upstream differs: `MockUpstream`, an in-process
transport (as httpx's `MockTransport` is), answers the requests the provider builds. The request
path does not know the difference.
"""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import time
import wave
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from meterway.errors import BadRequest
from meterway.providers import audio, sse
from meterway.providers.base import Api, UpstreamRequest
from meterway.providers.openai import MORE_PATHS, PATHS, OpenAIProvider

if TYPE_CHECKING:
    import aiohttp

EMBEDDING_DIMENSIONS = 64
_REPLY = "This is the meterway demo model answering. You said: "


def _tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _vector(text: str, dimensions: int) -> list[float]:
    seed = hashlib.sha256(text.encode()).digest()
    raw = (seed * (dimensions * 4 // len(seed) + 1))[: dimensions * 4]
    values = [b / 255.0 - 0.5 for b in raw[::4]]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [round(v / norm, 6) for v in values]


class MockProvider(OpenAIProvider):
    """The OpenAI provider over the in-process `MockUpstream`."""

    family = "mock"

    def __init__(self, *, label: str, upstream_model: str) -> None:
        # chat's routes (the demo serves /v1/responses through the bridge, as any chat server),
        # rerank and moderations, images
        super().__init__(
            label=label,
            upstream_model=upstream_model,
            api_base="mock://local",
            api_key=None,
            routes=(*PATHS, *MORE_PATHS),
        )
        self.upstream = MockUpstream(upstream_model)


def _api_of(path: str) -> Api:
    """The endpoint a request was built for, from its URL's path (the OpenAI family's routes; the
    chat route is tried first, as it ends like the completions one)."""
    for api, route in {**PATHS, **MORE_PATHS}.items():
        if isinstance(api, Api) and path.endswith(route):
            return api
    raise KeyError(path)


def _rerank(body: dict[str, Any]) -> dict[str, Any]:
    """Jina's answer, as an OpenAI-compatible reranker gives it: documents by the share of their
    words that are the query's (ties in order), tokens for the query once per document."""
    query, documents = str(body["query"]), [str(d) for d in body["documents"]]
    words = set(query.lower().split())
    scored = sorted(
        ((sum(w in words for w in d.lower().split()) / (len(d.split()) or 1), i) for i, d in enumerate(documents)),
        key=lambda s: (-s[0], s[1]),
    )
    top_n = body.get("top_n")
    if isinstance(top_n, int):
        scored = scored[:top_n]
    tokens = sum(_tokens(query) + _tokens(d) for d in documents)
    results = [{"index": i, "relevance_score": round(score, 6)} for score, i in scored]
    return {"id": "mock-rerank", "results": results, "usage": {"total_tokens": tokens}}


def _moderation(body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's answer: nothing the demo reads is flagged."""
    given = body["input"]
    items = given if isinstance(given, list) else [given]
    result = {"flagged": False, "categories": {"violence": False}, "category_scores": {"violence": 0.0}}
    return {"id": "modr-mock", "model": body.get("model") or "omni-moderation-latest", "results": [result] * len(items)}


# ---------------------------------------------------------------- images


def _png(rgb: bytes) -> bytes:
    """A valid 1x1 PNG of one colour: the demo's image (small, and any image viewer opens it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8 bits, RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" + rgb))
        + chunk(b"IEND", b"")
    )


def _images(body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's image answer: `n` images of one colour picked by the prompt, as `b64_json`, or as
    a `data:` URL where the client asked for URLs (the demo has nowhere to host a file)."""
    prompt, n = str(body["prompt"]), body.get("n") or 1
    encoded = base64.b64encode(_png(hashlib.sha256(prompt.encode()).digest()[:3])).decode()
    image = (
        {"b64_json": encoded}
        if body.get("response_format") == "b64_json"
        else {"url": "data:image/png;base64," + encoded}
    )
    return {"created": int(time.time()), "data": [{**image, "revised_prompt": prompt}] * int(n)}


def _image_upload(body: bytes) -> dict[str, Any]:
    """An edit or a variation, answered as generation is: its colour picked by the prompt and the
    uploaded image together, so a different image or prompt gives a different picture."""
    parts = audio.parse_form(body)
    form = audio.fields(parts)
    seed = b"".join(p.data for p in parts if p.filename is not None) + form.get("prompt", "").encode()
    asked: dict[str, Any] = {"prompt": hashlib.sha256(seed).hexdigest()[:16], "n": int(form.get("n") or 1)}
    if "response_format" in form:
        asked["response_format"] = form["response_format"]
    answer = _images(asked)
    kept = {"revised_prompt": form["prompt"]} if "prompt" in form else {}
    answer["data"] = [{**{k: v for k, v in d.items() if k != "revised_prompt"}, **kept} for d in answer["data"]]
    return answer


# ---------------------------------------------------------------- audio

TRANSCRIPT = "This is the meterway demo model transcribing."
SPEECH_RATE = 8000  # Hz: the demo's speech is a short silence, 16-bit mono WAV


def _transcription(body: bytes) -> MockAnswer:
    """A fixed transcript, in the format asked for; its `usage` the file's duration, as OpenAI
    reports whisper-1's (none when its header does not tell)."""
    parts = audio.parse_form(body)
    form = audio.fields(parts)
    kind = form.get("response_format", "json")
    file = audio.upload(parts)
    if form.get("stream") == "true":  # as gpt-4o-transcribe streams: a delta a word, then the whole text
        ms = audio.duration_ms(file.data) if file is not None else None
        done: dict[str, Any] = {"type": "transcript.text.done", "text": TRANSCRIPT}
        if ms is not None:
            done["usage"] = {"type": "duration", "seconds": -(-ms // 1000)}
        words = TRANSCRIPT.split(" ")
        deltas = [{"type": "transcript.text.delta", "delta": w if i == 0 else " " + w} for i, w in enumerate(words)]
        return MockAnswer(chunks=tuple(sse.format_data(orjson.dumps(e)) for e in (*deltas, done)))
    if kind in audio.TEXT_FORMATS:
        answer = MockAnswer(TRANSCRIPT.encode())
        answer.content_type = "text/plain"
        return answer
    out: dict[str, Any] = {"text": TRANSCRIPT}
    ms = audio.duration_ms(file.data) if file is not None else None
    if ms is not None:
        if kind == "verbose_json":
            out.update(task="transcribe", language="english", duration=ms / 1000, segments=[])
        else:
            out["usage"] = {"type": "duration", "seconds": -(-ms // 1000)}
    return MockAnswer(orjson.dumps(out))


def speech_wav(characters: int) -> bytes:
    """A valid WAV of silence, 10 ms a character (at most 2 s)."""
    frames = SPEECH_RATE * min(characters, 200) // 100
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SPEECH_RATE)
        w.writeframes(b"\x00\x00" * frames)
    return out.getvalue()


def _speech(body: dict[str, Any]) -> MockAnswer:
    data = speech_wav(len(str(body["input"])))
    answer = MockAnswer(chunks=(data[: len(data) // 2], data[len(data) // 2 :]))
    answer.content_type = "audio/wav"
    return answer


class MockAnswer:
    """The demo's answer, all in memory: a body, or the SSE chunks of a stream."""

    __slots__ = ("_chunks", "_next", "body", "content_type", "status")

    def __init__(self, body: bytes = b"", chunks: tuple[bytes, ...] = ()) -> None:
        self.status = 200
        self.content_type = "text/event-stream" if chunks else "application/json"
        self.body = body
        self._chunks = chunks
        self._next = 0

    def header(self, name: str) -> str | None:
        return None

    async def read(self, bound: int, keep: int | None) -> bytes:
        return self.body

    def __aiter__(self) -> MockAnswer:
        return self

    async def __anext__(self) -> bytes:
        i = self._next
        if i >= len(self._chunks):
            raise StopAsyncIteration
        self._next = i + 1
        return self._chunks[i]

    def pending(self) -> bool:
        return False  # all here: a client that leaves cannot matter before it ends

    def close(self) -> None:
        self._next = len(self._chunks)

    def release(self) -> None:
        return None


class MockUpstream:
    """The demo model's upstream, in process: it reads the request as an OpenAI-compatible server
    would and answers in that format, with no network."""

    __slots__ = ("upstream_model",)

    def __init__(self, upstream_model: str) -> None:
        self.upstream_model = upstream_model

    async def send(
        self, request: UpstreamRequest, headers: Mapping[str, str], limit: aiohttp.ClientTimeout, label: str
    ) -> MockAnswer:
        """The demo answer. The mock reads the request's shape as a real upstream would (content
        parts, tools, input items); one it cannot read is a 400, as an upstream would answer it."""
        try:
            return self._answer(_api_of(request.url.path), request)
        except (AttributeError, TypeError, ValueError, KeyError) as e:
            raise BadRequest(f"The demo model cannot read this request: {e}") from None

    def _answer(self, api: Api, request: UpstreamRequest) -> MockAnswer:
        if api in (Api.TRANSCRIPTIONS, Api.TRANSLATIONS):
            return _transcription(request.body)
        if api in (Api.IMAGE_EDITS, Api.IMAGE_VARIATIONS):
            return MockAnswer(orjson.dumps(_image_upload(request.body)))
        body = orjson.loads(request.body)
        if api is Api.SPEECH:
            return _speech(body)
        if api is Api.EMBEDDINGS:
            return MockAnswer(orjson.dumps(self._embeddings(body)))
        if api is Api.RERANK:
            return MockAnswer(orjson.dumps(_rerank(body)))
        if api is Api.MODERATIONS:
            return MockAnswer(orjson.dumps(_moderation(body)))
        # images
        if api is Api.IMAGES:
            return MockAnswer(orjson.dumps(_images(body)))
        chat = api is Api.CHAT
        prompt, reply, tool = self._reply(body, chat)
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        words = reply.split(" ")
        if isinstance(limit, int) and limit > 0 and _tokens(reply) > limit:
            words = words[: max(1, limit)]
            reply, finish = " ".join(words), "length"
        else:
            finish = "tool_calls" if tool else "stop"
        usage = {
            "prompt_tokens": _tokens(prompt),
            "completion_tokens": _tokens(reply) if not tool else 12,
            "total_tokens": 0,
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        ident = "mock-" + hashlib.sha256(request.body).hexdigest()[:24]
        created = int(time.time())
        if not request.stream:
            return MockAnswer(orjson.dumps(self._whole(chat, ident, created, reply, tool, finish, usage)))
        return MockAnswer(chunks=self._chunks(body, chat, ident, created, words, tool, finish, usage))

    def _reply(self, body: dict[str, Any], chat: bool) -> tuple[str, str, dict[str, Any] | None]:
        if not chat:
            prompt = body.get("prompt", "")
            text = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
            return text, _REPLY + text[:60], None
        messages = body.get("messages") or []
        prompt = " ".join(_text_of(m.get("content")) for m in messages if isinstance(m, dict))
        last = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        tools = body.get("tools") or []
        choice = body.get("tool_choice", "auto")
        if tools and choice != "none":
            fn = tools[0].get("function", {})
            if isinstance(choice, dict):
                fn = {"name": choice.get("function", {}).get("name", fn.get("name"))}
            required = (fn.get("parameters") or {}).get("required") or []
            args = orjson.dumps({name: "demo" for name in required}).decode()
            return (
                prompt,
                "",
                {"id": "call_mock_1", "type": "function", "function": {"name": fn.get("name"), "arguments": args}},
            )
        reply = _REPLY + last[:60]
        fmt = (body.get("response_format") or {}).get("type")
        if fmt in ("json_object", "json_schema"):
            reply = orjson.dumps({"reply": reply}).decode()
        return prompt, reply, None

    def _whole(
        self,
        chat: bool,
        ident: str,
        created: int,
        reply: str,
        tool: dict[str, Any] | None,
        finish: str,
        usage: dict[str, int],
    ) -> dict[str, Any]:
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": reply or None, "refusal": None}
            if tool:
                message["tool_calls"] = [tool]
            choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": reply, "finish_reason": finish, "logprobs": None}
            kind = "text_completion"
        return {
            "id": ident,
            "object": kind,
            "created": created,
            "model": self.upstream_model,
            "choices": [choice],
            "usage": usage,
        }

    def _chunks(
        self,
        body: dict[str, Any],
        chat: bool,
        ident: str,
        created: int,
        words: list[str],
        tool: dict[str, Any] | None,
        finish: str,
        usage: dict[str, int],
    ) -> tuple[bytes, ...]:
        kind = "chat.completion.chunk" if chat else "text_completion"
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any] | str, reason: str | None = None) -> bytes:
            if chat:
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": reason}
            else:
                choice = {"index": 0, "text": delta, "finish_reason": reason}
            obj: dict[str, Any] = {
                "id": ident,
                "object": kind,
                "created": created,
                "model": self.upstream_model,
                "choices": [choice],
            }
            if with_usage:
                obj["usage"] = None
            return sse.format_data(orjson.dumps(obj))

        out: list[bytes] = []
        if chat:
            out.append(chunk({"role": "assistant", "content": ""}))
        if tool:
            out.append(chunk({"tool_calls": [{"index": 0, **tool}]}))
        else:
            for i, word in enumerate(words):
                piece = word if i == 0 else " " + word
                out.append(chunk({"content": piece} if chat else piece))
        out.append(chunk({} if chat else "", finish))
        if with_usage:
            out.append(
                sse.format_data(
                    orjson.dumps(
                        {
                            "id": ident,
                            "object": kind,
                            "created": created,
                            "model": self.upstream_model,
                            "choices": [],
                            "usage": usage,
                        }
                    )
                )
            )
        out.append(sse.DONE)
        return tuple(out)

    def _embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        raw = body.get("input")
        items: list[Any] = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
        dims = body.get("dimensions") or EMBEDDING_DIMENSIONS
        if not isinstance(dims, int) or not 1 <= dims <= 4096:
            raise BadRequest("dimensions must be an integer between 1 and 4096", param="dimensions")
        data = []
        tokens = 0
        for i, item in enumerate(items):
            text = item if isinstance(item, str) else " ".join(map(str, item))
            tokens += len(item) if isinstance(item, list) else _tokens(text)
            vec = _vector(text, dims)
            emb: Any = vec
            if body.get("encoding_format") == "base64":
                emb = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return {
            "object": "list",
            "data": data,
            "model": self.upstream_model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
