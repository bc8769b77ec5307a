"""Every OpenAI-compatible upstream: OpenAI itself, vLLM, TGI, KServe, Ollama, LM Studio, OpenRouter...

The client already speaks this format, so the body passes through as the bytes it came in. It is
decoded and re-encoded only when something must change: the upstream model name differs from the
name the client used, or a stream must ask for usage the client did not ask for (the gateway meters
every stream; the usage event is then dropped again before it reaches that client).
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Mapping
from typing import Any

import msgspec
import orjson
from yarl import URL

from meterway.errors import BadRequest
from meterway.providers import audio, images, rerank, responses_native, sse
from meterway.providers import billed as billed_out
from meterway.providers.base import (
    Api,
    Call,
    Parsed,
    Part,
    StreamRelay,
    UpstreamRequest,
    Usage,
    decode_object,
    not_counts,
    tokens,
)
from meterway.providers.common import Endpoint, HttpProvider, Route, unreadable
from meterway.providers.common import excerpt as excerpt  # where api.proxy and older callers import it

# ---------------------------------------------------------------- usage, decoded without building the rest


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None


class _CompletionDetails(msgspec.Struct):
    reasoning_tokens: int | None = None


class _WireUsage(msgspec.Struct):
    prompt_tokens: int | None = 0
    completion_tokens: int | None = 0
    total_tokens: int | None = 0
    prompt_tokens_details: _PromptDetails | None = None
    completion_tokens_details: _CompletionDetails | None = None


class _Envelope(msgspec.Struct):
    """Usage as honest providers write it: whole numbers, decoded straight into fields."""

    usage: _WireUsage | None = None


class _AnyEnvelope(msgspec.Struct):
    """Usage as any provider may write it, decoded as plain values to be judged (`base.tokens`):
    read only when the typed decoding above failed."""

    usage: Any = None


_envelope = msgspec.json.Decoder(_Envelope)
_any_envelope = msgspec.json.Decoder(_AnyEnvelope)


def _from_typed(u: _WireUsage) -> Usage:
    prompt = u.prompt_tokens or 0
    completion = u.completion_tokens or 0
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=u.total_tokens or prompt + completion,
        cached_tokens=(u.prompt_tokens_details.cached_tokens or 0) if u.prompt_tokens_details else 0,
        reasoning_tokens=(u.completion_tokens_details.reasoning_tokens or 0) if u.completion_tokens_details else 0,
    )


def _decode(body: bytes) -> Usage | None:
    """The `usage` of an OpenAI-format answer or chunk; every other field is skipped, not built.
    Raises msgspec.DecodeError when the body is not a JSON object."""
    try:
        typed = _envelope.decode(body).usage
    except msgspec.DecodeError:  # figures that are no whole numbers, or no JSON object at all
        return usage_from_wire(_any_envelope.decode(body).usage)
    return _from_typed(typed) if typed is not None else None


def usage_from_wire(u: object) -> Usage | None:
    """OpenAI's usage object as reported (see `base.tokens`); None when there is none."""
    if u is None:
        return None
    if not isinstance(u, dict):
        return not_counts()
    prompt = tokens(u.get("prompt_tokens"))
    completion = tokens(u.get("completion_tokens"))
    total = tokens(u.get("total_tokens")) or prompt + completion
    prompt_details = u.get("prompt_tokens_details")
    completion_details = u.get("completion_tokens_details")
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total,
        cached_tokens=tokens(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else 0,
        reasoning_tokens=(
            tokens(completion_details.get("reasoning_tokens")) if isinstance(completion_details, dict) else 0
        ),
    )


def decode_usage(body: bytes) -> Usage | None:
    """The `usage` of an OpenAI-format answer or chunk; None without one (or without JSON)."""
    try:
        return _decode(body)
    except msgspec.DecodeError:
        return None


_WHITESPACE = b" \t\r\n"


def find_usage_object(data: bytes, start: int = 0, end: int | None = None, *, last: bool = False) -> int:
    """Where a `"usage": {` member starts in `data` (the index of its quote), whatever whitespace a
    server puts around the colon (pretty-printed bodies too); -1 if there is none. The byte search
    for `"usage"` is what keeps this cheap; the few bytes after it are then looked at one by one.
    `"usage"` followed by a colon cannot occur inside a JSON string (the quotes would be escaped)."""
    stop = len(data) if end is None else end
    i = data.rfind(b'"usage"', start, stop) if last else data.find(b'"usage"', start, stop)
    while i >= 0:
        j = _skip_space(data, i + 7, stop)
        if j < stop and data[j] == 0x3A:  # ':'
            j = _skip_space(data, j + 1, stop)
            if j < stop and data[j] == 0x7B:  # '{'
                return i
        i = data.rfind(b'"usage"', start, i) if last else data.find(b'"usage"', i + 7, stop)
    return -1


