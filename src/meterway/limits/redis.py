"""Limits counted in Redis, exact across workers and replicas, with no Redis round trip on the
typical request: each worker leases a share of a counter's headroom and serves requests from it.

Redis holds the truth: every unit a worker may hand out has been taken in Redis first, by one Lua
script that checks all the limits of a request and takes them all, or takes none and says which one
refused (decision 0004). When that script takes a request's own need it also takes a little more,
the lease: at most 1/SPLIT of the headroom left after the need, and at most LEASE_REQUESTS
requests' worth. Requests that the lease covers are then admitted in the process, with no `await`
between check and take. A request the lease cannot cover goes to Redis (its worker gives back what
it still holds in the same call), so the sum of what all workers hold never exceeds a limit: a
worker may under-serve (refuse while another worker holds unused units) but never overshoot. As the
headroom nears zero the leases shrink to nothing and every request goes to Redis, exactly as
without leases; unused units go back after IDLE_S without use. See decision 0012.

Keys (under the configured prefix), per counter:
    <counter>:<window ms>   rpm and tpm: units taken in that minute window, expiring after two
    <counter>               budget: hash of `reserved` (held by every worker), `l:<worker>` (what one
                            worker holds) and `spent`; <counter>:slots, the same for parallel slots
    <key>:leases            parallel and budget: sorted set of workers' leases scored by expiry
A lease past its expiry is dropped (and its amount unreserved) by the next script that looks, so a
replica killed mid-request holds a slot or a budget for no longer than the lease's time to live plus
its grace. Each request's own hold also lapses after the time to live, in the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from meterway.coalesce import Coalescer
from meterway.errors import ServiceUnavailable
from meterway.limits import Ask, Grant, Kind, Refusal

log = logging.getLogger("meterway")

WINDOW_S = 60
SPLIT = 8  # a lease takes at most this fraction (1/SPLIT) of the headroom left after the request's need
LEASE_REQUESTS = 32  # and at most this many requests' worth (per request asking together) of units or tokens or cost
FLUSH_S = 0.02  # budget spend settled in a worker reaches Redis's `spent` within about this long
IDLE_S = 0.5  # a lease unused this long is given back
GRACE_MAX_S = 5.0  # a lease outlives the time to live of the holds taken from it by at most this long

# One call takes (and gives back) for a batch of requests, each all-or-nothing and in arrival order.
# ARGV: now (ms), window (s), hold ttl (ms), lease expiry (ms from now), worker, split, then per
# request: lease ("" for a give-back-only entry, which is never refused), number of asks n, then per
# ask: kind, limit, need, floor, period end (ms, budgets; 0 when it has none), cap (most extra to
# lease), give (units handed back first; tpm may be negative: tokens owed), spent (budgets: cost
# settled since the last call). KEYS: every request's asks' counters, in the same order. Returns one
# array per request: {0, index, retry_ms, used, reserved} when ask `index` refuses (retry_ms -1:
# waiting will not help), else {1, then per ask: extra leased, remaining}.
_TAKE = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2]) * 1000
local ttl = tonumber(ARGV[3])
local expiry = now + tonumber(ARGV[4])
local worker = ARGV[5]
local split = tonumber(ARGV[6])
local start = now - (now % window)
local F = 8
local function unlease(key)
  local z = key .. ':leases'
  local expired = redis.call('ZRANGEBYSCORE', z, '-inf', now)
  for _, l in ipairs(expired) do
    local amount = redis.call('HGET', key, 'l:' .. l)
    if amount then
      redis.call('HINCRBY', key, 'reserved', -tonumber(amount))
      redis.call('HDEL', key, 'l:' .. l)
    end
  end
  if #expired > 0 then redis.call('ZREMRANGEBYSCORE', z, '-inf', now) end
end
local function spent_of(key, floor)
  local spent = redis.call('HGET', key, 'spent')
  if not spent then
    redis.call('HSET', key, 'spent', floor)
    return floor
  end
  return math.max(tonumber(spent), floor)
end
local function give_back(key, a)
  local kind, give, spent = ARGV[a], tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7])
  if kind == 'rpm' or kind == 'tpm' then
    if give ~= 0 then
      local k = key .. ':' .. start
      if redis.call('DECRBY', k, give) < 0 then redis.call('SET', k, 0, 'KEEPTTL') end
      redis.call('PEXPIRE', k, window * 2)
    end
    return
  end
  unlease(key)
  if spent > 0 then redis.call('HINCRBY', key, 'spent', spent) end
  local back = give + spent
  if back == 0 then return end
  local held = redis.call('HGET', key, 'l:' .. worker)
  if not held then return end
  held = tonumber(held)
  back = math.min(back, held)
  redis.call('HINCRBY', key, 'reserved', -back)
  if held - back > 0 then
    redis.call('HSET', key, 'l:' .. worker, held - back)
  else
    redis.call('HDEL', key, 'l:' .. worker)
    redis.call('ZREM', key .. ':leases', worker)
  end
end
local function check(key, a, i)
  local kind, limit, need = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  if kind == 'rpm' or kind == 'tpm' then
    local used = tonumber(redis.call('GET', key .. ':' .. start) or '0')
    if (kind == 'rpm' and used + need > limit) or (kind == 'tpm' and used >= limit) then
      return {0, i, start + window - now, used, 0}, 0
    end
    return nil, limit - used - need
  end
  local reserved = tonumber(redis.call('HGET', key, 'reserved') or '0')
  if kind == 'parallel' then
    if reserved + need > limit then return {0, i, 1000, reserved, 0}, 0 end
    return nil, limit - reserved - need
  end
  local spent = spent_of(key, tonumber(ARGV[a + 3]))
  if spent >= limit or spent + reserved + need > limit then return {0, i, -1, spent, reserved}, 0 end
  return nil, limit - spent - reserved - need
end
local function take(key, a, left)
  local kind, need, cap = ARGV[a], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 5])
  local extra = math.max(math.min(cap, math.floor(left / split)), 0)
  local amount = need + extra
  if kind == 'rpm' or kind == 'tpm' then
    local k = key .. ':' .. start
    redis.call('INCRBY', k, amount)
    redis.call('PEXPIRE', k, window * 2)
    return extra
  end
  local keep = tonumber(ARGV[a + 4])
  keep = math.max(keep > 0 and keep - now or 0, expiry - now) + 86400000
  redis.call('HINCRBY', key, 'reserved', amount)
  redis.call('HINCRBY', key, 'l:' .. worker, amount)
  redis.call('ZADD', key .. ':leases', expiry, worker)
  redis.call('PEXPIRE', key, keep)
  redis.call('PEXPIRE', key .. ':leases', keep)
  return extra
end
local function request(k0, a0, n, lease)
  for i = 1, n do give_back(KEYS[k0 + i], a0 + (i - 1) * F) end
  if lease == '' then return {1} end
  local left = {}
  for i = 1, n do
    local refused, l = check(KEYS[k0 + i], a0 + (i - 1) * F, i)
    if refused then return refused end
    left[i] = l
  end
  local out = {1}
  for i = 1, n do
    out[#out + 1] = take(KEYS[k0 + i], a0 + (i - 1) * F, left[i])
    out[#out + 1] = math.max(left[i], 0)
  end
  return out
end
local results = {}
local k, a = 0, 7
while a <= #ARGV do
  local lease, n = ARGV[a], tonumber(ARGV[a + 1])
  results[#results + 1] = request(k, a + 2, n, lease)
  k, a = k + n, a + 2 + n * F
end
return results
"""


