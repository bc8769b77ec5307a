"""Units beside tokens, priced: a rerank's search units, images, audio by the millisecond and
speech characters, each at its own price, added to the tokens' cost exactly (as integers of the
ledger's money unit) and reserved for before a request runs."""

from __future__ import annotations

from decimal import Decimal

from meterway.config.settings import Prices
from meterway.ledger import prices as table
from meterway.ledger import pricing
from meterway.providers.base import Units, Usage


def test_units_are_priced_each_on_its_own_beside_the_tokens() -> None:
    p = Prices(
        input_per_token=Decimal("0.000001"),
        input_per_query=Decimal("0.002"),
        output_per_image=Decimal("0.04"),
        input_per_second=Decimal("0.0001"),
        input_per_character=Decimal("0.000015"),
    )
    usage = Usage(10, 0, 10, queries=2, images=1, audio_ms=1501, characters=100)
    cost = pricing.cost_units(usage, pricing.unit_prices(p), pricing.rates(p))
    # 10 tokens + 2 queries + 1 image + 1.501 s (rounded up to the unit) + 100 characters
    assert cost == 10 * 10_000 + 2 * 20_000_000 + 400_000_000 + 1_501_000 + 100 * 150_000
    assert pricing.cost_units(usage, pricing.unit_prices(p)) == 10 * 10_000  # without rates: tokens only


def test_a_reservation_counts_the_most_units_the_request_may_use() -> None:
    p = Prices(input_per_query=Decimal("0.002"))
    assert pricing.estimate(p, 1000, 0) == 0
    assert pricing.estimate(p, 1000, 0, Units(queries=3)) == Decimal("0.006")


def test_a_model_priced_only_per_unit_is_priced_and_the_table_knows_cohere_rerank() -> None:
    assert table.is_priced(Prices(input_per_query=Decimal("0.002")))
    assert not table.is_priced(Prices())
    known = table.load().find("cohere/rerank-v3.5")
    assert known is not None and known.input_per_query == Decimal("0.002")
    free = table.load().find("openai/omni-moderation-latest")
    assert free is not None and free.input_per_token == 0 and table.is_priced(free)
    merged = table.merged(Prices(input_per_query=Decimal("0.001")), known)
    assert merged.input_per_query == Decimal("0.001")  # the deployment's own price wins
