"""The suite's waiting helper: returns what it waited for, says what never came, and lets only the
errors it was told about count as "not yet"."""

from __future__ import annotations

import pytest

from tests.support.wait import ManualClock, NeverHappened, eventually, eventually_async


def test_eventually_returns_the_first_truthy_answer() -> None:
    answers = iter([None, [], "", ["row"]])
    assert eventually(lambda: next(answers), within_s=5, interval=0) == ["row"]


def test_eventually_retries_only_the_errors_it_was_given() -> None:
    calls = 0

    def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("not up yet")
        return calls

    assert eventually(flaky, within_s=5, interval=0, retry_on=(ConnectionError,)) == 3
    with pytest.raises(KeyError):
        eventually(lambda: {}["missing"], within_s=5, interval=0, retry_on=(ConnectionError,))


def test_a_wait_that_never_ends_names_what_and_the_last_answer() -> None:
    with pytest.raises(NeverHappened, match=r"the rows: not within 0 s \(last seen: \[\]\)"):
        eventually(lambda: [], within_s=0, what="the rows")
    with pytest.raises(NeverHappened, match=r"last error: ConnectionError\('refused'\)"):
        eventually(lambda: (_ for _ in ()).throw(ConnectionError("refused")), 0, retry_on=(ConnectionError,))


async def test_eventually_async_awaits_a_coroutine_probe() -> None:
    seen: list[int] = []

    async def probe() -> bool:
        seen.append(1)
        return len(seen) == 3

    assert await eventually_async(probe, within_s=5, interval=0) is True
    assert len(seen) == 3


def test_a_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(100.0)
    assert clock() == clock() == 100.0
    clock.advance(2.5)
    assert clock() == 102.5
