"""Limits counted in Redis, exact across workers and replicas: one Lua script checks every limit
of a request and takes them all, or takes none and says which one refused; a second settles them.

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
from typing import Any

from redis.exceptions import RedisError

from meterway.errors import ServiceUnavailable
from meterway.limits import Ask, Grant, Refusal

WINDOW_S = 60

# ARGV: now (ms), window (s), lease, lease ttl (ms), then per ask: kind, limit, amount, floor,
# expire-at (ms, budgets; 0 when the budget has no period; the counter outlives it by a day). Returns {0, index, retry_ms, used,
# reserved} when ask `index` refuses (retry_ms -1: waiting will not help), else {1, remaining...}.
_RESERVE = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2]) * 1000
local lease = ARGV[3]
local ttl = tonumber(ARGV[4])
local start = now - (now % window)
local remaining = {}
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
for i, key in ipairs(KEYS) do
  local a = 5 + (i - 1) * 5
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
for i, key in ipairs(KEYS) do
  local a = 5 + (i - 1) * 5
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
for i = 1, #KEYS do out[i + 1] = remaining[i] end
return out
"""

# ARGV: lease, window start (ms), tokens used, cost, then per key: kind, amount reserved.
_SETTLE = """
local lease, start = ARGV[1], ARGV[2]
local tokens, cost = tonumber(ARGV[3]), tonumber(ARGV[4])
for i, key in ipairs(KEYS) do
  local kind, amount = ARGV[3 + i * 2], tonumber(ARGV[4 + i * 2])
  if kind == 'parallel' then
    redis.call('ZREM', key, lease)
  elseif kind == 'tpm' then
    local k = key .. ':' .. start
    if redis.call('EXISTS', k) == 1 and tokens ~= amount then redis.call('INCRBY', k, tokens - amount) end
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
return 1
"""


class RedisLimiter:
    def __init__(self, client: Any, prefix: str = "meterway:limits:", lease_ttl_s: float = 660.0) -> None:
        self._client = client
        self._prefix = prefix
        self._lease_ttl_ms = int(lease_ttl_s * 1000)
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)

    async def reserve(self, asks: list[Ask], lease: str) -> Grant | Refusal:
        now_ms = int(time.time() * 1000)
        window = now_ms - now_ms % (WINDOW_S * 1000)
        if not asks:
            return Grant(lease, (), window, {})
        keys = [self._prefix + a.counter for a in asks]
        argv: list[Any] = [now_ms, WINDOW_S, lease, self._lease_ttl_ms]
        for a in asks:
            argv += [a.kind, a.limit, a.amount, a.floor, int((a.expires or 0) * 1000)]
        try:
            result = await self._reserve(keys=keys, args=argv)
        except RedisError as e:
            # Fail closed: a limit that cannot be checked is not waived (the caller may retry).
            raise ServiceUnavailable(
                f"The rate-limit store is unavailable ({e.__class__.__name__}); retry shortly."
            ) from None
        if int(result[0]) == 0:
            retry_ms = int(result[2])
            retry = None if retry_ms < 0 else max(retry_ms, 1) / 1000
            return Refusal(asks[int(result[1]) - 1], retry, int(result[3]), int(result[4]))
        # The script computed the window from the same clock reading it was given.
        return Grant(lease, tuple(asks), window, {a.name: int(r) for a, r in zip(asks, result[1:], strict=True)})

    async def settle(self, grant: Grant, tokens: int, cost: int) -> None:
        taken = [a for a in grant.asks if a.kind != "rpm"]
        if not taken:
            return
        argv: list[Any] = [grant.lease, grant.window, tokens, cost]
        for a in taken:
            argv += [a.kind, a.amount]
        # On failure the slots and reservations lapse when their leases run out; the spend is
        # still written to the store, whose figure is the floor the next reservation starts from.
        with contextlib.suppress(RedisError):
            await self._settle(keys=[self._prefix + a.counter for a in taken], args=argv)

    async def reserved(self, counter: str) -> int:
        """Units held by requests in flight (slots, or budget reserved): zero when none leaked."""
        key = self._prefix + counter
        if await self._client.type(key) in (b"zset", "zset"):
            return int(await self._client.zcount(key, time.time() * 1000, "+inf"))
        value = await self._client.hget(key, "reserved")
        return int(value or 0)
