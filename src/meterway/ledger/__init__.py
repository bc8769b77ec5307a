"""The usage ledger: one row per model request, what it used and what it cost.

`recorder.Ledger` turns a finished request's context into a row and has it committed before the
response's last bytes go out (docs/ledger.md); `store.ledger` writes rows, rollups and spend in
one transaction; `pricing`, `prices` and `tokens` say what a request cost and, where the provider
did not report it, how many tokens it used.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from meterway.limits import SpendTarget


@dataclass(frozen=True, slots=True)
class Entry:
    row: dict[str, Any]  # the mw_ledger row
    cost_units: int | None  # the row's cost in money units; None when the model has no known price
    spend: tuple[SpendTarget, ...]  # key, user, team, customer rows the cost is added to


# What reports can group by: a dimension's name -> its column, and the time buckets.
DIMENSIONS = {"customer": "customer_id", "key": "key_id", "user": "user_id", "team": "team_id", "model": "model_group"}
TIMES = ("hour", "day", "month")


@dataclass(frozen=True, slots=True)
class Filters:
    """Which ledger rows a report covers: UTC days [start, end], and optional equalities."""

    start: date
    end: date
    customer_id: str | None = None
    key_id: str | None = None
    user_id: str | None = None
    team_id: str | None = None
    model: str | None = None
    request_id: str | None = None
    status: str | None = None  # success, rejected, upstream_error, client_aborted: request logs only
