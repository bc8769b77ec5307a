"""What a request costs, and what it may cost at most before it has run.

Amounts are integers of 1e-10 USD (`store.types.MONEY_UNIT`), the unit the store keeps money in
and the limiters count in: sums of integers are exact everywhere, Lua in Redis included. A price
is rounded up to the unit, so an estimate never comes out below the true cost of its tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from meterway.config.settings import Prices
from meterway.providers.base import Units, Usage

MONEY_UNIT = Decimal("1e-10")


def units(usd: Decimal | float | None) -> int:
    """USD as whole money units, rounded up."""
    if usd is None:
        return 0
    value = usd if isinstance(usd, Decimal) else Decimal(str(usd))
    return int((value / MONEY_UNIT).to_integral_value(ROUND_CEILING))


def units_exact(price: Decimal | None) -> Decimal:
    """A per-token price in money units, unrounded (a token may cost a fraction of a unit)."""
    return Decimal(0) if price is None else price / MONEY_UNIT


def usd(amount: int) -> Decimal:
    return (Decimal(amount) * MONEY_UNIT).normalize()


def prompt_tokens_upper_estimate(body: bytes) -> int:
    """Prompt tokens a request body may hold, without a tokenizer: one token per three bytes of
    its JSON. Tokenizers of today's models average three to four bytes of English text per token,
    and the JSON framing is counted as well, so this over-estimates ordinary prompts; the
    reservation made from it is settled to the provider's own count afterwards."""
    return math.ceil(len(body) / 3)


def estimate(prices: Prices, prompt_tokens: int, output_tokens: int, most: Units | None = None) -> Decimal:
    """The most a request may cost: every prompt token at the input price (or the dearer cache
    write price), its whole output allowance at the output price, and the most units it may be
    billed (`most`: a rerank's search units) at their prices."""
    input_price = max(
        (p for p in (prices.input_per_token, prices.cache_write_per_token) if p is not None), default=None
    )
    total = Decimal(0)
    if input_price is not None:
        total += prompt_tokens * input_price
    if prices.output_per_token is not None:
        total += output_tokens * prices.output_per_token
    if most is not None:
        total += most.queries * (prices.input_per_query or 0)
        total += most.images * _per_image(prices, most.pixels, most.quality)
        total += most.audio_ms * _per_second(prices) / 1000
        total += most.characters * (prices.input_per_character or 0)
    return total


def _per_pixel(prices: Prices) -> Decimal:
    """An image's price per pixel: LiteLLM writes it as `input_cost_per_pixel` (DALL·E's, its
    output price 0) or `output_cost_per_pixel`; both count where both are set."""
    return (prices.input_per_pixel or Decimal(0)) + (prices.output_per_pixel or Decimal(0))


def _per_image(prices: Prices, pixels: int, quality: str) -> Decimal:
    """The most one image may cost: `output_cost_per_image` where set, else its pixels at the
    dearest price per pixel it may be billed at (of the quality asked for, every quality for `auto`
    or an unknown one), never below the plain one."""
    if prices.output_per_image is not None:
        return prices.output_per_image
    asked = quality or DEFAULT_QUALITY
    known = {q for q, _, _ in prices.pixel_by_size}
    dearest = max(
        (price for q, _, price in prices.pixel_by_size if q == asked or asked not in known),
        default=Decimal(0),
    )
    return pixels * max(_per_pixel(prices), dearest)


DEFAULT_QUALITY = "standard"  # DALL·E 3's quality where the request names none


def pixel_price(by_size: tuple[tuple[str, int, Decimal], ...], quality: str, pixels: int) -> Decimal | None:
    """The price per pixel of an image of `quality` (`standard` where none is named) and `pixels`,
    where the table prices that pair; None elsewhere (the plain price per pixel applies)."""
    asked = quality or DEFAULT_QUALITY
    return next((price for q, p, price in by_size if q == asked and p == pixels), None)


