"""Both limiters, the in-process one and the Redis one (real Redis), against the same behaviour."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from meterway.limits import Ask, Budget, Grant, Limiter, LimitSpec, Refusal
from meterway.limits.memory import MemoryLimiter
from meterway.limits.redis import RedisLimiter
from tests.support.wait import ManualClock, clear_of_minute_edge

RPM = Ask("k1:rpm", 3, "rpm", "rpm_limit")
PAR = Ask("k1:par", 2, "parallel", "max_parallel_requests")


LEASE_TTL_S = 0.5


@pytest.fixture
def clock() -> ManualClock:
    """Wall time the tests move: a second into an rpm window (whole minutes), so no test straddles
    a window's edge, and leases lapse when the test says so, not after a sleep."""
    start = time.time()
    return ManualClock(start - start % 60 + 1)


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest, clock: ManualClock) -> AsyncIterator[MemoryLimiter | RedisLimiter]:
    if request.param == "memory":
        yield MemoryLimiter(lease_ttl_s=LEASE_TTL_S, clock=clock)
        return
    url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    client = redis.asyncio.from_url(url)
    limiter = RedisLimiter(client, prefix=prefix, lease_ttl_s=LEASE_TTL_S, clock=clock)
    yield limiter
    await limiter.aclose()
    await client.aclose()


async def test_rpm_admits_exactly_the_limit_then_says_when_to_retry(limiter: Limiter, clock: ManualClock) -> None:
    results = [await limiter.reserve([RPM], f"r{i}") for i in range(5)]
    assert [isinstance(r, Grant) for r in results] == [True, True, True, False, False]
    refusal = results[3]
    assert isinstance(refusal, Refusal) and refusal.ask == RPM and refusal.retry_after == pytest.approx(59)
    assert isinstance(results[0], Grant) and results[0].remaining == {"rpm_limit": 2}
    clock.advance(refusal.retry_after - 0.5)
    assert isinstance(await limiter.reserve([RPM], "early"), Refusal), "still the same window"
    clock.advance(0.5)
    assert isinstance(await limiter.reserve([RPM], "retried"), Grant), "the next window admits again"


async def test_parallel_slots_are_given_back_and_lapse_when_never_released(
    limiter: Limiter, clock: ManualClock
) -> None:
    a, b = await limiter.reserve([PAR], "a"), await limiter.reserve([PAR], "b")
    assert isinstance(a, Grant) and isinstance(b, Grant)
    assert isinstance(await limiter.reserve([PAR], "c"), Refusal)
    await limiter.settle(a, 0, 0)
    assert isinstance(await limiter.reserve([PAR], "d"), Grant)
    clock.advance(LEASE_TTL_S - 0.01)
    assert isinstance(await limiter.reserve([PAR], "e"), Refusal), "b and d still hold their slots"
    clock.advance(0.02)  # b and d are never released, as if their worker had died: their leases lapse
    assert isinstance(await limiter.reserve([PAR], "e"), Grant)


async def test_a_refusal_takes_nothing(limiter: Limiter) -> None:
    tight = Ask("k2:par", 1, "parallel", "max_parallel_requests")
    rpm = Ask("k2:rpm", 2, "rpm", "rpm_limit")
    first = await limiter.reserve([rpm, tight], "x")
    assert isinstance(first, Grant)
    refused = await limiter.reserve([rpm, tight], "y")
    assert isinstance(refused, Refusal) and refused.ask == tight
    await limiter.settle(first, 0, 0)
    assert isinstance(await limiter.reserve([rpm, tight], "z"), Grant), "the refused request used no rpm unit"


async def test_concurrent_requests_get_exactly_the_limit(limiter: Limiter) -> None:
    ask = Ask("k3:rpm", 30, "rpm", "rpm_limit")
    results = await asyncio.gather(*(limiter.reserve([ask], f"r{i}") for i in range(100)))
    assert sum(isinstance(r, Grant) for r in results) == 30


