"""Changes to keys, users, teams and customers, made known to the caches of every replica.

The request path reads keys and customers through short caches (`TTLCache`), so it costs no
database round trip once a key has been seen. Whoever changes one (a management call, the CLI)
calls `changed`: this replica drops the entry at once and, when Redis is configured, publishes the
change on one channel that every replica listens to and drops it too, within milliseconds. While
a replica is subscribed its caches keep entries longer (`listening_ttl_s`); while it is not (no
Redis, or the connection is down) they keep them for half a second, so a revoked key still stops
working everywhere within a second. A (re)subscription clears the caches: changes published
while a replica was not listening are not replayed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from meterway.auth import TTLCache

log = logging.getLogger("meterway.auth")

SHORT_TTL_S = 0.5
LISTENING_TTL_S = 10.0


class Changes:
    def __init__(
        self,
        keys: TTLCache[Any] | None = None,
        customers: TTLCache[Any] | None = None,
        redis: Any | None = None,
        channel: str = "meterway:changes",
    ) -> None:
        self.keys = keys
        self.customers = customers
        self._redis = redis
        self._channel = channel
        self.listening = asyncio.Event()

    def _caches(self) -> list[TTLCache[Any]]:
        return [c for c in (self.keys, self.customers) if c is not None]

    def forget(self, scope: str, ident: str) -> None:
        """Drops what a change makes stale here. A principal carries its user's and team's role,
        models and limits, so a user or team change drops every cached key."""
        if scope == "key" and self.keys is not None:
            self.keys.forget(ident)
        elif scope == "customer" and self.customers is not None:
            self.customers.forget(ident)
        elif scope in ("user", "team") and self.keys is not None:
            self.keys.clear()

    async def changed(self, scope: str, ident: str) -> None:
        self.forget(scope, ident)
        if self._redis is None:
            return
        try:
            await self._redis.publish(self._channel, f"{scope}:{ident}")
        except Exception as e:  # the others see it when their short TTL runs out
            log.warning("could not announce a %s change: %s", scope, e.__class__.__name__)

    async def listen(self, *, listening_ttl_s: float = LISTENING_TTL_S, retry_s: float = 1.0) -> None:
        """Runs until cancelled: subscribes, and forgets what other replicas announce."""
        if self._redis is None:
            return
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                for cache in self._caches():  # anything cached before now may have missed a change
                    cache.clear()
                    cache.ttl_s = listening_ttl_s
                self.listening.set()
                while True:
                    message = await pubsub.get_message(timeout=30.0)
                    if message is not None and message.get("type") == "message":
                        scope, _, ident = _text(message["data"]).partition(":")
                        self.forget(scope, ident)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("not listening for key changes (%s); retrying", e.__class__.__name__)
            finally:
                self.listening.clear()
                for cache in self._caches():
                    cache.ttl_s = SHORT_TTL_S
                    cache.clear()
                await asyncio.shield(_close(pubsub))
            await asyncio.sleep(retry_s)


async def _close(pubsub: Any) -> None:
    try:
        await pubsub.aclose()
    except Exception:  # already broken: nothing to close cleanly
        log.debug("pubsub close failed", exc_info=True)


def _text(data: Any) -> str:
    return data.decode() if isinstance(data, bytes) else str(data)
