"""Limits counted in this process: exact for one worker, per worker when there are several."""

from __future__ import annotations

import time

from meterway.limits import Ask, Grant, Refusal

WINDOW_S = 60.0


class MemoryLimiter:
    def __init__(self, lease_ttl_s: float = 600.0) -> None:
        self._windows: dict[str, tuple[float, int]] = {}  # counter -> (window start, count)
        self._leases: dict[str, dict[str, float]] = {}  # counter -> lease -> expiry
        self._lease_ttl = lease_ttl_s

    async def reserve(self, asks: list[Ask], lease: str) -> Grant | Refusal:
        # No await between checking and taking: on one event loop this is atomic.
        now = time.time()
        window = now - now % WINDOW_S
        remaining: dict[str, int] = {}
        for ask in asks:
            if ask.kind == "rpm":
                start, count = self._windows.get(ask.counter, (window, 0))
                used = count if start == window else 0
                if used + 1 > ask.limit:
                    return Refusal(ask, window + WINDOW_S - now)
                remaining[ask.name] = ask.limit - used - 1
            else:
                held = {k: t for k, t in self._leases.get(ask.counter, {}).items() if t > now}
                self._leases[ask.counter] = held
                if len(held) + 1 > ask.limit:
                    return Refusal(ask, 1.0)
                remaining[ask.name] = ask.limit - len(held) - 1
        parallel = []
        for ask in asks:
            if ask.kind == "rpm":
                start, count = self._windows.get(ask.counter, (window, 0))
                self._windows[ask.counter] = (window, (count if start == window else 0) + 1)
            else:
                self._leases[ask.counter][lease] = now + self._lease_ttl
                parallel.append(ask.counter)
        return Grant(lease, tuple(parallel), remaining)

    async def release(self, grant: Grant) -> None:
        for counter in grant.parallel:
            self._leases.get(counter, {}).pop(grant.lease, None)
