"""Google Vertex AI as an upstream: Gemini (Google's models) and Claude (Anthropic's, as a Vertex
partner model), behind a Google access token.

Vertex addresses a model as
`https://{location}-aiplatform.googleapis.com/v1/projects/{project}/locations/{location}/publishers/{google|anthropic}/models/{model}:{method}`
(location `global`: host `aiplatform.googleapis.com`). Only the URL and the bearer token are
Vertex's own; the bodies are the families' this gateway already translates:

- Gemini (`vertex_ai/gemini-2.5-pro`): `:generateContent`, `:streamGenerateContent?alt=sse`, the
  Gemini API's bodies and answers (`providers.gemini`). Embeddings (`vertex_ai/text-embedding-005`,
  `gemini-embedding-001`) go to `:predict`, one instance per input, and report their tokens per
  prediction (`statistics.token_count`), which the ledger records.
- Claude (`vertex_ai/claude-sonnet-4@20250514`): `:rawPredict` and `:streamRawPredict`, Anthropic's
  Messages body with `anthropic_version: "vertex-2023-10-16"` and no `model` (it is in the URL);
  answers and events are Anthropic's own (`providers.anthropic`).

A configured `api_base` replaces the host (`https://my-proxy.example` + the path above); one that
already holds `/models/` is taken, as LiteLLM takes it, as the model's whole address, and the method
is appended to it after a colon.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import orjson
from yarl import URL

from meterway.errors import BadRequest
from meterway.providers import anthropic_format as fmt
from meterway.providers.anthropic import COUNT_TOKENS, AnthropicProvider
from meterway.providers.base import Api, Call, Parsed, UpstreamRequest, Usage, decode_object, tokens
from meterway.providers.common import JSON_HEADERS, Endpoint, Route, embedding_items, wants_base64
from meterway.providers.gemini import GeminiProvider
from meterway.providers.google_auth import GoogleToken
from meterway.providers.token_input import embedding_texts

ANTHROPIC_VERSION = "vertex-2023-10-16"  # what Vertex wants in the body (not a header)
DEFAULT_LOCATION = "us-central1"  # LiteLLM's default when none is configured
PLACEHOLDER_BASE = "https://aiplatform.googleapis.com"  # the registry's row; the real host is per location
# what goes into the host and the path: a location is a region name (or `global`); a project id is
# Google's (6-30 letters, digits and hyphens, starting with a letter), optionally domain-scoped
# (`example.com:my-project`, legacy). Anything else could redirect the token to another host.
LOCATION = re.compile(r"[a-z0-9-]+")
PROJECT = re.compile(r"(?:[a-z0-9-]+(?:\.[a-z0-9-]+)+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]")
EMBEDDING_PREFIXES = ("text-embedding", "text-multilingual-embedding", "gemini-embedding", "multimodalembedding")


def host(location: str) -> str:
    return (
        "https://aiplatform.googleapis.com" if location == "global" else f"https://{location}-aiplatform.googleapis.com"
    )


def publisher(model: str) -> str:
    """Whose model it is, from its name as LiteLLM users write it (`claude-*` is Anthropic's)."""
    return "anthropic" if model.startswith("claude") else "google"


def model_root(api_base: str | None, project: str, location: str, model: str) -> str:
    """The model's address, to which `:{method}` is appended."""
    base = (api_base or "").rstrip("/")
    if "/models/" in base:
        return base
    return (
        f"{base or host(location)}/v1/projects/{project}/locations/{location}"
        f"/publishers/{publisher(model)}/models/{quote(model, safe='@')}"
    )


def _endpoint(paths: Mapping[Route, str]) -> Endpoint:
    # the key slot is unused: the bearer token is the holder's, set per request
    return Endpoint(paths, auth=("Authorization", "Bearer "), headers=JSON_HEADERS)


GEMINI_ENDPOINT = _endpoint(
    {Api.CHAT: ":generateContent", "stream": ":streamGenerateContent?alt=sse", Api.EMBEDDINGS: ":predict"}
)
CLAUDE_ENDPOINT = _endpoint({Api.CHAT: ":rawPredict", Api.MESSAGES: ":rawPredict", "stream": ":streamRawPredict"})


class _Vertex:
    """What both Vertex families share: the URLs (built once, at config load) and the token."""

    credentials: GoogleToken
    root: str  # the model's address, before `:{method}`: what the UI and /model/info show as its base
    urls: dict[Route, URL]
    headers: dict[str, str]

    def _authorized(self, request: UpstreamRequest) -> UpstreamRequest:
        return replace(request, headers={**request.headers, "Authorization": self.credentials.authorization()})


def _urls(endpoint: Endpoint, root: str, routes: Collection[Route] | None) -> dict[Route, URL]:
    return {r: URL(root + path) for r, path in endpoint.paths.items() if routes is None or r in routes}


class VertexGeminiProvider(_Vertex, GeminiProvider):
    family = "vertex_ai"
    endpoint = GEMINI_ENDPOINT

    def __init__(
        self,
        *,
        label: str,
        upstream_model: str,
        root: str,
        credentials: GoogleToken,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.label, self.upstream_model, self.root = label, upstream_model, root  # no HttpProvider constructor
        embedding = upstream_model.startswith(EMBEDDING_PREFIXES)
        self.urls = _urls(self.endpoint, root, (Api.EMBEDDINGS,) if embedding else (Api.CHAT, "stream"))
        self.headers = self.endpoint.headers_for(None, extra_headers)
        self.credentials = credentials

    def encode(self, call: Call) -> tuple[Route, bytes]:
        if call.api is not Api.EMBEDDINGS:
            return super().encode(call)
        request = decode_object(call.body)
        texts = embedding_texts(request.get("input"), call.head.model, "Vertex AI")
        instance: dict[str, Any] = {}
        if request.get("task_type"):
            instance["task_type"] = request["task_type"]
        body: dict[str, Any] = {"instances": [{"content": t, **instance} for t in texts]}
        if request.get("dimensions"):
            body["parameters"] = {"outputDimensionality": request["dimensions"]}
        return call.api, orjson.dumps(body)

    def build_request(self, call: Call) -> UpstreamRequest:
        return self._authorized(super().build_request(call))

    def parse_response(self, call: Call, body: bytes) -> Parsed:
        if call.api is not Api.EMBEDDINGS:
            return super().parse_response(call, body)
        answer = orjson.loads(body)
        predictions = answer.get("predictions") if isinstance(answer, dict) else None
        vectors: list[list[float]] = []
        counted = 0
        reported = False
        for p in predictions if isinstance(predictions, list) else []:
            found = (p.get("embeddings") or {}) if isinstance(p, dict) else {}
            vectors.append(found.get("values") or [])
            statistics = found.get("statistics")
            if isinstance(statistics, dict) and "token_count" in statistics:
                reported = True
                n = tokens(statistics["token_count"])
                counted = counted + n if min(counted, n) >= 0 else min(counted, n)
        usage = Usage(counted, 0, counted) if reported else None  # else the ledger counts them
        out = {
            "object": "list",
            "data": embedding_items(vectors, wants_base64(call)),
            "model": self.upstream_model,
            "usage": {"prompt_tokens": max(counted, 0), "total_tokens": max(counted, 0)},
        }
        return Parsed(orjson.dumps(out), usage)


class VertexClaudeProvider(_Vertex, AnthropicProvider):
    family = "vertex_ai"
    endpoint = CLAUDE_ENDPOINT

    def __init__(
        self,
        *,
        label: str,
        upstream_model: str,
        root: str,
        credentials: GoogleToken,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.label, self.upstream_model, self.root = label, upstream_model, root
        self.urls = _urls(self.endpoint, root, None)
        # Vertex counts tokens at the publisher's own `count-tokens` model, the model named in the body
        self.urls[COUNT_TOKENS] = URL(root.rsplit("/models/", 1)[0] + "/models/count-tokens:rawPredict")
        self.headers = self.endpoint.headers_for(None, extra_headers)
        self.credentials = credentials

    def encode(self, call: Call) -> tuple[Route, bytes]:
        try:
            request = decode_object(call.body)
            if call.api is not Api.MESSAGES:
                request = fmt.chat_to_messages_request(request, self.upstream_model)
        except fmt.TranslationError as e:
            raise BadRequest(str(e), param=e.param) from None
        request.pop("model", None)
        request["anthropic_version"] = ANTHROPIC_VERSION
        return ("stream" if call.head.stream else call.api), orjson.dumps(request)

    def build_request(self, call: Call) -> UpstreamRequest:
        return self._authorized(super().build_request(call))

    def count_tokens_request(self, body: bytes, model: str) -> UpstreamRequest:
        request = decode_object(body)
        request["model"] = self.upstream_model
        request.pop("anthropic_version", None)
        upstream = UpstreamRequest("POST", self.urls[COUNT_TOKENS], self.headers, orjson.dumps(request), False)
        return self._authorized(upstream)


def build(
    *,
    label: str,
    upstream_model: str,
    api_base: str | None,
    project: str,
    location: str,
    credentials: GoogleToken,
    extra_headers: Mapping[str, str] | None = None,
) -> VertexGeminiProvider | VertexClaudeProvider:
    """The deployment's provider: Claude's for `claude-*`, else Gemini's (embeddings included)."""
    root = model_root(api_base, project, location, upstream_model)
    family = VertexClaudeProvider if publisher(upstream_model) == "anthropic" else VertexGeminiProvider
    return family(
        label=label, upstream_model=upstream_model, root=root, credentials=credentials, extra_headers=extra_headers
    )
