"""A ledger entry as the recorder makes one, with any of its values replaced: for tests and
benchmarks that hand rows to the ledger or the store directly (hostile values, quarantine,
reprocessing, the writer's cost)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from meterway.ledger import Entry
from meterway.ledger.row import GATEWAY, LedgerRow
from meterway.limits import SpendTarget


def ledger_entry(**values: Any) -> Entry:
    """An ordinary priced, successful chat row of customer `cust-ordinary`, with `values` instead
    where given (any value at all: hostile ones are not checked here, as the recorder checks none)."""
    now = datetime.now(UTC)
    base: dict[str, Any] = {
        "uid": uuid.uuid4().hex,
        "source": GATEWAY,
        "request_id": "req-" + uuid.uuid4().hex[:8],
        "started_at": now,
        "ended_at": now,
        "endpoint": "chat",
        "key_id": "master",
        "customer_id": "cust-ordinary",
        "model_group": "priced",
        "deployment_id": "priced",
        "upstream_model": "priced-up",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "price_input": 10_000,
        "price_output": 20_000,
        "cost": 200_000,
        "status": "success",
        "http_status": 200,
        "latency_ms": 1.5,
    }
    base.update(values)
    row = LedgerRow(**base)
    cost = row.cost if isinstance(row.cost, int) else None
    return Entry(row, cost, (SpendTarget("customer", str(row.customer_id or "x"), None),))
