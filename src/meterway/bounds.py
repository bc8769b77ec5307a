"""What a client may store through the gateway, and the checks that hold it to that.

Every string a client hands us that ends up in a column, a log or a lookup has a length bound (the
column's, 255 for names and ids) and may not contain NUL: PostgreSQL refuses NUL in text, and a
refused value must be a 400 at the door, not a failed commit later. Numbers are bounded by what
their columns hold (32-bit limits, money as int64 of 1e-10 USD). docs/security.md lists every bound.

The msgspec types below carry their bounds into the decoder (checked in C while decoding) and into
the OpenAPI document; the functions cover what a type cannot say (free-form metadata, tags).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
import orjson

from meterway.errors import BadRequest, MeterwayError

NAME_MAX = 255  # model, user, ids, aliases, billing ids: the String(255) columns
EMAIL_MAX = 320  # mw_users.user_email
DURATION_MAX = 32  # budget_duration, String(32)
KEY_MAX = 512  # a key (or its digest) as a caller names it
TAGS_MAX = 64  # tags of one request
TAG_MAX = 255
TAGS_BYTES_MAX = TAGS_MAX * (TAG_MAX + 3) * 6  # tags as JSON, with room for escapes: refused unparsed past it
METADATA_BYTES_MAX = 16 * 1024  # a request's or an entity's metadata, as JSON
METADATA_DEPTH_MAX = 16
METADATA_KEY_MAX = 255
LIST_MAX = 1000  # models of a key, ids in one delete call
QUERY_MAX = 1024  # one query parameter
INT32_MAX = 2**31 - 1  # rpm_limit, tpm_limit, max_parallel_requests: Integer columns
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
BUDGET_MAX_USD = 1e8  # money is int64 of 1e-10 USD: ~9.2e8 USD at most, so a round bound well below
DURATION_MAX_S = 100 * 365 * 86400  # 100 years

DEPTH_MAX = 128  # JSON nesting the gateway rewrites (its encoder stops at 254 levels)

NO_NUL = "^[^\\x00]*$"  # msgspec and JSON Schema alike: no NUL anywhere

Name = Annotated[str, msgspec.Meta(max_length=NAME_MAX, pattern=NO_NUL)]
Email = Annotated[str, msgspec.Meta(max_length=EMAIL_MAX, pattern=NO_NUL)]
Duration = Annotated[str, msgspec.Meta(max_length=DURATION_MAX, pattern=NO_NUL)]
KeyRef = Annotated[str, msgspec.Meta(max_length=KEY_MAX, pattern=NO_NUL)]
ChosenKey = Annotated[str, msgspec.Meta(min_length=20, max_length=KEY_MAX, pattern="^sk-[^\\x00]*$")]
Names = Annotated[list[Name], msgspec.Meta(max_length=LIST_MAX)]
KeyRefs = Annotated[list[KeyRef], msgspec.Meta(max_length=LIST_MAX)]
Limit = Annotated[int, msgspec.Meta(ge=0, le=INT32_MAX)]
Budget = Annotated[float, msgspec.Meta(ge=0, le=BUDGET_MAX_USD)]


def text(value: str, field: str, limit: int = NAME_MAX) -> None:
    """A stored string: at most `limit` characters, no NUL. Costs a length and one `in`."""
    if len(value) > limit:
        raise BadRequest(f"'{field}' is longer than {limit} characters.", param=field, code="string_too_long")
    if "\x00" in value:
        raise BadRequest(f"'{field}' must not contain NUL (\\u0000).", param=field, code="invalid_value")


def query(params: Mapping[str, str]) -> None:
    """Query parameters are looked up in the store: bounded, and no NUL (PostgreSQL refuses it)."""
    for name, value in params.items():
        text(name, "query parameter name", QUERY_MAX)
        text(value, name, QUERY_MAX)


def metadata(value: Any, field: str, *, size: int | None = None) -> None:
    """Free-form metadata as the store keeps it (a JSON column): an object whose keys are bounded
    names without NUL, whose integers fit 64 bits (the JSON encoders refuse more, so one stored
    would break every later listing), no deeper than 16 levels and at most 16 KiB as JSON (`size`:
    as the client sent it, when known)."""
    if not isinstance(value, dict):
        raise BadRequest(f"'{field}' must be a JSON object.", param=field, code="invalid_type")
    _walk(value, field, 1)
    if (size if size is not None else len(orjson.dumps(value))) > METADATA_BYTES_MAX:
        raise BadRequest(
            f"'{field}' is larger than {METADATA_BYTES_MAX} bytes as JSON.", param=field, code="metadata_too_large"
        )


def _walk(value: Any, field: str, depth: int) -> None:
    if depth > METADATA_DEPTH_MAX:
        raise BadRequest(f"'{field}' is nested deeper than {METADATA_DEPTH_MAX} levels.", param=field)
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise BadRequest(f"Keys of '{field}' must be strings.", param=field)
            if len(k) > METADATA_KEY_MAX or "\x00" in k:
                raise BadRequest(
                    f"Keys of '{field}' must be at most {METADATA_KEY_MAX} characters, without NUL.",
                    param=field,
                    code="invalid_value",
                )
            _walk(v, field, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _walk(v, field, depth + 1)
    elif isinstance(value, str):
        if "\x00" in value:
            raise BadRequest(f"Strings in '{field}' must not contain NUL (\\u0000).", param=field, code="invalid_value")
    elif isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
        raise BadRequest(f"Integers in '{field}' must fit in 64 bits.", param=field, code="number_out_of_range")


def tags(value: Any, field: str) -> None:
    """Request tags, as the ledger keeps them: a list of at most 64 strings of at most 255 characters."""
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise BadRequest(f"'{field}' must be a list of strings.", param=field, code="invalid_type")
    if len(value) > TAGS_MAX:
        raise BadRequest(f"'{field}' has more than {TAGS_MAX} tags.", param=field, code="too_many_tags")
    for t in value:
        text(t, field, TAG_MAX)


_STRING = re.compile(rb'"[^"]*"')
_BRACKETS = bytes.maketrans(b"[]{}", b"()()")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b'[]{}"')


def too_deep(body: bytes, limit: int = DEPTH_MAX) -> bool:
    """Whether valid JSON `body` nests deeper than `limit`, found without parsing it: escapes and
    strings are cut out, brackets become parentheses, and each pass drops the innermost pairs.
    Not free (a few hundred microseconds for a large agent request), so it runs only when
    handling a body failed, to tell a too-deep body (400) from a fault of ours (500)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    shape = body.replace(b"\\\\", b"").replace(b'\\"', b"").translate(_BRACKETS, _NOT_BRACKETS)
    shape = _STRING.sub(b"", shape)
    for done in range(limit):
        if len(shape) <= 2 * (limit - done):  # no deeper than `limit` whatever is left
            return False
        shape = shape.replace(b"()", b"")
    return bool(shape)


