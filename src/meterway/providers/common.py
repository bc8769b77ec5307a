"""What every HTTP provider family shares: its endpoint as data, one constructor, and the reading
of upstream errors.

A family is an `Endpoint` (where its API lives, which path serves which `Api`, how the key is sent)
plus its translation (`HttpProvider.encode`, `parse_response`, `open_stream`). URLs and headers are
built here, once per deployment at config load, the same way for every family, so a new family
writes no constructor and no URL or header code. Upstream errors are read here too, and given their
meaning (`errors.UpstreamTransient` and its kin) once, so routing decides retries by class.
"""

from __future__ import annotations

import base64
import html
import re
import struct
import time
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import msgspec
import orjson
from yarl import URL

from meterway.errors import (
    ConfigError,
    ContentPolicyViolation,
    ContextWindowExceeded,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
    UpstreamUnreadable,
)
from meterway.providers import billed as billed_out
from meterway.providers import sse
from meterway.providers.base import Api, Call, Parsed, StreamRelay, UpstreamRequest, Usage, decode_object

if TYPE_CHECKING:
    from meterway.config.secret import Secret

JSON_HEADERS: Mapping[str, str] = MappingProxyType({"Content-Type": "application/json"})
_NONE: Mapping[str, str] = MappingProxyType({})

