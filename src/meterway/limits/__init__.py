"""Rate limits: requests per minute and requests in flight, checked and taken in one atomic step.

A request asks for one unit of every limit that applies to it (its key's rpm, its key's parallel
requests, …). Either all are granted together or none is, so a refused request never holds a
partial reservation. Parallel slots are leases with a time to live: a worker that dies while
holding them frees them when the lease runs out. `memory.py` counts in the process (one worker);
`redis.py` counts in Redis with one Lua script, exact across workers and replicas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Kind = Literal["rpm", "parallel"]


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """The rate limits one entity (a key, user, team or customer) carries."""

    scope: str  # "key", "user", "team", "customer"
    ident: str
    rpm_limit: int | None = None
    max_parallel_requests: int | None = None

    def asks(self) -> list[Ask]:
        out = []
        if self.rpm_limit is not None:
            out.append(Ask(f"{self.scope}:{self.ident}:rpm", self.rpm_limit, "rpm", f"{self.scope} rpm_limit"))
        if self.max_parallel_requests is not None:
            out.append(
                Ask(
                    f"{self.scope}:{self.ident}:parallel",
                    self.max_parallel_requests,
                    "parallel",
                    f"{self.scope} max_parallel_requests",
                )
            )
        return out


@dataclass(frozen=True, slots=True)
class Ask:
    counter: str  # e.g. "key:<digest>:rpm"
    limit: int
    kind: Kind
    name: str  # what the client is told: "key rpm_limit"


@dataclass(frozen=True, slots=True)
class Refusal:
    ask: Ask
    retry_after: float


@dataclass(frozen=True, slots=True)
class Grant:
    lease: str  # identifies this request's parallel slots
    parallel: tuple[str, ...]  # counters holding a slot, released after the response
    remaining: dict[str, int]  # ask name -> units left in its window


class Limiter(Protocol):
    async def reserve(self, asks: list[Ask], lease: str) -> Grant | Refusal: ...

    async def release(self, grant: Grant) -> None: ...