def deep_error(exc: Exception, body: bytes) -> Exception:
    """`exc` as the client's 400 when it came from `body` nesting deeper than the JSON encoder
    goes (254 levels), or holding a number past a double's range: such a body passes the head
    decoders but fails wherever it is encoded or read again. Told apart from a fault of ours (500) only once handling failed, `too_deep` costing too
    much to run on every body. A `BadRequest` or other named error is returned as it is."""
    if isinstance(exc, MeterwayError) or not body:
        return exc
    if too_deep(body):
        return BadRequest(f"Request body is nested deeper than {DEPTH_MAX} levels.", code="nested_too_deep")
    if isinstance(exc, orjson.JSONDecodeError) and body[:1] == b"{" and not _parses(body):
        # the head decoders check the syntax, not the numbers: `1e400` is valid JSON that orjson
        # refuses wherever the body is read again (Responses runs, token counts)
        return BadRequest("Request body holds a number out of range (past a 64-bit float).", code="invalid_value")
    return exc


def _parses(body: bytes) -> bool:
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return True


def _out_of_range(value: Any) -> Any:
    """A copy that any JSON encoder takes: integers past 64 bits become strings."""
    if isinstance(value, dict):
        return {str(k): _out_of_range(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_out_of_range(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
        return str(value)
    return value


def dumps(value: Any) -> bytes:
    """JSON of stored rows, total: a row stored before these bounds existed (a 30-digit integer in
    a key's metadata) is shown with that integer as a string instead of failing every listing.
    The fallback runs only when the fast encoding fails."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError is a TypeError: an integer past 64 bits
        return orjson.dumps(_out_of_range(value))
