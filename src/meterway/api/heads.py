"""Decoding the few request fields the gateway needs, and nothing else.

Each endpoint's body is decoded into a small typed struct: `model`, `stream`, `user` and the
presence and type of the required fields. Every other field (messages' content, tools, sampling
parameters, unknown extensions) stays in the original bytes and passes through untouched. msgspec
skips what a struct does not name without building it, which keeps this step at a microsecond.

This is also the edge where a request's stored values are checked (`meterway.bounds`): `model`, `user`
(`metadata.user_id` on /v1/messages), `tags` and `metadata` are bounded here, before the request
context holds any of them, so a refused request's own ledger row never carries the bad value. The
body as a whole must be valid UTF-8 JSON: msgspec checks the syntax (lone surrogate escapes
included) of what it skips, but not the UTF-8 of skipped strings, so a non-ASCII body is decoded
once more to check it (`str.isascii` decides that in a few nanoseconds per kilobyte).
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, Literal, TypeVar

import msgspec
import orjson

from meterway import bounds
from meterway.errors import BadRequest
from meterway.ledger import pricing
from meterway.providers import audio
from meterway.providers import images as images_answer
from meterway.providers.base import RequestHead, Units

_AT = re.compile(r"at `\$\.([^`\[]+)")
_MISSING = re.compile(r"missing required field `([^`]+)`")
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
_ABSENT = msgspec.Raw()  # a field not sent: empty, where a sent `null` is b"null"


class _StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class _Chat(msgspec.Struct):
    model: str
    messages: msgspec.Raw
    stream: bool | None = None
    stream_options: _StreamOptions | None = None
    user: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    tags: msgspec.Raw = _ABSENT
    metadata: msgspec.Raw = _ABSENT
    litellm_metadata: msgspec.Raw = _ABSENT
    safety_identifier: str | None = None


class _Completion(msgspec.Struct):
    model: str
    prompt: msgspec.Raw
    stream: bool | None = None
    stream_options: _StreamOptions | None = None
    user: str | None = None
    max_tokens: int | None = None
    tags: msgspec.Raw = _ABSENT
    metadata: msgspec.Raw = _ABSENT
    litellm_metadata: msgspec.Raw = _ABSENT
    safety_identifier: str | None = None


class _Embedding(msgspec.Struct):
    model: str
    input: msgspec.Raw
    encoding_format: Literal["float", "base64"] | None = None
    user: str | None = None
    tags: msgspec.Raw = _ABSENT
    metadata: msgspec.Raw = _ABSENT
    litellm_metadata: msgspec.Raw = _ABSENT
    safety_identifier: str | None = None


class _Messages(msgspec.Struct):
    model: str
    messages: msgspec.Raw
    max_tokens: int
    stream: bool | None = None
    tags: msgspec.Raw = _ABSENT
    metadata: msgspec.Raw = _ABSENT
    litellm_metadata: msgspec.Raw = _ABSENT
    safety_identifier: str | None = None


class _Responses(msgspec.Struct):
    """OpenAI's Responses API request. OpenAI's spec makes `input` optional (a stored prompt or a
    conversation may stand in for it); meterway serves neither, so here it is required."""

    model: str
    input: msgspec.Raw
    stream: bool | None = None
    user: str | None = None
    max_output_tokens: int | None = None
    store: bool | None = None
    background: bool | None = None
    previous_response_id: str | None = None
    tags: msgspec.Raw = _ABSENT
    metadata: msgspec.Raw = _ABSENT
    litellm_metadata: msgspec.Raw = _ABSENT
    safety_identifier: str | None = None


class RerankDocument(msgspec.Struct):
    text: str


class RerankRequest(msgspec.Struct):
    """Cohere's v2 rerank request, as LiteLLM's `/rerank` takes it: a query and the documents to
    order (strings, or objects with `text`). Decoded whole: the documents are counted for the
    reservation and bounded (`RERANK_DOCUMENTS_MAX`)."""

    model: str
    query: str
    documents: list[str | RerankDocument]
    top_n: int | None = None
    return_documents: bool | None = None
    max_tokens_per_doc: int | None = None
    rank_fields: list[str] | None = None
    user: str | None = None
    tags: msgspec.Raw = _ABSENT
    metadata: msgspec.Raw = _ABSENT
    litellm_metadata: msgspec.Raw = _ABSENT


class ModerationRequest(msgspec.Struct):
    """OpenAI's moderation request: `input` a string, an array of strings or of multimodal parts;
    `model` may be left out (OpenAI's default, `omni-moderation-latest`, is routed then)."""

    input: msgspec.Raw
    model: str = ""
    user: str | None = None
    tags: msgspec.Raw = _ABSENT
    metadata: msgspec.Raw = _ABSENT
    litellm_metadata: msgspec.Raw = _ABSENT


RERANK_DOCUMENTS_MAX = 1000  # Cohere's own bound on one request's documents
_SEARCH_UNIT_DOCUMENTS = 100  # Cohere bills a search unit per query over up to 100 documents...
# ...each document split into chunks of 500 tokens: counted as 500 bytes, for a token is at least one
# byte (digits and CJK text come near it): reserving at 3 bytes a token under-reserved such text 3x
_CHUNK_BYTES = 500
DEFAULT_MODERATION_MODEL = "omni-moderation-latest"

_chat = msgspec.json.Decoder(_Chat)
_completion = msgspec.json.Decoder(_Completion)
_embedding = msgspec.json.Decoder(_Embedding)
_messages = msgspec.json.Decoder(_Messages)
_responses = msgspec.json.Decoder(_Responses)
_rerank = msgspec.json.Decoder(RerankRequest)
_moderation = msgspec.json.Decoder(ModerationRequest)

S = TypeVar("S")

_CONSTRAINT = re.compile(r"^Expected `\w+` (of length|[<>]=?|matching regex)")  # a bound, not a type


def decode_error(e: msgspec.DecodeError, body: bytes = b"") -> BadRequest:
    text = str(e)
    if not isinstance(e, msgspec.ValidationError):
        if _SURROGATE.search(body) and ("surrogate" in text or "truncated" in text):
            return BadRequest(
                "Request body is not valid JSON: it has a lone UTF-16 surrogate escape (\\ud800-\\udfff); "
                "surrogates must come in pairs.",
                code="invalid_json",
            )
        return BadRequest(f"Request body is not valid JSON: {text}")
    missing = _MISSING.search(text)
    if missing:
        field = missing.group(1)
        return BadRequest(f"Missing required parameter: '{field}'.", param=field, code="missing_required_parameter")
    at = _AT.search(text)
    field = at.group(1) if at else None
    if field is None and text.startswith("Expected `object`"):
        return BadRequest("Request body must be a JSON object.")
    reason = text.split(" - at")[0]
    if "matching regex" in reason:  # bounds.NO_NUL, or a chosen key's (bounds.ChosenKey)
        rule = "start with 'sk-' and not contain NUL" if "'^sk-" in reason else "not contain NUL"
        return BadRequest(f"'{field}' must {rule} (\\u0000).", param=field, code="invalid_value")
    if _CONSTRAINT.match(reason) or reason.startswith(("Number out of range", "Integer value out of range")):
        return BadRequest(f"Invalid value for '{field}': {reason}.", param=field, code="invalid_value")
    return BadRequest(f"Invalid type for '{field}': {reason}.", param=field, code="invalid_type")


def decode(decoder: msgspec.json.Decoder[S], body: bytes) -> S:
    """A body decoded by `decoder`, or a 400 that says why: not JSON, a field's type or bound, nested
    deeper than the decoder's recursion bound (about 950 levels), or not UTF-8."""
    try:
        value = decoder.decode(body)
    except msgspec.DecodeError as e:
        raise decode_error(e, body) from None
    except RecursionError:
        raise BadRequest("Request body is nested too deeply.", code="nested_too_deep") from None
    if not body.isascii():
        try:
            body.decode()
        except UnicodeDecodeError as e:
            raise BadRequest(f"Request body is not valid UTF-8 (byte {e.start}).", code="invalid_encoding") from None
    return value


def _array(raw: msgspec.Raw, field: str) -> None:
    data = bytes(raw).lstrip()
    if not data.startswith(b"["):
        raise BadRequest(f"Invalid type for '{field}': expected an array.", param=field, code="invalid_type")
    if data[1:].lstrip().startswith(b"]"):
        raise BadRequest(f"'{field}' must not be empty.", param=field, code="empty_array")


def _max_tokens(value: int | None, field: str) -> int | None:
    if value is not None and value < 1:
        raise BadRequest(f"'{field}' must be at least 1.", param=field)
    return value


def _model(model: str) -> None:
    if not model:
        raise BadRequest("'model' must not be empty.", param="model")
    bounds.text(model, "model")


def _user(user: str | None, field: str = "user") -> str | None:
    if user is not None:
        bounds.text(user, field)
    return user


Extras = tuple[tuple[str, ...], dict[str, Any] | None]
_NONE: Extras = ((), None)


def _loads(raw: bytes, field: str) -> Any:
    """A field msgspec kept raw, parsed. msgspec has checked its syntax but not its numbers: one
    past a double's range (`1e400`) is valid JSON that orjson refuses, which is the client's error
    and names the field. Numbers past 64 bits become floats."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest(
            f"'{field}' holds a number out of range (past a 64-bit float).", param=field, code="invalid_value"
        ) from None


def _extras(tags: msgspec.Raw, metadata: msgspec.Raw, *, anthropic: bool = False) -> Extras:
    """The request's tags and metadata, bounded as the ledger stores them; parsed only when sent.
    On /v1/messages `metadata.user_id` is the request's user: checked first, so an error names it.
    The tags are `tags`, else `metadata.tags`, as LiteLLM clients send them."""
    found: dict[str, Any] | None = None
    listed: Any = None
    if metadata:
        raw = bytes(metadata)
        if len(raw) > bounds.METADATA_BYTES_MAX:
            raise BadRequest(
                f"'metadata' is larger than {bounds.METADATA_BYTES_MAX} bytes.",
                param="metadata",
                code="metadata_too_large",
            )
        value = _loads(raw, "metadata")
        if value is not None:
            if anthropic and isinstance(value, dict) and "user_id" in value:
                user = value["user_id"]
                if user is not None and not isinstance(user, str):
                    raise BadRequest(
                        "Invalid type for 'metadata.user_id': expected a string.",
                        param="metadata.user_id",
                        code="invalid_type",
                    )
                _user(user, "metadata.user_id")
            if isinstance(value, dict) and value.get("tags") is not None:
                bounds.tags(value["tags"], "metadata.tags")
                listed = value["tags"]
            bounds.metadata(value, "metadata", size=len(raw))
            found = value if isinstance(value, dict) else None
    if tags:
        raw = bytes(tags)
        if raw != b"null":
            if len(raw) > bounds.TAGS_BYTES_MAX:  # not parsed at all when plainly too big
                raise BadRequest(
                    f"'tags' is larger than {bounds.TAGS_BYTES_MAX} bytes.", param="tags", code="tags_too_large"
                )
            value = _loads(raw, "tags")
            bounds.tags(value, "tags")
            listed = value or listed
    return (tuple(str(t) for t in listed) if isinstance(listed, list) else ()), found


def _named(
    user: str | None, litellm_metadata: msgspec.Raw, metadata: dict[str, Any] | None, safety: str | None
) -> str | None:
    """The customer the body names, in LiteLLM's order (`get_end_user_id_from_request_body`):
    `user`, then `litellm_metadata.user`, then `metadata.user_id`, then `safety_identifier`; then
    `metadata.user`, which LiteLLM does not read but its users' clients send (OpenAI's free-form
    metadata is where a plain client puts it). A header the gateway reads for it comes first
    (`customer_from_headers`). Each is bounded as `user` is; a value that is not a string is not
    a name (LiteLLM drops it too)."""
    if user:
        return user
    if litellm_metadata and len(litellm_metadata) <= bounds.METADATA_BYTES_MAX:
        given = _loads(bytes(litellm_metadata), "litellm_metadata")
        named = given.get("user") if isinstance(given, dict) else None
        if isinstance(named, str) and named.strip():
            return _user(named.strip(), "litellm_metadata.user")
    named = metadata.get("user_id") if metadata else None
    if isinstance(named, str) and named.strip():
        return _user(named.strip(), "metadata.user_id")
    if safety and safety.strip():
        return _user(safety.strip(), "safety_identifier")
    named = metadata.get("user") if metadata else None
    if isinstance(named, str) and named.strip():
        return _user(named.strip(), "metadata.user")
    return None


def customer_from_headers(raw: list[tuple[bytes, bytes]], names: tuple[bytes, ...]) -> str | None:
    """The customer a request's headers name: the first of `names` (lower-case, in the settings'
    order) that is sent with a value; bounded as the body's `user`, and a 400 naming the header
    otherwise. Read before the body's fields, as LiteLLM does."""
    found: dict[bytes, bytes] = {}
    for name, value in raw:
        if name in names and name not in found:
            found[name] = value
    for name in names:
        sent = found.get(name)
        if sent is None:
            continue
        field = f"header {name.decode()}"
        try:
            text = sent.decode().strip()
        except UnicodeDecodeError:
            raise BadRequest(f"'{field}' is not valid UTF-8.", param=field, code="invalid_encoding") from None
        if text:
            bounds.text(text, field)
            return text
    return None


