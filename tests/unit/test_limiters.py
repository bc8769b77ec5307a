"""Both limiters, the in-process one and the Redis one (real Redis), against the same behaviour."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from meterway.limits import Ask, Grant, Limiter, Refusal
from meterway.limits.memory import MemoryLimiter
from meterway.limits.redis import RedisLimiter

RPM = Ask("k1:rpm", 3, "rpm", "rpm_limit")
PAR = Ask("k1:par", 2, "parallel", "max_parallel_requests")


async def away_from_window_edge() -> None:
    """rpm windows are whole minutes: a test that straddles a boundary would see two windows."""
    left = 60 - time.time() % 60
    if left < 2:
        await asyncio.sleep(left + 0.05)


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[Limiter]:
    if request.param == "memory":
        yield MemoryLimiter(lease_ttl_s=0.5)
        return
    url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    client = redis.asyncio.from_url(url)
    yield RedisLimiter(client, prefix=prefix, lease_ttl_s=0.5)
    await client.aclose()


async def test_rpm_admits_exactly_the_limit_then_says_when_to_retry(limiter: Limiter) -> None:
    await away_from_window_edge()
    results = [await limiter.reserve([RPM], f"r{i}") for i in range(5)]
    assert [isinstance(r, Grant) for r in results] == [True, True, True, False, False]
    refusal = results[3]
    assert isinstance(refusal, Refusal) and refusal.ask == RPM and 0 < refusal.retry_after <= 60
    assert isinstance(results[0], Grant) and results[0].remaining == {"rpm_limit": 2}


async def test_parallel_slots_are_given_back_and_lapse_when_never_released(limiter: Limiter) -> None:
    a, b = await limiter.reserve([PAR], "a"), await limiter.reserve([PAR], "b")
    assert isinstance(a, Grant) and isinstance(b, Grant)
    assert isinstance(await limiter.reserve([PAR], "c"), Refusal)
    await limiter.release(a)
    assert isinstance(await limiter.reserve([PAR], "d"), Grant)
    await asyncio.sleep(0.6)  # b and d are never released, as if their worker had died: their leases lapse
    assert isinstance(await limiter.reserve([PAR], "e"), Grant)


async def test_a_refusal_takes_nothing(limiter: Limiter) -> None:
    await away_from_window_edge()
    tight = Ask("k2:par", 1, "parallel", "max_parallel_requests")
    rpm = Ask("k2:rpm", 2, "rpm", "rpm_limit")
    first = await limiter.reserve([rpm, tight], "x")
    assert isinstance(first, Grant)
    refused = await limiter.reserve([rpm, tight], "y")
    assert isinstance(refused, Refusal) and refused.ask == tight
    await limiter.release(first)
    assert isinstance(await limiter.reserve([rpm, tight], "z"), Grant), "the refused request used no rpm unit"


async def test_concurrent_requests_get_exactly_the_limit(limiter: Limiter) -> None:
    await away_from_window_edge()
    ask = Ask("k3:rpm", 30, "rpm", "rpm_limit")
    results = await asyncio.gather(*(limiter.reserve([ask], f"r{i}") for i in range(100)))
    assert sum(isinstance(r, Grant) for r in results) == 30