async def _reserved(limiter: MemoryLimiter | RedisLimiter, counter: str) -> int:
    held = limiter.reserved(counter)
    return held if isinstance(held, int) else await held


async def test_tpm_admits_while_under_the_limit_and_settles_to_the_tokens_used(limiter: Limiter) -> None:
    tpm = Ask("k4:tpm", 1000, "tpm", "tpm_limit", amount=600)
    first = await limiter.reserve([tpm], "a")
    second = await limiter.reserve([tpm], "b")  # 600 used < 1000: admitted, may overshoot by one estimate
    assert isinstance(first, Grant) and isinstance(second, Grant)
    refused = await limiter.reserve([tpm], "c")
    assert isinstance(refused, Refusal) and refused.used == 1200 and refused.retry_after is not None
    await limiter.settle(first, 100, 0)  # the estimate was 600, the answer used 100
    await limiter.settle(second, 100, 0)
    assert isinstance(await limiter.reserve([tpm], "d"), Grant), "200 of 1000 used after settling"


async def test_budget_reserves_the_estimate_and_settles_to_the_cost(limiter: MemoryLimiter | RedisLimiter) -> None:
    budget = Ask("k5:budget:all", 100, "budget", "key max_budget", amount=40)
    a, b = await limiter.reserve([budget], "a"), await limiter.reserve([budget], "b")
    assert isinstance(a, Grant) and isinstance(b, Grant) and a.remaining == {"key max_budget": 60}
    refused = await limiter.reserve([budget], "c")
    assert isinstance(refused, Refusal) and (refused.used, refused.reserved) == (0, 80)
    assert refused.retry_after is None
    await limiter.settle(a, 0, 10)
    assert await _reserved(limiter, budget.counter) == 40
    c = await limiter.reserve([budget], "c")  # spent 10 + reserved 40 + 40 = 90
    assert isinstance(c, Grant)
    await limiter.settle(b, 0, 35)
    await limiter.settle(c, 0, 40)
    assert await _reserved(limiter, budget.counter) == 0
    spent = await limiter.reserve([Ask(budget.counter, 100, "budget", "key max_budget", amount=16)], "d")
    assert isinstance(spent, Refusal) and spent.used == 85, "85 spent: a request that may cost 16 does not fit"
    assert isinstance(await limiter.reserve([Ask(budget.counter, 100, "budget", "n", amount=15)], "e"), Grant)


async def test_budget_counter_never_starts_below_the_stored_spend(limiter: Limiter) -> None:
    ask = Ask("k6:budget:all", 100, "budget", "key max_budget", amount=1, floor=100)
    refused = await limiter.reserve([ask], "a")
    assert isinstance(refused, Refusal) and refused.used == 100


async def test_a_dead_requests_budget_reservation_lapses(
    limiter: MemoryLimiter | RedisLimiter, clock: ManualClock
) -> None:
    ask = Ask("k7:budget:all", 100, "budget", "key max_budget", amount=100)
    assert isinstance(await limiter.reserve([ask], "dies"), Grant)  # never settled
    assert isinstance(await limiter.reserve([ask], "waits"), Refusal)
    clock.advance(LEASE_TTL_S + 0.01)
    assert isinstance(await limiter.reserve([ask], "after"), Grant)


async def test_concurrent_budget_reservations_never_exceed_the_budget(limiter: MemoryLimiter | RedisLimiter) -> None:
    ask = Ask("k8:budget:all", 1000, "budget", "key max_budget", amount=100)
    results = await asyncio.gather(*(limiter.reserve([ask], f"r{i}") for i in range(50)))
    grants = [r for r in results if isinstance(r, Grant)]
    assert len(grants) == 10
    await asyncio.gather(*(limiter.settle(g, 0, 100) for g in grants))
    assert await _reserved(limiter, ask.counter) == 0
    assert isinstance(await limiter.reserve([ask], "more"), Refusal)


