"""Images priced per image, else by their pixels (LiteLLM's `input_cost_per_pixel`, DALL·E's): an
image costs its size's pixels at the price, rounded up to the money unit; a reservation counts `n`
images of the largest size asked; a deployment's own image price is never mixed with the table's."""

from __future__ import annotations

from decimal import Decimal

from meterway.config.settings import Prices
from meterway.ledger import prices as table
from meterway.ledger import pricing
from meterway.providers.base import Units, Usage


def test_a_price_per_pixel_bills_each_image_by_its_size() -> None:
    p = Prices(input_per_pixel=Decimal("4.19617e-08"), output_per_pixel=Decimal(0))
    usage = Usage(images=2, pixels=1024 * 1024)
    cost = pricing.cost_units(usage, pricing.unit_prices(p), pricing.rates(p))
    exact = Decimal("4.19617e-08") * 2 * 1024 * 1024 / pricing.MONEY_UNIT
    assert cost == int(exact) + 1  # rounded up, never below the true cost
    assert pricing.cost_units(Usage(images=2), pricing.unit_prices(p), pricing.rates(p)) == 0  # no size: no pixels


def test_a_price_per_image_wins_over_pixels() -> None:
    p = Prices(output_per_image=Decimal("0.04"), input_per_pixel=Decimal("1e-6"))
    usage = Usage(images=3, pixels=1024 * 1024)
    assert pricing.cost_units(usage, pricing.unit_prices(p), pricing.rates(p)) == 3 * 400_000_000
    assert pricing.estimate(p, 0, 0, Units(images=3, pixels=1024 * 1024)) == Decimal("0.12")


def test_a_reservation_prices_n_images_of_the_asked_size_by_pixels() -> None:
    p = Prices(input_per_pixel=Decimal("2e-8"))
    assert pricing.estimate(p, 0, 0, Units(images=3, pixels=512 * 512)) == Decimal("2e-8") * 3 * 512 * 512


def test_a_deployments_own_image_price_takes_none_from_the_table() -> None:
    known = table.load().find("openai/dall-e-2")
    assert known is not None and known.output_per_image == Decimal("0.02")
    mine = table.merged(Prices(input_per_pixel=Decimal("2e-8")), known)
    assert mine.output_per_image is None and mine.input_per_pixel == Decimal("2e-8")
    assert table.merged(Prices(), known).output_per_image == Decimal("0.02")
    dalle3 = table.load().find("dall-e-3")
    assert dalle3 is not None and dalle3.input_per_pixel is not None
    gpt_image = table.load().find("gpt-image-1")
    assert gpt_image is not None and gpt_image.output_per_token == Decimal(40) / 1_000_000


def test_the_tables_dall_e_3_rows_price_by_quality_and_size() -> None:
    known = table.load().find("openai/dall-e-3")
    assert known is not None
    rates = pricing.rates(known)
    tall, square = 1024 * 1792, 1024 * 1024
    hd = pricing.cost_units(Usage(images=1, pixels=tall, quality="hd"), pricing.unit_prices(known), rates)
    assert hd == pricing.units(Decimal("7.19343e-08") * tall)
    plain = pricing.cost_units(Usage(images=1, pixels=square), pricing.unit_prices(known), rates)  # standard
    assert plain == pricing.units(Decimal("4.19617e-08") * square)
    odd = pricing.cost_units(Usage(images=1, pixels=512 * 512, quality="hd"), pricing.unit_prices(known), rates)
    assert odd == pricing.units(Decimal("4.19617e-08") * 512 * 512)  # no such row: the plain price
    # a reservation: the quality asked for (standard where none), every quality for `auto`
    assert pricing.estimate(known, 0, 0, Units(images=1, pixels=tall)) == Decimal("4.79562e-08") * tall
    assert pricing.estimate(known, 0, 0, Units(images=1, pixels=tall, quality="auto")) == Decimal("8.39233e-08") * tall


def test_a_deployments_own_image_price_wins_over_the_tables_quality_rows() -> None:
    known = table.load().find("openai/dall-e-3")
    mine = table.merged(Prices(output_per_image=Decimal("0.04")), known)
    assert mine.pixel_by_size == () and mine.input_per_pixel is None
    usage = Usage(images=1, pixels=1024 * 1792, quality="hd")
    assert pricing.cost_units(usage, pricing.unit_prices(mine), pricing.rates(mine)) == 400_000_000
    assert table.merged(Prices(), known).pixel_by_size == known.pixel_by_size != ()
