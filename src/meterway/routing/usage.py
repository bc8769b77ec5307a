"""Requests and tokens per deployment per minute, for `usage-based-routing-v2`.

A pick takes the deployment with the fewest tokens used this minute among those still under their
`rpm` and `tpm`, and counts the request against it in the same step, so two replicas picking at
once cannot both take a deployment's last request of the minute. With Redis the step is one Lua
script and the counts are shared by every replica; without it they are this process's own.
Tokens are added when the answer's usage is known.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import RedisError

from meterway.config.settings import Deployment

log = logging.getLogger("meterway.routing")

WINDOW_MS = 60_000

# KEYS: per candidate its rpm counter, then its tpm counter. ARGV: per candidate rpm, tpm limits
# (-1: none). Counts the request against the chosen one; returns its 1-based index, or 0 when every
# candidate is at a limit.
_TAKE = """
local best, best_tpm, best_rpm = 0, nil, nil
local n = #KEYS / 2
for i = 1, n do
  local rpm = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
  local tpm = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
  local rpm_limit, tpm_limit = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  if (rpm_limit < 0 or rpm + 1 <= rpm_limit) and (tpm_limit < 0 or tpm < tpm_limit) then
    if best == 0 or tpm < best_tpm or (tpm == best_tpm and rpm < best_rpm) then
      best, best_tpm, best_rpm = i, tpm, rpm
    end
  end
end
if best > 0 then
  redis.call('INCR', KEYS[2 * best - 1])
  redis.call('PEXPIRE', KEYS[2 * best - 1], 120000)
end
return best
"""


class DeploymentLoad:
    """Requests and tokens each deployment took this minute (not the token usage of one answer,
    `providers.base.Usage`)."""

    def __init__(
        self,
        redis: Any | None = None,
        prefix: str = "meterway:router:",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._prefix = prefix + "usage:"
        self._clock = clock
        self._script = redis.register_script(_TAKE) if redis is not None else None
        self._counts: dict[tuple[str, str, int], int] = {}  # without Redis: (id, rpm|tpm, window) -> count

    def _window(self) -> int:
        now = int(self._clock() * 1000)
        return now - now % WINDOW_MS

    async def take(self, candidates: Sequence[Deployment]) -> Deployment | None:
        window = self._window()
        if self._script is None:
            return self._take_here(candidates, window)
        keys: list[str] = []
        args: list[int] = []
        for d in candidates:
            keys += [f"{self._prefix}{d.id}:rpm:{window}", f"{self._prefix}{d.id}:tpm:{window}"]
            args += [-1 if d.rpm is None else d.rpm, -1 if d.tpm is None else d.tpm]
        try:
            index = int(await self._script(keys=keys, args=args))
        except RedisError as e:  # counted here until Redis is back: limits per replica, not none
            log.warning("usage-based routing counts in process: Redis failed (%s)", e.__class__.__name__)
            return self._take_here(candidates, window)
        return candidates[index - 1] if index > 0 else None

    def _take_here(self, candidates: Sequence[Deployment], window: int) -> Deployment | None:
        if len(self._counts) > 4 * len(candidates) + 64:  # drop past windows now and then
            self._counts = {k: v for k, v in self._counts.items() if k[2] == window}
        best: tuple[int, int, Deployment] | None = None
        for d in candidates:
            rpm = self._counts.get((d.id, "rpm", window), 0)
            tpm = self._counts.get((d.id, "tpm", window), 0)
            if (d.rpm is not None and rpm + 1 > d.rpm) or (d.tpm is not None and tpm >= d.tpm):
                continue
            if best is None or (tpm, rpm) < best[:2]:
                best = (tpm, rpm, d)
        if best is None:
            return None
        key = (best[2].id, "rpm", window)
        self._counts[key] = self._counts.get(key, 0) + 1
        return best[2]

    async def add_tokens(self, deployment_id: str, tokens: int) -> None:
        if tokens <= 0:
            return
        window = self._window()
        if self._redis is None:
            key = (deployment_id, "tpm", window)
            self._counts[key] = self._counts.get(key, 0) + tokens
            return
        name = f"{self._prefix}{deployment_id}:tpm:{window}"
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.incrby(name, tokens)
                pipe.pexpire(name, 2 * WINDOW_MS)
                await pipe.execute()
        except RedisError as e:
            log.warning("tokens of %s not counted in Redis (%s)", deployment_id, e.__class__.__name__)