def _skip_space(data: bytes, i: int, stop: int) -> int:
    while i < stop and data[i] in _WHITESPACE:
        i += 1
    return i


def usage_from_tail(tail: bytes) -> Usage | None:
    """The usage of a stream, read from its last few KB: OpenAI sends it in the last event before
    [DONE]."""
    i = find_usage_object(tail, last=True)
    if i < 0:
        return None
    start = max(tail.rfind(b"\n\n", 0, i), tail.rfind(b"\r\n\r\n", 0, i), 0)
    end = min((e for e in (tail.find(b"\n\n", i), tail.find(b"\r\n\r\n", i)) if e > 0), default=len(tail))
    return decode_usage(sse.parse_event(tail[start:end]).data)


# ---------------------------------------------------------------- streams

_TAIL = 8192


class PassthroughRelay:
    """The client asked for what the upstream sends: relay bytes untouched, all but the final
    `[DONE]` (held by `sse.Finale`, whose search is the only one each read gets). The last chunks
    are kept by reference (no copying per chunk) and joined once, at the end, to read the usage."""

    __slots__ = ("_final", "_kept", "_size", "done", "usage")

    def __init__(self) -> None:
        self._final = sse.Finale(anthropic=False)
        self._kept: deque[bytes] = deque()
        self._size = 0
        self.done = False
        self.usage: Usage | None = None

    def feed(self, data: bytes) -> bytes:
        final = self._final
        data = final.feed(data)
        self.done = final.done
        if data:
            kept = self._kept
            kept.append(data)
            self._size += len(data)
            while self._size - len(kept[0]) >= _TAIL:
                self._size -= len(kept.popleft())
        return data

    def finish(self) -> bytes:
        closing = self._final.finish()
        self.usage = usage_from_tail(b"".join(self._kept) + closing)
        return closing

    def settle(self, billed: Usage, closing: bytes) -> bytes:
        """This relay serves a client that asked for usage (else the gateway asked, and strips it):
        the upstream sent none, so the billed figures come in OpenAI's usage chunk, before `[DONE]`.
        A usage the upstream sent that was no count already passed: nothing is added to it."""
        if self.usage is not None:
            return closing
        return billed_out.usage_chunk(billed_out.last_chunk(b"".join(self._kept)), billed) + closing


class UsageStrippingRelay:
    """The gateway asked for usage the client did not ask for: the usage-only event is metered and
    dropped (a usage object beside a choice is metered and taken out of its chunk, the choice kept),
    and the `"usage":null` the upstream then adds to every chunk is removed again, so the
    client receives the stream it asked for. `[DONE]` is held for `finish`, and nothing after it
    is relayed."""

    __slots__ = ("_final", "_split", "done", "usage")

    def __init__(self) -> None:
        self._split = sse.EventSplitter()
        self._final = b""
        self.done = False
        self.usage: Usage | None = None

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return b""
        out: list[bytes] = []
        for raw in self._split.feed(data):
            at = raw.find(b'"usage"')  # the one search of an event; the rest looks after it
            if at < 0:
                if sse.is_done(raw):
                    self._final, self.done = raw + b"\n\n", True
                    break
                out.append(raw + b"\n\n")
                continue
            if raw.startswith(b',"usage":null', at - 1) and raw.find(b'"usage"', at + 12) < 0:
                # what the upstream adds to every chunk once asked for usage, and nothing else
                out.append(raw[: at - 1] + raw[at + 12 :] + b"\n\n")
                continue
            if find_usage_object(raw, at) >= 0:
                event = sse.parse_event(raw)
                if _is_usage_only(event.data):
                    self.usage = decode_usage(event.data)
                    continue
                beside = _without_usage(event.data)
                if beside is not None:  # usage in the finish_reason chunk (LiteLLM): metered, the choice kept
                    self.usage, rest = beside
                    out.append(_with_data(raw, rest) + b"\n\n")
                    continue
            raw = raw.replace(b',"usage":null', b"")
            if b'"usage"' in raw:  # written with spaces, or first: rarely, so looked for only then
                raw = _USAGE_NULL.sub(b"", raw)
            out.append(raw + b"\n\n")
        return b"".join(out)

    def finish(self) -> bytes:
        if self.done:
            return self._final
        rest = self._split.rest()
        return rest + b"\n\n" if rest else b""

    def settle(self, billed: Usage, closing: bytes) -> bytes:
        return closing  # the client did not ask for usage