def test_budget_periods_follow_each_other_from_the_stored_reset_time() -> None:
    day = 86400
    budget = Budget(max_budget=100, spend=70, duration_s=day, reset_at=10 * day)
    assert budget.period(9.5 * day) == (10 * day, 70), "before the reset: the stored spend counts"
    assert budget.period(10 * day) == (11 * day, 0), "at the reset a new period starts from zero"
    assert budget.period(13.2 * day) == (14 * day, 0)
    assert Budget(max_budget=100, spend=5).period(123.0) == (None, 5)
    spec = LimitSpec("key", "d1", budget=budget)
    (ask,) = spec.asks(12.5 * day, tokens=10, cost=7)
    assert ask.counter == f"key:d1:budget:{13 * day}" and ask.floor == 0 and ask.amount == 7


@pytest.fixture
async def two_workers(redis_url: str, redis_prefix: str) -> AsyncIterator[tuple[RedisLimiter, RedisLimiter]]:
    """Two workers (or replicas) on one Redis, each with its own leases."""
    client = redis.asyncio.from_url(redis_url)
    one, two = (RedisLimiter(client, prefix=redis_prefix, lease_ttl_s=60) for _ in range(2))
    yield one, two
    await one.aclose()
    await two.aclose()
    await client.aclose()


async def _until_granted(limiter: RedisLimiter, ask: Ask, lease: str) -> Grant:
    """Asks until granted: what another worker leased and left unused comes back once it is idle."""
    deadline = time.monotonic() + 5
    while True:
        result = await limiter.reserve([ask], lease)
        if isinstance(result, Grant):
            return result
        assert time.monotonic() < deadline, f"still refused: {result}"
        await asyncio.sleep(0.02)


async def test_two_workers_never_admit_past_an_rpm_limit_and_reach_it_while_requests_keep_coming(
    two_workers: tuple[RedisLimiter, RedisLimiter],
) -> None:
    clear_of_minute_edge()
    ask = Ask("w1:rpm", 30, "rpm", "rpm_limit")
    results = await asyncio.gather(*(two_workers[i % 2].reserve([ask], f"r{i}") for i in range(100)))
    admitted = sum(isinstance(r, Grant) for r in results)
    assert admitted <= 30
    for i in range(30 - admitted):
        await _until_granted(two_workers[1], ask, f"late{i}")
    assert all([isinstance(await w.reserve([ask], "over"), Refusal) for w in two_workers])


async def test_two_workers_overshoot_a_tpm_limit_by_one_estimate_at_most(
    two_workers: tuple[RedisLimiter, RedisLimiter],
) -> None:
    clear_of_minute_edge()
    ask = Ask("w5:tpm", 1000, "tpm", "tpm_limit", amount=300)
    results = await asyncio.gather(*(two_workers[i % 2].reserve([ask], f"r{i}") for i in range(20)))
    granted = sum(isinstance(r, Grant) for r in results)
    assert 1 <= granted <= 4, "admitted while under 1000: at 0, 300, 600 and 900 tokens at most"


async def test_two_workers_share_a_budget_without_overspending_it(
    two_workers: tuple[RedisLimiter, RedisLimiter],
) -> None:
    ask = Ask("w2:budget:all", 1000, "budget", "key max_budget", amount=100)
    results = await asyncio.gather(*(two_workers[i % 2].reserve([ask], f"r{i}") for i in range(50)))
    grants = [(i, r) for i, r in enumerate(results) if isinstance(r, Grant)]
    assert 5 <= len(grants) <= 10, "never more than the budget holds; what one worker leased may wait"
    await asyncio.gather(*(two_workers[i % 2].settle(g, 0, 100) for i, g in grants))
    client, key = two_workers[0]._client, two_workers[0]._prefix + ask.counter
    deadline = time.monotonic() + 5
    while True:  # spend reported within FLUSH_S, unused leases given back once idle
        counter = {k.decode(): int(v) for k, v in (await client.hgetall(key)).items()}
        if counter.get("reserved") == 0 and counter.get("spent") == 100 * len(grants):
            break
        assert time.monotonic() < deadline, counter
        await asyncio.sleep(0.02)