def chat(body: bytes) -> RequestHead:
    c = decode(_chat, body)
    _model(c.model)
    _array(c.messages, "messages")
    usage = bool(c.stream_options and c.stream_options.include_usage)
    cap = _max_tokens(c.max_completion_tokens, "max_completion_tokens") or _max_tokens(c.max_tokens, "max_tokens")
    tags, metadata = _extras(c.tags, c.metadata) if c.tags or c.metadata else _NONE
    user = _named(_user(c.user), c.litellm_metadata, metadata, c.safety_identifier)
    return RequestHead(c.model, bool(c.stream), usage, user, cap, tags, metadata)


def completion(body: bytes) -> RequestHead:
    c = decode(_completion, body)
    _model(c.model)
    usage = bool(c.stream_options and c.stream_options.include_usage)
    tags, metadata = _extras(c.tags, c.metadata) if c.tags or c.metadata else _NONE
    cap = _max_tokens(c.max_tokens, "max_tokens")
    user = _named(_user(c.user), c.litellm_metadata, metadata, c.safety_identifier)
    return RequestHead(c.model, bool(c.stream), usage, user, cap, tags, metadata)


def embedding(body: bytes) -> RequestHead:
    e = decode(_embedding, body)
    _model(e.model)
    data = bytes(e.input).lstrip()
    if data in (b'""', b"[]") or data.startswith((b"null", b"{", b"true", b"false")):
        raise BadRequest("'input' must be a non-empty string, array of strings or array of tokens.", param="input")
    tags, metadata = _extras(e.tags, e.metadata) if e.tags or e.metadata else _NONE
    user = _named(_user(e.user), e.litellm_metadata, metadata, e.safety_identifier)
    return RequestHead(e.model, False, False, user, None, tags, metadata)


