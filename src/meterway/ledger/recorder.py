"""The ledger on the request path: every model request becomes one row, committed before the
response's last bytes go out.

`admit` is called when a request arrives and refuses it (503) when too many rows already wait to
be written: a request is never served unmetered. `record` is called once per request, just before
its last bytes (a body, a stream's `[DONE]` or `message_stop`, an error): it takes the tokens the
provider reported (or counts them, marking the row estimated), prices them, and waits for the row
to be committed. Rows of requests finishing together are committed together (a group commit).
If a commit fails because the database is away, its rows stay queued and are retried until they
are written; their responses go out meanwhile (the outage is logged), and `admit` bounds how many
can wait. Any other failure is retried row by row: a row the database refuses is cut to its
columns' bounds or quarantined (`store.refusals`), so it never blocks the rows behind it. When
nothing could be written for `stall_limit_s` while rows wait, readiness fails and a log line says
why. The contract is in docs/ledger.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Protocol

from meterway import bounds
from meterway.config.settings import Deployment
from meterway.context import RequestContext
from meterway.errors import ServiceUnavailable, UpstreamError
from meterway.ledger import DatabaseAway, Entry, Kept, WriteFailed, pricing, usage_checks
from meterway.ledger.prices import is_priced
from meterway.ledger.row import GATEWAY, LedgerRow
from meterway.ledger.tokens import TokenCounter
from meterway.limits import SpendTarget
from meterway.providers.base import Units, Usage

log = logging.getLogger("meterway.ledger")


class Writer(Protocol):
    """The store's side (`store.ledger.LedgerStore`)."""

    async def write(self, entries: Sequence[Entry]) -> None:
        """One transaction for the group; raises `DatabaseAway`, `RowRefused` or `WriteFailed`."""

    async def write_one(self, entry: Entry) -> Kept:
        """One row of a failed group: written, cut or quarantined; raises when nothing can be written."""


BATCH = 500
RETRY_FIRST_S = 0.1
RETRY_MAX_S = 2.0
STALL_S = 5.0  # rows waiting this long with nothing written: readiness fails


