"""Limits counted in Redis, exact across workers and replicas: one Lua script checks every limit
of a request and takes them all, or takes none and says which one refused."""

from __future__ import annotations

import contextlib
from typing import Any

from redis.exceptions import RedisError

from meterway.errors import ServiceUnavailable
from meterway.limits import Ask, Grant, Refusal

WINDOW_S = 60

# KEYS: one counter per ask. ARGV: now (ms), window (s), lease id, lease ttl (ms), then per ask:
# kind ("rpm" or "parallel"), limit. Returns {0, index, retry_ms} when ask `index` refuses,
# else {1, remaining...}. rpm counters are per fixed window (the window's start is in the key);
# parallel counters are sorted sets of leases scored by expiry, so a dead worker's slots lapse.
_RESERVE = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local lease = ARGV[3]
local ttl = tonumber(ARGV[4])
local start = now - (now % (window * 1000))
local remaining = {}
for i, key in ipairs(KEYS) do
  local kind = ARGV[3 + i * 2]
  local limit = tonumber(ARGV[4 + i * 2])
  if kind == 'rpm' then
    local used = tonumber(redis.call('GET', key .. ':' .. start) or '0')
    if used + 1 > limit then return {0, i, start + window * 1000 - now} end
    remaining[i] = limit - used - 1
  else
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    local held = redis.call('ZCARD', key)
    if held + 1 > limit then return {0, i, 1000} end
    remaining[i] = limit - held - 1
  end
end
for i, key in ipairs(KEYS) do
  if ARGV[3 + i * 2] == 'rpm' then
    local k = key .. ':' .. start
    redis.call('INCR', k)
    redis.call('PEXPIRE', k, window * 2000)
  else
    redis.call('ZADD', key, now + ttl, lease)
    redis.call('PEXPIRE', key, ttl)
  end
end
local out = {1}
for i = 1, #KEYS do out[i + 1] = remaining[i] end
return out
"""


class RedisLimiter:
    def __init__(self, client: Any, prefix: str = "meterway:limits:", lease_ttl_s: float = 600.0) -> None:
        self._client = client
        self._prefix = prefix
        self._lease_ttl_ms = int(lease_ttl_s * 1000)
        self._script = client.register_script(_RESERVE)

    async def reserve(self, asks: list[Ask], lease: str) -> Grant | Refusal:
        if not asks:
            return Grant(lease, (), {})
        import time

        keys = [self._prefix + a.counter for a in asks]
        argv: list[Any] = [int(time.time() * 1000), WINDOW_S, lease, self._lease_ttl_ms]
        for a in asks:
            argv += [a.kind, a.limit]
        try:
            result = await self._script(keys=keys, args=argv)
        except RedisError as e:
            # Fail closed: a limit that cannot be checked is not waived (the caller may retry).
            raise ServiceUnavailable(
                f"The rate-limit store is unavailable ({e.__class__.__name__}); retry shortly."
            ) from None
        if int(result[0]) == 0:
            return Refusal(asks[int(result[1]) - 1], max(int(result[2]), 1) / 1000)
        parallel = tuple(k for k, a in zip(keys, asks, strict=True) if a.kind == "parallel")
        return Grant(lease, parallel, {a.name: int(r) for a, r in zip(asks, result[1:], strict=True)})

    async def release(self, grant: Grant) -> None:
        if grant.parallel:
            pipe = self._client.pipeline(transaction=False)
            for key in grant.parallel:
                pipe.zrem(key, grant.lease)
            with contextlib.suppress(RedisError):  # else the lease lapses when its time to live runs out
                await pipe.execute()