def rerank(body: bytes) -> RequestHead:
    """A rerank request: a non-empty query and 1 to `RERANK_DOCUMENTS_MAX` documents; `top_n` and
    `max_tokens_per_doc` at least 1. Its units are the most search units it may be billed, the way
    Cohere counts them (a unit per 100 document chunks, a chunk being up to 500 tokens of query and
    document), so a budget reserves for the dearest outcome before it runs."""
    r = decode(_rerank, body)
    _model(r.model)
    if not r.query.strip():
        raise BadRequest("'query' must not be empty.", param="query")
    if not r.documents:
        raise BadRequest("'documents' must not be empty.", param="documents", code="empty_array")
    if len(r.documents) > RERANK_DOCUMENTS_MAX:
        raise BadRequest(
            f"'documents' has {len(r.documents)} items; at most {RERANK_DOCUMENTS_MAX} are allowed.",
            param="documents",
            code="array_above_max_length",
        )
    if r.top_n is not None and r.top_n < 1:
        raise BadRequest("'top_n' must be at least 1.", param="top_n")
    if r.max_tokens_per_doc is not None and r.max_tokens_per_doc < 1:
        raise BadRequest("'max_tokens_per_doc' must be at least 1.", param="max_tokens_per_doc")
    query = len(r.query.encode())
    chunks = sum(
        max(1, -(-(query + len((d if isinstance(d, str) else d.text).encode())) // _CHUNK_BYTES)) for d in r.documents
    )
    tags, metadata = _extras(r.tags, r.metadata) if r.tags or r.metadata else _NONE
    user = _named(_user(r.user), r.litellm_metadata, metadata, None)
    most = Units(queries=-(-chunks // _SEARCH_UNIT_DOCUMENTS))
    return RequestHead(r.model, False, False, user, None, tags, metadata, most)


def moderation(body: bytes) -> RequestHead:
    """A moderation request: `input` a non-empty string or array; no `model` means OpenAI's default."""
    m = decode(_moderation, body)
    model = m.model or DEFAULT_MODERATION_MODEL
    _model(model)
    data = bytes(m.input).lstrip()
    if data in (b'""', b"[]") or not data.startswith((b'"', b"[")):
        raise BadRequest("'input' must be a non-empty string or array.", param="input")
    tags, metadata = _extras(m.tags, m.metadata) if m.tags or m.metadata else _NONE
    user = _named(_user(m.user), m.litellm_metadata, metadata, None)
    return RequestHead(model, False, False, user, None, tags, metadata)


def messages(body: bytes) -> RequestHead:
    m = decode(_messages, body)
    _model(m.model)
    _array(m.messages, "messages")
    if m.max_tokens < 1:
        raise BadRequest("'max_tokens' must be at least 1.", param="max_tokens")
    tags, metadata = _extras(m.tags, m.metadata, anthropic=True) if m.tags or m.metadata else _NONE
    user = _named(None, m.litellm_metadata, metadata, m.safety_identifier)  # `metadata.user_id` is its `user`
    return RequestHead(m.model, bool(m.stream), True, user, m.max_tokens, tags, metadata)


def responses(body: bytes) -> RequestHead:
    """A Responses API request: `input` a string or a non-empty array of items; its usage always
    comes (in `response.completed`), so `include_usage` is set; `max_output_tokens` is the cap."""
    r = decode(_responses, body)
    _model(r.model)
    data = bytes(r.input).lstrip()
    if not data.startswith((b'"', b"[")):
        raise BadRequest(
            "Invalid type for 'input': expected a string or an array of input items.",
            param="input",
            code="invalid_type",
        )
    if data.startswith(b"["):
        _array(r.input, "input")
    if r.previous_response_id is not None:
        bounds.text(r.previous_response_id, "previous_response_id")
    tags, metadata = _extras(r.tags, r.metadata) if r.tags or r.metadata else _NONE
    cap = _max_tokens(r.max_output_tokens, "max_output_tokens")
    user = _named(_user(r.user), r.litellm_metadata, metadata, r.safety_identifier)
    return RequestHead(r.model, bool(r.stream), True, user, cap, tags, metadata)


class ResponsesOptions(msgspec.Struct):
    """What the Responses endpoints decide on beside the head: storing, background and the earlier
    response (read from the same body; the head decoder has checked it)."""

    store: bool | None = None
    background: bool | None = None
    previous_response_id: str | None = None
    stream: bool | None = None


_responses_options = msgspec.json.Decoder(ResponsesOptions)


def responses_options(body: bytes) -> ResponsesOptions:
    return decode(_responses_options, body)


# ---------------------------------------------------------------- images (POST /v1/images/generations)


class ImageRequest(msgspec.Struct):
    """OpenAI's image generation request. Decoded whole (it is small): `n` and `size` fix the most
    images and pixels a budget reserves for; the enumerated fields are checked here so a bad value
    is the client's 400, not the upstream's. `model` may be left out (OpenAI's default then)."""

    prompt: str
    model: str = ""
    n: int | None = None
    size: str | None = None
    quality: str | None = None
    response_format: str | None = None
    style: str | None = None
    background: str | None = None
    output_format: str | None = None
    output_compression: int | None = None
    moderation: str | None = None
    stream: bool | None = None
    user: str | None = None
    tags: msgspec.Raw = _ABSENT
    metadata: msgspec.Raw = _ABSENT
    litellm_metadata: msgspec.Raw = _ABSENT


# ---------------------------------------------------------------- audio (OpenAI's)

SPEECH_INPUT_MAX = 4096  # characters, OpenAI's bound on one speech request's `input`
SPEECH_FORMATS = frozenset({"mp3", "opus", "aac", "flac", "wav", "pcm"})
_GRANULARITIES = frozenset({"word", "segment"})


class SpeechRequest(msgspec.Struct):
    """OpenAI's speech request. `voice` is a name or a custom voice object (`{"id": ...}`)."""

    model: str
    input: str
    voice: msgspec.Raw
    response_format: str | None = None
    speed: float | None = None
    instructions: str | None = None
    stream_format: Literal["audio", "sse"] | None = None
    user: str | None = None
    tags: msgspec.Raw = _ABSENT
    metadata: msgspec.Raw = _ABSENT
    litellm_metadata: msgspec.Raw = _ABSENT


DEFAULT_IMAGE_MODEL = "dall-e-2"  # OpenAI's, where a request names none
IMAGE_PROMPT_MAX = 32_000  # characters: gpt-image-1's bound, the largest of OpenAI's models
IMAGES_MAX = 10  # OpenAI's bound on `n`
IMAGE_SIDE_MAX = 8192  # a `WxH` size's longest side (OpenAI's largest is 1792; other servers go further)
IMAGE_SIZES = ("auto", "256x256", "512x512", "1024x1024", "1536x1024", "1024x1536", "1792x1024", "1024x1792")
# the largest of OpenAI's sizes, reserved for when `size` is `auto` (the model picks)
IMAGE_AUTO_PIXELS = 1792 * 1024
# gpt-image-1's most output tokens for one image (high quality, 1536x1024): what a budget reserves
# per image where the model is priced per token; settled to the reported figures afterwards
IMAGE_OUTPUT_TOKENS_MAX = 6240
_IMAGE_ENUMS = {
    "quality": ("auto", "standard", "hd", "low", "medium", "high"),
    "response_format": ("url", "b64_json"),
    "style": ("vivid", "natural"),
    "background": ("auto", "transparent", "opaque"),
    "output_format": ("png", "jpeg", "webp"),
    "moderation": ("auto", "low"),
}
_image = msgspec.json.Decoder(ImageRequest)


def _image_head(
    model: str,
    prompt: str | None,
    n: int | None,
    size: str | None,
    options: dict[str, str | None],
    user: str | None,
    extras: Extras = _NONE,
    prompt_tokens: int | None = None,
) -> RequestHead:
    """The checks generation, edits and variations share: a prompt (where sent) non-empty and at
    most `IMAGE_PROMPT_MAX` characters, `n` from 1 to `IMAGES_MAX`, `size` one of OpenAI's or `WxH`
    (each side at most `IMAGE_SIDE_MAX`), the `options` from OpenAI's enumerations. Its units are
    its `n` images of its size (the largest for `auto`), and its output cap `n` images' most
    tokens, so a budget reserves the dearest outcome whether the model is priced per image, per
    pixel or per token."""
    _model(model)
    if prompt is not None:
        if not prompt.strip():
            raise BadRequest("'prompt' must not be empty.", param="prompt")
        if len(prompt) > IMAGE_PROMPT_MAX:
            raise BadRequest(
                f"'prompt' has {len(prompt)} characters; at most {IMAGE_PROMPT_MAX} are allowed.",
                param="prompt",
                code="string_above_max_length",
            )
    n = 1 if n is None else n
    if not 1 <= n <= IMAGES_MAX:
        raise BadRequest(f"'n' must be from 1 to {IMAGES_MAX}; it is {n}.", param="n", code="invalid_value")
    pixels = IMAGE_AUTO_PIXELS if size in (None, "auto") else images_answer.image_pixels(size)
    match = images_answer.SIZE.match(size or "")
    if size is not None and size != "auto" and (match is None or max(map(int, match.groups())) > IMAGE_SIDE_MAX):
        raise BadRequest(
            f"Invalid value for 'size': '{size[:64]}'. Supported values are {', '.join(IMAGE_SIZES)}, "
            f"or WIDTHxHEIGHT with sides of at most {IMAGE_SIDE_MAX}.",
            param="size",
            code="invalid_value",
        )
    for field, value in options.items():
        allowed = _IMAGE_ENUMS[field]
        if value is not None and value not in allowed:
            raise BadRequest(
                f"Invalid value for '{field}': '{value[:64]}'. Supported values are {', '.join(allowed)}.",
                param=field,
                code="invalid_value",
            )
    tags, metadata = extras
    most = Units(images=n, pixels=pixels or IMAGE_AUTO_PIXELS, quality=options.get("quality") or "")
    cap = n * IMAGE_OUTPUT_TOKENS_MAX
    return RequestHead(model, False, False, user, cap, tags, metadata, most, prompt_tokens)


def images(body: bytes) -> RequestHead:
    """An image generation request, checked as `_image_head` says; `output_compression` from 0 to 100;
    not streamed."""
    r = decode(_image, body)
    if r.output_compression is not None and not 0 <= r.output_compression <= 100:
        raise BadRequest("'output_compression' must be from 0 to 100.", param="output_compression")
    if r.stream:
        raise BadRequest("Streamed image generation is not supported; leave 'stream' out.", param="stream")
    options = {field: getattr(r, field) for field in _IMAGE_ENUMS}
    extras = _extras(r.tags, r.metadata) if r.tags or r.metadata else _NONE
    user = _named(_user(r.user), r.litellm_metadata, extras[1], None)
    return _image_head(r.model or DEFAULT_IMAGE_MODEL, r.prompt, r.n, r.size, options, user, extras)


# the options of an edit (OpenAI's `images.edit`) and of a variation (`images.create_variation`)
_EDIT_OPTIONS = ("quality", "response_format", "background", "output_format")
_VARIATION_OPTIONS = ("response_format",)
_EDIT_FILES = ("image", "image[]")  # one image, or several (gpt-image-1) as `image[]`
# what a budget reserves for each uploaded image (and the mask) where the model bills its input in
# tokens: gpt-image-1 reads an image as GPT-4o's vision does, at most 85 + 170 x 6 tiles; the
# image's bytes are no measure of it
IMAGE_INPUT_TOKENS_MAX = 85 + 170 * 6


def _form_int(form: dict[str, str], field: str) -> int | None:
    if field not in form:
        return None
    try:
        return int(form[field].strip())
    except ValueError:
        raise BadRequest(
            f"Invalid type for '{field}': expected an integer.", param=field, code="invalid_type"
        ) from None


def _image_upload(body: bytes, files: tuple[str, ...], options: tuple[str, ...], prompt: bool) -> RequestHead:
    """An edit's or a variation's multipart upload (read whole within `max_image_upload_bytes`):
    at least one non-empty file in `files`, an edit's `prompt` required, the rest checked as
    generation's. Its prompt tokens are its prompt's and its images' most, never its bytes."""
    parts = audio.parse_form(body)
    form = audio.fields(parts)
    uploads = [p for p in parts if p.filename is not None and p.name in (*files, "mask")]
    images_sent = [p for p in uploads if p.name in files]
    if not images_sent:
        raise BadRequest("'image' is required: the image file to start from.", param="image")
    if any(not p.data for p in uploads):
        raise BadRequest("An uploaded image is empty.", param="image")
    text = form.get("prompt")
    if prompt and text is None:
        raise BadRequest("Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter")
    if form.get("stream", "false").lower() not in ("false", ""):
        raise BadRequest("Streamed image edits are not supported; leave 'stream' out.", param="stream")
    compression = _form_int(form, "output_compression")
    if compression is not None and not 0 <= compression <= 100:
        raise BadRequest("'output_compression' must be from 0 to 100.", param="output_compression")
    chosen = {field: form.get(field) for field in options}
    text_tokens = pricing.prompt_tokens_upper_estimate(text.encode()) if text else 0
    most_prompt = text_tokens + len(uploads) * IMAGE_INPUT_TOKENS_MAX
    model = form.get("model") or DEFAULT_IMAGE_MODEL
    user = _user(form.get("user"))
    head = _image_head(
        model, text if prompt else None, _form_int(form, "n"), form.get("size"), chosen, user, _NONE, most_prompt
    )
    return replace(head, parts=tuple(parts))  # parsed once: the provider sends and reads these


def image_edit(body: bytes) -> RequestHead:
    """An image edit (`POST /v1/images/edits`): `image` (or several as `image[]`), an optional
    `mask`, a `prompt`, and generation's options."""
    return _image_upload(body, _EDIT_FILES, _EDIT_OPTIONS, prompt=True)


def image_variation(body: bytes) -> RequestHead:
    """An image variation (`POST /v1/images/variations`, DALL·E 2's): one `image`, no prompt."""
    return _image_upload(body, ("image",), _VARIATION_OPTIONS, prompt=False)


_speech = msgspec.json.Decoder(SpeechRequest)


def speech(body: bytes) -> RequestHead:
    """A speech request: `input` of 1 to `SPEECH_INPUT_MAX` characters, its units those characters
    (known before it runs, so a budget reserves exactly what it will be billed)."""
    s = decode(_speech, body)
    _model(s.model)
    if not s.input:
        raise BadRequest("'input' must not be empty.", param="input")
    if len(s.input) > SPEECH_INPUT_MAX:
        raise BadRequest(
            f"'input' has {len(s.input)} characters; at most {SPEECH_INPUT_MAX} are allowed.",
            param="input",
            code="string_above_max_length",
        )
    if s.response_format is not None and s.response_format not in SPEECH_FORMATS:
        raise BadRequest(
            f"'response_format' must be one of {', '.join(sorted(SPEECH_FORMATS))}.", param="response_format"
        )
    if s.speed is not None and not 0.25 <= s.speed <= 4.0:
        raise BadRequest("'speed' must be between 0.25 and 4.0.", param="speed")
    if s.stream_format == "sse":
        raise BadRequest("'stream_format' sse is not supported; audio is streamed as bytes.", param="stream_format")
    if s.instructions is not None:
        bounds.text(s.instructions, "instructions", SPEECH_INPUT_MAX)
    tags, metadata = _extras(s.tags, s.metadata) if s.tags or s.metadata else _NONE
    user = _named(_user(s.user), s.litellm_metadata, metadata, None)
    return RequestHead(s.model, False, False, user, None, tags, metadata, Units(characters=len(s.input)))


def transcription(body: bytes) -> RequestHead:
    """A transcription or translation upload (multipart/form-data, read whole within the audio
    bound): `file` and `model` required, the other fields checked as OpenAI does. Its units are
    the most audio it may be billed: the file's duration from its header, and never less than its
    size at the lowest bitrate (`providers.audio.most_ms`). Its parts ride on the head, parsed once."""
    parts = audio.parse_form(body)
    form = audio.fields(parts)
    file = audio.upload(parts)
    if file is None or file.filename is None:
        raise BadRequest("'file' is required: the audio file to transcribe.", param="file")
    if not file.data:
        raise BadRequest("'file' is empty.", param="file")
    model = form.get("model", "")
    if not model:
        raise BadRequest("'model' is required.", param="model")
    _model(model)
    kind = form.get("response_format")
    if kind is not None and kind not in audio.TRANSCRIPTION_FORMATS:
        raise BadRequest(
            f"'response_format' must be one of {', '.join(sorted(audio.TRANSCRIPTION_FORMATS))}.",
            param="response_format",
        )
    if "temperature" in form:
        try:
            temperature = float(form["temperature"])
        except ValueError:
            temperature = -1.0
        if not 0.0 <= temperature <= 1.0:
            raise BadRequest("'temperature' must be a number between 0 and 1.", param="temperature")
    for p in parts:
        if p.name.startswith("timestamp_granularities") and p.data.decode("utf-8", "replace") not in _GRANULARITIES:
            raise BadRequest("'timestamp_granularities[]' takes word and segment.", param="timestamp_granularities")
    stream = form.get("stream", "false").lower()
    if stream not in ("true", "false"):
        raise BadRequest("'stream' must be true or false.", param="stream")
    if "prompt" in form:
        bounds.text(form["prompt"], "prompt", SPEECH_INPUT_MAX * 4)
    user = _user(form.get("user"))
    most = Units(audio_ms=audio.most_ms(file.data))
    return RequestHead(model, stream == "true", False, user, units=most, parts=tuple(parts))
