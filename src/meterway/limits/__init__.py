"""Budgets and rate limits, checked and taken in one atomic step, settled after the response.

A request asks for its share of every limit that applies to it: one request of each rpm limit,
one slot of each parallel limit, its estimated tokens of each tpm limit and its estimated maximum
cost of each budget. Either all are granted together or none is, so a refused request never holds
a partial reservation. After the response the grant is settled: slots are given back, the token
and cost estimates are replaced by what was actually used. Slots and budget reservations are
leases with a time to live, so a worker that dies mid-request frees them when the lease runs out.

`memory.py` counts in the process (one worker); `redis.py` counts in Redis with one Lua script
per step, exact across workers and replicas. Amounts of money are integers of 1e-10 USD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Protocol

Kind = Literal["rpm", "tpm", "parallel", "budget"]


@dataclass(frozen=True, slots=True)
class Budget:
    """A spending limit and the spend the store last read for it.

    `reset_at` (epoch seconds) ends the period the stored `spend` belongs to; with a duration the
    periods follow each other from there, so every replica computes the same current period
    without asking anyone, and a period nobody has spent in yet starts at zero."""

    max_budget: int | None  # money units; None: spend is tracked (and reset) but not limited
    spend: int = 0
    duration_s: int | None = None
    reset_at: float | None = None

    def period(self, now: float) -> tuple[float | None, int]:
        """The end of the period `now` falls in (None: a budget that never resets), and the spend
        already known for that period."""
        d = self.duration_s
        if not d:
            return None, self.spend
        base = self.reset_at if self.reset_at is not None else (now // d + 1) * d
        if now < base:
            return base, self.spend
        return base + (math.floor((now - base) / d) + 1) * d, 0


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """The limits one entity (a key, user, team or customer) carries."""

    scope: str  # "key", "user", "team", "customer"
    ident: str
    rpm_limit: int | None = None
    max_parallel_requests: int | None = None
    tpm_limit: int | None = None
    budget: Budget | None = None
    blocked: bool = False  # customers: a blocked customer's requests are refused
    models: tuple[str, ...] = ()  # customers: the model groups it may call; empty: no restriction of its own

    @property
    def limited(self) -> bool:
        return (
            self.rpm_limit is not None
            or self.max_parallel_requests is not None
            or self.tpm_limit is not None
            or (self.budget is not None and self.budget.max_budget is not None)
        )

    @property
    def costed(self) -> bool:
        """Whether its asks need the request's token and cost estimates."""
        return self.tpm_limit is not None or (self.budget is not None and self.budget.max_budget is not None)

    def asks(self, now: float, tokens: int = 0, cost: int = 0) -> list[Ask]:
        base = f"{self.scope}:{self.ident}"
        out = []
        if self.rpm_limit is not None:
            out.append(Ask(f"{base}:rpm", self.rpm_limit, "rpm", f"{self.scope} rpm_limit"))
        if self.tpm_limit is not None:
            out.append(Ask(f"{base}:tpm", self.tpm_limit, "tpm", f"{self.scope} tpm_limit", tokens))
        if self.max_parallel_requests is not None:
            out.append(
                Ask(f"{base}:parallel", self.max_parallel_requests, "parallel", f"{self.scope} max_parallel_requests")
            )
        budget = self.budget
        if budget is not None and budget.max_budget is not None:
            end, spent = budget.period(now)
            period = "all" if end is None else str(int(end))
            out.append(
                Ask(
                    f"{base}:budget:{period}",
                    budget.max_budget,
                    "budget",
                    f"{self.scope} max_budget",
                    cost,
                    floor=spent,
                    expires=end,
                )
            )
        return out


@dataclass(frozen=True, slots=True)
class Ask:
    counter: str  # e.g. "key:<digest>:rpm"
    limit: int
    kind: Kind
    name: str  # what the client is told: "key rpm_limit"
    amount: int = 1  # requests, estimated tokens, or estimated cost in money units
    floor: int = 0  # budgets: spend the store knows of; the counter is never below it
    expires: float | None = None  # budgets: when the period ends (epoch seconds)
    # budgets: never leased ahead by a worker (each request asks Redis, and what it did not use
    # goes back at settle), so no replica is refused while another holds unused headroom: for
    # money whose last request must be served wherever it lands (prepaid credits)
    exact: bool = False


@dataclass(frozen=True, slots=True)
class Refusal:
    ask: Ask
    retry_after: float | None  # None: waiting will not help (a spent budget, until its reset)
    used: int = 0  # in the refused counter: requests, tokens, or spend
    reserved: int = 0  # budgets: held by requests in flight


@dataclass(frozen=True, slots=True)
class Grant:
    lease: str  # identifies this request's slots and reservations
    asks: tuple[Ask, ...]  # what was taken, to settle after the response
    window: int  # start (ms) of the minute window the rpm and tpm units were counted in
    remaining: dict[str, int] = field(default_factory=dict)  # ask name -> units left

    @property
    def unsettled(self) -> bool:
        return any(a.kind != "rpm" for a in self.asks)


@dataclass(frozen=True, slots=True)
class SpendTarget:
    """A row whose spend a request's cost is added to."""

    scope: str  # "key", "user", "team", "customer"
    ident: str
    period_end: float | None  # epoch seconds; None for spend that never resets


class Limiter(Protocol):
    async def reserve(self, asks: list[Ask], lease: str) -> Grant | Refusal: ...

    async def settle(self, grant: Grant, tokens: int, cost: int) -> None:
        """Gives back the grant's slots and replaces its estimates by the tokens and cost used."""
        ...

    async def budget(self, counter: str) -> tuple[int, int]:
        """A budget counter as it stands: its spend (0 when never asked for) and what requests in
        flight hold of it. For reading (`/customer/info`), never for admission."""
        ...
