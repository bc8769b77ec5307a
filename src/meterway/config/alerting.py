"""Budget alerts, configured as LiteLLM configures them:

    general_settings:
      alerting: ["webhook", "slack"]           # where alerts go; WEBHOOK_URL, SLACK_WEBHOOK_URL
      alerting_args:
        budget_alert_thresholds: [0.85, 0.95]  # fractions of max_budget (default: LiteLLM's 15 % and 5 % left)
        budget_alert_scan_interval: 1          # seconds between scans of entity spend (default 1)
        webhook_url: os.environ/WEBHOOK_URL    # optional: instead of the WEBHOOK_URL variable
        slack_webhook_url: os.environ/SLACK_WEBHOOK_URL

LiteLLM alerts at two fixed points, 15 % and 5 % of the budget left, and has no setting for them;
`budget_alert_thresholds` is ours, put beside LiteLLM's other `alerting_args` where its users look.
Destinations meterway does not send to (email, pagerduty, ...) and LiteLLM's other alerting_args
(outage, daily reports) are warned about by name and ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from meterway.errors import ConfigError

DESTINATIONS: Final = ("webhook", "slack")
DEFAULT_THRESHOLDS: Final = (0.85, 0.95)  # LiteLLM's "15% Threshold Crossed" and "5% Threshold Crossed"
DEFAULT_SCAN_S: Final = 1.0
OURS: Final = frozenset({"budget_alert_thresholds", "budget_alert_scan_interval", "webhook_url", "slack_webhook_url"})
# what meterway says of the destinations LiteLLM knows and meterway does not send to
OTHER_DESTINATIONS: Final = {
    "email": "meterway sends no email; point a webhook receiver at your mail service",
    "pagerduty": "meterway does not page; route the webhook to PagerDuty's Events API",
    "msteams": "meterway posts Slack's format only; use the webhook for Teams",
    "discord": "Discord takes Slack's format at its /slack URL: use slack with that URL",
}


@dataclass(frozen=True, slots=True)
class Alerting:
    """Where budget alerts go and when they fire. `destinations` maps `webhook`/`slack` to its URL."""

    destinations: Mapping[str, str]
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    scan_interval_s: float = DEFAULT_SCAN_S


def parse_alerting(general: Mapping[str, Any], env: Mapping[str, str], warnings: list[str]) -> Alerting | None:
    """`general_settings.alerting` and `alerting_args`; None when no alert goes anywhere. Appends a
    warning naming each setting or destination it does not act on."""
    raw = general.get("alerting")
    args = general.get("alerting_args") or {}
    if not isinstance(args, Mapping):
        raise ConfigError("general_settings.alerting_args must be a mapping")
    for key in sorted(str(k) for k in args if k not in OURS):
        warnings.append(f"general_settings.alerting_args.{key}: ignored: meterway sends budget and credit alerts only")
    thresholds = _thresholds(args.get("budget_alert_thresholds", list(DEFAULT_THRESHOLDS)))
    scan = args.get("budget_alert_scan_interval", DEFAULT_SCAN_S)
    if isinstance(scan, bool) or not isinstance(scan, int | float) or not 0.05 <= scan <= 3600:
        raise ConfigError(
            "general_settings.alerting_args.budget_alert_scan_interval must be a number of seconds "
            f"between 0.05 and 3600, got {scan!r}"
        )
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = [raw]  # one name as well as a list, as LiteLLM's callbacks take it
    if not isinstance(raw, list) or not all(isinstance(d, str) for d in raw):
        raise ConfigError('general_settings.alerting must be a list of destinations, e.g. ["webhook", "slack"]')
    destinations: dict[str, str] = {}
    for name in dict.fromkeys(raw):
        if name not in DESTINATIONS:
            why = OTHER_DESTINATIONS.get(name, "meterway sends alerts to webhook and slack only")
            warnings.append(f"general_settings.alerting: '{name}' is not supported; ignored: {why}")
            continue
        setting, variable = (
            ("webhook_url", "WEBHOOK_URL") if name == "webhook" else ("slack_webhook_url", "SLACK_WEBHOOK_URL")
        )
        url = args.get(setting) or env.get(variable)
        if not url:  # LiteLLM starts without it too (and fails each alert); meterway says so once
            warnings.append(
                f"general_settings.alerting: '{name}' has no {variable} (nor general_settings.alerting_args."
                f"{setting}); no {name} alerts are sent"
            )
            continue
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"{variable} (general_settings.alerting_args.{setting}) must be an http(s) URL")
        destinations[name] = url
    if not destinations:
        return None
    return Alerting(destinations=destinations, thresholds=thresholds, scan_interval_s=float(scan))


def _thresholds(value: Any) -> tuple[float, ...]:
    where = "general_settings.alerting_args.budget_alert_thresholds"
    if not isinstance(value, list) or not all(
        isinstance(t, int | float) and not isinstance(t, bool) and 0 < t < 1 for t in value
    ):
        raise ConfigError(
            f"{where} must be a list of fractions of max_budget between 0 and 1 (e.g. [0.8, 0.95]), got {value!r}"
        )
    return tuple(sorted({float(t) for t in value}))