@dataclass(slots=True)
class _Lease:
    """What this worker holds of one counter. Redis counts all of it as taken (`free` plus the
    holds plus, budgets, the `spent` not yet reported); only the worker knows how it is split."""

    kind: Kind
    limit: int
    floor: int
    window: int  # rpm and tpm: the window start (ms) its units belong to
    expires_ms: int = 0  # parallel and budget: when Redis drops it unless a later take extends it
    free: int = 0  # taken in Redis and not in use (tpm: negative when requests used more than estimated)
    spent: int = 0  # budgets: cost settled here, still counted as reserved in Redis
    remaining: int = 0  # the headroom Redis last reported, less what was taken here since
    used_at: float = 0.0  # monotonic time of its last use
    holds: dict[str, tuple[int, int]] = field(default_factory=dict)  # request lease -> (expiry ms, amount)
    first_expiry_ms: int = 0  # no hold expires before this: most calls need not look at them

    def hold(self, lease: str, until_ms: int, amount: int) -> None:
        if not self.holds or until_ms < self.first_expiry_ms:
            self.first_expiry_ms = until_ms
        self.holds[lease] = (until_ms, amount)

    def expire_holds(self, now_ms: int) -> None:
        """A request that never settled (a bug, or a task that vanished) frees its hold after the
        time to live, as its per-request reservation did before leases."""
        if not self.holds or now_ms < self.first_expiry_ms:
            return
        for lease, (until, amount) in list(self.holds.items()):
            if until <= now_ms:
                del self.holds[lease]
                self.free += amount
        self.first_expiry_ms = min((until for until, _ in self.holds.values()), default=0)


