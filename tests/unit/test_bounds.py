"""The checks of `meterway.bounds` on their own: the depth of JSON found without parsing it, and
the encoder that can show any stored row."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from meterway import bounds

# JSON values whose strings are full of what the depth scan must see through: brackets, quotes,
# backslashes and escapes of every kind.
_TEXT = st.text(alphabet=st.sampled_from('[]{}"\\/ax\n\u00e9\U0001f600'), max_size=8)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=40,
)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@settings(max_examples=300, deadline=None, derandomize=True)
@given(value=_JSON, limit=st.integers(min_value=0, max_value=8), ascii_only=st.booleans())
def test_too_deep_agrees_with_the_parsed_depth(value: Any, limit: int, ascii_only: bool) -> None:
    body = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert bounds.too_deep(body, limit) == (_depth(value) > limit)


def test_too_deep_at_the_real_bound() -> None:
    assert not bounds.too_deep(b"[" * 128 + b"]" * 128)
    assert bounds.too_deep(b"[" * 129 + b"]" * 129)
    assert not bounds.too_deep(b'["' + b"[" * 500 + b'"]')  # brackets inside a string are text


def test_dumps_shows_integers_past_64_bits_as_strings() -> None:
    row = {"metadata": {"a": 10**30, "b": [-(2**64), 1], "ok": 2**63 - 1}, "spend": 1.5}
    assert orjson.loads(bounds.dumps(row)) == {
        "metadata": {"a": str(10**30), "b": [str(-(2**64)), 1], "ok": 2**63 - 1},
        "spend": 1.5,
    }