async def test_a_changed_limit_applies_to_the_next_request_though_a_lease_covers_it(
    two_workers: tuple[RedisLimiter, RedisLimiter],
) -> None:
    worker = two_workers[0]
    generous = Ask("w3:budget:all", 1000, "budget", "key max_budget", amount=10)
    first = await worker.reserve([generous], "a")
    assert isinstance(first, Grant)
    await worker.settle(first, 0, 10)
    assert isinstance(await worker.reserve([generous], "b"), Grant), "served from the lease"
    lowered = Ask(generous.counter, 25, "budget", "key max_budget", amount=10)
    refused = await worker.reserve([lowered], "c")  # 10 spent + 10 held by b + 10 > 25
    assert isinstance(refused, Refusal) and (refused.used, refused.reserved) == (10, 10)
    raised = Ask(generous.counter, 30, "budget", "key max_budget", amount=10)
    assert isinstance(await worker.reserve([raised], "d"), Grant)
    stored = Ask(generous.counter, 30, "budget", "key max_budget", amount=1, floor=30)
    assert isinstance(await worker.reserve([stored], "e"), Refusal), "a higher stored spend is seen at once"


async def test_what_a_worker_leased_goes_back_when_it_is_idle(two_workers: tuple[RedisLimiter, RedisLimiter]) -> None:
    worker = two_workers[0]
    slots = Ask("w4:parallel", 100, "parallel", "max_parallel_requests")
    budget = Ask("w4:budget:all", 10_000, "budget", "key max_budget", amount=100)
    grant = await worker.reserve([slots, budget], "a")
    assert isinstance(grant, Grant)
    await worker.settle(grant, 0, 40)
    client, prefix = worker._client, worker._prefix
    deadline = time.monotonic() + 5
    while True:  # given back after half a second without use
        held = [int(await client.hget(prefix + k, "reserved") or 0) for k in (f"{slots.counter}:slots", budget.counter)]
        if held == [0, 0]:
            break
        assert time.monotonic() < deadline, held
        await asyncio.sleep(0.05)
    assert int(await client.hget(prefix + budget.counter, "spent")) == 40


async def test_a_negative_budget_ask_or_cost_never_gives_back_other_requests_holds(
    limiter: MemoryLimiter | RedisLimiter,
) -> None:
    """A volume tier can price a request's margin below zero: neither its reservation nor its
    settled cost may lower what others hold or what was spent (prepaid credits, exact asks)."""
    ask = Ask("k9:budget:all", 100, "budget", "prepaid credits", amount=60, exact=True)
    held = await limiter.reserve([ask], "a")
    assert isinstance(held, Grant)
    negative = await limiter.reserve([Ask(ask.counter, 100, "budget", "prepaid credits", amount=-500, exact=True)], "b")
    assert isinstance(negative, Grant)
    assert await _reserved(limiter, ask.counter) == 60, "the negative ask wiped the other request's hold"
    refused = await limiter.reserve([Ask(ask.counter, 100, "budget", "prepaid credits", amount=50, exact=True)], "c")
    assert isinstance(refused, Refusal)
    await limiter.settle(held, 0, 60)
    await limiter.settle(negative, 0, -500)
    if isinstance(limiter, RedisLimiter):
        await asyncio.gather(*limiter._returning)
    spent, reserved = await limiter.budget(ask.counter)
    assert (spent, reserved) == (60, 0)
    assert isinstance(
        await limiter.reserve([Ask(ask.counter, 100, "budget", "n", amount=41, exact=True)], "d"), Refusal
    )