def _per_second(prices: Prices) -> Decimal:
    """Audio's price per second: the input price (transcription), else the output price (speech)."""
    price = prices.input_per_second if prices.input_per_second is not None else prices.output_per_second
    return price or Decimal(0)


@dataclass(frozen=True, slots=True)
class Rates:
    """Per-unit prices in money units (rounded up, as token prices are): a rerank search unit, an
    image, a second of audio, a speech character. 0 where the model has no such price. `pixel` is
    the price of one pixel of an image, unrounded (it is a small fraction of a money unit), used
    where the model has no price per image: an image costs its pixels at it, rounded up."""

    query: int = 0
    image: int = 0
    second: int = 0
    character: int = 0
    pixel: Decimal = Decimal(0)
    pixel_by_size: tuple[tuple[str, int, Decimal], ...] = ()  # (quality, pixels, money units per pixel)

    def cost(self, usage: Usage) -> int:
        """The units' part of a cost: audio is counted in milliseconds, its price is per second
        (rounded up to the money unit, so never below the true cost)."""
        return (
            max(usage.queries, 0) * self.query
            + max(usage.images, 0) * self.image
            + -(-max(usage.audio_ms, 0) * self.second // 1000)
            + max(usage.characters, 0) * self.character
            + self._pixels(usage)
        )

    def _pixels(self, usage: Usage) -> int:
        """Images priced by their pixels (no price per image): images x pixels x price (the one of their
        quality and size where the table has it), rounded up."""
        if self.image or usage.images <= 0 or usage.pixels <= 0:
            return 0
        sized = pixel_price(self.pixel_by_size, usage.quality, usage.pixels)
        price = self.pixel if sized is None else sized
        return int((usage.images * usage.pixels * price).to_integral_value(ROUND_CEILING))


def rates(prices: Prices) -> Rates:
    return Rates(
        units(prices.input_per_query),
        units(prices.output_per_image),
        units(_per_second(prices)),
        units(prices.input_per_character),
        units_exact(_per_pixel(prices)),
        tuple((q, p, units_exact(price)) for q, p, price in prices.pixel_by_size),
    )


UnitPrices = tuple[int | None, int | None, int | None, int | None]  # input, output, cache read, cache write


def unit_prices(prices: Prices) -> UnitPrices:
    """Per-token prices in money units, as the ledger records them and invoices multiply them."""
    return (
        units(prices.input_per_token) if prices.input_per_token is not None else None,
        units(prices.output_per_token) if prices.output_per_token is not None else None,
        units(prices.cache_read_per_token) if prices.cache_read_per_token is not None else None,
        units(prices.cache_write_per_token) if prices.cache_write_per_token is not None else None,
    )


def quantities(usage: Usage, price: UnitPrices) -> dict[str, int]:
    """Tokens per billed type: cached and cache-written prompt tokens count apart only where they
    have a price of their own (else as input), reasoning tokens as output."""
    cached = usage.cached_tokens if price[2] is not None else 0
    written = usage.cache_write_tokens if price[3] is not None else 0
    return {
        "input": max(usage.prompt_tokens - cached - written, 0),
        "cached_input": cached,
        "cache_write": written,
        "output": usage.completion_tokens,
    }


def cost_units(usage: Usage | None, price: UnitPrices, per_unit: Rates | None = None) -> int:
    """The cost of reported usage in money units: Σ quantity x unit price, exactly what an invoice
    of the same rows adds up to; tokens, plus the units (`per_unit`) where the request used any."""
    if usage is None:
        return 0
    q = quantities(usage, price)
    tokens = (
        q["input"] * (price[0] or 0)
        + q["output"] * (price[1] or 0)
        + q["cached_input"] * (price[2] or 0)
        + q["cache_write"] * (price[3] or 0)
    )
    return tokens + (per_unit.cost(usage) if per_unit is not None else 0)
