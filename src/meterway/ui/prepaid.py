"""The customer page's "Prepaid credits" panel: the `prepaid` object `/customer/info` answers,
shaped for the template, and the line of its available balance over the readings, drawn on the
server as SVG points (the page loads nothing else for it, and works without scripts).

Amounts stay the API's decimal strings: the page shows the figures the API gives, digit for digit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

WIDTH, HEIGHT, PAD = 600, 120, 6  # the line's drawing box, in SVG user units


@dataclass(frozen=True, slots=True)
class Line:
    """The available balance over the readings, oldest on the left."""

    points: str  # "x,y x,y ...", for <polyline points=...>
    last: tuple[float, float]  # the newest reading's point, marked on the line
    zero: float | None  # y of the zero line, when the balance crossed or touched it
    low: str  # the smallest and largest balance shown (decimal strings), labelling the axis
    high: str
    width: int = WIDTH
    height: int = HEIGHT


def panel(prepaid: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What the panel shows, or None when there is nothing to show: prepaid credits off (the API
    answers no `prepaid`), or a customer Lago was read for and has no wallets. A customer never
    read, with the reason why, is shown: the operator sees why its balance is unknown."""
    if not prepaid:
        return None
    wallets = prepaid.get("wallets") or []
    never_read = prepaid.get("read_at") is None
    if not wallets and not (never_read and prepaid.get("last_error")):
        return None
    history = prepaid.get("history") or []
    return {
        **prepaid,
        "never_read": never_read,
        "usable_wallets": sum(1 for w in wallets if w.get("usable")),
        "exhausted": _number(prepaid.get("available")) <= 0,
        "age": age(prepaid.get("reading_age_s")),
        "line": line(history),
    }


def amount(value: Any) -> str:
    """A decimal string of the API grouped in thousands, every digit kept ("1,234.5000001")."""
    if value is None:
        return "—"
    try:
        return format(Decimal(str(value)), ",f")
    except InvalidOperation:
        return str(value)


def age(seconds: Any) -> str:
    """A reading's age as people say it: "42 s", "3 min 5 s", "2 h 10 min", "3 d 4 h"."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return "—"
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def line(history: Sequence[Mapping[str, Any]]) -> Line | None:
    """The history's available balances (newest first, as the API lists them) as a line, placed
    by the time of each reading (by their order when the times cannot be read)."""
    readings = []
    for entry in reversed(history):
        try:
            readings.append((_moment(entry.get("at")), Decimal(str(entry.get("available")))))
        except (InvalidOperation, ValueError):
            continue
    if not readings:
        return None
    values = [v for _, v in readings]
    low, high = min(values), max(values)
    low_f, high_f = float(low), float(high)
    times = [t for t, _ in readings]
    timed = all(t is not None for t in times) and times[0] != times[-1]
    first = times[0].timestamp() if timed and times[0] is not None else 0.0
    last = times[-1].timestamp() if timed and times[-1] is not None else 0.0
    span_x = (last - first) if timed else max(len(readings) - 1, 1)
    span_y = (high_f - low_f) or 1.0
    inner_w, inner_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD

    def place(i: int, moment: datetime | None, value: Decimal) -> tuple[float, float]:
        along = (moment.timestamp() - first) if timed and moment is not None else i
        x = PAD + inner_w * (along / span_x if len(readings) > 1 else 0.5)
        y = PAD + inner_h * (1 - (float(value) - low_f) / span_y) if high_f != low_f else HEIGHT / 2
        return round(x, 1), round(y, 1)

    placed = [place(i, t, v) for i, (t, v) in enumerate(readings)]
    zero = None
    if low <= 0 <= high and high_f != low_f:
        zero = round(PAD + inner_h * (1 - (0.0 - low_f) / span_y), 1)
    return Line(
        points=" ".join(f"{x},{y}" for x, y in placed),
        last=placed[-1],
        zero=zero,
        low=amount(low),
        high=amount(high),
    )


def _number(value: Any) -> Decimal:
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return Decimal(0)


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
