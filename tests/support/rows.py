"""A ledger entry as the recorder makes one, with any of its values replaced: for tests that hand
rows to the ledger or the store directly (hostile values, quarantine, reprocessing)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from meterway.ledger import Entry
from meterway.limits import SpendTarget


def ledger_entry(**values: Any) -> Entry:
    now = datetime.now(UTC)
    base: dict[str, Any] = {
        "uid": uuid.uuid4().hex,
        "source": "gateway",
        "request_id": "req-" + uuid.uuid4().hex[:8],
        "started_at": now,
        "ended_at": now,
        "endpoint": "chat",
        "key_id": "master",
        "key_alias": None,
        "user_id": None,
        "team_id": None,
        "customer_id": "cust-ordinary",
        "model_group": "priced",
        "deployment_id": "priced",
        "upstream_model": "priced-up",
        "stream": False,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cached_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "total_tokens": 15,
        "tokens_estimated": False,
        "price_input": 10_000,
        "price_output": 20_000,
        "price_cache_read": None,
        "price_cache_write": None,
        "cost": 200_000,
        "status": "success",
        "http_status": 200,
        "error_type": None,
        "latency_ms": 1.5,
        "ttft_ms": None,
        "tags": [],
        "metadata": {},
        "attempts": 1,
        "cache_hit": False,
        "flags": None,
        "end_user": None,
    }
    base.update(values)
    cost = base["cost"] if isinstance(base["cost"], int) else None
    return Entry(base, cost, (SpendTarget("customer", str(base["customer_id"] or "x"), None),))
