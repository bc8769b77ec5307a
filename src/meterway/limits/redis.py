"""Limits counted in Redis, exact across workers and replicas: one Lua script checks every limit
of a request and takes them all, or takes none and says which one refused; a second settles them.
Requests that arrive together go in one call of each script, so under load a request pays a
fraction of a Redis round trip, not two whole ones.

Keys (under the configured prefix), per counter:
    <counter>:<window ms>   rpm and tpm: units used in that minute window, expiring after two
    <counter>               parallel: sorted set of leases scored by expiry
    <counter>               budget: hash of `spent`, `reserved` and `l:<lease>` -> amount reserved
    <counter>:leases        budget: sorted set of its leases scored by expiry
A lease past its expiry is dropped (and its amount unreserved) by the next script that looks, so a
replica killed mid-request never holds a slot or a budget for longer than the lease's time to live.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from meterway.coalesce import Coalescer
from meterway.errors import ServiceUnavailable
from meterway.limits import Ask, Grant, Refusal

WINDOW_S = 60

# One call reserves for a batch of requests, each all-or-nothing and in arrival order.
# ARGV: now (ms), window (s), lease ttl (ms), then per request: lease, number of asks n, then per ask:
# kind, limit, amount, floor, expire-at (ms, budgets; 0 when the budget has no period; the counter
# outlives it by a day). KEYS: every request's asks' counters, in the same order. Returns one
# array per request: {0, index, retry_ms, used, reserved} when ask `index` refuses (retry_ms -1:
# waiting will not help), else {1, remaining...}.
_RESERVE = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2]) * 1000
local ttl = tonumber(ARGV[3])
local start = now - (now % window)
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
local function reserve(k0, a0, n, lease)
  local remaining = {}
  for i = 1, n do
    local key, a = KEYS[k0 + i], a0 + (i - 1) * 5
    local kind, limit, amount = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    if kind == 'rpm' or kind == 'tpm' then
      local used = tonumber(redis.call('GET', key .. ':' .. start) or '0')
      if (kind == 'rpm' and used + 1 > limit) or (kind == 'tpm' and used >= limit) then
        return {0, i, start + window - now, used, 0}
      end
      remaining[i] = math.max(limit - used - amount, 0)
    elseif kind == 'parallel' then
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
      local held = redis.call('ZCARD', key)
      if held + 1 > limit then return {0, i, 1000, held, 0} end
      remaining[i] = limit - held - 1
    else
      unlease(key)
      local floor = tonumber(ARGV[a + 3])
      local spent = tonumber(redis.call('HGET', key, 'spent') or '0')
      if floor > spent then
        redis.call('HSET', key, 'spent', floor)
        spent = floor
      end
      local reserved = tonumber(redis.call('HGET', key, 'reserved') or '0')
      if spent >= limit or spent + reserved + amount > limit then return {0, i, -1, spent, reserved} end
      remaining[i] = limit - spent - reserved - amount
    end
  end
  for i = 1, n do
    local key, a = KEYS[k0 + i], a0 + (i - 1) * 5
    local kind, amount = ARGV[a], tonumber(ARGV[a + 2])
    if kind == 'rpm' or kind == 'tpm' then
      local k = key .. ':' .. start
      redis.call('INCRBY', k, amount)
      redis.call('PEXPIRE', k, window * 2)
    elseif kind == 'parallel' then
      redis.call('ZADD', key, now + ttl, lease)
      redis.call('PEXPIRE', key, ttl)
    else
      local keep = tonumber(ARGV[a + 4])
      keep = math.max(keep > 0 and keep - now or 0, ttl) + 86400000
      redis.call('HINCRBY', key, 'reserved', amount)
      redis.call('HSET', key, 'l:' .. lease, amount)
      redis.call('ZADD', key .. ':leases', now + ttl, lease)
      redis.call('PEXPIRE', key, keep)
      redis.call('PEXPIRE', key .. ':leases', keep)
    end
  end
  local out = {1}
  for i = 1, n do out[i + 1] = remaining[i] end
  return out
end
local results = {}
local k, a = 0, 4
while a <= #ARGV do
  local lease, n = ARGV[a], tonumber(ARGV[a + 1])
  results[#results + 1] = reserve(k, a + 2, n, lease)
  k, a = k + n, a + 2 + n * 5
end
return results
"""

