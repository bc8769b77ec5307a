"""Limits counted in this process: exact for one worker, per worker when there are several.

A budget's spend is the larger of what this worker counted and what the store last read, so
workers sharing a database see each other's settled spend within the key cache's time to live."""

from __future__ import annotations

import time
from collections.abc import Callable

from meterway.limits import Ask, Grant, Refusal

WINDOW_S = 60.0


class MemoryLimiter:
    def __init__(self, lease_ttl_s: float = 660.0, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock  # wall time (rpm windows are calendar minutes); tests pass their own
        self._windows: dict[str, tuple[float, int]] = {}  # rpm/tpm counter -> (window start, used)
        self._leases: dict[str, dict[str, tuple[float, int]]] = {}  # counter -> lease -> (expiry, amount)
        self._spent: dict[str, int] = {}  # budget counter -> spend settled in its period
        self._lease_ttl = lease_ttl_s

    def _held(self, counter: str, now: float) -> dict[str, tuple[float, int]]:
        held = {k: v for k, v in self._leases.get(counter, {}).items() if v[0] > now}
        self._leases[counter] = held
        return held

    def _used(self, counter: str, window: float) -> int:
        start, used = self._windows.get(counter, (window, 0))
        return used if start == window else 0

    async def reserve(self, asks: list[Ask], lease: str) -> Grant | Refusal:
        # No await between checking and taking: on one event loop this is atomic.
        now = self._clock()
        window = now - now % WINDOW_S
        remaining: dict[str, int] = {}
        for ask in asks:
            if ask.kind == "rpm":
                used = self._used(ask.counter, window)
                if used + 1 > ask.limit:
                    return Refusal(ask, window + WINDOW_S - now, used)
                remaining[ask.name] = ask.limit - used - 1
            elif ask.kind == "tpm":
                used = self._used(ask.counter, window)
                if used >= ask.limit:
                    return Refusal(ask, window + WINDOW_S - now, used)
                remaining[ask.name] = max(ask.limit - used - ask.amount, 0)
            elif ask.kind == "parallel":
                held = self._held(ask.counter, now)
                if len(held) + 1 > ask.limit:
                    return Refusal(ask, 1.0, len(held))
                remaining[ask.name] = ask.limit - len(held) - 1
            else:
                spent = max(self._spent.get(ask.counter, 0), ask.floor)
                self._spent[ask.counter] = spent
                reserved = sum(amount for _, amount in self._held(ask.counter, now).values())
                need = max(ask.amount, 0)  # a negative cost would give back other requests' reservations
                if spent >= ask.limit or spent + reserved + need > ask.limit:
                    return Refusal(ask, None, spent, reserved)
                remaining[ask.name] = ask.limit - spent - reserved - need
        for ask in asks:
            if ask.kind in ("rpm", "tpm"):
                self._windows[ask.counter] = (window, self._used(ask.counter, window) + ask.amount)
            else:
                amount = 1 if ask.kind == "parallel" else max(ask.amount, 0)
                self._leases[ask.counter][lease] = (now + self._lease_ttl, amount)
        return Grant(lease, tuple(asks), int(window * 1000), remaining)

    async def settle(self, grant: Grant, tokens: int, cost: int) -> None:
        for ask in grant.asks:
            if ask.kind == "parallel":
                self._leases.get(ask.counter, {}).pop(grant.lease, None)
            elif ask.kind == "tpm":
                start, used = self._windows.get(ask.counter, (0.0, 0))
                if int(start * 1000) == grant.window:
                    self._windows[ask.counter] = (start, max(used + tokens - ask.amount, 0))
            elif ask.kind == "budget":
                self._leases.get(ask.counter, {}).pop(grant.lease, None)
                self._spent[ask.counter] = max(self._spent.get(ask.counter, 0), ask.floor) + max(cost, 0)

    def reserved(self, counter: str) -> int:
        """Units held by requests in flight (slots, or budget reserved): zero when none leaked."""
        held = self._held(counter, self._clock())
        return sum(amount for _, amount in held.values())

    async def budget(self, counter: str) -> tuple[int, int]:
        return self._spent.get(counter, 0), self.reserved(counter)
