"""Lago events from ledger rows: who is charged, and the event's shape.

The transaction id is the row's `uid` (with `:<token type>` when events are split by type), and
the timestamp is the row's end time: both fixed by the row, so a resend is the same event to
Lago whatever store it runs on (the ClickHouse store deduplicates on id and timestamp).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from decimal import Decimal
from typing import Any

from meterway.config.billing import Billing

# which ledger column names the charged entity, by `charge_by`
CHARGED = {"customer": "customer_id", "user": "user_id", "team": "team_id", "key": "key_id"}


@dataclass(frozen=True, slots=True)
class Parked:
    """A row that cannot be billed as it is, and why (readable, shown by `billing status`)."""

    reason: str


def subscription_for(row: Mapping[str, Any], billing: Billing, mapped: Mapping[str, str]) -> str | Parked:
    """The Lago `external_subscription_id` to charge: the entity's own mapping when it has one,
    else its id (as LiteLLM does), else the configured default."""
    entity = row.get(CHARGED[billing.charge_by])
    if entity:
        return mapped.get(str(entity), str(entity))
    if billing.default_external_subscription_id:
        return billing.default_external_subscription_id
    what = {"customer": "customer (the request's `user` field)", "user": "user", "team": "team", "key": "key"}
    return Parked(f"no {what[billing.charge_by]} on the request while charging by {billing.charge_by}")


def events_for(row: Mapping[str, Any], subscription: str, billing: Billing) -> list[dict[str, Any]]:
    ended = row["ended_at"]
    if ended.tzinfo is None:
        ended = ended.replace(tzinfo=UTC)  # SQLite keeps no zone; the ledger writes UTC
    timestamp = round(ended.timestamp(), 3)
    model = row["model_group"]
    extra = {
        k: row["metadata"][k] for k in billing.tags if isinstance(row.get("metadata"), dict) and k in row["metadata"]
    }

    def event(suffix: str, properties: dict[str, Any]) -> dict[str, Any]:
        return {
            "transaction_id": row["uid"] + suffix,
            "external_subscription_id": subscription,
            "code": billing.event_code,
            "timestamp": timestamp,
            "properties": {**properties, **extra},
        }

    if not billing.split_by_token_type:
        cost = row["cost"]
        usd = format(Decimal(cost), "f") if cost is not None else None
        return [
            event(
                "",
                {
                    "model": model,
                    "prompt_tokens": row["prompt_tokens"],
                    "completion_tokens": row["completion_tokens"],
                    "total_tokens": row["total_tokens"],
                    "cost": usd,
                    "response_cost": usd,  # LiteLLM's Lago callback's name: its users' metrics sum it
                },
            )
        ]
    cached, written, reasoning = row["cached_tokens"], row["cache_write_tokens"], row["reasoning_tokens"]
    counts = {
        "input": max(row["prompt_tokens"] - cached - written, 0),
        "cached_input": cached,
        "cache_write": written,
        "output": max(row["completion_tokens"] - reasoning, 0),
        "reasoning": reasoning,
    }
    return [event(f":{kind}", {"type": kind, "model": model, "tokens": n}) for kind, n in counts.items() if n > 0]
