"""Failed UI logins, limited per client address and overall.

A login attempt is counted when it starts, not when it fails: concurrent guesses each take a slot
before any is checked, so sending them all at once gets no more through than sending them one
by one. A login that succeeds gives its slot back. Once a client has used its slots in the
window, every attempt of that client (a right one too, or a correct guess would still be told
apart) is answered 429 with Retry-After until its oldest attempt leaves the window. The overall
cap bounds guessing from many addresses at once, at the cost of refusing everyone while it is
reached.

Counted in this process only: with `--workers N` each worker counts for itself (N times the
limits), as the in-process rate limiter does.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Attempt:
    """A slot taken by a login attempt; given back by `LoginThrottle.succeeded`."""

    client: str
    at: float


class LoginThrottle:
    def __init__(
        self,
        per_client: int = 5,
        overall: int = 100,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_client = per_client
        self.overall = overall
        self.window_s = window_s
        self._clock = clock
        self._clients: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()

    def start(self, client: str) -> Attempt | float:
        """Takes a slot for an attempt of `client`, or returns the seconds until one is free."""
        now = self._clock()
        since = now - self.window_s
        _expire(self._all, since)
        mine = self._clients.get(client)
        if mine is not None:
            _expire(mine, since)
        if mine is not None and len(mine) >= self.per_client:
            return mine[0] - since
        if len(self._all) >= self.overall:
            return self._all[0] - since
        if mine is None:
            if len(self._clients) >= self.overall:  # every live client holds a slot of `_all`: forget the rest
                self._clients = {c: d for c, d in self._clients.items() if d and d[-1] > since}
            mine = self._clients[client] = deque()
        mine.append(now)
        self._all.append(now)
        return Attempt(client, now)

    def succeeded(self, attempt: Attempt) -> None:
        """A right login is no failure: its slot is free again (the client's earlier failures stay)."""
        _remove(self._clients.get(attempt.client), attempt.at)
        _remove(self._all, attempt.at)


def _expire(times: deque[float], since: float) -> None:
    while times and times[0] <= since:
        times.popleft()


def _remove(times: deque[float] | None, at: float) -> None:
    if times is not None:
        with contextlib.suppress(ValueError):  # already out of the window
            times.remove(at)