_USAGE_NULL = re.compile(rb'\s*,\s*"usage"\s*:\s*null\b|"usage"\s*:\s*null\s*,\s*')


class _Choices(msgspec.Struct):
    choices: list[msgspec.Raw] | None = None


_choices = msgspec.json.Decoder(_Choices)


def _is_usage_only(data: bytes) -> bool:
    try:
        return not _choices.decode(data).choices
    except msgspec.DecodeError:
        return False


def _without_usage(data: bytes) -> tuple[Usage | None, bytes] | None:
    """A chunk that carries a usage object beside its choices (LiteLLM and some servers send the
    finish_reason and the usage together): its usage, and the chunk re-encoded without its `usage`
    member (OpenAI sends a client that did not ask for usage no `usage` key at all, and the choice
    must still reach it).
    None when the chunk has no top-level usage object (a nested `"usage"` is left alone).
    Rare (the last chunk, as a rule), so decoded whole, and by the standard library: orjson
    reads an integer beyond 64 bits as a float, which would change a figure the client is owed."""
    try:
        obj = json.loads(data)
    except ValueError:  # not JSON: passed on as it came, like any chunk the gateway cannot read
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("usage"), dict):
        return None
    usage = usage_from_wire(obj.pop("usage"))  # read here: msgspec refuses an escaped lone surrogate
    # ASCII out (non-ASCII escaped): a lone surrogate the upstream escaped stays valid to write
    return usage, json.dumps(obj, separators=(",", ":")).encode()


def _with_data(raw: bytes, data: bytes) -> bytes:
    """The event `raw` (without its separator) with `data` as its one data line, its other fields
    (`id:`, `event:`, comments) kept as they came."""
    if raw.startswith(b"data:") and b"\n" not in raw:  # one data line: nearly every event
        return b"data: " + data
    kept = [line for line in raw.splitlines() if not line.startswith(b"data:")]
    return b"\n".join([*kept, b"data: " + data])


# ---------------------------------------------------------------- the provider


