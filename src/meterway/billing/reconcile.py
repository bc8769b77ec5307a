"""Reconciliation: the ledger's billable rows of a month against the events Lago holds.

For every subscription the month's rows were exported to, the expected transaction ids (and
their `total_tokens`, or `tokens` when split by type) are compared with the events Lago lists
for that subscription and code in the same time range. Anything missing from Lago, anything Lago
has that the ledger does not expect, and any difference in tokens is reported; rows that are
parked are listed apart (they are known not to be billed). Matching means all three are empty.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp

from meterway.billing.events import CHARGED, Parked, events_for, subscription_for, tokens_property
from meterway.config.billing import Billing
from meterway.store.outbox import OutboxStore

SHOWN = 20  # ids listed per difference


def month(period: str) -> tuple[datetime, datetime]:
    first = date.fromisoformat(period + "-01")
    nxt = (first.replace(day=28) + timedelta(days=4)).replace(day=1)
    return datetime(first.year, first.month, 1, tzinfo=UTC), datetime(nxt.year, nxt.month, 1, tzinfo=UTC)


async def reconcile(
    billing: Billing, outbox: OutboxStore, session: aiohttp.ClientSession, period: str, customer: str | None = None
) -> dict[str, Any]:
    start, end = month(period)
    rows = await outbox.rows_between(start, end)
    column = CHARGED[billing.charge_by]
    mapped = await outbox.subscriptions(billing.charge_by, sorted({str(r[column]) for r in rows if r[column]}))
    counted = tokens_property(billing)  # None: `billing.properties` dropped it, events are only counted
    expected: dict[str, dict[str, int]] = defaultdict(dict)  # subscription -> transaction id -> tokens
    parked = 0
    for row in rows:
        if customer is not None and row["customer_id"] != customer:
            continue
        if row["outbox_status"] == "parked":
            parked += 1
            continue
        sub = subscription_for(row, billing, mapped)
        if isinstance(sub, Parked):
            continue
        for event in events_for(row, sub, billing):
            props = event["properties"]
            expected[sub][event["transaction_id"]] = int(props.get(counted, 0) if counted else 0)
    subscriptions = []
    for sub, want in sorted(expected.items()):
        have = await _lago_events(billing, session, sub, start, end, counted)
        missing = sorted(set(want) - set(have))
        unexpected = sorted(set(have) - set(want))
        ledger_tokens, lago_tokens = sum(want.values()), sum(have.values())
        subscriptions.append(
            {
                "external_subscription_id": sub,
                "code": billing.event_code,
                "ledger_events": len(want),
                "lago_events": len(have),
                "ledger_tokens": ledger_tokens,
                "lago_tokens": lago_tokens,
                "missing_in_lago": missing[:SHOWN],
                "missing_count": len(missing),
                "unexpected_in_lago": unexpected[:SHOWN],
                "unexpected_count": len(unexpected),
                "match": not missing and not unexpected and ledger_tokens == lago_tokens,
            }
        )
    return {
        "period": period,
        "customer": customer,
        "subscriptions": subscriptions,
        "parked_rows": parked,
        "match": all(s["match"] for s in subscriptions),
    }


async def _lago_events(
    billing: Billing, session: aiohttp.ClientSession, sub: str, start: datetime, end: datetime, counted: str | None
) -> dict[str, int]:
    headers = {"Authorization": f"Bearer {billing.api_key.reveal()}"}
    found: dict[str, int] = {}
    page: int | None = 1
    while page:
        params = {
            "external_subscription_id": sub,
            "code": billing.event_code,
            "timestamp_from": start.isoformat(),
            "timestamp_to": end.isoformat(),
            "per_page": "100",
            "page": str(page),
        }
        async with session.get(
            billing.api_base + "/api/v1/events", params=params, headers=headers, timeout=aiohttp.ClientTimeout(total=60)
        ) as resp:
            resp.raise_for_status()
            body = await resp.json()
        for event in body.get("events", []):
            props = event.get("properties") or {}
            found[str(event["transaction_id"])] = int((props.get(counted) if counted else 0) or 0)
        page = (body.get("meta") or {}).get("next_page")
    return found
