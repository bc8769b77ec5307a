"""The UI's value shaping: money shown without float noise, charts built from /usage rows, and
forms' numbers refused by name."""

from __future__ import annotations

import pytest

from meterway.errors import BadRequest
from meterway.ui import values


def test_money_keeps_the_ledgers_decimals_and_trims_zeros() -> None:
    assert values.money("0.0000180000") == "$0.000018"
    assert values.money("12.5") == "$12.5"
    assert values.money("0") == "$0"
    assert values.money(None) == "—"


def test_the_usage_chart_has_one_series_per_group_over_every_bucket() -> None:
    rows = [
        {"model": "a", "day": "2026-11-01", "cost": "1.5"},
        {"model": "b", "day": "2026-11-02", "cost": "2"},
    ]
    chart = values.usage_chart(rows, ["model", "day"])
    assert chart["labels"] == ["2026-11-01", "2026-11-02"]
    assert chart["series"] == [{"label": "a", "data": [1.5, 0.0]}, {"label": "b", "data": [0.0, 2.0]}]
    flat = values.usage_chart(rows, ["model"])
    assert flat["kind"] == "bar" and flat["labels"] == ["a", "b"]


def test_form_numbers_are_refused_by_name() -> None:
    assert values.whole_number("12", "rpm_limit") == 12 and values.whole_number("", "rpm_limit") is None
    with pytest.raises(BadRequest) as bad:
        values.whole_number("1.5", "rpm_limit")
    assert bad.value.param == "rpm_limit"
    with pytest.raises(BadRequest, match="JSON object"):
        values.json_object('"text"', "metadata")
    assert values.given({"a": 0, "b": None, "c": ""}) == {"a": 0, "c": ""}


def test_a_base_url_is_shown_without_its_credentials() -> None:
    assert values.without_credentials("https://user:secret@llm.internal:8000/v1") == "https://llm.internal:8000/v1"
    assert values.without_credentials("http://localhost:11434") == "http://localhost:11434"
