"""Upstream usage is checked before it is believed.

A provider's usage decides what a customer pays, so the ledger does not take it on trust:

* **Invalid** figures (negative, not a whole number, not a number at all: see `providers.base.tokens`)
  are no usage. The ledger counts the tokens itself, as for an answer that reported none, marks
  the row estimated and flags it `usage_invalid`. Negative usage can never lower spend.
  Units beside tokens (search units, images, audio, characters) are checked the same way; where
  they are no counts, the request's own most (`RequestHead.units`: a rerank's search units from its
  documents, an image request's `n`) is billed instead, and the row flagged `usage_invalid`: a
  broken figure never makes a request free.
* **Absurd** figures are well formed but beyond what the request could have used: more completion
  tokens than it allowed (its `max_tokens` or `max_completion_tokens` for each of its `n`
  choices, else the deployment's `model_info.max_output_tokens`), more prompt tokens than the
  deployment's context window (`model_info.max_input_tokens`), or, whatever is known, more than
  `ABSURD_TOKENS` in one request. The provider will bill them, so they are recorded as reported,
  and the row is flagged `usage_absurd` for someone to take up with the provider.

Both flags are counted in `meterway_usage_anomalies_total{deployment,kind}` and shown in
`/spend/logs`. The checks are a few integer comparisons per request; the request body is decoded
(for `n`) only when the completion figure already exceeds what one choice allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from meterway.providers.base import MAX_COUNT, RequestHead, Usage

INVALID = "usage_invalid"
ABSURD = "usage_absurd"
# Tokens no single request uses today: ten times the largest context windows on offer. Only used
# where neither the request nor the deployment says more.
ABSURD_TOKENS = 100_000_000


def believable(usage: Usage) -> bool:
    """Whether every token figure is a count: a whole number, zero or more (and below `MAX_COUNT`)."""
    figures = (
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.total_tokens,
        usage.cached_tokens,
        usage.cache_write_tokens,
        usage.reasoning_tokens,
    )
    return _counts(figures)


def units_believable(usage: Usage) -> bool:
    """Whether every unit beside tokens is a count, as `believable` asks of tokens."""
    return _counts((usage.queries, usage.images, usage.audio_ms, usage.characters, usage.pixels))


def _counts(figures: tuple[int, ...]) -> bool:
    return all(type(f) is int for f in figures) and min(figures) >= 0 and max(figures) < MAX_COUNT


def absurd(usage: Usage, head: RequestHead | None, model_info: Mapping[str, Any], body: bytes) -> bool:
    """Whether believable usage is more than the request could have used (see the module's docstring)."""
    prompt, completion = usage.prompt_tokens, usage.completion_tokens
    if prompt > ABSURD_TOKENS or completion > ABSURD_TOKENS or usage.total_tokens > ABSURD_TOKENS:
        return True
    allowed = head.max_tokens if head is not None else None
    if model_info:
        window = _bound(model_info.get("max_input_tokens"))
        if window is not None and prompt > window:
            return True
        if not allowed:
            allowed = _bound(model_info.get("max_output_tokens"))
    if not allowed:
        return False
    return completion > allowed and completion > allowed * _choices(body)


def _bound(value: object) -> int | None:
    return value if type(value) is int and value > 0 else None


def _choices(body: bytes) -> int:
    """How many answers the request asked for (`n`, or `best_of` on completions): each may use the
    whole output allowance. Read only on the rare path where one allowance was exceeded."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 1
    if not isinstance(request, dict):
        return 1
    found = [v for v in (request.get("n"), request.get("best_of")) if type(v) is int and v > 0]
    return max(found, default=1)
