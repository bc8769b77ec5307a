"""The usage ledger: one row per model request, what it used and what it cost.

A row is a `row.LedgerRow`, built in one place per source: `recorder.Ledger` makes one of a
finished request's context and has it committed before the response's last bytes go out
(docs/ledger.md), `reported` of usage other proxies report, `importer.mapping` of LiteLLM's spend
logs; `store.ledger` writes rows, rollups and spend in one transaction; `pricing`, `prices` and
`tokens` say what a request cost and, where the provider did not report it, how many tokens it used.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from meterway.ledger.row import LedgerRow
from meterway.limits import SpendTarget


class WriteFailed(Exception):
    """A group of ledger rows that was not committed. `reason` is the database's, one line,
    readable; the driver's own exception is the `__cause__`. Raised as one of the two kinds below
    when the store can tell which it is, else as itself (the recorder then retries, as for an
    outage: a failure it cannot put on a row is not the row's fault)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DatabaseAway(WriteFailed):
    """The database could not be reached or the connection was lost: nothing is wrong with the
    rows, so they stay queued and are retried with backoff."""


class RowRefused(WriteFailed):
    """The database refused a value of the rows (too long, a NUL character, a number out of
    range, JSON it cannot encode): retrying as they are can never succeed."""


@dataclass(frozen=True, slots=True)
class Kept:
    """How a row of a failed group was kept: "written" as it was, "cut" to its columns' bounds
    (flagged `cut`), or "quarantined"; with the database's reason when it refused the row."""

    how: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    row: LedgerRow
    cost_units: int | None  # the row's cost in money units; None when the model has no known price
    spend: tuple[SpendTarget, ...]  # key, user, team, customer rows the cost is added to


# What reports can group by: a dimension's name -> its column, and the time buckets.
DIMENSIONS = {"customer": "customer_id", "key": "key_id", "user": "user_id", "team": "team_id", "model": "model_group"}
TIMES = ("hour", "day", "month")
# usage grouped by one of a row's tags (a row with several counts under each, one without under "");
# read from the ledger's rows, since the daily rollup keeps no tags
TAG = "tag"


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
