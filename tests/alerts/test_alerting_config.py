"""`general_settings.alerting` and `alerting_args` as LiteLLM users write them: destinations and
their URLs, thresholds, and a readable error or warning naming the setting when something is off."""

from __future__ import annotations

from typing import Any

import pytest

from meterway.config.alerting import DEFAULT_THRESHOLDS
from meterway.config.load import parse_config
from meterway.config.settings import Settings
from meterway.errors import ConfigError


def _parse(general: dict[str, Any], env: dict[str, str] | None = None) -> Settings:
    data = {
        "model_list": [{"model_name": "demo", "litellm_params": {"model": "mock/demo"}}],
        "general_settings": {"master_key": "sk-test-master-0123456789", **general},
    }
    return parse_config(data, source=None, env=env or {})


def test_litellms_alerting_list_takes_its_urls_from_the_environment() -> None:
    env = {
        "WEBHOOK_URL": "https://hooks.example.com/llm",
        "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/X",
    }
    settings = _parse({"alerting": ["slack", "webhook"]}, env)
    assert settings.alerting is not None
    assert dict(settings.alerting.destinations) == {
        "slack": "https://hooks.slack.com/services/T/B/X",
        "webhook": "https://hooks.example.com/llm",
    }
    assert settings.alerting.thresholds == DEFAULT_THRESHOLDS == (0.85, 0.95)  # LiteLLM's 15 % and 5 % left
    assert not any("alerting" in w for w in settings.warnings)


def test_thresholds_and_urls_may_be_given_in_alerting_args_with_os_environ_references() -> None:
    general = {
        "alerting": ["webhook"],
        "alerting_args": {
            "budget_alert_thresholds": [0.95, 0.5, 0.8],
            "webhook_url": "os.environ/MY_HOOK",
            "daily_report_frequency": 43200,
        },
    }
    settings = _parse(general, {"MY_HOOK": "http://127.0.0.1:9/alerts"})
    assert settings.alerting is not None
    assert settings.alerting.thresholds == (0.5, 0.8, 0.95)
    assert dict(settings.alerting.destinations) == {"webhook": "http://127.0.0.1:9/alerts"}
    assert any(
        w.startswith("general_settings.alerting_args.daily_report_frequency: ignored") for w in settings.warnings
    )


def test_destinations_meterway_does_not_send_to_are_named_in_a_warning() -> None:
    settings = _parse({"alerting": ["webhook", "email", "pagerduty"]}, {"WEBHOOK_URL": "https://h.example.com/"})
    assert settings.alerting is not None and list(settings.alerting.destinations) == ["webhook"]
    for name in ("email", "pagerduty"):
        assert any(
            w.startswith(f"general_settings.alerting: '{name}' is not supported; ignored") for w in settings.warnings
        )


def test_a_destination_without_its_url_is_warned_about_and_alerting_stays_off() -> None:
    settings = _parse({"alerting": ["slack"]})
    assert settings.alerting is None
    assert any("'slack' has no SLACK_WEBHOOK_URL" in w for w in settings.warnings)


@pytest.mark.parametrize(
    ("general", "named"),
    [
        ({"alerting": "webhook", "alerting_args": {"budget_alert_thresholds": [80]}}, "budget_alert_thresholds"),
        ({"alerting": ["webhook"], "alerting_args": {"budget_alert_thresholds": "0.8"}}, "budget_alert_thresholds"),
        ({"alerting": ["webhook"], "alerting_args": {"budget_alert_scan_interval": 0}}, "budget_alert_scan_interval"),
        ({"alerting": ["webhook"], "alerting_args": {"webhook_url": "hooks.example.com"}}, "WEBHOOK_URL"),
        ({"alerting": {"webhook": True}}, "general_settings.alerting"),
        ({"alerting": ["webhook"], "alerting_args": ["x"]}, "general_settings.alerting_args"),
    ],
)
def test_bad_alerting_values_are_refused_naming_the_setting(general: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError) as e:
        _parse(general, {"WEBHOOK_URL": "https://h.example.com/"})
    assert named in str(e.value)