@dataclass(frozen=True, slots=True)
class _GiveBack:
    """A give-back-only entry of a batch: idle units and settled spend going back to Redis."""

    counter: str
    kind: Kind
    give: int
    spent: int


_Item = tuple[list[Ask], str] | list[_GiveBack]


class RedisLimiter:
    def __init__(
        self,
        client: Any,
        prefix: str = "meterway:limits:",
        lease_ttl_s: float = 660.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock  # wall time, handed to the scripts as `now`; tests pass their own
        self._client = client
        self._prefix = prefix
        self._lease_ttl_ms = int(lease_ttl_s * 1000)
        # A lease stays usable for `grace` after it was taken (or extended): a hold taken from it
        # must lapse (time to live) before Redis drops the lease itself. So a dead replica's
        # leases lapse at most `grace` later than its requests' reservations did before leases.
        self._grace_ms = int(min(lease_ttl_s / 10, GRACE_MAX_S) * 1000)
        self._worker = uuid.uuid4().hex
        self._take_script = client.register_script(_TAKE)
        self._leases: dict[str, _Lease] = {}  # counter -> what this worker holds of it
        self._flusher: asyncio.Task[None] | None = None
        self._returning: set[asyncio.Task[None]] = set()  # exact asks' give-backs on their way to Redis
        # Requests that miss their leases together share one script call (see meterway.coalesce).
        self._take = Coalescer(self._take_batch, orphan=self._give_back)

    async def reserve(self, asks: list[Ask], lease: str) -> Grant | Refusal:
        now = self._clock()
        now_ms = int(now * 1000)
        window = now_ms - now_ms % (WINDOW_S * 1000)
        if not asks:
            return Grant(lease, (), window, {})
        grant = self._local(asks, lease, now_ms, window)
        if grant is not None:
            return grant
        try:
            result = await self._take((asks, lease))
        except RedisError as e:
            # Fail closed: a limit that cannot be checked is not waived (the caller may retry).
            raise ServiceUnavailable(
                f"The rate-limit store is unavailable ({e.__class__.__name__}); retry shortly."
            ) from None
        assert result is not None  # a request always gets a grant or a refusal; only give-backs get None
        return result

    def _key(self, counter: str, kind: Kind) -> str:
        """Parallel slots are a hash under `:slots`, apart from the sorted set of requests that
        versions before leases kept at the counter itself, so the two never meet as WRONGTYPE."""
        return self._prefix + counter + (":slots" if kind == "parallel" else "")

    def _usable(self, ask: Ask, now_ms: int, window: int) -> _Lease | None:
        """The lease that can cover `ask` here, if any. A changed limit (or a higher stored spend)
        goes to Redis, so a lowered budget or rate applies from the next request on."""
        held = self._leases.get(ask.counter)
        if ask.exact or held is None or held.kind != ask.kind or held.limit != ask.limit or ask.floor > held.floor:
            return None
        if ask.kind in ("rpm", "tpm"):
            if held.window != window:
                return None
        else:
            held.expire_holds(now_ms)
            if now_ms + self._lease_ttl_ms > held.expires_ms:
                return None  # a hold taken now could outlive the lease in Redis
        need = 1 if ask.kind in ("rpm", "parallel") else max(ask.amount, 1)
        return held if held.free >= need else None

    def _local(self, asks: list[Ask], lease: str, now_ms: int, window: int) -> Grant | None:
        """Admits the request from this worker's leases, if they cover every ask. No `await`
        between the checks and the takes: on one event loop this is atomic."""
        covering = []
        for ask in asks:
            held = self._usable(ask, now_ms, window)
            if held is None:
                return None
            covering.append(held)
        used_at = time.monotonic()
        remaining: dict[str, int] = {}
        for ask, held in zip(asks, covering, strict=True):
            amount = 1 if ask.kind in ("rpm", "parallel") else ask.amount
            if ask.kind == "budget":
                amount = max(amount, 0)
            held.free -= amount
            if ask.kind in ("parallel", "budget"):
                held.hold(lease, now_ms + self._lease_ttl_ms, amount)
            held.remaining = max(held.remaining - amount, 0)
            held.used_at = used_at
            remaining[ask.name] = held.remaining
        return Grant(lease, tuple(asks), window, remaining)

    async def _take_batch(self, batch: list[_Item]) -> list[Grant | Refusal | None]:
        now_ms = int(self._clock() * 1000)
        window = now_ms - now_ms % (WINDOW_S * 1000)  # the script computes the same from `now_ms`
        results: list[Grant | Refusal | None] = [None] * len(batch)
        sent: list[int] = []  # indexes of the requests that go to Redis
        for i, item in enumerate(batch):
            if isinstance(item, tuple):  # covered here now, by a lease taken since it queued?
                results[i] = self._local(item[0], item[1], now_ms, window)
                if results[i] is None:
                    sent.append(i)
            else:
                sent.append(i)
        if not sent:
            return results
        # Only the last request asking for a counter leases extra, for as many requests as asked
        # for it together (they came while the lease was empty: the demand outran it).
        last: dict[str, int] = {}  # counter -> the index of the last request asking for it
        asking: dict[str, int] = {}  # counter -> how many requests of this call ask for it
        for i in sent:
            item = batch[i]
            if isinstance(item, tuple):
                for ask in item[0]:
                    last[ask.counter] = i
                    asking[ask.counter] = asking.get(ask.counter, 0) + 1
        keys: list[str] = []
        argv: list[Any] = [
            now_ms,
            WINDOW_S,
            self._lease_ttl_ms,
            self._lease_ttl_ms + self._grace_ms,
            self._worker,
            SPLIT,
        ]
        for i in sent:
            item = batch[i]
            if isinstance(item, list):
                argv += ["", len(item)]
                for g in item:
                    keys.append(self._key(g.counter, g.kind))
                    argv += [g.kind, 0, 0, 0, 0, 0, g.give, g.spent]
                continue
            asks, lease = item
            argv += [lease, len(asks)]
            for ask in asks:
                give, spent = self._hand_back(ask.counter, window, now_ms)
                cap = 0
                if last[ask.counter] == i and not ask.exact:
                    cap = LEASE_REQUESTS * asking[ask.counter] * (1 if ask.kind in ("rpm", "parallel") else ask.amount)
                need = 1 if ask.kind in ("rpm", "parallel") else ask.amount
                if ask.kind == "budget":  # a negative cost would give back other requests' reservations
                    need = max(need, 0)
                keys.append(self._key(ask.counter, ask.kind))
                argv += [ask.kind, ask.limit, need, ask.floor, int((ask.expires or 0) * 1000), cap, give, spent]
        replies = await self._take_script(keys=keys, args=argv)
        used_at = time.monotonic()
        for i, reply in zip(sent, replies, strict=True):
            item = batch[i]
            if isinstance(item, list):
                continue
            asks, lease = item
            if int(reply[0]) == 0:
                retry_ms = int(reply[2])
                retry = None if retry_ms < 0 else max(retry_ms, 1) / 1000
                results[i] = Refusal(asks[int(reply[1]) - 1], retry, int(reply[3]), int(reply[4]))
                continue
            remaining: dict[str, int] = {}
            for j, ask in enumerate(asks):
                extra, left = int(reply[1 + 2 * j]), int(reply[2 + 2 * j])
                held = self._leases.get(ask.counter)
                if held is None or held.kind != ask.kind or (ask.kind in ("rpm", "tpm") and held.window != window):
                    held = self._leases[ask.counter] = _Lease(ask.kind, ask.limit, ask.floor, window)
                held.limit, held.floor = ask.limit, max(held.floor, ask.floor)
                held.free += extra
                held.remaining = left
                held.used_at = used_at
                if ask.kind in ("parallel", "budget"):
                    held.hold(lease, now_ms + self._lease_ttl_ms, 1 if ask.kind == "parallel" else max(ask.amount, 0))
                    held.expires_ms = now_ms + self._lease_ttl_ms + self._grace_ms
                remaining[ask.name] = left
            results[i] = Grant(lease, tuple(asks), window, remaining)
        self._schedule_flush()  # what was leased goes back once idle
        return results

    def _hand_back(self, counter: str, window: int, now_ms: int) -> tuple[int, int]:
        """What this worker gives back of `counter` in a call that takes it again: everything it
        holds unused, and the spend settled since the last call. Zeroed here, before the call, so
        no request is admitted from units already on their way back."""
        held = self._leases.get(counter)
        if held is None:
            return 0, 0
        if held.kind in ("rpm", "tpm") and held.window != window:
            del self._leases[counter]  # a past window's units lapse with it
            return 0, 0
        held.expire_holds(now_ms)
        give, spent = held.free, held.spent
        held.free = held.spent = 0
        return give, spent

    async def _give_back(self, result: Grant | Refusal | None) -> None:
        if isinstance(result, Grant):
            await self.settle(result, 0, 0)

    async def settle(self, grant: Grant, tokens: int, cost: int) -> None:
        """Settles in the worker, with no round trip: the request's hold goes back to its lease
        and, budgets, its cost to the spend the next call (at most FLUSH_S later) reports."""
        if not grant.unsettled:
            return
        cost = max(cost, 0)  # a budget's spend never goes down: a negative cost is none
        for ask in grant.asks:
            held = self._leases.get(ask.counter)
            if held is None:
                continue  # its window passed, or it was given back
            if ask.kind == "tpm":
                if held.window == grant.window:
                    held.free += ask.amount - tokens
            elif ask.kind in ("parallel", "budget"):
                hold = held.holds.pop(grant.lease, None)
                if hold is None:
                    continue  # lapsed: its units went back to the lease already
                if ask.kind == "parallel":
                    held.free += hold[1]
                else:
                    held.free += hold[1] - cost
                    held.spent += cost
        exact = [a for a in grant.asks if a.exact and a.counter in self._leases]
        if exact:  # its spend and what it did not use go back now: no other replica waits for them
            back = []
            for ask in exact:
                held = self._leases[ask.counter]
                back.append(_GiveBack(ask.counter, ask.kind, held.free, held.spent))
                held.free = held.spent = 0
            # in the background (the request's answer does not wait for Redis), batched with others
            task = asyncio.get_running_loop().create_task(self._give_back_now(back))
            self._returning.add(task)
            task.add_done_callback(self._returning.discard)
        self._schedule_flush()

    async def _give_back_now(self, back: list[_GiveBack]) -> None:
        try:
            await self._take(back)
        except RedisError:  # kept here: the flush reports them later
            for g in back:
                held = self._leases.get(g.counter)
                if held is not None:
                    held.free += g.give
                    held.spent += g.spent
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flusher is None and self._leases:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        """While this worker holds leases: every FLUSH_S, report settled spend and what requests
        used past their estimates, and give back the units of leases unused for IDLE_S, forgetting
        those that hold nothing."""
        try:
            while self._leases:
                await asyncio.sleep(FLUSH_S)
                entries = self._due(idle_before=time.monotonic() - IDLE_S)
                if entries:
                    with contextlib.suppress(RedisError):
                        await self._take(entries)
        except Exception:
            log.exception("could not give back leased limits")
        finally:
            self._flusher = None

    def _due(self, idle_before: float) -> list[_GiveBack]:
        now_ms = int(self._clock() * 1000)
        window = now_ms - now_ms % (WINDOW_S * 1000)
        entries = []
        for counter, held in list(self._leases.items()):
            if held.kind in ("rpm", "tpm") and held.window != window:
                del self._leases[counter]
                continue
            held.expire_holds(now_ms)
            idle = held.used_at <= idle_before
            give = held.free if idle or held.free < 0 else 0  # owed (used past estimates): reported at once
            if give or held.spent:
                entries.append(_GiveBack(counter, held.kind, give, held.spent))
                held.free -= give
                held.spent = 0
            if idle and not held.holds and held.free == 0:
                del self._leases[counter]
        return entries

    async def aclose(self) -> None:
        """Gives back everything this worker holds, so a clean shutdown leaves no headroom leased
        until its expiry."""
        if self._returning:  # exact asks' give-backs finish first
            await asyncio.gather(*self._returning, return_exceptions=True)
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        entries = self._due(idle_before=float("inf"))
        if entries:
            with contextlib.suppress(RedisError):
                await self._take(entries)

    async def reserved(self, counter: str) -> int:
        """Units held by requests in flight (slots, or budget reserved): zero when none leaked.
        What this worker holds unused, or has settled and not yet reported, is not counted."""
        held = self._leases.get(counter)
        key = self._prefix + counter
        if held is not None:
            key = self._key(counter, held.kind)
        elif await self._client.exists(key + ":slots"):
            key += ":slots"
        value = await self._client.hget(key, "reserved")
        mine = held.free + held.spent if held is not None else 0
        return int(value or 0) - mine

    async def budget(self, counter: str) -> tuple[int, int]:
        """Redis's spend and reservations, with this worker's own share corrected: its settled
        spend not yet reported counts as spent, its unused lease as not reserved."""
        held = self._leases.get(counter)
        spent, reserved = await self._client.hmget(self._prefix + counter, ["spent", "reserved"])
        mine_spent = held.spent if held is not None else 0
        mine_free = held.free if held is not None else 0
        return int(spent or 0) + mine_spent, max(int(reserved or 0) - mine_free - mine_spent, 0)
