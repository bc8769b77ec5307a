"""The per-request context: what later stages (limits, ledger, telemetry) need to know about a request.

One `RequestContext` is made when a request arrives and handed along the path. Each stage fills in
its part: auth the principal, routing the deployment, the proxy the timings, usage and outcome.
Hooks see it before the upstream call and after the response ended, whatever the outcome.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from meterway.auth import Principal
    from meterway.config.settings import Deployment
    from meterway.errors import MeterwayError
    from meterway.ledger.tokens import DeliveredStream
    from meterway.limits import LimitSpec
    from meterway.providers.base import Api, RequestHead, Usage


@dataclass(slots=True)
class RequestContext:
    request_id: str
    api: Api
    started_ns: int
    started_at: float  # wall clock (epoch seconds), for the ledger
    principal: Principal | None = None
    model_group: str | None = None
    deployment: Deployment | None = None
    stream: bool = False
    user: str | None = None  # the customer charged: the key's binding, else the request's `user` (Principal.customer)
    end_user: str | None = None  # the request's `user` as sent; kept on the row when it is not the customer
    usage: Usage | None = None
    status_code: int = 0
    first_byte_ns: int | None = None
    ended_ns: int | None = None
    error: MeterwayError | None = None
    client_aborted: bool = False
    limit_grant: object | None = None  # what the limits stage reserved, to give back after
    prepaid_grant: object | None = None  # what the prepaid stage reserved (limits.prepaid.Held)
    charged: tuple[LimitSpec, ...] = ()  # the key, user, team and customer the cost is added to
    body: bytes = b""  # the request body as it will be sent on (a hook may rewrite it)
    head: RequestHead | None = None
    forwarded: bool = False  # the request was sent to the upstream (or the local mock)
    answer: bytes = b""  # a whole answer as the client receives it (for counting, if usage is missing)
    delivered: DeliveredStream | None = None  # a stream's bytes sent so far, likewise (bounded)
    # the delivered bytes are wanted whatever usage says (the cache stores them, a trace shows them);
    # otherwise they are let go once believable usage has come
    keep_delivered: bool = False
    admitted: bool = False  # the ledger has room for this request's row
    recorded: bool = False  # its row has been handed to the ledger (exactly once)
    cost_units: int | None = None  # set by the ledger: the cost, in money units
    tokens_used: int = 0  # set by the ledger: the tokens, reported or counted
    counted: Usage | None = None  # set by the ledger: the usage it recorded (reported or counted)
    estimated: bool = False  # set by the ledger: `counted` is its own count (none, or none believable, reported)
    ledger_uid: str | None = None  # set by the ledger: its row's uid
    billable: bool = False  # set by the ledger: its row is exported to billing (`LedgerRow.billable`)
    upstream_status: int = 0  # the upstream's HTTP status, once it answered
    span: Span | None = None  # the request's server span, when traces are on
    attempts: int = 1  # upstream attempts made (retries and fallbacks add to it)
    cache_hit: bool = False  # answered from the response cache, without an upstream call
    cache_looked: bool = False  # the response cache was asked (a hit or a miss, for metrics)
    closing: bytes = b""  # a stream's last bytes (after `delivered`), for the response cache
    flags: list[str] = field(default_factory=list)  # what was wrong with its input (usage_negative...): the row's flags

    @classmethod
    def start(cls, request_id: str, api: Api) -> RequestContext:
        return cls(request_id, api, time.perf_counter_ns(), time.time())

    @property
    def latency_ms(self) -> float | None:
        return None if self.ended_ns is None else (self.ended_ns - self.started_ns) / 1e6


class Hook(Protocol):
    """A stage around the upstream call. `before` runs in order and may raise (to refuse the
    request: the error is rendered like any other); `after` runs in reverse order for every hook
    whose `before` ran, in `finally`, once the response has ended, with the status, error, usage
    and timings filled in, so a reservation made before is always settled, whatever happened."""

    async def before(self, ctx: RequestContext) -> None: ...

    async def after(self, ctx: RequestContext) -> None: ...
