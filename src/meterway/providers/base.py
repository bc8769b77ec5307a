"""The one small interface every provider family implements, and the values that cross it.

A provider translates between the client's API and one upstream family. It does no I/O and keeps
no state beyond its deployment's resolved URL, headers and model name: the shared transport in
`meterway.providers.transport` does the HTTP, so a new family is one module of pure translation
(plus its `Endpoint`, in `meterway.providers.common`) that can be unit-tested offline.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import orjson

from meterway.errors import BadRequest

if TYPE_CHECKING:
    from yarl import URL

    from meterway.errors import UpstreamError


class Api(enum.Enum):
    """The client-facing endpoint a request came in on. It fixes the body and error formats."""

    CHAT = "chat"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    MESSAGES = "messages"  # Anthropic Messages API
    RESPONSES = "responses"  # OpenAI Responses API (POST /v1/responses)
    RERANK = "rerank"  # Cohere's v2 rerank (POST /v1/rerank), as LiteLLM serves it
    MODERATIONS = "moderations"  # OpenAI's moderations (POST /v1/moderations)
    # images
    IMAGES = "images"  # OpenAI's image generation (POST /v1/images/generations)
    IMAGE_EDITS = "image_edits"  # POST /v1/images/edits: a multipart upload of images (and a mask) and a prompt
    IMAGE_VARIATIONS = "image_variations"  # POST /v1/images/variations: a multipart upload of one image
    # audio (OpenAI's): a multipart upload in, text out; and JSON in, audio bytes out
    TRANSCRIPTIONS = "transcriptions"  # POST /v1/audio/transcriptions
    TRANSLATIONS = "translations"  # POST /v1/audio/translations
    SPEECH = "speech"  # POST /v1/audio/speech


@dataclass(slots=True)
class Usage:
    """Tokens as the provider reported them (or, later, as counted). `prompt_tokens` includes
    cached tokens, as OpenAI reports it; the cache figures say how many of them were cheaper.

    Figures are kept as reported, even when they make no sense: a negative one stays negative, and
    one that is not a whole number (a fraction, a string, a boolean) becomes `NOT_A_COUNT`, so the
    ledger (`ledger.usage_checks`) can tell them apart from honest figures and count the tokens itself."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens read from the provider's cache
    cache_write_tokens: int = 0  # prompt tokens written to it (Anthropic bills these apart)
    reasoning_tokens: int = 0  # part of completion_tokens
    # units beside tokens, each priced on its own (`ledger.pricing.Rates`)
    queries: int = 0  # rerank search units
    images: int = 0
    audio_ms: int = 0  # audio duration in milliseconds
    characters: int = 0  # speech input
    pixels: int = 0  # one image's pixels (its asked-for size), for a price per pixel; not stored
    quality: str = ""  # an image's quality (`hd`), for a price by quality; not stored
    # what the row is flagged with for how these figures were reached (`audio_estimated`: the audio
    # billed is the file's most, not what was reported or read from a trusted header)
    flags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Units:
    """The most units a request may be billed, known from its body before it runs (a rerank's
    search units from its documents): what a budget reserves for beside its tokens."""

    queries: int = 0
    images: int = 0
    audio_ms: int = 0
    characters: int = 0
    pixels: int = 0  # one image's pixels, for a price per pixel (images' only)
    quality: str = ""  # the image quality asked for (`auto` or none: the dearest is reserved)


NOT_A_COUNT = -1  # a usage figure the provider sent that is not a whole number of tokens
MAX_COUNT = 2**53  # beyond it a JSON number is no exact count (and no 64-bit column holds every such value)


def tokens(value: object) -> int:
    """One usage figure as reported: absent (None) is 0, a whole number is itself (negative too;
    `3e9` is a whole number written as a float), anything else (or beyond `MAX_COUNT`) is `NOT_A_COUNT`."""
    if value is None:
        return 0
    if type(value) is int:
        return value if -MAX_COUNT < value < MAX_COUNT else NOT_A_COUNT
    if type(value) is float and value.is_integer() and -MAX_COUNT < value < MAX_COUNT:
        return int(value)
    return NOT_A_COUNT


def not_counts() -> Usage:
    """The usage of an answer whose `usage` is there but is not an object of figures."""
    return Usage(NOT_A_COUNT, NOT_A_COUNT, NOT_A_COUNT)


