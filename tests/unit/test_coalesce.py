"""Requests arriving together share one call; a result nobody waits for any more is given back."""

from __future__ import annotations

import asyncio

import pytest

from meterway.coalesce import Coalescer
from tests.support.wait import eventually_async


async def test_calls_arriving_while_one_is_in_flight_go_together() -> None:
    batches: list[list[int]] = []
    started = asyncio.Event()

    async def run(items: list[int]) -> list[int]:
        batches.append(items)
        started.set()
        await asyncio.sleep(0.01)
        return [i * 10 for i in items]

    double = Coalescer(run)
    first = asyncio.ensure_future(double(0))
    await started.wait()  # the first call is in flight
    results = await asyncio.gather(*(double(i) for i in range(1, 50)))
    assert await first == 0 and results == [i * 10 for i in range(1, 50)]
    assert batches == [[0], list(range(1, 50))]
    assert await double(7) == 70, "a lone call later starts at once"


async def test_a_failed_call_fails_each_of_its_callers_and_the_next_batch_still_runs() -> None:
    calls = 0

    async def run(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("down")
        return items

    c = Coalescer(run)
    with pytest.raises(ConnectionError):
        await c(1)
    assert await c(2) == 2


async def test_a_result_whose_caller_left_is_handed_to_orphan() -> None:
    given_back: list[int] = []
    gate = asyncio.Event()

    async def run(items: list[int]) -> list[int]:
        await gate.wait()
        return items

    async def orphan(result: int) -> None:
        given_back.append(result)

    c = Coalescer(run, orphan=orphan)
    waiting = asyncio.ensure_future(c(5))
    await asyncio.sleep(0)
    waiting.cancel()
    gate.set()
    await eventually_async(lambda: given_back == [5], what="the orphaned result given back")
