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
from types import MappingProxyType
from typing import Any, Final

import orjson

from meterway.config.billing import DEFAULT_PROPERTIES, METADATA, UNIT_SOURCES, Billing

# which ledger column names the charged entity, by `charge_by`
CHARGED: Final = MappingProxyType({"customer": "customer_id", "user": "user_id", "team": "team_id", "key": "key_id"})


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


def _usd(cost: Any) -> str | None:
    return format(Decimal(cost), "f") if cost is not None else None


def _unit(value: Any) -> int | None:
    """A unit count, or None (the property is left out) when the request used none."""
    return value if value else None


def _seconds(ms: Any) -> str | None:
    """Audio milliseconds as seconds, an exact decimal string ("1.5"), as Lago sums decimals."""
    return format((Decimal(ms) / 1000).normalize(), "f") if ms else None


# each source of `billing.properties` (config.billing.SOURCES): how it is read from a ledger row
READ: Final[Mapping[str, Any]] = MappingProxyType(
    {
        "model": lambda r: r["model_group"],
        "prompt_tokens": lambda r: r["prompt_tokens"],
        "completion_tokens": lambda r: r["completion_tokens"],
        "total_tokens": lambda r: r["total_tokens"],
        "cached_tokens": lambda r: r["cached_tokens"],
        "cache_write_tokens": lambda r: r["cache_write_tokens"],
        "reasoning_tokens": lambda r: r["reasoning_tokens"],
        "cost": lambda r: _usd(r["cost"]),
        "response_cost": lambda r: _usd(r["cost"]),  # LiteLLM's Lago callback's name: its users' metrics sum it
        "customer": lambda r: r["customer_id"],
        "end_user": lambda r: r.get("end_user"),
        "user": lambda r: r["user_id"],
        "team": lambda r: r["team_id"],
        "key_alias": lambda r: r["key_alias"],
        # joined: Lago documents a property's value as a string or a number, never a list
        "tags": lambda r: ",".join(r.get("tags") or ()) or None,
        "deployment": lambda r: r["deployment_id"],
        "upstream_model": lambda r: r["upstream_model"],
        "endpoint": lambda r: r["endpoint"],
        "request_id": lambda r: r["request_id"],
        "queries": lambda r: _unit(r.get("queries")),
        "images": lambda r: _unit(r.get("images")),
        "audio_seconds": lambda r: _seconds(r.get("audio_ms")),
        "characters": lambda r: _unit(r.get("characters")),
    }
)


def _read(row: Mapping[str, Any], source: str) -> Any:
    if source.startswith(METADATA):
        meta = row.get("metadata")
        value = meta.get(source[len(METADATA) :]) if isinstance(meta, dict) else None
        if isinstance(value, dict | list):  # a property's value is a string or a number in Lago
            return orjson.dumps(value).decode()
        return value
    return READ[source](row)


def properties_for(row: Mapping[str, Any], billing: Billing) -> dict[str, Any]:
    """An unsplit event's properties: the defaults and `billing.properties`, each read from the
    row. A property with no value (no tags, a metadata key the request did not set) is left out
    rather than sent empty, so a Lago filter on it never sees a false value."""
    out = {}
    for name, source in billing.event_properties().items():
        value = _read(row, source)
        if value is not None:
            out[name] = value
    return out


def events_for(row: Mapping[str, Any], subscription: str, billing: Billing) -> list[dict[str, Any]]:
    ended = row["ended_at"]
    if ended.tzinfo is None:
        ended = ended.replace(tzinfo=UTC)  # SQLite keeps no zone; the ledger writes UTC
    timestamp = round(ended.timestamp(), 3)
    # `billing.tags`: request metadata copied as is, read (and serialised) as `metadata.<key>` is;
    # never under a name meterway's events carry, even where this row left it out (an unpriced row
    # has no cost) or this shape does not: client metadata must not stand in for a billed figure
    extra = {k: v for k in billing.tags if k not in _computed(billing) and (v := _read(row, METADATA + k)) is not None}

    def event(suffix: str, properties: dict[str, Any]) -> dict[str, Any]:
        return {
            "transaction_id": row["uid"] + suffix,
            "external_subscription_id": subscription,
            "code": billing.event_code,
            "timestamp": timestamp,
            # what the event computed wins: client metadata never replaces the billed model or figures
            "properties": {**extra, **properties},
        }

    if not billing.split_by_token_type:
        return [event("", properties_for(row, billing))]
    # split: one event per token type; `billing.properties` adds to each what describes the whole
    # row (a customer, a team); config refuses the row's figures there (each event would repeat them)
    added = {
        name: _read(row, source) for name, source in billing.properties if source is not None and name not in SPLIT
    }
    added = {k: v for k, v in added.items() if v is not None}
    model = row["model_group"]
    cached, written, reasoning = row["cached_tokens"], row["cache_write_tokens"], row["reasoning_tokens"]
    counts = {
        "input": max(row["prompt_tokens"] - cached - written, 0),
        "cached_input": cached,
        "cache_write": written,
        "output": max(row["completion_tokens"] - reasoning, 0),
        "reasoning": reasoning,
    }
    out = [
        event(f":{kind}", {"type": kind, "model": model, "tokens": n, **added}) for kind, n in counts.items() if n > 0
    ]
    # units: an event each, its count under its own name (no `tokens`, so a token metric never adds it)
    for unit in UNIT_SOURCES:
        value = READ[unit](row)
        if value is not None:
            out.append(event(f":{unit}", {"type": unit, "model": model, unit: value, **added}))
    return out


SPLIT = frozenset({"type", "model", "tokens"})  # a split event's own properties, never replaced


def _computed(billing: Billing) -> frozenset[str]:
    """The property names meterway fills: a split event's own, the defaults and every configured
    property (a dropped default's name included: a metric may still be on it)."""
    return SPLIT | {n for n, _ in DEFAULT_PROPERTIES} | {n for n, _ in billing.properties}


def tokens_property(billing: Billing) -> str | None:
    """The property that carries an event's tokens (reconciliation adds it up on both sides), or
    None when `billing.properties` dropped it."""
    if billing.split_by_token_type:
        return "tokens"
    return next((n for n, s in billing.event_properties().items() if s == "total_tokens"), None)


# the ledger column a non-additive source is read from (the others are the row's summed figures)
_COLUMN: Final = MappingProxyType(
    {
        "model": "model_group",
        "customer": "customer_id",
        "end_user": "end_user",
        "user": "user_id",
        "team": "team_id",
        "key_alias": "key_alias",
        "deployment": "deployment_id",
        "upstream_model": "upstream_model",
        "endpoint": "endpoint",
        "request_id": "request_id",
    }
)


def grouping(billing: Billing) -> tuple[tuple[str, ...], bool]:
    """What rows must share to be priced as one summed row (`billing.prepaid`): the ledger
    columns the events read that do not add up, and whether they read the request's metadata or
    tags (then rows are told apart by those too)."""
    sources = [s for _, s in billing.properties if s is not None]
    if not billing.split_by_token_type:
        sources += list(billing.event_properties().values())
    columns = {"model_group"} | {_COLUMN[s] for s in sources if s in _COLUMN}
    by_metadata = bool(billing.tags) or any(s == "tags" or s.startswith(METADATA) for s in sources)
    return tuple(sorted(columns)), by_metadata
