"""The bundled price table: well-known models' per-token prices (and per-unit ones: a rerank's search
unit, in `per_unit`), used where a deployment's config gives none. A deployment's own prices (`input_cost_per_token`, … in `model_info` or
`litellm_params`) always win, field by field. The table is data (`prices.json`, USD per million
tokens as providers publish them, with the date they were taken); updating it is editing that file.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from typing import Any

from meterway.config.settings import Prices

_MILLION = Decimal(1_000_000)
_FIELDS = {
    "input": "input_per_token",
    "output": "output_per_token",
    "cache_read": "cache_read_per_token",
    "cache_write": "cache_write_per_token",
}
# per unit, under LiteLLM's names (as `model_info` writes them) -> the `Prices` field
UNIT_PRICES = {
    "input_cost_per_query": "input_per_query",
    "output_cost_per_image": "output_per_image",
    "input_cost_per_pixel": "input_per_pixel",
    "output_cost_per_pixel": "output_per_pixel",
    "input_cost_per_second": "input_per_second",
    "output_cost_per_second": "output_per_second",
    "input_cost_per_character": "input_per_character",
}
_UNIT_FIELDS = tuple(UNIT_PRICES.values())


@dataclass(frozen=True, slots=True)
class PriceTable:
    taken: str
    prices: dict[str, Prices]

    def find(self, *names: str) -> Prices | None:
        """The first of `names` the table knows, also tried without a provider prefix (`openai/…`)."""
        for name in names:
            for candidate in (name, name.rsplit("/", 1)[-1]):
                found = self.prices.get(candidate)
                if found is not None:
                    return found
        return None


def _decimals(fields: dict[str, Decimal]) -> dict[str, Any]:
    """Price fields by name, typed for `Prices(**...)` (whose fields are not all decimals)."""
    return dict(fields)


def load() -> PriceTable:
    data = json.loads(resources.files("meterway.ledger").joinpath("prices.json").read_text(encoding="utf-8"))
    prices = {
        model: Prices(**_decimals({_FIELDS[k]: Decimal(v) / _MILLION for k, v in row.items()}))
        for model, row in data["per_million_tokens"].items()
    }
    by_size: dict[str, list[tuple[str, int, Decimal]]] = {}
    for key, row in data.get("per_unit", {}).items():
        sized = _BY_SIZE.match(key)
        if sized is not None:  # `hd/1024-x-1792/dall-e-3`: one quality and size of the model's images
            quality, width, height, model = sized.groups()
            price = Decimal(row["input_cost_per_pixel"])
            by_size.setdefault(model, []).append((quality, int(width) * int(height), price))
            continue
        per_unit = _decimals({UNIT_PRICES[k]: Decimal(v) for k, v in row.items()})
        prices[key] = dataclasses.replace(prices.get(key, Prices()), **per_unit)
    for model, sizes in by_size.items():
        prices[model] = dataclasses.replace(prices.get(model, Prices()), pixel_by_size=tuple(sizes))
    return PriceTable(str(data["taken"]), prices)


# LiteLLM's key of an image price by quality and size: `<quality>/<W>-x-<H>/<model>`
_BY_SIZE = re.compile(r"^([a-z]+)/([1-9][0-9]*)-x-([1-9][0-9]*)/(.+)$")


# An image's prices are one choice (per image, else per pixel): a deployment that sets any of them
# takes none of the others from the table, or the table's price per image would override its own per pixel
_IMAGE_FIELDS = ("output_per_image", "input_per_pixel", "output_per_pixel", "pixel_by_size")
_TOKEN_FIELDS = ("input_per_token", "output_per_token", "cache_read_per_token", "cache_write_per_token")


def merged(configured: Prices, known: Prices | None) -> Prices:
    """The configured prices, with each missing field taken from the table's (an image's prices as one).
    A deployment that configures an image price (per image or per pixel) is billed by it: the table's
    token prices are not added (gpt-image-1's would bill each image twice), nor the table's prices by
    quality and size (the configured price is the one price); token prices the config sets itself
    still apply beside it."""
    if known is None:
        return configured
    own_image = any(getattr(configured, name) not in (None, ()) for name in _IMAGE_FIELDS)
    own = _IMAGE_FIELDS + _TOKEN_FIELDS if own_image else ()
    return Prices(
        **{
            f.name: mine
            if (mine := getattr(configured, f.name)) not in (None, ()) or f.name in own
            else getattr(known, f.name)
            for f in dataclasses.fields(Prices)
        }
    )


def is_priced(prices: Prices) -> bool:
    """Whether the model has a known price: per token, or per unit (a reranker priced per query)."""
    return (
        prices.input_per_token is not None
        or prices.output_per_token is not None
        or any(getattr(prices, name) is not None for name in _UNIT_FIELDS)
    )
