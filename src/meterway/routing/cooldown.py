"""Deployments out of rotation for a while after failing, on every replica.

A pick must not wait for Redis, so each replica keeps the deadlines in process and reads them
there. Failures are counted per deployment in a one-minute window (in Redis when configured, so
all replicas' failures add up); the one that passes `allowed_fails`, or a rate limit or an
unusable deployment (429, 401, 404, 408) at once, starts a cooldown: it is stored in Redis with
its time to live and published on one channel, and every replica that listens takes the deadline
in within milliseconds. A replica that starts, or subscribes again, reads the cooldowns in force.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("meterway.routing")

FAIL_WINDOW_S = 60.0
IMMEDIATE = frozenset({401, 404, 408, 429})  # statuses that say this deployment cannot serve now

# KEYS: fails counter, cooldown key. ARGV: allowed fails, window ms, cooldown ms, immediate (0/1).
# Returns the cooldown in ms when one started, else 0.
_FAILED = """
local fails = redis.call('INCR', KEYS[1])
if fails == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if ARGV[4] == '1' or fails > tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  return tonumber(ARGV[3])
end
return 0
"""


class Cooldowns:
    def __init__(
        self,
        allowed_fails: int,
        cooldown_s: float,
        redis: Any | None = None,
        prefix: str = "meterway:router:",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.allowed_fails = allowed_fails
        self.cooldown_s = cooldown_s
        self._redis = redis
        self._prefix = prefix
        self._channel = prefix + "cooldowns"
        self._clock = clock
        self._until: dict[str, float] = {}  # deployment id -> clock time its cooldown ends
        self._fails: dict[str, deque[float]] = {}  # without Redis: recent failure times
        self._script = redis.register_script(_FAILED) if redis is not None else None
        self.listening = asyncio.Event()

    def cooling(self, deployment_id: str) -> bool:
        until = self._until.get(deployment_id)
        if until is None:
            return False
        if until > self._clock():
            return True
        del self._until[deployment_id]
        return False

    def active(self) -> bool:
        return bool(self._until)

    def count(self) -> int:
        """How many deployments this replica leaves out now (its own cooldowns and those it heard
        of): what a scrape shows, so an operator sees a replica routing around a deployment."""
        return sum(self.cooling(i) for i in list(self._until))

    def remaining_s(self, ids: Iterable[str]) -> float:
        now = self._clock()
        left = [self._until[i] - now for i in ids if i in self._until]
        return max(0.0, min(left)) if left else 0.0

    def cool(self, deployment_id: str, seconds: float) -> None:
        self._until[deployment_id] = max(self._until.get(deployment_id, 0.0), self._clock() + seconds)

    async def failed(self, deployment_id: str, status: int | None) -> bool:
        """Counts one failure; True when it put the deployment in cooldown."""
        if self.cooldown_s <= 0:
            return False
        immediate = status in IMMEDIATE
        if self._script is None:
            return self._failed_here(deployment_id, immediate)
        keys = [f"{self._prefix}fails:{deployment_id}", f"{self._prefix}cooldown:{deployment_id}"]
        ms = int(self.cooldown_s * 1000)
        try:
            started = await self._script(
                keys=keys, args=[self.allowed_fails, int(FAIL_WINDOW_S * 1000), ms, int(immediate)]
            )
            if not started:
                return False
            self.cool(deployment_id, self.cooldown_s)
            await self._redis.publish(self._channel, f"{ms}:{deployment_id}")  # type: ignore[union-attr]
        except Exception as e:  # Redis down: this replica still stops using it
            log.warning("could not share a failure of %s (%s)", deployment_id, e.__class__.__name__)
            return self._failed_here(deployment_id, immediate)
        log.warning("deployment %s cooling down for %.1f s", deployment_id, self.cooldown_s)
        return True

    def _failed_here(self, deployment_id: str, immediate: bool) -> bool:
        now = self._clock()
        fails = self._fails.setdefault(deployment_id, deque())
        fails.append(now)
        while fails and fails[0] < now - FAIL_WINDOW_S:
            fails.popleft()
        if not immediate and len(fails) <= self.allowed_fails:
            return False
        fails.clear()
        self.cool(deployment_id, self.cooldown_s)
        log.warning("deployment %s cooling down for %.1f s", deployment_id, self.cooldown_s)
        return True

    async def load(self, ids: Iterable[str]) -> None:
        """Takes in the cooldowns other replicas started (at start, and after a resubscription)."""
        if self._redis is None:
            return
        ids = list(ids)
        if not ids:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.pttl(f"{self._prefix}cooldown:{i}")
            ttls = await pipe.execute()
        for i, ttl in zip(ids, ttls, strict=True):
            if isinstance(ttl, int) and ttl > 0:
                self.cool(i, ttl / 1000)

    async def listen(self, ids: Iterable[str], retry_s: float = 1.0) -> None:
        """Runs until cancelled: takes in the cooldowns other replicas announce."""
        if self._redis is None:
            return
        known = list(ids)
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                await self.load(known)
                self.listening.set()
                while True:
                    message = await pubsub.get_message(timeout=30.0)
                    if message is not None and message.get("type") == "message":
                        data = message["data"]
                        text = data.decode() if isinstance(data, bytes) else str(data)
                        ms, _, dep = text.partition(":")
                        self.cool(dep, int(ms) / 1000)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("not listening for cooldowns (%s); retrying", e.__class__.__name__)
            finally:
                self.listening.clear()
                try:
                    await asyncio.shield(pubsub.aclose())
                except Exception:
                    log.debug("pubsub close failed", exc_info=True)
            await asyncio.sleep(retry_s)
