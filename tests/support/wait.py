"""Waiting for something to become true, by polling it, instead of sleeping for a guessed time.

A sleep is either too short on a loaded machine (a flaky test) or too long everywhere else (a slow
suite). `eventually` asks again every few milliseconds and returns as soon as the answer is
truthy; its time limit only bounds a failure, and the failure says what was awaited and what was last
seen, so a test that waits never asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

POLL_S = 0.02  # short: a wait ends soon after the condition comes true, without busying the CPU


class NeverHappened(AssertionError):
    """What a test waited for did not come true within its time limit (an AssertionError, so pytest
    shows it as a failed expectation, with the last value or error seen)."""


def _failure(what: str, within_s: float, last: object, error: BaseException | None) -> NeverHappened:
    seen = f"last error: {error!r}" if error is not None else f"last seen: {last!r}"
    return NeverHappened(f"{what}: not within {within_s} s ({seen})")


def eventually(
    probe: Callable[[], T],
    within_s: float = 10.0,
    what: str = "the condition",
    interval: float = POLL_S,
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """Calls `probe` until it returns something truthy and returns that. Exceptions of the types in
    `retry_on` (a server still starting, say) count as "not yet"; any other propagates at once."""
    deadline = time.monotonic() + within_s
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            last, error = probe(), None
        except retry_on as e:
            error = e
        if error is None and last:
            return last  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise _failure(what, within_s, last, error) from error
        time.sleep(interval)


async def eventually_async(
    probe: Callable[[], Awaitable[T]] | Callable[[], T],
    within_s: float = 10.0,
    what: str = "the condition",
    interval: float = POLL_S,
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """`eventually` for a test running on an event loop: waits without blocking the loop, so what
    the test waits for (a task on the same loop) can happen meanwhile. `probe` may be async."""
    deadline = time.monotonic() + within_s
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            found = probe()
            last, error = (await found if isinstance(found, Awaitable) else found), None
        except retry_on as e:
            error = e
        if error is None and last:
            return last  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise _failure(what, within_s, last, error) from error
        await asyncio.sleep(interval)


class ManualClock:
    """A clock a test moves by hand, for components that take `clock=` (TTL caches, windows,
    cooldowns, lease expiry): the test says "a minute passed" instead of waiting for it."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def clear_of_minute_edge(margin_s: float = 2.0) -> None:
    """Returns when at least `margin_s` is left in the current wall-clock minute. rpm windows are
    whole minutes: a test that counts requests in a gateway it cannot hand a clock (another
    process, or one whose limiter it does not build) must not straddle two windows."""
    eventually(lambda: 60 - time.time() % 60 >= margin_s, margin_s + 1, "a minute with time left", interval=0.05)
