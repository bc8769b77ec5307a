"""Image generation's answer read for the ledger: OpenAI's shape, which OpenAI-compatible image
servers share, passes to the client as it came.

An answer is `{created, data: [{url | b64_json, revised_prompt?}], usage?}`. What it is billed
for is read here: the images it returned (`data`'s length, not the `n` asked for: a model may
return fewer), each image's pixels (the `size` the answer names, as gpt-image-1 reports it, else
the size asked for, else OpenAI's default 1024x1024) and its quality (the answer's, else the
request's) for a price per pixel, and the tokens where
the model reports them (gpt-image-1's `usage.input_tokens` and `output_tokens`, priced as tokens).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from meterway.providers.base import Usage, not_counts, tokens

DEFAULT_PIXELS = 1024 * 1024  # OpenAI's default size, where neither the answer nor the request names one
SIZE = re.compile(r"^([1-9][0-9]{0,4})x([1-9][0-9]{0,4})$")  # `WxH`


def image_pixels(size: str | None) -> int | None:
    """The pixels of one image of `size` (`WxH`); None for `auto` or a size that is not `WxH`."""
    match = SIZE.match(size or "")
    return int(match.group(1)) * int(match.group(2)) if match else None


def usage(answer: Mapping[str, Any], request: Mapping[str, Any]) -> Usage | None:
    """The answer's usage, or None where `data` is not an array (the answer is not an image answer)."""
    data = answer.get("data")
    if not isinstance(data, list):
        return None
    size = answer.get("size")
    pixels = image_pixels(size if isinstance(size, str) else None)
    if pixels is None:
        asked = request.get("size")
        pixels = image_pixels(asked if isinstance(asked, str) else None) or DEFAULT_PIXELS
    quality = answer.get("quality") or request.get("quality")
    quality = quality[:16] if isinstance(quality, str) else ""
    reported = answer.get("usage")
    if reported is None:
        return Usage(images=len(data), pixels=pixels, quality=quality)
    if not isinstance(reported, Mapping):
        counted = not_counts()
    else:
        prompt = tokens(reported.get("input_tokens"))
        completion = tokens(reported.get("output_tokens"))
        total = tokens(reported["total_tokens"]) if "total_tokens" in reported else prompt + completion
        counted = Usage(prompt, completion, total)
    counted.images, counted.pixels, counted.quality = len(data), pixels, quality
    return counted
