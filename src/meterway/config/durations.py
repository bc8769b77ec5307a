"""Durations as LiteLLM users write them: `30s`, `15m`, `12h`, `30d`, `2w`, `1mo`. Parsed once, when
a key or budget is written, never on the request path."""

from __future__ import annotations

import re
from datetime import timedelta

from meterway.errors import BadRequest

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "mo": 30 * 86400}
_PATTERN = re.compile(r"^\s*(\d{1,12})\s*(mo|[smhdw])\s*$")
MAX_SECONDS = 100 * 365 * 86400  # 100 years: longer is a typo, and past year 9999 no date can hold it


def parse_duration(text: str, field: str) -> timedelta:
    match = _PATTERN.match(text) if isinstance(text, str) else None
    if match is None:
        raise BadRequest(
            f"Invalid duration for '{field}': {text!r}; use a number and a unit: s, m, h, d, w or mo (e.g. 30d).",
            param=field,
        )
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_SECONDS:
        raise BadRequest(f"'{field}' is longer than 100 years ({text!r}).", param=field, code="invalid_value")
    return timedelta(seconds=seconds)
