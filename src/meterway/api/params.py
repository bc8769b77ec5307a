"""What an admin handler is given and gives back: its JSON body decoded into a bounded type, its
query's integers and times checked, and `Reply` for an answer that is not JSON.

These sit below every admin handler module (`management`, `tenancy`, `reports`, `billing`,
`webhook_admin`) so that none of them imports another just for a helper.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from meterway import bounds
from meterway.api.heads import decode_error
from meterway.errors import BadRequest


@dataclass(frozen=True, slots=True)
class Reply:
    """A handler's answer that is not JSON."""

    body: bytes
    content_type: bytes


def decode_body(body: bytes, kind: type[msgspec.Struct]) -> Any:
    """A management body as `kind`: a 400 naming the field for a wrong type or a value past its
    bound, and for metadata that cannot be stored and listed again (see `bounds.metadata`)."""
    try:
        value = msgspec.json.decode(body or b"{}", type=kind)
    except msgspec.DecodeError as e:
        raise decode_error(e, body) from None
    except RecursionError:
        raise BadRequest("Request body is nested too deeply.", code="nested_too_deep") from None
    found = getattr(value, "metadata", None)
    if found is not None:
        bounds.metadata(found, "metadata")
    return value


def query_int(query: dict[str, str], name: str, default: int, low: int, high: int = 1_000_000_000) -> int:
    """An integer query parameter within [low, high]: a page past any offset the store can take is a 400."""
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"'{name}' must be an integer.", param=name) from None
    if not low <= value <= high:
        raise BadRequest(f"'{name}' must be between {low} and {high}.", param=name)
    return value


def parse_since(text: str | None) -> datetime | None:
    """A reprocess request's `since`: a day or an ISO 8601 time, UTC unless it says otherwise."""
    if not text:
        return None
    try:
        since = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"'since' must be a date or an ISO 8601 time; got {text!r}.", param="since") from None
    return since if since.tzinfo is not None else since.replace(tzinfo=UTC)
