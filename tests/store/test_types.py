from __future__ import annotations

from decimal import Decimal

import pytest

from meterway.store.types import Money


@pytest.mark.parametrize("value", ["0", "0.0000025", "123.4567890123", "100", "0.0000000001"])
def test_money_round_trips_exactly(value: str) -> None:
    m = Money()
    stored = m.process_bind_param(Decimal(value), None)  # type: ignore[arg-type]
    assert isinstance(stored, int)
    assert m.process_result_value(stored, None) == Decimal(value)  # type: ignore[arg-type]
