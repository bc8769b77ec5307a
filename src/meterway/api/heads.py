"""Decoding the few request fields the gateway needs, and nothing else.

Each endpoint's body is decoded into a small typed struct: `model`, `stream`, `user` and the
presence and type of the required fields. Every other field (messages' content, tools, sampling
parameters, unknown extensions) stays in the original bytes and passes through untouched. msgspec
skips what a struct does not name without building it, which keeps this step at a microsecond.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from meterway.errors import BadRequest
from meterway.providers.base import RequestHead

_AT = re.compile(r"at `\$\.([^`\[]+)")
_MISSING = re.compile(r"missing required field `([^`]+)`")


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


class _Completion(msgspec.Struct):
    model: str
    prompt: msgspec.Raw
    stream: bool | None = None
    stream_options: _StreamOptions | None = None
    user: str | None = None
    max_tokens: int | None = None


class _Embedding(msgspec.Struct):
    model: str
    input: msgspec.Raw
    encoding_format: Literal["float", "base64"] | None = None
    user: str | None = None


class _Metadata(msgspec.Struct):
    user_id: str | None = None


class _Messages(msgspec.Struct):
    model: str
    messages: msgspec.Raw
    max_tokens: int
    stream: bool | None = None
    metadata: _Metadata | None = None


_chat = msgspec.json.Decoder(_Chat)
_completion = msgspec.json.Decoder(_Completion)
_embedding = msgspec.json.Decoder(_Embedding)
_messages = msgspec.json.Decoder(_Messages)


def decode_error(e: msgspec.DecodeError) -> BadRequest:
    text = str(e)
    if not isinstance(e, msgspec.ValidationError):
        return BadRequest(f"Request body is not valid JSON: {text}")
    missing = _MISSING.search(text)
    if missing:
        field = missing.group(1)
        return BadRequest(f"Missing required parameter: '{field}'.", param=field, code="missing_required_parameter")
    at = _AT.search(text)
    field = at.group(1) if at else None
    if field is None and text.startswith("Expected `object`"):
        return BadRequest("Request body must be a JSON object.")
    return BadRequest(f"Invalid type for '{field}': {text.split(' - at')[0]}.", param=field, code="invalid_type")


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


def _nonempty_model(model: str) -> None:
    if not model:
        raise BadRequest("'model' must not be empty.", param="model")


def chat(body: bytes) -> RequestHead:
    try:
        c = _chat.decode(body)
    except msgspec.DecodeError as e:
        raise decode_error(e) from None
    _nonempty_model(c.model)
    _array(c.messages, "messages")
    usage = bool(c.stream_options and c.stream_options.include_usage)
    cap = _max_tokens(c.max_completion_tokens, "max_completion_tokens") or _max_tokens(c.max_tokens, "max_tokens")
    return RequestHead(c.model, bool(c.stream), usage, c.user, cap)


def completion(body: bytes) -> RequestHead:
    try:
        c = _completion.decode(body)
    except msgspec.DecodeError as e:
        raise decode_error(e) from None
    _nonempty_model(c.model)
    usage = bool(c.stream_options and c.stream_options.include_usage)
    return RequestHead(c.model, bool(c.stream), usage, c.user, _max_tokens(c.max_tokens, "max_tokens"))


def embedding(body: bytes) -> RequestHead:
    try:
        e = _embedding.decode(body)
    except msgspec.DecodeError as err:
        raise decode_error(err) from None
    _nonempty_model(e.model)
    data = bytes(e.input).lstrip()
    if data in (b'""', b"[]") or data.startswith((b"null", b"{", b"true", b"false")):
        raise BadRequest("'input' must be a non-empty string, array of strings or array of tokens.", param="input")
    return RequestHead(e.model, False, False, e.user)


def messages(body: bytes) -> RequestHead:
    try:
        m = _messages.decode(body)
    except msgspec.DecodeError as e:
        raise decode_error(e) from None
    _nonempty_model(m.model)
    _array(m.messages, "messages")
    if m.max_tokens < 1:
        raise BadRequest("'max_tokens' must be at least 1.", param="max_tokens")
    return RequestHead(m.model, bool(m.stream), True, m.metadata.user_id if m.metadata else None, m.max_tokens)