def _object(label: str, body: bytes) -> dict[str, Any]:
    """A whole answer that must be a JSON object (the gateway reads or rewrites it)."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise unreadable(label, body) from None
    if not isinstance(answer, dict):
        raise unreadable(label, body)
    return answer


PATHS: Mapping[Route, str] = {
    Api.CHAT: "/chat/completions",
    Api.COMPLETIONS: "/completions",
    Api.EMBEDDINGS: "/embeddings",
}
RESPONSES_PATH = "/responses"
# routes an OpenAI-compatible server may serve beside those (not Azure's deployments): OpenAI's
# moderations, and the rerank that vLLM, Jina and the like serve in Jina's shape
MORE_PATHS: Mapping[Route, str] = {
    Api.MODERATIONS: "/moderations",
    Api.RERANK: "/rerank",
    # images
    Api.IMAGES: "/images/generations",
    Api.IMAGE_EDITS: "/images/edits",
    Api.IMAGE_VARIATIONS: "/images/variations",
    # audio: OpenAI's transcriptions and translations (multipart uploads) and speech (audio bytes back)
    Api.TRANSCRIPTIONS: "/audio/transcriptions",
    Api.TRANSLATIONS: "/audio/translations",
    Api.SPEECH: "/audio/speech",
}
# Every route an OpenAI-compatible server may serve. Most speak only the first three: the registry
# builds each deployment with the routes its server speaks (`HttpProvider`'s `routes`).
ENDPOINT = Endpoint({**PATHS, **MORE_PATHS, Api.RESPONSES: RESPONSES_PATH})
_METERED_STREAMS = (Api.CHAT, Api.COMPLETIONS)
_UPLOADS = (Api.TRANSCRIPTIONS, Api.TRANSLATIONS)
_IMAGE_UPLOADS = (Api.IMAGE_EDITS, Api.IMAGE_VARIATIONS)


def _parts(call: Call) -> tuple[Part, ...] | list[Part]:
    """An upload's parts as its head parsed them (once, with the checks); parsed here only for a
    head built elsewhere without them."""
    return call.head.parts if call.head.parts is not None else audio.parse_form(call.body)


class OpenAIProvider(HttpProvider):
    """One OpenAI-compatible deployment: the client's body passes through (`upstream_body`)."""

    family = "openai"
    endpoint = ENDPOINT

    def _needs_usage(self, call: Call) -> bool:
        return call.head.stream and not call.head.include_usage and call.api in _METERED_STREAMS

    def upstream_body(self, call: Call) -> bytes:
        """The body as the upstream needs it; the client's own bytes whenever nothing must change."""
        inject = self._needs_usage(call)
        if call.head.model == self.upstream_model and not inject:
            return call.body
        obj = orjson.loads(call.body)
        obj["model"] = self.upstream_model
        if inject:
            options = obj.get("stream_options")
            obj["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        return orjson.dumps(obj)

    def encode(self, call: Call) -> tuple[Route, bytes]:
        if call.api is Api.RERANK:
            return call.api, orjson.dumps(rerank.compatible_request(decode_object(call.body), self.upstream_model))
        return call.api, self.upstream_body(call)

    def build_request(self, call: Call) -> UpstreamRequest:
        """Uploads (audio's, image edits' and variations'): the client's form rebuilt with the
        upstream's model name (`providers.audio.form_body`); speech's answer is always relayed as a
        stream of bytes."""
        if call.api in _UPLOADS or call.api in _IMAGE_UPLOADS:
            body, content_type = audio.form_body(_parts(call), self.upstream_model)
            headers = {**self.headers, "Content-Type": content_type}
            return UpstreamRequest(self.endpoint.method, self.urls[call.api], headers, body, call.head.stream)
        if call.api is Api.SPEECH:
            return UpstreamRequest(
                self.endpoint.method, self.urls[call.api], self.headers, self.upstream_body(call), True
            )
        return super().build_request(call)

    def parse_response(self, call: Call, body: bytes) -> Parsed:
        if call.api in _UPLOADS:
            return audio.transcription_answer(_parts(call), body)
        if call.api is Api.RERANK:
            answer = _object(self.label, body)
            out, ranked = rerank.response(answer, decode_object(call.body))
            return Parsed(orjson.dumps(out), ranked)
        if call.api is Api.MODERATIONS:  # OpenAI charges nothing for it and reports no usage
            _object(self.label, body)
            return Parsed(body, Usage())
        # images
        if call.api is Api.IMAGES or call.api in _IMAGE_UPLOADS:  # relayed as it came, read for the ledger
            asked = audio.fields(_parts(call)) if call.api in _IMAGE_UPLOADS else decode_object(call.body)
            drawn = images.usage(_object(self.label, body), asked)
            if drawn is None:
                raise unreadable(self.label, body)
            return Parsed(body, drawn)
        try:
            usage = responses_native.decode_usage(body) if call.api is Api.RESPONSES else _decode(body)
        except msgspec.DecodeError:
            raise unreadable(self.label, body) from None
        return Parsed(body, usage)

    def open_stream(self, call: Call) -> StreamRelay:
        if call.api in _UPLOADS:
            file = audio.upload(_parts(call))
            return audio.TranscriptionRelay(file.data if file is not None else b"")
        if call.api is Api.RESPONSES:
            return responses_native.ResponsesPassthroughRelay()
        return UsageStrippingRelay() if self._needs_usage(call) else PassthroughRelay()

    def resource_request(self, method: str, path: str, query: str = "", body: bytes = b"") -> UpstreamRequest:
        """A call on the upstream's stored responses (`ResponsesResources`): `path` follows the
        Responses root, e.g. `/responses/{id}`, `/responses/{id}/cancel`, `/responses/input_tokens`;
        `query` is the client's query string, passed on (a `stream=true` retrieval streams)."""
        url = self.urls.get(Api.RESPONSES)
        if url is None:
            raise BadRequest(f"Deployment '{self.label}' does not serve the Responses API.")
        root = str(url.with_query(None)).removesuffix(RESPONSES_PATH)
        target = URL(root + path, encoded=False)
        params = [*url.query.items(), *URL("?" + query).query.items()] if query or url.query else []
        if params:
            target = target.with_query(params)
        stream = any(k == "stream" and v.lower() == "true" for k, v in params)
        return UpstreamRequest(method, target, self.headers, body, stream)