# One call settles a batch of grants. ARGV per grant: lease, window start (ms), tokens used, cost,
# number of asks n, then per ask: kind, amount reserved. KEYS: every grant's counters, in order.
_SETTLE = """
local k, a = 0, 1
while a <= #ARGV do
  local lease, start = ARGV[a], ARGV[a + 1]
  local tokens, cost, n = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  for i = 1, n do
    local key = KEYS[k + i]
    local kind, amount = ARGV[a + 3 + i * 2], tonumber(ARGV[a + 4 + i * 2])
    if kind == 'parallel' then
      redis.call('ZREM', key, lease)
    elseif kind == 'tpm' then
      local w = key .. ':' .. start
      if redis.call('EXISTS', w) == 1 and tokens ~= amount then redis.call('INCRBY', w, tokens - amount) end
    elseif kind == 'budget' then
      local held = redis.call('HGET', key, 'l:' .. lease)
      if held then
        redis.call('HINCRBY', key, 'reserved', -tonumber(held))
        redis.call('HDEL', key, 'l:' .. lease)
        redis.call('ZREM', key .. ':leases', lease)
      end
      if cost > 0 then redis.call('HINCRBY', key, 'spent', cost) end
    end
  end
  k, a = k + n, a + 5 + n * 2
end
return 1
"""


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
        self._reserve_script = client.register_script(_RESERVE)
        self._settle_script = client.register_script(_SETTLE)
        # Requests arriving together share one script call each way (see meterway.coalesce).
        self._reserve = Coalescer(self._reserve_batch, orphan=self._give_back)
        self._settle = Coalescer(self._settle_batch)

    async def reserve(self, asks: list[Ask], lease: str) -> Grant | Refusal:
        if not asks:
            now_ms = int(self._clock() * 1000)
            return Grant(lease, (), now_ms - now_ms % (WINDOW_S * 1000), {})
        try:
            return await self._reserve((asks, lease))
        except RedisError as e:
            # Fail closed: a limit that cannot be checked is not waived (the caller may retry).
            raise ServiceUnavailable(
                f"The rate-limit store is unavailable ({e.__class__.__name__}); retry shortly."
            ) from None

    async def _reserve_batch(self, batch: list[tuple[list[Ask], str]]) -> list[Grant | Refusal]:
        now_ms = int(self._clock() * 1000)
        window = now_ms - now_ms % (WINDOW_S * 1000)  # the script computes the same from `now_ms`
        keys: list[str] = []
        argv: list[Any] = [now_ms, WINDOW_S, self._lease_ttl_ms]
        for asks, lease in batch:
            argv += [lease, len(asks)]
            for a in asks:
                keys.append(self._prefix + a.counter)
                argv += [a.kind, a.limit, a.amount, a.floor, int((a.expires or 0) * 1000)]
        results = await self._reserve_script(keys=keys, args=argv)
        out: list[Grant | Refusal] = []
        for (asks, lease), result in zip(batch, results, strict=True):
            if int(result[0]) == 0:
                retry_ms = int(result[2])
                retry = None if retry_ms < 0 else max(retry_ms, 1) / 1000
                out.append(Refusal(asks[int(result[1]) - 1], retry, int(result[3]), int(result[4])))
            else:
                remaining = {a.name: int(r) for a, r in zip(asks, result[1:], strict=True)}
                out.append(Grant(lease, tuple(asks), window, remaining))
        return out

    async def _give_back(self, result: Grant | Refusal) -> None:
        if isinstance(result, Grant):
            await self.settle(result, 0, 0)

    async def settle(self, grant: Grant, tokens: int, cost: int) -> None:
        if not grant.unsettled:
            return
        # On failure the slots and reservations lapse when their leases run out; the spend is
        # still written to the store, whose figure is the floor the next reservation starts from.
        with contextlib.suppress(RedisError):
            await self._settle((grant, tokens, cost))

    async def _settle_batch(self, batch: list[tuple[Grant, int, int]]) -> list[None]:
        keys: list[str] = []
        argv: list[Any] = []
        for grant, tokens, cost in batch:
            taken = [a for a in grant.asks if a.kind != "rpm"]
            argv += [grant.lease, grant.window, tokens, cost, len(taken)]
            for a in taken:
                keys.append(self._prefix + a.counter)
                argv += [a.kind, a.amount]
        await self._settle_script(keys=keys, args=argv)
        return [None] * len(batch)

    async def reserved(self, counter: str) -> int:
        """Units held by requests in flight (slots, or budget reserved): zero when none leaked."""
        key = self._prefix + counter
        if await self._client.type(key) in (b"zset", "zset"):
            return int(await self._client.zcount(key, self._clock() * 1000, "+inf"))
        value = await self._client.hget(key, "reserved")
        return int(value or 0)
