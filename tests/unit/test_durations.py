from __future__ import annotations

from datetime import timedelta

import pytest

from meterway.config.durations import parse_duration
from meterway.errors import BadRequest


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("20m", timedelta(minutes=20)),
        ("1h", timedelta(hours=1)),
        ("30d", timedelta(days=30)),
        ("2w", timedelta(days=14)),
        ("1mo", timedelta(days=30)),
    ],
)
def test_durations_parse(text: str, expected: timedelta) -> None:
    assert parse_duration(text, "duration") == expected


@pytest.mark.parametrize("text", ["", "30", "d30", "1y", "-1d", "1.5h"])
def test_bad_durations_name_the_field(text: str) -> None:
    with pytest.raises(BadRequest) as e:
        parse_duration(text, "budget_duration")
    assert e.value.param == "budget_duration"
