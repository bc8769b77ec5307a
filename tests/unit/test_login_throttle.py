"""Failed UI logins are counted when they start, per client and overall, in a sliding window."""

from __future__ import annotations

from meterway.ui.throttle import Attempt, LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_attempts_in_flight_count_so_concurrent_guesses_get_no_more_slots() -> None:
    clock = Clock()
    throttle = LoginThrottle(per_client=5, overall=100, window_s=60, clock=clock)
    started = [throttle.start("10.0.0.1") for _ in range(60)]  # none has finished yet
    assert sum(isinstance(a, Attempt) for a in started) == 5
    assert all(a == 60 for a in started[5:]), "retry when the oldest attempt leaves the window"
    clock.now += 20
    assert throttle.start("10.0.0.1") == 40
    clock.now += 40
    assert isinstance(throttle.start("10.0.0.1"), Attempt)


def test_another_client_is_not_blocked_by_one_clients_failures() -> None:
    throttle = LoginThrottle(per_client=2, overall=100, window_s=60, clock=Clock())
    for _ in range(5):
        throttle.start("10.0.0.1")
    assert isinstance(throttle.start("10.0.0.2"), Attempt)


def test_a_successful_login_gives_its_slot_back() -> None:
    throttle = LoginThrottle(per_client=2, overall=100, window_s=60, clock=Clock())
    for _ in range(10):
        attempt = throttle.start("10.0.0.1")
        assert isinstance(attempt, Attempt)
        throttle.succeeded(attempt)
    failed = throttle.start("10.0.0.1")
    assert isinstance(failed, Attempt) and isinstance(throttle.start("10.0.0.1"), Attempt)
    assert not isinstance(throttle.start("10.0.0.1"), Attempt)


def test_the_overall_cap_holds_across_many_addresses_and_forgets_old_clients() -> None:
    clock = Clock()
    throttle = LoginThrottle(per_client=5, overall=10, window_s=60, clock=clock)
    assert sum(isinstance(throttle.start(f"10.0.1.{i}"), Attempt) for i in range(50)) == 10
    assert throttle.start("10.0.9.9") == 60
    for round_ in range(100):  # many addresses over many windows: the table of clients stays small
        clock.now += 61
        for i in range(10):
            assert isinstance(throttle.start(f"10.{round_}.2.{i}"), Attempt)
        assert len(throttle._clients) <= 20
