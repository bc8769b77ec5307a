"""An alert, and what each destination is sent for it.

The webhook body is LiteLLM's `WebhookEvent` (litellm/proxy/_types.py): `spend`, `max_budget`,
`soft_budget`, `token` (the key's SHA-256 digest, never the key), `customer_id`, `user_id`,
`team_id`, `team_alias`, `user_email`, `key_alias`, `projected_exceeded_date`, `projected_spend`,
`event`, `event_group`, `event_message`; so a receiver written for LiteLLM's budget alerts keeps
working. meterway adds `alert_id`, the same on every delivery of one alert: a receiver drops a
rare duplicate by it (see docs/alerts.md). Slack is sent `{"text": ...}`, readable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

Event = Literal["budget_crossed", "threshold_crossed", "soft_budget_crossed", "credits_low", "credits_exhausted"]
# the entity an alert is about, as meterway names it (the dedupe key's scope)
Scope = Literal["key", "user", "team", "customer", "proxy"]
# LiteLLM's Litellm_EntityType values: a customer (LiteLLM's end user) is "end_user" there, so a
# receiver that parses the body with LiteLLM's own `WebhookEvent` model accepts it
EVENT_GROUP: Final = {"key": "key", "user": "user", "team": "team", "customer": "end_user", "proxy": "proxy"}
# LiteLLM's event_message prefixes (budget_alert_types.py)
_PREFIX: Final = {
    "key": "Key Budget: ",
    "user": "User Budget: ",
    "team": "Team Budget: ",
    "customer": "Customer Budget: ",
    "proxy": "Proxy Budget: ",
}


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert. `dedupe` names the crossing: every replica that notices it builds the same one,
    and the outbox keeps the first (per destination). Amounts are in USD (or the credits' currency)."""

    event: Event
    scope: Scope
    dedupe: str
    event_message: str
    spend: float = 0.0
    max_budget: float | None = None
    soft_budget: float | None = None
    token: str | None = None  # the key's digest
    customer_id: str | None = None
    user_id: str | None = None
    team_id: str | None = None
    team_alias: str | None = None
    user_email: str | None = None
    key_alias: str | None = None

    @property
    def event_group(self) -> str:
        return EVENT_GROUP[self.scope]

    def webhook_body(self) -> dict[str, Any]:
        """LiteLLM's WebhookEvent fields (the outbox adds `alert_id` when it sends)."""
        return {
            "spend": self.spend,
            "max_budget": self.max_budget,
            "soft_budget": self.soft_budget,
            "token": self.token,
            "customer_id": self.customer_id,
            "user_id": self.user_id,
            "team_id": self.team_id,
            "team_alias": self.team_alias,
            "user_email": self.user_email,
            "key_alias": self.key_alias,
            "projected_exceeded_date": None,
            "projected_spend": None,
            "event": self.event,
            "event_group": self.event_group,
            "event_message": self.event_message,
        }

    def slack_body(self) -> dict[str, Any]:
        """A message people read: what happened, then the entity's fields that are set."""
        lines = [f"*Budget alert* `{self.event}`", self.event_message, ""]
        fields = (
            ("Spend", self.spend),
            ("Max budget", self.max_budget),
            ("Soft budget", self.soft_budget),
            ("Key alias", self.key_alias),
            ("Key (digest)", self.token),
            ("User", self.user_id),
            ("User email", self.user_email),
            ("Team", self.team_alias or self.team_id),
            ("Customer", self.customer_id),
        )
        lines += [f"{name}: `{value}`" for name, value in fields if value is not None]
        return {"text": "\n".join(lines)}


def budget_message(scope: Scope, event: Event, max_budget: float | None, soft_budget: float | None, t: float) -> str:
    """LiteLLM's event_message wording, with meterway's configurable threshold in it."""
    prefix = _PREFIX[scope]
    if event == "budget_crossed":
        return f"{prefix}Budget Crossed\n Total Budget:`{max_budget}`"
    if event == "soft_budget_crossed":
        return f"{prefix}Soft Budget Crossed: Total Soft Budget:`{soft_budget}`"
    return f"{prefix}{_percent(1 - t)}% Threshold Crossed ({_percent(t)}% of budget `{max_budget}` spent)"


def _percent(fraction: float) -> str:
    return f"{round(fraction * 100, 2):g}"


def credits_alert(
    event: Literal["credits_low", "credits_exhausted"],
    customer_id: str,
    dedupe: str,
    *,
    available: float,
    funded: float | None = None,
    currency: str = "USD",
    low_balance: float | None = None,
) -> Alert:
    """A prepaid customer's credits running low or out (event_group "end_user", LiteLLM's name
    for a customer). `dedupe` is the caller's: e.g. `customer:<id>:<wallet reading period>:credits_low`,
    so each episode is alerted once across replicas. `spend` carries what is still available and
    `max_budget` what the wallets funded, in the credits' currency."""
    if event == "credits_low":
        message = f"Customer Credits: Low Balance: {available:g} {currency} available"
        if low_balance is not None:
            message += f" (alert below {low_balance:g} {currency})"
    else:
        message = f"Customer Credits: Exhausted: {available:g} {currency} available; top up to be served again"
    return Alert(
        event=event,
        scope="customer",
        dedupe=f"credits:{dedupe}",
        event_message=message,
        spend=available,
        max_budget=funded,
        customer_id=customer_id,
    )
