"""Budget and credit alerts in LiteLLM's shape, delivered from an outbox (docs/alerts.md).

`Alerts` is built once by `services.open_services` and passed to whoever raises alerts: the
limits hook notes refused budgets on it, the prepaid module calls `enqueue`. Never a global.
"""

from meterway.alerts.model import EVENT_GROUP, Alert, Event, Scope, budget_message, credits_alert
from meterway.alerts.worker import Alerts

__all__ = ["EVENT_GROUP", "Alert", "Alerts", "Event", "Scope", "budget_message", "credits_alert"]
