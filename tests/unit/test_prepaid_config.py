"""`billing.prepaid`: a mode or a mapping, LAGO_PREPAID_MODE, and readable errors naming the key."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from meterway.cli.main import prepaid_status
from meterway.config.billing import Prepaid
from meterway.config.load import parse_config
from meterway.errors import ConfigError

MODELS: dict[str, Any] = {"model_list": [{"model_name": "demo", "litellm_params": {"model": "mock/demo"}}]}
LAGO = {"api_base": "http://lago:3000", "api_key": "k"}


def _prepaid(given: Any, env: dict[str, str] | None = None) -> Prepaid:
    billing = dict(LAGO) if given is None else {**LAGO, "prepaid": given}
    parsed = parse_config({**MODELS, "billing": billing}, source=None, env=env or {}).billing
    assert parsed is not None
    return parsed.prepaid


def test_prepaid_is_off_unless_asked_for() -> None:
    assert _prepaid(None) == Prepaid() and not Prepaid().on
    assert prepaid_status(parse_config(MODELS, source=None, env={})) == "off (no billing section)"


def test_a_mode_alone_or_a_mapping_with_durations_and_amounts() -> None:
    assert _prepaid("enforce").mode == "enforce"
    full = _prepaid(
        {
            "mode": "observe",
            "refresh_interval": "30s",
            "stale_after": "5m",
            "when_stale": "closed",
            "low_balance": 2.5,
            "tax_rate": "0.2",
        }
    )
    assert (full.mode, full.refresh_interval_s, full.stale_after_s, full.when_stale) == ("observe", 30, 300, "closed")
    assert full.low_balance == Decimal("2.5") and full.tax_rate == Decimal("0.2")
    assert full.status().startswith("observe (refresh every 30s, stale after 300s, when stale: closed")


def test_lago_prepaid_mode_gives_the_mode_when_the_section_does_not() -> None:
    assert _prepaid(None, {"LAGO_PREPAID_MODE": "enforce"}).mode == "enforce"
    assert _prepaid({"mode": "observe"}, {"LAGO_PREPAID_MODE": "enforce"}).mode == "observe"


@pytest.mark.parametrize(
    ("given", "names"),
    [
        ("strict", "billing.prepaid.mode"),
        ({"mode": "enforce", "refresh": "1m"}, "billing.prepaid.refresh: not a prepaid setting"),
        ({"refresh_interval": "soon"}, "billing.prepaid.refresh_interval"),
        ({"stale_after": 0}, "billing.prepaid.stale_after"),
        ({"when_stale": "maybe"}, "billing.prepaid.when_stale"),
        ({"low_balance": -1}, "billing.prepaid.low_balance"),
        ({"tax_rate": "a lot"}, "billing.prepaid.tax_rate"),
        (42, "billing.prepaid must be"),
    ],
)
def test_a_bad_prepaid_setting_is_refused_naming_its_key(given: Any, names: str) -> None:
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        _prepaid(given)
