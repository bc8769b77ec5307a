"""The bundled price table: well-known models' per-token prices, used where a deployment's config
gives none. A deployment's own prices (`input_cost_per_token`, … in `model_info` or
`litellm_params`) always win, field by field. The table is data (`prices.json`, USD per million
tokens as providers publish them, with the date they were taken); updating it is editing that file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources

from meterway.config.settings import Prices

_MILLION = Decimal(1_000_000)
_FIELDS = {
    "input": "input_per_token",
    "output": "output_per_token",
    "cache_read": "cache_read_per_token",
    "cache_write": "cache_write_per_token",
}


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


def load() -> PriceTable:
    data = json.loads(resources.files("meterway.ledger").joinpath("prices.json").read_text(encoding="utf-8"))
    prices = {
        model: Prices(**{_FIELDS[k]: Decimal(v) / _MILLION for k, v in row.items()})
        for model, row in data["per_million_tokens"].items()
    }
    return PriceTable(str(data["taken"]), prices)


def merged(configured: Prices, known: Prices | None) -> Prices:
    """The configured prices, with each missing field taken from the table's."""
    if known is None:
        return configured
    return Prices(
        input_per_token=configured.input_per_token if configured.input_per_token is not None else known.input_per_token,
        output_per_token=(
            configured.output_per_token if configured.output_per_token is not None else known.output_per_token
        ),
        cache_read_per_token=(
            configured.cache_read_per_token
            if configured.cache_read_per_token is not None
            else known.cache_read_per_token
        ),
        cache_write_per_token=(
            configured.cache_write_per_token
            if configured.cache_write_per_token is not None
            else known.cache_write_per_token
        ),
    )


def is_priced(prices: Prices) -> bool:
    return prices.input_per_token is not None or prices.output_per_token is not None