@dataclass(frozen=True, slots=True)
class Part:
    """One part of a multipart form: a field (`filename` None) or the uploaded file."""

    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class RequestHead:
    """The few fields of a request body the gateway itself needs. Everything else in the body
    passes through as bytes, undecoded."""

    model: str
    stream: bool = False
    include_usage: bool = False  # what the client asked for in stream_options
    user: str | None = None
    max_tokens: int | None = None  # the output cap the client set (max_completion_tokens or max_tokens)
    # what the ledger stores of the request: decoded (and bounded) with the head, only when sent, so
    # the recorder never parses the whole body again
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, Any] | None = None
    units: Units = Units()  # the most units it may be billed (rerank: search units)
    # the most prompt tokens, where the body is an upload whose bytes are no prompt (an image edit's
    # text only); None: estimated from the body's bytes
    prompt_tokens: int | None = None
    # an upload's parts (transcriptions, image edits), parsed once with the head and used by the
    # provider as they are, so the upstream is sent the very file that was measured
    parts: tuple[Part, ...] | None = field(default=None, repr=False, compare=False)


@dataclass(slots=True)
class Call:
    """One request as a provider sees it: the client's API, its raw body and the decoded head."""

    api: Api
    body: bytes
    head: RequestHead
    request_id: str


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    method: str
    url: URL
    headers: Mapping[str, str]
    body: bytes
    stream: bool


@dataclass(frozen=True, slots=True)
class Parsed:
    """An upstream answer turned into what the client receives: body bytes in the client's format."""

    body: bytes
    usage: Usage | None
    content_type: str = "application/json"


class StreamRelay(Protocol):
    """State for one stream. `feed` takes upstream bytes as they arrive and returns the bytes to
    relay to the client now (possibly empty: a partial event is held back until it completes);
    `finish` is called once the upstream ended (or its final event came) and returns the closing
    bytes.

    The stream's final event for the client (`data: [DONE]`, `message_stop`) is never in what
    `feed` returns: the relay holds it and `finish` returns it, so the ledger row is committed
    before the client sees the stream end. The relay finds it while it reads the bytes anyway
    (each read is searched once); `done` then says that nothing after it is wanted."""

    usage: Usage | None

    @property
    def done(self) -> bool: ...

    def feed(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...

    def settle(self, billed: Usage, closing: bytes) -> bytes:
        """The closing bytes (what `finish` returned) once the ledger has counted the usage itself
        (the upstream reported none, or none believable): a client that asked for usage is given
        the billed figures in them (`providers.billed`); for one that did not, `closing` as it is."""
        ...


class Provider(Protocol):
    """Translate between the client's API and one upstream family for one deployment. HTTP families
    are built from data (`providers.common.Endpoint`, `HttpProvider`); `map_error` returns the
    UpstreamError subclass that says what the failure means, so callers decide by class."""

    family: str
    label: str  # the deployment's name in errors and logs (never its key)
    upstream_model: str

    def supports(self, api: Api) -> bool: ...

    def build_request(self, call: Call) -> UpstreamRequest: ...

    def parse_response(self, call: Call, body: bytes) -> Parsed: ...

    def open_stream(self, call: Call) -> StreamRelay: ...

    def map_error(self, call: Call, status: int, body: bytes) -> UpstreamError: ...


@runtime_checkable
class ResponsesResources(Protocol):
    """The small optional interface of a provider whose upstream stores responses (OpenAI's
    Responses API, natively): calls on a stored response go to the upstream that created it.
    `path` follows the Responses root (`/responses/{id}`, `/responses/{id}/cancel`,
    `/responses/{id}/input_items`, `/responses/input_tokens`); `query` is the client's query string.
    Only meaningful where `supports(Api.RESPONSES)`."""

    def resource_request(self, method: str, path: str, query: str = "", body: bytes = b"") -> UpstreamRequest: ...


class Bridge:
    """A provider that serves one client API (`serves`) over another provider's (`inner`) API:
    its request and answer are translated, everything else (the deployment's names, its errors'
    meaning) is the inner provider's. The adapters for /v1/messages, /v1/completions and
    /v1/responses over chat, and chat over a Responses-only model, are its subclasses."""

    serves: ClassVar[Api]

    def __init__(self, inner: Provider) -> None:
        self.inner = inner
        self.family = inner.family
        self.upstream_model = inner.upstream_model
        self.label = inner.label

    def supports(self, api: Api) -> bool:
        return api is self.serves

    def map_error(self, call: Call, status: int, body: bytes) -> UpstreamError:
        return self.inner.map_error(call, status, body)


def decode_object(body: bytes) -> dict[str, Any]:
    """A request body a provider must rewrite whole (its API has another shape), as a JSON object;
    anything else is the client's error, named."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("The request body is not valid JSON.") from None
    if not isinstance(request, dict):
        raise BadRequest("The request body must be a JSON object.")
    return request
