"""Concurrent calls to one slow resource, sent together: one round trip for many requests.

A request that finds no call in flight starts one at once (so a lone request waits no longer than
it would alone); requests arriving while it is in flight queue up and go together in the next
call. Under load the cost of a call (a Redis round trip and the client's own CPU for it) is thus
shared by every request that arrived during the previous one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger("meterway")

I = TypeVar("I")  # noqa: E741 - the item type
R = TypeVar("R")


class Coalescer(Generic[I, R]):
    def __init__(
        self,
        run: Callable[[list[I]], Awaitable[Sequence[R]]],
        *,
        limit: int = 256,
        orphan: Callable[[R], Awaitable[None]] | None = None,
    ) -> None:
        self._run = run  # one call for the batch; returns one result per item, in order
        self._limit = limit
        self._orphan = orphan  # given a result whose caller stopped waiting (e.g. a grant to give back)
        self._queue: list[tuple[I, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, item: I) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, future))
        if self._task is None:
            self._task = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[: self._limit], self._queue[self._limit :]
                try:
                    results = await self._run([item for item, _ in batch])
                except Exception as e:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(e)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
                    elif future.cancelled() and self._orphan is not None:
                        try:
                            await self._orphan(result)
                        except Exception:
                            log.exception("could not give back an abandoned result")
        finally:
            self._task = None
