"""The customer page's prepaid panel, shaped from `/customer/info`'s `prepaid` object: when it is
shown at all, the reading's age, amounts kept digit for digit, and the line of the available
balance over the readings (drawn on the server)."""

from __future__ import annotations

from typing import Any

from meterway.ui.prepaid import HEIGHT, PAD, WIDTH, age, amount, line, panel


def _prepaid(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "mode": "enforce",
        "wallets": [{"lago_id": "w1", "usable": True}],
        "available": "0.05",
        "read_at": "2026-12-03T10:00:00+00:00",
        "reading_age_s": 75.5,
        "last_error": None,
        "history": [],
    }
    return {**base, **over}


def test_no_panel_when_prepaid_is_off_or_the_customer_has_no_wallets() -> None:
    assert panel(None) is None
    assert panel(_prepaid(wallets=[])) is None


def test_a_customer_lago_could_never_be_read_for_is_shown_with_why() -> None:
    shown = panel(_prepaid(wallets=[], read_at=None, reading_age_s=None, last_error="Lago did not answer"))
    assert shown is not None and shown["never_read"] and shown["age"] == "—"


def test_panel_says_how_old_the_reading_is_and_whether_the_balance_is_spent() -> None:
    shown = panel(_prepaid())
    assert shown is not None and shown["age"] == "1 min 15 s" and not shown["exhausted"]
    assert panel(_prepaid(available="-0.0000000005"))["exhausted"]  # type: ignore[index]
    assert panel(_prepaid(available="0"))["exhausted"]  # type: ignore[index]
    assert [age(s) for s in (0, 59.9, 3600, 90061)] == ["0 s", "59 s", "1 h 0 min", "1 d 1 h"]


def test_amounts_keep_every_digit_grouped_in_thousands() -> None:
    assert amount("12345.6789012345") == "12,345.6789012345"
    assert amount("-0.0000000005") == "-0.0000000005"
    assert amount(None) == "—" and amount("n/a") == "n/a"


def test_line_runs_oldest_to_newest_by_time_and_marks_zero_when_crossed() -> None:
    history = [  # newest first, as the API lists it
        {"at": "2026-12-03T12:00:00+00:00", "available": "-1"},
        {"at": "2026-12-03T11:00:00+00:00", "available": "0.5"},
        {"at": "2026-12-03T10:00:00+00:00", "available": "3"},
    ]
    drawn = line(history)
    assert drawn is not None
    points = [tuple(map(float, p.split(","))) for p in drawn.points.split()]
    assert [x for x, _ in points] == [PAD, WIDTH / 2, WIDTH - PAD]  # placed by time: 10:00, 11:00, 12:00
    assert points[0][1] == PAD and points[-1][1] == HEIGHT - PAD  # highest at the top, lowest at the bottom
    assert drawn.last == points[-1]
    assert drawn.zero is not None and PAD < drawn.zero < HEIGHT - PAD
    assert (drawn.low, drawn.high) == ("-1", "3")


def test_line_of_one_reading_or_none() -> None:
    assert line([]) is None
    one = line([{"at": "2026-12-03T12:00:00+00:00", "available": "2"}])
    assert one is not None and one.points == f"{WIDTH / 2},{HEIGHT / 2}" and one.zero is None
    assert line([{"at": "x", "available": "garbage"}]) is None