class Ledger:
    def __init__(
        self,
        *,
        capacity: int = 10_000,
        counter: TokenCounter | None = None,
        writer: Writer | None = None,
        on_commit: Callable[[float, int], None] | None = None,
        on_kept: Callable[[str], None] | None = None,
        on_stall: Callable[[float, float], None] | None = None,
        cache_hit_ratio: Decimal = Decimal(0),
        default_tags: tuple[str, ...] = (),
    ) -> None:
        """`writer` is the store's side; without one (a ledger built apart from a store) rows wait.
        The callbacks feed the metrics: each commit's duration and the rows still waiting after
        it; "cut" or "quarantined" per such row; how long writes have stalled, and the limit."""
        self.capacity = capacity  # requests admitted and not yet written, at most
        self.counter = counter or TokenCounter()
        self.writer = writer
        self.on_commit = on_commit
        self.on_kept = on_kept
        self.on_stall = on_stall
        self.stall_limit_s = STALL_S
        self.cut_rows = 0  # rows of this process written cut to their columns' bounds
        self.quarantined_rows = 0  # and rows kept in the quarantine
        self.last_error: str | None = None  # why the last write failed, while writes fail
        self._pending_since: float | None = None  # since when rows wait with nothing written (monotonic)
        self._stall_logged = False
        self.estimated_rows = 0  # rows whose tokens were counted here, not reported (a metric)
        self._warned: set[str] = set()  # deployments already warned about for missing usage
        self._admitted = 0
        self._queue: deque[tuple[Entry, asyncio.Future[None]]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._healthy = True
        # deployment id -> per-token and per-unit prices, or None: unpriced
        self._prices: dict[str, tuple[pricing.UnitPrices, pricing.Rates] | None] = {}
        self.cache_hit_ratio = cache_hit_ratio  # a response-cache hit's cost, as a fraction of the upstream price
        self.default_tags = default_tags  # litellm_settings.default_tags: first on every row's tags

    def _tags(self, given: tuple[str, ...]) -> tuple[str, ...]:
        """The row's tags: the configured defaults, then the request's own, each once (on every
        row, a refused request's too, so usage by tag adds up to all usage), at most TAGS_MAX:
        a tag twice would count the row twice in usage by tag, and the defaults with a request's
        own (each within the bound) could pass it."""
        return tuple(dict.fromkeys((*self.default_tags, *given)))[: bounds.TAGS_MAX]

    def forget_prices(self) -> None:
        """Deployments changed (models managed at runtime): prices are looked up afresh."""
        self._prices.clear()

    @property
    def healthy(self) -> bool:
        """False while writes to the store fail (rows are queued and retried meanwhile)."""
        return self._healthy

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def stall_s(self) -> float:
        """How long rows have waited with nothing written (0 when none waits or writes go through)."""
        if not self._queue or self._pending_since is None:
            return 0.0
        return time.monotonic() - self._pending_since

    def stalled(self) -> str | None:
        """Why the ledger cannot write, once it has written nothing for `stall_limit_s` while rows
        wait (readiness fails then); None while it writes. Logged once per stall."""
        stalled = self.stall_s()
        if stalled < self.stall_limit_s:
            return None
        reason = (
            f"no ledger row written for {stalled:.0f}s with {len(self._queue)} waiting: "
            f"{self.last_error or 'the commit in flight has not returned'}"
        )
        if not self._stall_logged:
            self._stall_logged = True
            log.error("%s; /health/ready answers 503 until rows are written again", reason)
        return reason

    def admit(self, ctx: RequestContext) -> None:
        if self._admitted >= self.capacity:
            raise ServiceUnavailable(
                f"{self._admitted} requests are waiting for the usage ledger to be written; retry shortly."
            )
        self._admitted += 1
        ctx.admitted = True

    async def record(self, ctx: RequestContext) -> None:
        """Writes the request's row; returns once it is committed (or queued, during an outage)."""
        if not ctx.admitted or ctx.recorded:
            return
        ctx.recorded = True
        try:
            entry = await self._entry(ctx)
        except Exception:
            self._admitted -= 1
            log.exception("request %s could not be turned into a ledger row", ctx.request_id)
            return
        await self._enqueue(entry)

    async def commit(self, entry: Entry) -> None:
        """A row made elsewhere, written as `record` writes a request's: with the group commit,
        row by row if that fails, and the same wait."""
        self._admitted += 1
        await self._enqueue(entry)

    async def _enqueue(self, entry: Entry) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self._queue:
            self._pending_since = time.monotonic()
        self._queue.append((entry, done))
        if self._task is None:
            self._task = asyncio.create_task(self._drain())
        if not self._healthy or self.writer is None:
            return  # the store is failing (or still opening): the row waits in the queue, the response goes
        await asyncio.shield(done)

    async def flush(self, timeout_s: float) -> bool:
        """Waits (bounded) until every queued row is written: at shutdown. False if some are left."""
        if self.writer is None:  # the store never opened: nothing can be written
            if self._queue:
                log.error("%d ledger rows could not be written: the store is not open", len(self._queue))
            return not self._queue
        deadline = time.monotonic() + timeout_s
        while self._queue and time.monotonic() < deadline:
            if self._task is None:
                self._task = asyncio.create_task(self._drain())
            await asyncio.sleep(0.01)
        if self._queue:
            log.error("%d ledger rows could not be written before shutdown", len(self._queue))
        return not self._queue

    def kick(self) -> None:
        """Starts writing what waits (e.g. once the store has opened)."""
        if self._queue and self._task is None:
            self._task = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        delay = RETRY_FIRST_S
        try:
            while self._queue:
                batch = [self._queue[i] for i in range(min(len(self._queue), BATCH))]
                writer = self.writer
                if writer is None:  # the store is still opening: the rows wait for it
                    _release(batch)
                    return
                started = time.perf_counter()
                try:
                    await writer.write([entry for entry, _ in batch])
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    failed: Exception | None = e
                    if not isinstance(e, DatabaseAway):  # maybe a row's fault: each row on its own
                        kept, failed = await self._apart(writer, batch)
                        self._settled(kept)
                    if failed is not None:
                        self._failed(failed, batch)
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, RETRY_MAX_S)
                        if self.on_stall is not None:
                            self.on_stall(self.stall_s(), self.stall_limit_s)
                        self.stalled()
                        continue
                else:
                    if self.on_commit is not None:
                        self.on_commit(time.perf_counter() - started, len(self._queue) - len(batch))
                    self._settled(len(batch))
                delay = RETRY_FIRST_S
                if not self._healthy or self._stall_logged:
                    log.warning("ledger writes resumed; %d rows still queued", len(self._queue))
                    if self.on_stall is not None:
                        self.on_stall(0.0, self.stall_limit_s)
                self._healthy = True
                self._stall_logged = False
                self.last_error = None
        finally:
            self._task = None

    def _settled(self, n: int) -> None:
        """The first `n` queued rows are written (or kept): gone from the queue, their callers go on."""
        if not n:
            return
        for _ in range(n):
            _, done = self._queue.popleft()
            if not done.done():
                done.set_result(None)
        self._admitted -= n
        self._pending_since = time.monotonic()

    def _failed(self, e: Exception, batch: list[tuple[Entry, asyncio.Future[None]]]) -> None:
        reason = e.reason if isinstance(e, WriteFailed) else f"{e.__class__.__name__}: {e}"
        if self._healthy:
            log.error("ledger write failed (%s); rows kept and retried", reason)
        self._healthy = False
        self.last_error = reason
        _release(batch)  # their responses go out; the rows stay queued

    async def _apart(
        self, writer: Writer, batch: list[tuple[Entry, asyncio.Future[None]]]
    ) -> tuple[int, Exception | None]:
        """Writes the rows of a failed group one by one, in order, each released as soon as it is
        kept. Returns how many were kept, and what stopped the rest (None: nothing did)."""
        for i, (entry, done) in enumerate(batch):
            try:
                kept = await writer.write_one(entry)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                return i, e
            if kept.how != "written":
                if kept.how == "cut":
                    self.cut_rows += 1
                    log.warning(
                        "ledger row of request %s was refused (%s); written cut to its columns' bounds, flagged 'cut'",
                        entry.row.request_id,
                        kept.reason,
                    )
                else:
                    self.quarantined_rows += 1
                    log.error(
                        "ledger row of request %s was refused even cut (%s); kept in mw_ledger_quarantine "
                        "(see `meterway ledger quarantine`)",
                        entry.row.request_id,
                        kept.reason,
                    )
                if self.on_kept is not None:
                    self.on_kept(kept.how)
            if not done.done():
                done.set_result(None)
        return len(batch), None

    async def _entry(self, ctx: RequestContext) -> Entry:
        now = time.time()
        usage, estimated = await self._usage(ctx)
        dep = ctx.deployment
        priced = self._unit_prices(dep) if dep is not None else None
        unit = priced[0] if priced is not None else None
        cost_units = pricing.cost_units(usage, priced[0], priced[1]) if priced is not None else None
        if ctx.cache_hit and cost_units is not None:
            cost_units = int(cost_units * self.cache_hit_ratio)
        if unit is None:
            unit = (None, None, None, None)
        ctx.cost_units = cost_units or 0
        ctx.tokens_used = usage.total_tokens if usage is not None else 0
        ctx.counted, ctx.estimated = usage, estimated
        if ctx.ended_ns is None:
            ctx.ended_ns = time.perf_counter_ns()
        principal = ctx.principal
        uid = os.urandom(16).hex()  # the base of the row's Lago transaction ids: 128 random bits, never made twice
        ctx.ledger_uid = uid
        head = ctx.head  # tags and metadata were decoded with it (None: refused before the body was read)
        row = LedgerRow(
            uid=uid,
            source=GATEWAY,
            request_id=ctx.request_id,
            started_at=datetime.fromtimestamp(ctx.started_at, UTC),
            ended_at=datetime.fromtimestamp(now, UTC),
            endpoint=ctx.api.value,
            key_id=principal.key_id if principal is not None else None,
            key_alias=principal.key_alias if principal is not None else None,
            user_id=principal.user_id if principal is not None else None,
            team_id=principal.team_id if principal is not None else None,
            customer_id=ctx.user,
            model_group=ctx.model_group,
            deployment_id=dep.id if dep is not None else None,
            upstream_model=dep.upstream_model if dep is not None else None,
            stream=ctx.stream,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            cached_tokens=usage.cached_tokens if usage else 0,
            cache_write_tokens=usage.cache_write_tokens if usage else 0,
            reasoning_tokens=usage.reasoning_tokens if usage else 0,
            total_tokens=usage.total_tokens if usage else 0,
            tokens_estimated=estimated,
            price_input=unit[0],
            price_output=unit[1],
            price_cache_read=unit[2],
            price_cache_write=unit[3],
            cost=cost_units,
            status=_status(ctx),
            http_status=ctx.status_code,
            error_type=ctx.error.error_type if ctx.error is not None else None,
            latency_ms=(ctx.ended_ns - ctx.started_ns) / 1e6,
            ttft_ms=(ctx.first_byte_ns - ctx.started_ns) / 1e6 if ctx.first_byte_ns is not None else None,
            tags=self._tags(head.tags if head is not None else ()),
            metadata=dict(head.metadata) if head is not None and head.metadata is not None else {},
            attempts=ctx.attempts,
            cache_hit=ctx.cache_hit,
            flags=",".join(ctx.flags) if ctx.flags else None,
            end_user=ctx.end_user if ctx.end_user != ctx.user else None,  # `user`, when not the customer
            queries=max(usage.queries, 0) if usage else 0,
            images=max(usage.images, 0) if usage else 0,
            audio_ms=max(usage.audio_ms, 0) if usage else 0,
            characters=max(usage.characters, 0) if usage else 0,
        )
        ctx.billable = row.billable
        spend: tuple[SpendTarget, ...] = ()
        if cost_units:
            spend = tuple(
                SpendTarget(s.scope, s.ident, s.budget.period(now)[0] if s.budget is not None else None)
                for s in ctx.charged
            )
        return Entry(row, cost_units, spend)

    def _unit_prices(self, dep: Deployment) -> tuple[pricing.UnitPrices, pricing.Rates] | None:
        if dep.id not in self._prices:
            priced = is_priced(dep.prices)
            self._prices[dep.id] = (pricing.unit_prices(dep.prices), pricing.rates(dep.prices)) if priced else None
        return self._prices[dep.id]

    async def _usage(self, ctx: RequestContext) -> tuple[Usage | None, bool]:
        """The provider's usage, checked (`usage_checks`), or tokens counted here for a request that
        reached the upstream: when it reported none, or figures that are no counts."""
        reported = ctx.usage
        if reported is not None and not usage_checks.units_believable(reported):
            # units that are no counts: the request's own most is billed (never nothing, never negative)
            most = ctx.head.units if ctx.head is not None else Units()
            reported = dataclasses.replace(
                reported,
                queries=most.queries,
                images=most.images,
                audio_ms=most.audio_ms,
                characters=most.characters,
                pixels=most.pixels,
                quality=most.quality,
            )
            ctx.flags.append(usage_checks.INVALID)
        units = reported  # units beside tokens (images, search units) stand even where tokens are no counts
        if reported is not None:  # how the provider module reached its figures (`audio_estimated`)
            ctx.flags.extend(f for f in reported.flags if f not in ctx.flags)
        if reported is not None and not usage_checks.believable(reported):
            if usage_checks.INVALID not in ctx.flags:
                ctx.flags.append(usage_checks.INVALID)
            reported = None  # not believed: counted below, as if none had come
        elif reported is not None:
            dep = ctx.deployment
            info = dep.model_info if dep is not None else {}
            if not ctx.cache_hit and usage_checks.absurd(reported, ctx.head, info, ctx.body):
                ctx.flags.append(usage_checks.ABSURD)  # recorded as reported: the provider bills it
                if dep is not None and "absurd:" + dep.id not in self._warned:
                    self._warned.add("absurd:" + dep.id)
                    log.warning(
                        "deployment %s reported usage beyond what request %s could use (%d prompt, %d completion "
                        "tokens); recorded as reported and flagged usage_absurd (take it up with the provider)",
                        dep.id,
                        ctx.request_id,
                        reported.prompt_tokens,
                        reported.completion_tokens,
                    )
            return reported, False
        if ctx.deployment is None or not ctx.forwarded:
            return reported, False
        if ctx.error is not None and not ctx.client_aborted and not ctx.delivered:
            return None, False  # an upstream error before any answer: nothing was produced
        api, body, delivered, answer = ctx.api, ctx.body, ctx.delivered, ctx.answer
        counter = self.counter

        def count() -> Usage:
            prompt = counter.prompt(api, body)
            completion = delivered.tokens() if delivered else counter.completion(api, answer)
            return Usage(prompt, completion, prompt + completion)

        usage = await asyncio.to_thread(count)
        if units is not None:
            usage.queries, usage.images, usage.pixels = units.queries, units.images, units.pixels
            usage.audio_ms, usage.characters = units.audio_ms, units.characters
            usage.quality = units.quality
        self.estimated_rows += 1
        dep_id = ctx.deployment.id
        if not ctx.client_aborted and dep_id not in self._warned:
            self._warned.add(dep_id)
            log.warning(
                "deployment %s reported %s for a %s request; its tokens are counted by meterway and "
                "the rows marked estimated (a billing incident: check the provider)",
                dep_id,
                "usage that is no count" if ctx.usage is not None else "no usage",
                "streamed" if ctx.stream else "plain",
            )
        return usage, True


def _release(batch: list[tuple[Entry, asyncio.Future[None]]]) -> None:
    for _, done in batch:
        if not done.done():
            done.set_result(None)


def _status(ctx: RequestContext) -> str:
    if ctx.client_aborted:
        return "client_aborted"
    if isinstance(ctx.error, UpstreamError):
        return "upstream_error"
    if ctx.error is not None or not 200 <= ctx.status_code < 300:
        return "rejected"
    return "success"