Route = Api | str  # an Api names its own route; a string names a variant a family picks (Gemini's stream)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a family's API lives and how it is addressed: data, read once per deployment.

    The URL of a route is `base` (ending in one of `versions`, the first appended when it ends in
    none) + `root` (with `{model}`: the upstream model, less `model_prefix`) + its path, plus
    `query` (with `{api_version}`: the deployment's, else `api_version`)."""

    paths: Mapping[Route, str]  # the routes it serves; an Api key means the family supports that Api
    default_base: str | None = None
    versions: tuple[str, ...] = ()
    root: str = ""
    model_prefix: str = ""
    auth: tuple[str, str] = ("Authorization", "Bearer ")  # header name and what precedes the key
    headers: Mapping[str, str] = field(default_factory=lambda: JSON_HEADERS)
    query: Mapping[str, str] = field(default_factory=lambda: _NONE)
    api_version: str | None = None
    method: str = "POST"
    # routes whose path follows the base directly, without `root` and `query` (Azure's v1 Responses API)
    own_paths: Mapping[Route, str] = field(default_factory=lambda: MappingProxyType({}))

    def urls(self, api_base: str | None, model: str, api_version: str | None) -> dict[Route, URL]:
        base = (api_base or self.default_base or "").rstrip("/")
        if not base:
            raise ConfigError("this provider needs api_base (no public default)", param="api_base")
        if self.versions and not base.endswith(self.versions):
            base += self.versions[0]
        root = base + self.root.format(model=model.removeprefix(self.model_prefix))
        query = {name: value.format(api_version=api_version or self.api_version) for name, value in self.query.items()}
        urls: dict[Route, URL] = {}
        for route, path in self.paths.items():
            url = URL(root + path)
            urls[route] = url.update_query(query) if query else url
        for route, path in self.own_paths.items():
            urls[route] = URL(base + path)
        return urls

    def headers_for(self, api_key: Secret | None, extra_headers: Mapping[str, str] | None) -> dict[str, str]:
        headers = dict(self.headers)
        if api_key:
            name, scheme = self.auth
            headers[name] = scheme + api_key.reveal()
        headers.update(extra_headers or {})
        return headers


class HttpProvider:
    """One deployment of a family that answers over HTTP: its URLs and headers, resolved from the
    family's `endpoint` when the config is loaded. A family module sets `family` and `endpoint` and
    implements the translation; it has no constructor of its own."""

    family = ""
    endpoint: Endpoint

    def __init__(
        self,
        *,
        label: str,
        upstream_model: str,
        api_base: str | None,
        api_key: Secret | None,
        api_version: str | None = None,
        extra_headers: Mapping[str, str] | None = None,
        routes: Collection[Route] | None = None,
    ) -> None:
        """`routes`: the ones of the family's endpoint this deployment serves (None: all of them),
        for the families whose servers differ in what they speak (the Responses API)."""
        self.label = label
        self.upstream_model = upstream_model
        urls = self.endpoint.urls(api_base, upstream_model, api_version)
        self.urls = urls if routes is None else {r: u for r, u in urls.items() if r in routes}
        self.headers = self.endpoint.headers_for(api_key, extra_headers)

    def supports(self, api: Api) -> bool:
        return api in self.urls

    # The family's translation: pure, no I/O.

    def encode(self, call: Call) -> tuple[Route, bytes]:
        """The route a call goes to and the body the upstream receives."""
        raise NotImplementedError

    def parse_response(self, call: Call, body: bytes) -> Parsed:
        """A whole 2xx answer in the client's format, with its usage."""
        raise NotImplementedError

    def open_stream(self, call: Call) -> StreamRelay:
        """The state of one stream: upstream events in, the client's events out."""
        raise NotImplementedError

    def build_request(self, call: Call) -> UpstreamRequest:
        route, body = self.encode(call)
        return UpstreamRequest(self.endpoint.method, self.urls[route], self.headers, body, call.head.stream)

    def map_error(self, call: Call, status: int, body: bytes) -> UpstreamError:
        return error_from_body(status, body, self.label)


# ---------------------------------------------------------------- upstream errors, read once


class _WireError(msgspec.Struct):
    message: str | None = None
    type: str | None = None
    param: str | None = None
    code: str | int | None = None


class _ErrorEnvelope(msgspec.Struct):
    """The error shapes the families use: OpenAI's and Anthropic's `error` object, Gemini's (with a
    numeric code), Cohere's bare `message`, and the `detail` of FastAPI-based servers."""

    error: _WireError | str | None = None
    message: str | None = None
    detail: str | None = None


_error_envelope = msgspec.json.Decoder(_ErrorEnvelope)

_CONTEXT_CODES = frozenset({"context_length_exceeded", "context_window_exceeded", "string_above_max_length"})
_CONTEXT_WORDS = (
    "context length",
    "context window",
    "maximum context",
    "too many tokens",
    "prompt is too long",  # Anthropic
    "exceeds the maximum number of tokens",  # Gemini: "The input token count (…) exceeds the maximum…"
)
_POLICY_CODES = frozenset({"content_policy_violation", "content_filter"})
_POLICY_WORDS = ("content policy", "content management policy", "content_filter", "safety system")


def error_kind(status: int, message: str, code: str | None) -> type[UpstreamError]:
    """What an upstream's error answer means. A 400 is read for the context-window and
    content-policy errors the providers send (by code, else by the phrases they use), once, here."""
    if status >= 500 or status == 408:
        return UpstreamUnavailable
    if status == 429:
        return UpstreamRateLimited
    if status == 400:
        lowered = message.lower()
        if code in _CONTEXT_CODES or any(w in lowered for w in _CONTEXT_WORDS):
            return ContextWindowExceeded
        if code in _POLICY_CODES or any(w in lowered for w in _POLICY_WORDS):
            return ContentPolicyViolation
    return UpstreamRejected


def error_from_body(status: int, body: bytes, deployment: str) -> UpstreamError:
    """An upstream error answer as the UpstreamError it means, keeping the upstream's message, type
    and code."""
    message = type_ = param = code = None
    try:
        env = _error_envelope.decode(body)
    except msgspec.DecodeError:
        env = None
    if env is not None:
        if isinstance(env.error, _WireError):
            message, type_, param = env.error.message, env.error.type, env.error.param
            code = None if env.error.code is None else str(env.error.code)
        elif isinstance(env.error, str):
            message = env.error
        message = message or env.message or env.detail
    message = excerpt(message.encode()) if message else excerpt(body)
    if not message:
        message = f"HTTP {status}"
    if status >= 500:
        message = f"Upstream deployment '{deployment}' failed with HTTP {status}: {message}"
    kind = error_kind(status, message, code)
    return kind(message, deployment=deployment, upstream_status=status, error_type=type_, param=param, code=code)


def unreadable(deployment: str, body: bytes, why: str = "is not a JSON object") -> UpstreamError:
    """A 2xx answer the gateway cannot read: the upstream's failure, a 502, never relayed as a 200."""
    return UpstreamUnreadable(
        f"Upstream deployment '{deployment}' answered with a body that {why}: {excerpt(body) or 'empty'}",
        deployment=deployment,
        upstream_status=200,
    )


EXCERPT_CHARS = 300  # of an upstream's error text quoted to the client
_LOOKED_AT = 16_384  # bytes of an error body read for it: an error page is summarised, not echoed
_MARKUP = re.compile(rb"<(script|style)\b.*?</\1\s*>|<!--.*?-->|<[^>]*>", re.S | re.I)


def excerpt(body: bytes) -> str:
    """A short plain-text summary of an upstream's error text: markup (an HTML error page) taken out,
    entities and whitespace folded, at most `EXCERPT_CHARS` characters."""
    head = body[:_LOOKED_AT]
    if b"<" in head:
        head = _MARKUP.sub(b" ", head)
    text = " ".join(html.unescape(head.decode("utf-8", "replace")).split())
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "\u2026"


# ---------------------------------------------------------------- OpenAI's format, for the families that translate


def text_of(content: Any) -> str:
    """The text of an OpenAI message's content: the string, or its text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def named_json_events(split: sse.EventSplitter, data: bytes) -> Iterator[tuple[str, dict[str, Any]]]:
    """The name and JSON object of each event that `data` completes. An event without data, or
    whose data is no JSON object, has nothing to translate and is skipped."""
    for raw in split.feed(data):
        event = sse.parse_event(raw)
        if not event.data:
            continue
        try:
            payload = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            continue
        if isinstance(payload, dict):
            yield event.name, payload


def json_events(split: sse.EventSplitter, data: bytes) -> Iterator[dict[str, Any]]:
    """The JSON objects of the events that `data` completes, for families whose events are unnamed."""
    for _, payload in named_json_events(split, data):
        yield payload


class ChatChunks:
    """The OpenAI chat chunks of one translated stream: one id, one `created`, the client's model."""

    __slots__ = ("created", "id", "model")

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def chunk(self, choices: list[dict[str, Any]], usage: Mapping[str, Any] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            chunk["usage"] = usage
        return sse.format_data(orjson.dumps(chunk))

    def usage_chunk(self, billed: Usage) -> bytes:
        """The usage chunk of a stream the upstream reported no usage for: the ledger's count."""
        return billed_out.usage_chunk({"id": self.id, "created": self.created, "model": self.model}, billed)


def wants_base64(call: Call) -> bool:
    """Whether an embeddings request asked for `encoding_format: "base64"` (decoded only when the
    word is in the body at all)."""
    return b'"base64"' in call.body and decode_object(call.body).get("encoding_format") == "base64"


def embedding_items(vectors: Iterable[list[float]], as_base64: bool) -> list[dict[str, Any]]:
    """OpenAI's `data` of an embeddings answer; base64 is the little-endian float32 bytes."""
    return [
        {
            "object": "embedding",
            "index": i,
            "embedding": base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() if as_base64 else v,
        }
        for i, v in enumerate(vectors)
    ]
