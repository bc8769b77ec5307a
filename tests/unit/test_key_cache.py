from __future__ import annotations

import asyncio

import pytest

from meterway.auth import KeyCache, Principal
from tests.support.wait import ManualClock


async def test_concurrent_misses_share_one_lookup_and_entries_expire() -> None:
    calls: list[str] = []

    async def lookup(d: str) -> Principal | None:
        calls.append(d)
        await asyncio.sleep(0.01)
        return Principal(key_id=d, role="key") if d == "known" else None

    clock = ManualClock()
    cache = KeyCache(lookup, ttl_s=0.05, clock=clock)
    results = await asyncio.gather(*(cache.get("known") for _ in range(20)), cache.get("unknown"))
    assert calls == ["known", "unknown"]
    assert all(r is not None and r.key_id == "known" for r in results[:20]) and results[20] is None
    await cache.get("unknown")
    assert calls == ["known", "unknown"], "unknown keys are cached too"
    clock.advance(0.04)
    await cache.get("known")
    assert calls == ["known", "unknown"], "within the time to live the entry is used"
    clock.advance(0.02)
    await cache.get("known")
    assert calls == ["known", "unknown", "known"], "past it, the key is looked up again"


async def test_a_failed_lookup_reaches_every_waiter_and_is_not_cached() -> None:
    attempts = 0

    async def lookup(d: str) -> Principal | None:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0.01)
        raise ConnectionError("database down")

    cache = KeyCache(lookup)
    results = await asyncio.gather(cache.get("k"), cache.get("k"), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results) and attempts == 1
    with pytest.raises(ConnectionError):
        await cache.get("k")
    assert attempts == 2
